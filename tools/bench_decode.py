"""Time a Qwen3-0.6B-shaped decode step per batch bucket, and a prefill, in every mode, on one GPU.

transformers' Qwen3 with the Qwen3-0.6B configuration (``--model llama-3.2-1b``: Llama with the
Llama-3.2-1B configuration, a model without query/key norms), random bf16 weights, a static KV cache
holding ``--context`` tokens (random keys and values, the same for a sequence in every batch).
One decode step -- one new token per sequence, logits of the last position -- is timed at each
bucket in each mode, and so is a prefill of each of ``--prefill-lengths`` tokens at ``--prefill-batches``
(the logits of the last position alone, as generation asks for them):

* ``eager``, ``eager BI`` (``ascend_compile.eager_mode``: aten matmul/softmax/mean overridden),
* ``torch.compile``, ``torch.compile reduce-overhead`` (stock Inductor, CUDA graphs),
* ``ascend_bi`` with the ``inductor`` and ``fx`` executors (graphs per bucket).

For every mode it also records the first call per bucket (compile and capture) with the memory it
added, and whether sequence 0's logits are bitwise equal in every bucket.  The HBM floor is the
weight and KV-cache bytes a step must read over the measured copy bandwidth.

Usage: ``python -m ascend_compile.tools.bench_decode [--json PATH] [--markdown PATH] [--plot PNG]``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import sys
import time
from collections.abc import Callable
from typing import Any

import torch

from ascend_compile.tools.benchmarking import card_line, copy_bandwidth, finish, geomean, mean_call_ms, start, versions
from ascend_compile.tools.models import llama_3_2_1b, qwen3_0_6b

logger = logging.getLogger(__name__)

BUCKETS: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
PREFILL_BATCHES: tuple[int, ...] = (1, 2, 4, 8)
MODES: tuple[str, ...] = ("eager", "eager BI", "torch.compile", "reduce-overhead", "ascend_bi inductor", "ascend_bi fx")
#: ``--model`` -> its builder (random weights; ``num_hidden_layers=None`` keeps the model's own count).
MODELS: dict[str, Callable[..., torch.nn.Module]] = {"qwen3-0.6b": qwen3_0_6b, "llama-3.2-1b": llama_3_2_1b}

Step = Callable[[torch.Tensor, Any, torch.Tensor | None], torch.Tensor]


@dataclasses.dataclass
class Point:
    kind: str
    mode: str
    bucket: int
    ms: float
    first_call_s: float
    first_call_mib: float


def _step(model: torch.nn.Module) -> Step:
    def step(ids: torch.Tensor, cache: Any, position: torch.Tensor | None) -> torch.Tensor:
        return model(input_ids=ids, past_key_values=cache, cache_position=position,
                     use_cache=cache is not None, logits_to_keep=1).logits[:, -1]

    return step


def _modes(model: torch.nn.Module) -> dict[str, tuple[Step, Callable[[], contextlib.AbstractContextManager[Any]]]]:
    import ascend_compile

    step = _step(model)
    plain = contextlib.nullcontext
    return {
        "eager": (step, plain),
        "eager BI": (step, lambda: ascend_compile.eager_mode("cuda")),
        "torch.compile": (torch.compile(step), plain),
        "reduce-overhead": (torch.compile(step, mode="reduce-overhead"), plain),
        "ascend_bi inductor": (torch.compile(step, backend="ascend_bi", options={"executor": "inductor"}), plain),
        "ascend_bi fx": (torch.compile(step, backend="ascend_bi", options={"executor": "fx"}), plain),
    }


def _cache(model: torch.nn.Module, batch: int, context: int) -> Any:
    """A static cache of ``context`` tokens; sequence i's keys and values are the same in every batch."""
    from transformers import StaticCache

    config = model.config
    cache = StaticCache(config=config, max_cache_len=context + 8)
    ids = torch.zeros(batch, 1, dtype=torch.long, device="cuda")
    with torch.no_grad():
        model(input_ids=ids, past_key_values=cache, cache_position=torch.arange(1, device="cuda"), use_cache=True)
    for n, layer in enumerate(cache.layers):
        for which, tensor in enumerate((layer.keys, layer.values)):
            for i in range(batch):
                gen = torch.Generator(device="cuda").manual_seed(1_000_003 * n + 7919 * which + i)
                tensor[i, :, :context] = torch.randn(tensor.shape[1], context, tensor.shape[3], device="cuda",
                                                     dtype=tensor.dtype, generator=gen)
    return cache


def _ids(batch: int, vocab: int, length: int = 1) -> torch.Tensor:
    rows = [torch.randint(0, vocab, (length,), generator=torch.Generator().manual_seed(i)) for i in range(batch)]
    return torch.stack(rows).cuda()


@dataclasses.dataclass(frozen=True)
class Workload:
    """Decode: one token after ``tokens`` cached ones; prefill: ``tokens`` tokens, no cache (transformers'
    static cache layers keep their own write position, so repeated prefills into one would overflow it)."""

    kind: str
    tokens: int

    @property
    def label(self) -> str:
        """``decode``, or ``prefill N`` for a prefill of N tokens: a run may time several lengths."""
        return self.kind if self.kind == "decode" else f"{self.kind} {self.tokens}"

    def inputs(self, model: torch.nn.Module, batch: int) -> tuple[torch.Tensor, Any, torch.Tensor | None]:
        if self.kind == "decode":
            return (_ids(batch, model.config.vocab_size), _cache(model, batch, self.tokens),
                    torch.tensor([self.tokens], device="cuda"))
        return _ids(batch, model.config.vocab_size, self.tokens), None, None


def measure(model: torch.nn.Module, modes: list[str], workloads: dict[Workload, list[int]],
            repeats: int) -> tuple[list[Point], dict[tuple[str, str], bool]]:
    """Every mode over every workload's batch sizes (a mode's compiled step is shared by both)."""
    points, invariant = [], {}
    available = _modes(model)
    for mode in modes:
        for workload, batches in workloads.items():
            rows = _measure_mode(mode, available[mode], workload, batches, repeats, model, points)
            invariant[workload.label, mode] = all(torch.equal(rows[0], r) for r in rows)
    return points, invariant


def _measure_mode(mode: str, available: tuple[Step, Callable[[], contextlib.AbstractContextManager[Any]]],
                  workload: Workload, batches: list[int], repeats: int, model: torch.nn.Module,
                  points: list[Point]) -> list[torch.Tensor]:
    """Sequence 0's logits at each batch size; the timings go to ``points``."""
    step, context_manager = available
    rows = []
    for bucket in batches:
        ids, cache, position = workload.inputs(model, bucket)
        torch.cuda.synchronize()
        before, start_s = torch.cuda.memory_allocated(), time.perf_counter()
        with torch.no_grad(), context_manager():
            first = step(ids, cache, position)[0].clone()
            torch.cuda.synchronize()
            first_s, mib = time.perf_counter() - start_s, (torch.cuda.memory_allocated() - before) / 2**20
            ms = mean_call_ms(lambda step=step, ids=ids, cache=cache, position=position: step(ids, cache, position),
                          repeats)
        rows.append(first)
        points.append(Point(workload.label, mode, bucket, ms, first_s, mib))
        logger.info("%s", points[-1])
        del cache
    return rows


def hbm_floor_ms(model: torch.nn.Module, bucket: int, context: int, bandwidth: float) -> float:
    config = model.config
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    kv = 2 * config.num_hidden_layers * bucket * config.num_key_value_heads * context * config.head_dim * 2
    return (weights + kv) / bandwidth * 1e3


def _table(points: list[Point], invariant: dict[str, bool], kind: str, floors: dict[int, float] | None) -> list[str]:
    """Milliseconds per mode and batch for one workload, ratios to reduce-overhead's time."""
    mine = [p for p in points if p.kind == kind]
    modes = list(dict.fromkeys(p.mode for p in mine))
    batches = sorted({p.bucket for p in mine})
    ms = {(p.mode, p.bucket): p.ms for p in mine}
    lines = ["| mode | " + " | ".join(f"bs {b}" for b in batches) + " | bitwise equal across batches |",
             "|---|" + "---:|" * len(batches) + ":---:|"]
    for mode in modes:
        equal = ("yes" if invariant[f"{kind} {mode}"] else "no") if len(batches) > 1 else "— (one batch)"
        lines.append(f"| {mode} | " + " | ".join(f"{ms[mode, b]:.2f}" for b in batches) + f" | {equal} |")
    if floors:
        lines.append("| HBM floor | " + " | ".join(f"{floors[b]:.2f}" for b in batches) + " | |")
    lines += ["", "| mode | first call per batch: s (MiB added) |", "|---|---|"]
    for mode in modes:
        lines.append(f"| {mode} | " + ", ".join(f"{p.bucket}: {p.first_call_s:.1f} ({p.first_call_mib:.0f})"
                                                  for p in mine if p.mode == mode) + " |")
    if "reduce-overhead" in modes:
        lines.append("")
        for mode in modes:
            ratio = geomean([ms[mode, b] / ms["reduce-overhead", b] for b in batches])
            lines.append(f"- {mode}: {ratio:.2f}× reduce-overhead's time (geo-mean over batches)")
    return lines


def markdown(doc: dict[str, Any]) -> str:
    """The results tables of a run's JSON document (``--json``; also how bench_report renders it)."""
    info, points = doc["info"], [Point(**p) for p in doc["points"]]
    floors = {int(bucket): ms for bucket, ms in doc["floors"].items()}
    # Documents written before the model and the token counts were stored ran the defaults.
    model, tokens = info.get("model", "qwen3-0.6b (28 layers)"), doc.get("tokens", {})
    lines = [card_line(info) + f" transformers {info.get('transformers', '?')}."]
    for kind in dict.fromkeys(p.kind for p in points):
        if kind == "decode":
            title = (f"Decode step, {model} shapes, bf16, context {tokens.get(kind, 512)}; ms per step "
                     f"(copy bandwidth {doc['bandwidth'] / 1e12:.2f} TB/s).")
        else:
            # Runs that labelled their one prefill "prefill" computed the logits of every position.
            logits = "every position's logits" if kind == "prefill" else "the last position's logits"
            title = (f"Prefill of {tokens.get(kind, 512)} tokens per sequence, {model} shapes, bf16, {logits}; "
                     "ms per prefill.")
        floor = floors if kind == "decode" else None
        lines += ["", title, "", *_table(points, doc["invariant"], kind, floor)]
    return "\n".join(lines)


def plot(points: list[Point], floors: dict[int, float], path: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.warning("matplotlib is not installed: no plot")
        return
    fig, ax = plt.subplots(figsize=(7, 4))
    decode = [p for p in points if p.kind == "decode"]
    for mode in dict.fromkeys(p.mode for p in decode):
        mine = [p for p in decode if p.mode == mode]
        ax.plot([p.bucket for p in mine], [p.ms for p in mine], marker="o", label=mode)
    ax.plot(sorted(floors), [floors[b] for b in sorted(floors)], "k--", label="HBM floor")
    ax.set(xscale="log", yscale="log", xlabel="batch (bucket)", ylabel="ms per decode step")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modes", nargs="*", default=list(MODES), choices=MODES)
    parser.add_argument("--buckets", type=int, nargs="*", default=list(BUCKETS))
    parser.add_argument("--context", type=int, default=512)
    parser.add_argument("--prefill-batches", type=int, nargs="*", default=list(PREFILL_BATCHES))
    parser.add_argument("--prefill-lengths", type=int, nargs="+", default=[512], metavar="TOKENS")
    parser.add_argument("--model", choices=sorted(MODELS), default="qwen3-0.6b",
                        help="configuration of the random-weight model (default: the issue's Qwen3-0.6B)")
    parser.add_argument("--layers", type=int, help="decoder layers (default: the model's own count)")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--json")
    parser.add_argument("--markdown")
    parser.add_argument("--plot")
    args = parser.parse_args(argv)
    workloads = {}
    if args.buckets:
        workloads[Workload("decode", args.context)] = args.buckets
    for tokens in args.prefill_batches and args.prefill_lengths:
        workloads[Workload("prefill", tokens)] = args.prefill_batches
    if not workloads:
        parser.error("nothing to time: give decode --buckets, --prefill-batches or both")
    if not start("bench_decode"):
        return 2
    import transformers

    model = MODELS[args.model](num_hidden_layers=args.layers, attn_implementation="sdpa")
    bandwidth = copy_bandwidth()
    points, invariant = measure(model, args.modes, workloads, args.repeats)
    floors = {b: hbm_floor_ms(model, b, args.context, bandwidth) for b in args.buckets}
    info = versions() | {"transformers": transformers.__version__,
                         "model": f"{args.model} ({model.config.num_hidden_layers} layers)"}
    finish(args, info, points, markdown, bandwidth=bandwidth, floors={str(b): ms for b, ms in floors.items()},
           tokens={workload.label: workload.tokens for workload in workloads},
           invariant={f"{kind} {mode}": ok for (kind, mode), ok in invariant.items()})
    if args.plot and args.buckets:
        plot(points, floors, args.plot)
    elif args.plot:
        logger.warning("no decode buckets were timed: no plot written to %s", args.plot)
    return 0 if all(ok for (_, mode), ok in invariant.items() if mode.startswith("ascend_bi")) else 1


if __name__ == "__main__":
    sys.exit(main())
