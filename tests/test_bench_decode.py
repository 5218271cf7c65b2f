"""``bench_decode``'s tables: each prefill length a table of its own (no GPU: a stored run's document)."""

from __future__ import annotations

from ascend_compile.tools.bench_decode import Workload, markdown

INFO = {"card": "a card", "torch": "2.13", "triton": "3.9", "cuda": "13.0", "date": "2026-12-07",
        "model": "qwen3-0.6b (28 layers)"}


def _run(kinds: list[str], buckets: tuple[int, ...] = (1, 8)) -> dict[str, object]:
    modes = ("reduce-overhead", "ascend_bi inductor")
    points = [{"kind": kind, "mode": mode, "bucket": bucket, "ms": 1.0 + bucket + (mode != modes[0]),
               "first_call_s": 1.0, "first_call_mib": 0.0} for kind in kinds for mode in modes for bucket in buckets]
    return {"info": INFO, "bandwidth": 3e12, "floors": {}, "points": points,
            "tokens": {kind: int(kind.split()[-1]) if kind != "prefill" else 512 for kind in kinds},
            "invariant": {f"{kind} {mode}": mode != modes[0] for kind in kinds for mode in modes}}


def test_each_prefill_length_has_its_own_table_with_its_ratio() -> None:
    """Two lengths, two tables; the ratio to reduce-overhead is taken within a length (bs 1: 3/2, bs 8: 10/9)."""
    assert Workload("decode", 512).label == "decode" and Workload("prefill", 2048).label == "prefill 2048"
    text = markdown(_run(["prefill 512", "prefill 2048"]))
    assert "Prefill of 512 tokens per sequence" in text and "Prefill of 2048 tokens per sequence" in text
    assert text.count("the last position's logits") == 2
    assert text.count("- ascend_bi inductor: 1.29× reduce-overhead's time") == 2


def test_runs_stored_before_prefill_lengths_still_render() -> None:
    """A run that labelled its one prefill ``prefill`` computed every position's logits, and says so."""
    text = markdown(_run(["prefill"]))
    assert "Prefill of 512 tokens per sequence" in text and "every position's logits" in text


def test_one_batch_claims_no_equality_across_batches() -> None:
    """With one batch there is nothing to compare: the column says so instead of a vacuous yes."""
    one, two = markdown(_run(["prefill 8192"], buckets=(1,))), markdown(_run(["prefill 8192"]))
    assert one.count("— (one batch)") == 2 and "| yes |" not in one
    assert "| no |" in two and "| yes |" in two
