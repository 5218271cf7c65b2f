"""Batch invariance as a property (``tools/fuzz.py``): drawn compositions -- model, step, dtype, executor, graphs,
batch, the probe's place, companions of every kind -- keep every finite row's batch-1 bits and the probe close to
float64; stock torch.compile fails the same property.

Draws are derandomized (the same compositions every run); a composition that once failed is kept in
``fuzz_seeds.json`` and replayed by ``test_seed_compositions``.  Device graphs run in ``BucketGraphRunner`` with
``tests/test_graphs.py``'s replaying stand-in (the CPU has none).  The default run draws a few compositions over
two configurations (one with graphs on); ``-m slow`` draws 1000 over the covering list of every configuration.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

from ascend_compile.graphs import BucketGraphRunner
from ascend_compile.tools import fuzz
from ascend_compile.tools.fuzz import Composition, Config
from ascend_compile.tools.fuzz_models import CPU_SIZES, KINDS, PREFILL_MODELS, Row, transform
from tests.test_graphs import runners  # noqa: F401  (the fixture: BucketGraphRunner over a replaying stand-in)

pytest.importorskip("transformers")

SEEDS = Path(__file__).with_name("fuzz_seeds.json")
#: The default run: a hand-written decoder through the graph runner (buckets, padding, above the largest),
#: transformers' Qwen3 with its static cache written by the fused kernels under Inductor, in bf16.
DEFAULT_SPACE = (Config("plain", "decode", "float32", "fx", "on"), Config("qwen3", "decode", "bfloat16", "inductor"))
#: The slow run: every model and step, every combination of dtype, executor and graphs.
SLOW_SPACE = tuple(fuzz.configurations())
_PROFILE = dict(derandomize=True, deadline=None, phases=(Phase.explicit, Phase.generate),
                suppress_health_check=(HealthCheck.function_scoped_fixture, HealthCheck.too_slow))
settings.register_profile("fuzz-default", max_examples=10, **_PROFILE)
settings.register_profile("fuzz-slow", max_examples=1000, **_PROFILE)


def _strategy(space: tuple[Config, ...]) -> st.SearchStrategy[Composition]:
    return fuzz.compositions(space, fuzz.CPU_MAX_BATCH, CPU_SIZES.pool, CPU_SIZES.max_length)


def _assert_holds(harness: fuzz.Harness, c: Composition) -> None:
    problems = harness.check(c)
    assert not problems, "; ".join(problems) + f"\ncomposition: {c.to_json()}\nkeep it in {SEEDS.name}; " \
        f"without graphs: {fuzz.replay_command(c, 'cpu')}"


@pytest.fixture
def harness(runners: list[BucketGraphRunner]) -> fuzz.Harness:  # noqa: F811
    return fuzz.Harness("cpu")


def _captured(runners: list[BucketGraphRunner]) -> set[int]:  # noqa: F811
    return {bucket for r in runners if r.signature.batch_symbol is not None for bucket, _ in r.graphs}


def _fuzz(harness: fuzz.Harness, space: tuple[Config, ...], profile: str,
          explicit: tuple[Composition, ...] = ()) -> list[Composition]:
    """Check the ``explicit`` compositions, then the profile's draws over ``space``; returns them all."""
    drawn: list[Composition] = []

    @settings(settings.get_profile(profile))
    @given(c=_strategy(space))
    def holds(c: Composition) -> None:
        drawn.append(c)
        _assert_holds(harness, c)

    for c in explicit:
        holds = example(c=c)(holds)
    holds()
    return drawn


def _rows(*rows: tuple[str, int]) -> tuple[Row, ...]:
    return tuple(Row(kind, seq) for kind, seq in rows)


#: Always in the default run, whatever is drawn: through the graph runner, a batch padded to its bucket (3 in 4)
#: with the probe duplicated and a NaN row, and one above the largest bucket with every other kind of row.
EXPLICIT = (Composition(DEFAULT_SPACE[0], _rows(("sequence", 1), ("nan", 2), ("sequence", 1)), probe=2),
            Composition(DEFAULT_SPACE[0], _rows(("zero", 0), ("huge", 3), ("sequence", 4), ("tiny", 5), ("inf", 1),
                                                ("sequence", 0)), probe=2))


def test_drawn_compositions_keep_their_bits(harness: fuzz.Harness,
                                            runners: list[BucketGraphRunner]) -> None:  # noqa: F811
    """The default draws, over both configurations, with every kind of companion; the graph runner captured the
    buckets the draws ran in."""
    drawn = _fuzz(harness, DEFAULT_SPACE, "fuzz-default", EXPLICIT)
    assert {c.config for c in drawn} == set(DEFAULT_SPACE) and set(EXPLICIT) <= set(drawn)
    assert {row.kind for c in drawn for row in c.rows} == set(KINDS)
    assert _captured(runners) == set(fuzz.CPU_CAPTURE_SIZES) - {1}  # batch 1 is Dynamo's static graph


@pytest.mark.slow
def test_a_thousand_compositions_keep_their_bits(harness: fuzz.Harness) -> None:
    drawn = _fuzz(harness, SLOW_SPACE, "fuzz-slow")
    assert len(drawn) >= 1000 and {c.config for c in drawn} == set(SLOW_SPACE)


def _seeds() -> list[Any]:
    params = []
    for n, seed in enumerate(json.loads(SEEDS.read_text())):
        marks = [pytest.mark.xfail(strict=True, reason=seed["xfail"])] if seed.get("xfail") else []
        params.append(pytest.param(Composition.from_json(json.dumps(seed["composition"])), marks=marks, id=f"seed{n}"))
    return params


@pytest.mark.parametrize("c", _seeds())
def test_seed_compositions(harness: fuzz.Harness, c: Composition) -> None:
    """Every composition that once failed (``fuzz_seeds.json``, with what it found) holds now."""
    _assert_holds(harness, c)


def test_a_first_prefill_whose_batch_equals_its_length(runners: list[BucketGraphRunner]) -> None:  # noqa: F811
    """The harness compiles every configuration first at a batch and a length unlike each other; a user's first
    prefill may have them equal (Dynamo then gives both one symbol): rewrite_attention's layout flag was then a
    symbolic boolean, which the fx executor's code could not evaluate."""
    harness = fuzz.Harness("cpu", warm=(3, 3))
    _assert_holds(harness, Composition(Config("qwen3", "prefill", "float32", "fx"), _rows(("sequence", 0)), 0, 3))


def test_same_bits_is_bitwise_and_nan_aware() -> None:
    a = torch.tensor([1.0, 0.0, float("nan"), float("inf")])
    assert fuzz.same_bits(a, a.clone())
    assert not fuzz.same_bits(a, torch.tensor([1.0, -0.0, float("nan"), float("inf")]))  # -0.0 has other bits
    assert not fuzz.same_bits(a, torch.tensor([1.0, 0.0, 2.0, float("inf")]))
    assert not fuzz.same_bits(a, a.double())
    assert not fuzz.same_bits(a, torch.nextafter(a, torch.tensor(2.0)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_row_kinds_are_what_they_say(dtype: torch.dtype) -> None:
    row = torch.randn(4, 8, generator=torch.Generator().manual_seed(0)).to(dtype)
    info = torch.finfo(dtype)
    assert torch.equal(transform(row, "sequence"), row) and not transform(row, "zero").any()
    huge, tiny = transform(row, "huge").float(), transform(row, "tiny").float()
    assert huge.isfinite().all() and huge.abs().max() > info.max / 16
    assert (tiny.abs().max() < info.tiny) and tiny.abs().max() > 0  # subnormal, not flushed to zero
    assert transform(row, "nan").isnan().any() and transform(row, "nan").isfinite().any()
    assert transform(row, "inf").isinf().any() and not transform(row, "inf").isnan().any()
    assert torch.equal(row, transform(row, "sequence")), "the pool row itself is left alone"


def test_configurations_cover_every_value_and_combination() -> None:
    space = fuzz.configurations()
    subjects = {(m, s) for m in fuzz.zoo.ZOO for s in ("decode", "prefill") if s == "decode" or m in PREFILL_MODELS}
    assert {(c.model, c.step) for c in space} == subjects
    combos = {(c.dtype, c.executor, c.graphs) for c in space}
    assert len(combos) == len(fuzz.DTYPES) * len(fuzz.EXECUTORS) * len(fuzz.GRAPHS)
    assert len(space) == max(len(subjects), len(combos)) and len(set(space)) == len(space)
    full = fuzz.configurations(full=True)
    assert len(full) == len(subjects) * len(combos)


def test_shards_are_checked_and_named(capsys: pytest.CaptureFixture[str]) -> None:
    """``--shard I/N`` parses to (I, N); a malformed one, or one past the configurations, is a clear error."""
    parser = argparse.ArgumentParser()
    fuzz.add_arguments(parser)
    assert parser.parse_args(["--shard", "2/4"]).shard == (2, 4)
    for bad in ("4/4", "1", "-1/2", "a/b"):
        with pytest.raises(SystemExit):
            parser.parse_args([f"--shard={bad}"])
        assert "expected I/N with 0 <= I < N" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="shard 1/2 holds no configuration"):
        fuzz.main(["--device", "cpu", "--models", "plain", "--steps", "decode", "--dtypes", "float32",
                   "--executors", "fx", "--shard", "1/2"])


@settings(max_examples=200, derandomize=True, deadline=None)
@given(c=_strategy(SLOW_SPACE))
def test_drawn_compositions_are_well_formed(c: Composition) -> None:
    assert 1 <= len(c.rows) <= fuzz.CPU_MAX_BATCH and 0 <= c.probe < len(c.rows)
    assert c.rows[c.probe].kind == "sequence" and all(0 <= r.seq < CPU_SIZES.pool for r in c.rows)
    assert c.length == 1 if c.config.step == "decode" else 2 <= c.length <= CPU_SIZES.max_length
    assert Composition.from_json(c.to_json()) == c


def test_stock_torch_compile_fails_the_property(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """Negative control, through the command line: the same harness and draws over stock torch.compile (fp32 on the
    CPU) find compositions whose bits move with the batch; the run's figures, and a failure's replay command
    reproducing it."""
    figures = tmp_path / "fuzz.json"
    code = fuzz.main(["--device", "cpu", "--examples", "4", "--models", "plain", "--steps", "decode", "--dtypes",
                      "float32", "--executors", "fx", "--backend", "inductor", "--json", str(figures)])
    out = capsys.readouterr().out
    doc = json.loads(figures.read_text())
    assert code == 1 and "compositions tried: 4" in out and f"failures: {len(doc['failures'])}" in out
    assert doc["compositions"] == 4 and doc["failures"] and doc["card"] == "CPU (Triton's interpreter)"
    assert math.isfinite(doc["seconds"]) and "time: " in out
    replay = next(line for line in out.splitlines() if "replay: " in line)
    assert "--backend inductor" in replay
    torch._dynamo.reset()
    composition = replay.split("--replay ")[1].strip("'")
    assert fuzz.main(["--device", "cpu", "--backend", "inductor", "--replay", composition]) == 1
    assert "differs from its bits at batch 1" in capsys.readouterr().out
