"""Property-based fuzzing of batch invariance: any batch, any companions, any bucket, any padding.

Hand-picked batch sizes test the claim where its author looked.  Here ``hypothesis`` draws the whole
composition -- a configuration (zoo model, decode or prefill, dtype, executor, device graphs on or
off), a batch size, the probe's position in it and its companions (other sequences, the probe
duplicated, all-zero rows, rows at the dtype's extremes, rows holding NaN or Inf) -- and checks:

* every row whose inputs are finite (the probe among them) has the bits it gets alone, at batch 1:
  a NaN or Inf companion changes no other row's bits;
* the probe's output is close to a float64 reference (the same module and inputs, upcast, eager).

Compiling is what costs, so a ``Harness`` compiles each configuration once (``dynamic=True``) and
draws many compositions through it; a row's batch-1 bits and reference are kept once computed.

Usage::

    python -m ascend_compile.tools.fuzz --examples 10000 [--models qwen3 vllm ...] [--device cuda|cpu] [--shard I/N]

prints the compositions tried, every failure with the command that replays it (``--replay JSON``)
and the wall time.  ``--space covering`` (the default) draws configurations from a list in which
every model and step appears and every combination of dtype, executor and graphs; ``--space full``
from their whole product (one compile each); ``--shard I/N`` keeps every N-th of them, so N processes
(one card or several) split a run.  On the CPU there are no device graphs: ``graphs``
``on`` is tested there by ``tests/test_fuzz.py``, which gives the runner a replaying stand-in.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import itertools
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st

from ascend_compile.tools import zoo
from ascend_compile.tools.fuzz_models import (
    CPU_SIZES,
    GPU_SIZES,
    KINDS,
    PREFILL_MODELS,
    STEPS,
    Row,
    Sizes,
    Subject,
    subject,
)

logger = logging.getLogger(__name__)

DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
EXECUTORS: tuple[str, ...] = ("fx", "inductor")
GRAPHS: tuple[str, ...] = ("off", "on")
#: The probe's relative error (2-norm) against float64 that a dtype may show: a few times what eager
#: shows at these sizes (fp32 ~1e-7, bf16 ~4e-3, fp16 ~5e-4), far below what a wrong result shows.
TOLERANCE: dict[str, float] = {"float32": 1e-5, "bfloat16": 5e-2, "float16": 1e-2}
#: Capture sizes and largest batch per device: some batches run padded, some above the largest bucket.
CPU_CAPTURE_SIZES: tuple[int, ...] = (1, 2, 4)
CPU_MAX_BATCH = 6
GPU_CAPTURE_SIZES: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
GPU_MAX_BATCH = 40
#: The first call's batch and prefill length: unlike each other and every other extent of the inputs.
WARM_BATCH, WARM_LENGTH = 3, 4

_INT_VIEWS = {torch.float64: torch.int64, torch.float32: torch.int32, torch.float16: torch.int16,
              torch.bfloat16: torch.int16}


@dataclass(frozen=True)
class Config:
    """What one compile covers."""

    model: str
    step: str = "decode"
    dtype: str = "float32"
    executor: str = "fx"
    graphs: str = "off"


@dataclass(frozen=True)
class Composition:
    """One drawn batch: its rows in order, the probe's position among them, tokens per row (prefill)."""

    config: Config
    rows: tuple[Row, ...]
    probe: int
    length: int = 1

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> Composition:
        doc = json.loads(text)
        return cls(Config(**doc["config"]), tuple(Row(**r) for r in doc["rows"]), doc["probe"], doc["length"])


def configurations(models: Sequence[str] = tuple(zoo.ZOO), steps: Sequence[str] = STEPS,
                   dtypes: Sequence[str] = tuple(DTYPES), executors: Sequence[str] = EXECUTORS,
                   graphs: Sequence[str] = GRAPHS, full: bool = False) -> list[Config]:
    """The configurations to draw from: their whole product (``full``), or a covering list in which every
    (model, step) appears and every (dtype, executor, graphs) combination, each at least once."""
    subjects = [(m, s) for s in steps for m in models if s == "decode" or m in PREFILL_MODELS]
    others = list(itertools.product(dtypes, executors, graphs))
    if not subjects or not others:
        raise ValueError("no configuration: the models, steps, dtypes, executors and graphs asked for leave none")
    if full:
        return [Config(m, s, *o) for m, s in subjects for o in others]
    n = max(len(subjects), len(others))
    return [Config(*subjects[i % len(subjects)], *others[i % len(others)]) for i in range(n)]


def compositions(configs: Sequence[Config], max_batch: int, pool: int,
                 max_length: int) -> st.SearchStrategy[Composition]:
    """Compositions over ``configs``: batch 1..``max_batch``, the probe anywhere, companions of every kind."""

    @st.composite
    def draw(draw: Callable[..., Any]) -> Composition:
        config = draw(st.sampled_from(list(configs)))
        batch = draw(st.integers(1, max_batch))
        probe_seq = draw(st.integers(0, pool - 1))
        at = draw(st.integers(0, batch - 1))
        companion = st.one_of(
            st.just(Row("sequence", probe_seq)),  # the probe again
            st.builds(Row, st.just("sequence"), st.integers(0, pool - 1)),
            st.builds(Row, st.sampled_from(KINDS[1:]), st.integers(0, pool - 1)),
        )
        others = draw(st.lists(companion, min_size=batch - 1, max_size=batch - 1))
        rows = (*others[:at], Row("sequence", probe_seq), *others[at:])
        length = 1 if config.step == "decode" else draw(st.integers(2, max_length))
        return Composition(config, rows, at, length)

    return draw()


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bitwise equality (``-0.0`` differs from ``0.0``); NaNs must sit at the same places, any payload."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    nan_a, nan_b = a.isnan(), b.isnan()
    if not torch.equal(nan_a, nan_b):
        return False
    view = _INT_VIEWS.get(a.dtype)
    a, b = a.masked_fill(nan_a, 0).contiguous(), b.masked_fill(nan_b, 0).contiguous()
    return torch.equal(a.view(view), b.view(view)) if view is not None else torch.equal(a, b)


def rel_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.double() - ref.double()).norm() / ref.double().norm()).item()


@dataclass
class _Compiled:
    fn: Callable[..., Any]
    subject: Subject
    #: (row, length) -> the row's output at batch 1
    alone: dict[tuple[Row, int], torch.Tensor] = field(default_factory=dict)


@dataclass
class Harness:
    """Compiles each configuration once and checks compositions through it."""

    device: str = "cpu"
    sizes: Sizes | None = None
    capture_sizes: tuple[int, ...] | None = None
    #: ``ascend_bi``, or ``inductor``: stock torch.compile (the negative control; executor and graphs ignored)
    backend: str = "ascend_bi"
    #: The first call's batch and prefill length (what Dynamo first compiles for).
    warm: tuple[int, int] = (WARM_BATCH, WARM_LENGTH)
    _compiled: dict[Config, _Compiled | Exception] = field(default_factory=dict)
    _subjects: dict[tuple[str, str, str], Subject] = field(default_factory=dict)
    _references: dict[tuple[str, str, str, Row, int], torch.Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        on_cpu = torch.device(self.device).type == "cpu"
        if self.sizes is None:
            self.sizes = CPU_SIZES if on_cpu else GPU_SIZES
        if self.capture_sizes is None:
            self.capture_sizes = CPU_CAPTURE_SIZES if on_cpu else GPU_CAPTURE_SIZES

    @property
    def compiles(self) -> int:
        return len(self._compiled)

    def _subject(self, config: Config) -> Subject:
        key = (config.model, config.step, config.dtype)
        if key not in self._subjects:
            assert self.sizes is not None
            self._subjects[key] = subject(config.model, config.step, DTYPES[config.dtype], self.device, self.sizes)
        return self._subjects[key]

    def _compile(self, config: Config) -> _Compiled:
        """The configuration's compiled step, warmed at a batch of 3 whose extents all differ (Dynamo gives
        extents equal at the first call one symbol: a batch equal to the heads would recompile later)."""
        if config not in self._compiled:
            logger.info("fuzz: compiling %s", config)
            try:
                subj = self._subject(config)
                if self.backend == "ascend_bi":
                    options: dict[str, Any] = {"executor": config.executor, "graphs": config.graphs,
                                               "capture_sizes": list(self.capture_sizes or ())}
                    fn = torch.compile(subj.step, dynamic=True, backend="ascend_bi", options=options)
                else:
                    fn = torch.compile(subj.step, dynamic=True, backend=self.backend)
                compiled = _Compiled(fn, subj)
                batch, length = self.warm
                rows = [Row("sequence", i) for i in range(batch)]
                self._run(compiled, rows, length if config.step == "prefill" else 1)
                self._compiled[config] = compiled
            except Exception as error:  # noqa: BLE001  (kept: every composition of it fails the same way)
                self._compiled[config] = error
        found = self._compiled[config]
        if isinstance(found, Exception):
            raise found
        return found

    def _run(self, compiled: _Compiled, rows: list[Row], length: int) -> torch.Tensor:
        # Every configuration compiles the same step code: lift Dynamo's per-code limit, and fail rather than
        # fall back to eager (stock bits) should it still be reached.
        with torch.no_grad(), torch._dynamo.config.patch(recompile_limit=256, accumulated_recompile_limit=4096,
                                                         fail_on_recompile_limit_hit=True):
            return compiled.fn(*compiled.subject.inputs(rows, length))

    def _alone(self, compiled: _Compiled, row: Row, length: int) -> torch.Tensor:
        if (row, length) not in compiled.alone:
            compiled.alone[row, length] = self._run(compiled, [row], length)[0].clone()
        return compiled.alone[row, length]

    def _reference(self, config: Config, row: Row, length: int) -> torch.Tensor:
        key = (config.model, config.step, config.dtype, row, length)
        if key not in self._references:
            self._references[key] = self._subject(config).reference(row, length)
        return self._references[key]

    def check(self, c: Composition) -> list[str]:
        """What is wrong with ``c``'s outputs (empty: the property holds)."""
        compiled = self._compile(c.config)
        out = self._run(compiled, list(c.rows), c.length)
        problems = []
        for j, row in enumerate(c.rows):
            if not row.finite:
                continue
            alone = self._alone(compiled, row, c.length)
            if not same_bits(out[j], alone):
                what = "the probe" if j == c.probe else f"companion {row.kind} {row.seq}"
                diff = (out[j].double() - alone.double()).abs().nan_to_num(float("inf")).max().item()
                problems.append(f"row {j} ({what}) differs from its bits at batch 1: max |diff| {diff:.3g}")
        ref = self._reference(c.config, c.rows[c.probe], c.length)
        error, tolerance = rel_error(out[c.probe], ref), TOLERANCE[c.config.dtype]
        if not error <= tolerance:
            problems.append(f"the probe's relative error against float64 is {error:.3g} (tolerance {tolerance:g})")
        return problems


@dataclass
class Survey:
    """A run's outcome: compositions tried, failures with what went wrong, wall seconds, compiles."""

    tried: int = 0
    failures: list[tuple[Composition, list[str]]] = field(default_factory=list)
    seconds: float = 0.0
    compiles: int = 0


def survey(harness: Harness, strategy: st.SearchStrategy[Composition], examples: int,
           seed: int | None = 0, max_seconds: float | None = None) -> Survey:
    """Draw ``examples`` compositions (``seed``: the same ones every run; None: new ones) and check each, until
    ``max_seconds`` have passed; a failure is recorded and the run goes on, so its count is the run's."""
    result, start = Survey(), time.perf_counter()

    @settings(max_examples=examples, deadline=None, database=None, phases=[Phase.explicit, Phase.generate],
              suppress_health_check=list(HealthCheck), derandomize=False)
    @given(strategy)
    def run(c: Composition) -> None:
        if max_seconds is not None and time.perf_counter() - start > max_seconds:
            return  # past the budget: the remaining draws are not checked (nor counted)
        result.tried += 1
        try:
            problems = harness.check(c)
        except Exception as error:  # noqa: BLE001  (a failure like any other, with its replay command)
            problems = [f"raised {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"]
        if problems:
            result.failures.append((c, problems))
            logger.warning("fuzz: %s: %s", c.to_json(), "; ".join(problems))
        if result.tried % 100 == 0:
            logger.info("fuzz: %d compositions, %d failures, %.0f s", result.tried, len(result.failures),
                        time.perf_counter() - start)

    if seed is not None:
        run = hypothesis_seed(seed)(run)
    run()
    result.seconds, result.compiles = time.perf_counter() - start, harness.compiles
    return result


def markdown(doc: dict[str, Any]) -> str:
    """The reliability table of ``doc["runs"]``: the figures ``--json`` wrote for each shard of one run (one card,
    versions and date), and their total."""
    runs = doc["runs"]
    first = runs[0]
    if any((r["card"], r["torch"], r["triton"]) != (first["card"], first["torch"], first["triton"]) for r in runs):
        raise ValueError("fuzz.markdown: the runs of one table share a card, torch and triton")
    lines = [f"Card: {first['card']}; torch {first['torch']}, triton {first['triton']}; {first['date']}.", "",
             "| shard | configurations | batches | compositions | failures | s |", "|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['shard']} | {r['configurations']} | 1..{r['max_batch']} | {r['compositions']} | "
              f"{len(r['failures'])} | {r['seconds']:.0f} |" for r in runs]
    tried, failed = sum(r["compositions"] for r in runs), sum(len(r["failures"]) for r in runs)
    lines += ["", f"Total: {tried} compositions, {failed} failures."]
    return "\n".join(lines)


def card(device: str) -> str:
    if torch.device(device).type == "cuda":
        return torch.cuda.get_device_name(torch.device(device))
    return "CPU (Triton's interpreter)"


def replay_command(c: Composition, device: str, backend: str = "ascend_bi") -> str:
    stock = "" if backend == "ascend_bi" else f" --backend {backend}"
    return f"python -m ascend_compile.tools.fuzz --device {device}{stock} --replay '{c.to_json()}'"


def _shard(text: str) -> tuple[int, int]:
    """``I/N`` as (I, N), with 0 <= I < N."""
    index, _, count = text.partition("/")
    if not (index.isdigit() and count.isdigit() and int(index) < int(count)):
        raise argparse.ArgumentTypeError(f"shard {text!r}: expected I/N with 0 <= I < N, e.g. 0/4")
    return int(index), int(count)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--examples", type=int, default=1000, help="compositions to draw (default 1000)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="cuda, cuda:N or cpu (default: cuda where there is one)")
    parser.add_argument("--models", nargs="*", choices=list(zoo.ZOO), default=list(zoo.ZOO), metavar="NAME",
                        help=f"zoo models (default: all of {', '.join(zoo.ZOO)})")
    parser.add_argument("--steps", nargs="*", choices=STEPS, default=list(STEPS))
    parser.add_argument("--dtypes", nargs="*", choices=list(DTYPES), default=list(DTYPES))
    parser.add_argument("--executors", nargs="*", choices=EXECUTORS, default=list(EXECUTORS))
    parser.add_argument("--graphs", nargs="*", choices=GRAPHS, help="default: off and on (off only on the CPU)")
    parser.add_argument("--space", choices=("covering", "full"), default="covering",
                        help="configurations: a covering list (default) or the whole product")
    parser.add_argument("--max-batch", type=int, help=f"largest batch (default {GPU_MAX_BATCH} on GPUs, "
                                                       f"{CPU_MAX_BATCH} on the CPU)")
    parser.add_argument("--seed", type=int, default=0, help="draws of the run (default 0; -1: new ones each run)")
    parser.add_argument("--backend", choices=("ascend_bi", "inductor"), default="ascend_bi",
                        help="inductor: stock torch.compile, to see the property fail")
    parser.add_argument("--replay", metavar="JSON", help="check one composition (as a failure prints it)")
    parser.add_argument("--max-seconds", type=float, help="stop checking after this long (the figures say how "
                                                             "many compositions were tried)")
    parser.add_argument("--shard", type=_shard, default=(0, 1), metavar="I/N",
                        help="draw from every N-th configuration from the I-th (0-based) only: one run split "
                             "across processes (default 0/1: all)")
    parser.add_argument("--json", help="write the run's figures and failures as JSON here")


def run(args: argparse.Namespace) -> int:
    """0 when every composition kept its bits and its accuracy, else 1."""
    on_cpu = torch.device(args.device).type == "cpu"
    if on_cpu and os.environ.get("OPENBLAS_CORETYPE") != "Sandybridge":
        logger.warning("fuzz: OPENBLAS_CORETYPE is not Sandybridge: the interpreter's dot may give a row other bits "
                       "by its place in a tile, which reads as failures here (README: export it before running)")
    harness = Harness(args.device, backend=args.backend)
    if args.replay:
        c = Composition.from_json(args.replay)
        problems = harness.check(c)
        print("\n".join(problems) or "ok: every finite row kept its batch-1 bits, the probe is within tolerance")
        return 1 if problems else 0
    graphs = args.graphs or (["off"] if on_cpu else list(GRAPHS))
    if on_cpu and "on" in graphs:
        logger.warning("fuzz: the CPU has no device graphs: graphs='on' runs uncaptured here")
    configs = configurations(args.models, args.steps, args.dtypes, args.executors, graphs, full=args.space == "full")
    index, count = args.shard
    configs = configs[index::count]
    if not configs:
        raise SystemExit(f"fuzz: shard {index}/{count} holds no configuration (there are fewer than {count})")
    assert harness.sizes is not None
    max_batch = args.max_batch or (CPU_MAX_BATCH if on_cpu else GPU_MAX_BATCH)
    strategy = compositions(configs, max_batch, harness.sizes.pool, harness.sizes.max_length)
    result = survey(harness, strategy, args.examples, None if args.seed < 0 else args.seed + index, args.max_seconds)
    lines = [f"card: {card(args.device)}; torch {torch.__version__}",
             f"configurations: {len(configs)} ({result.compiles} compiled; shard {index}/{count}), "
             f"batches 1..{max_batch}",
             f"compositions tried: {result.tried}" + (" (stopped at --max-seconds)" if result.tried < args.examples
                                                      else ""),
             f"failures: {len(result.failures)}",
             f"time: {result.seconds:.0f} s"]
    for c, problems in result.failures:
        lines += [f"- {'; '.join(problems)}", f"  replay: {replay_command(c, args.device, args.backend)}"]
    print("\n".join(lines))
    if args.json:
        import triton

        doc = {"card": card(args.device), "torch": torch.__version__, "triton": triton.__version__,
               "date": datetime.date.today().isoformat(), "configurations": len(configs), "max_batch": max_batch,
               "shard": f"{index}/{count}",
               "compositions": result.tried, "failures": [{"composition": json.loads(c.to_json()), "problems": p}
                                                           for c, p in result.failures],
               "seconds": round(result.seconds, 1)}
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=1)
    return 1 if result.failures else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logger.setLevel(logging.INFO)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
