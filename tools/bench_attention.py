"""Check and time the batch-invariant attention template against stock SDPA on one GPU, in one run.

Qwen3-0.6B attention shapes (16 query heads, 8 key/value heads, head dim 128), bf16:

* decode: one query per sequence, batch 1..32, context 512..4096 keys; checks that every
  sequence's output equals, bitwise, the same sequence computed alone, and that it equals the
  last row of a causal prefill over the same keys (decode == prefill);
* prefill: one causal sequence of 512..4096 tokens;
* masks: a decode step over a static cache (``context + 8`` keys, ``context + 1`` written: the
  shape ``bench_decode`` runs) with the mask forms SDPA hands over -- boolean, and the additive
  masks its CPU/CUDA (-inf) and cuDNN (-65504) conversions make -- each checked to equal the keys
  cut at the written length.

Stock is ``F.scaled_dot_product_attention`` with ``enable_gqa=True`` and with the key/value heads
repeated beforehand; the faster of the two is the baseline.  Every time is a CUDA-graph replay
over enough input copies that L2 cannot hold them.

Usage: ``python -m ascend_compile.tools.bench_attention [--json PATH] [--markdown PATH]``.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import sys
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from ascend_compile.tools.benchmarking import bench_parser, card_line, finish, geomean, graph_time_us, start, versions

logger = logging.getLogger(__name__)

HEADS, KV_HEADS, HEAD_DIM = 16, 8, 128
BATCHES: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
CONTEXTS: tuple[int, ...] = (512, 1024, 2048, 4096)
_L2_FLUSH_BYTES = 256 << 20

Attention = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, bool], torch.Tensor]


def _ours(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool) -> torch.Tensor:
    return torch.ops.ascend_bi.attention(q, k, v, None, causal, None, False)


def _stock_gqa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool) -> torch.Tensor:
    return F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=True)


def _stock_repeated(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool) -> torch.Tensor:
    """SDPA on key/value heads already repeated (the repeat is not timed: see ``_prepare``)."""
    return F.scaled_dot_product_attention(q, k, v, is_causal=causal)


@dataclasses.dataclass
class Point:
    kind: str
    batch: int
    context: int
    invariant: bool
    decode_equals_prefill: bool | None
    bi_us: float
    stock_gqa_us: float
    stock_repeated_us: float

    @property
    def stock_us(self) -> float:
        return min(self.stock_gqa_us, self.stock_repeated_us)


def _randn(*shape: int, gen: torch.Generator) -> torch.Tensor:
    return torch.randn(*shape, device="cuda", dtype=torch.bfloat16, generator=gen)


def _time(fn: Attention, inputs: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], causal: bool) -> float:
    return graph_time_us([lambda fn=fn, x=x: fn(*x, causal) for x in inputs])


def _copies(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> int:
    return max(1, min(16, math.ceil(_L2_FLUSH_BYTES / (2 * (q.numel() + k.numel() + v.numel())))))


def _repeated(k: torch.Tensor) -> torch.Tensor:
    return k.repeat_interleave(HEADS // KV_HEADS, dim=1)


def decode(batch: int, context: int) -> Point:
    gen = torch.Generator(device="cuda").manual_seed(batch * 10_000 + context)
    q, k, v = _randn(batch, HEADS, 1, HEAD_DIM, gen=gen), *(_randn(batch, KV_HEADS, context, HEAD_DIM, gen=gen)
                                                            for _ in range(2))
    out = _ours(q, k, v, False)
    alone = [_ours(q[b:b + 1], k[b:b + 1], v[b:b + 1], False) for b in range(batch)]
    invariant = all(torch.equal(out[b:b + 1], alone[b]) for b in range(batch))
    prefill_q = _randn(1, HEADS, context, HEAD_DIM, gen=gen)
    prefill_q[:, :, -1:] = q[:1]
    last_row = _ours(prefill_q, k[:1], v[:1], True)[:, :, -1:]
    inputs = [(q.clone(), k.clone(), v.clone()) for _ in range(_copies(q, k, v))]
    repeated = [(x, _repeated(kk), _repeated(vv)) for x, kk, vv in inputs]
    point = Point("decode", batch, context, invariant, torch.equal(last_row, alone[0]),
                  _time(_ours, inputs, False), _time(_stock_gqa, inputs, False), 0.0)
    del inputs
    point.stock_repeated_us = _time(_stock_repeated, repeated, False)
    return point


def prefill(length: int) -> Point:
    gen = torch.Generator(device="cuda").manual_seed(length)
    q, k, v = _randn(2, HEADS, length, HEAD_DIM, gen=gen), *(_randn(2, KV_HEADS, length, HEAD_DIM, gen=gen)
                                                             for _ in range(2))
    invariant = torch.equal(_ours(q, k, v, True)[1:], _ours(q[1:], k[1:], v[1:], True))
    inputs = [(q[:1].clone(), k[:1].clone(), v[:1].clone()) for _ in range(_copies(q[:1], k[:1], v[:1]))]
    repeated = [(x, _repeated(kk), _repeated(vv)) for x, kk, vv in inputs]
    return Point("prefill", 1, length, invariant, None, _time(_ours, inputs, True),
                 _time(_stock_gqa, inputs, True), _time(_stock_repeated, repeated, True))


@dataclasses.dataclass
class MaskPoint:
    batch: int
    keys: int
    form: str
    #: The result equals attention over the written keys alone (None: this form is that reference).
    equals_cut: bool | None
    bi_us: float
    kind: str = "mask"


def _mask_forms(keep: torch.Tensor) -> dict[str, tuple[torch.Tensor | None, float | None]]:
    """SDPA's mask forms for the boolean ``keep``: (mask, masked_score) per form; None: the keys
    cut at the written length instead of a mask."""
    return {
        "none (keys cut)": (None, None),
        "boolean": (keep, None),
        "additive -inf": (torch.where(keep, 0.0, float("-inf")).to(torch.bfloat16), None),
        "additive -65504 (cuDNN)": (torch.where(keep, 0.0, -65504.0).to(torch.bfloat16), None),
        "boolean, masked score -65536": (keep, -65536.0),
    }


def _masked(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, written: int, mask: torch.Tensor | None,
            score: float | None) -> torch.Tensor:
    if mask is None:
        return _ours(q, k[:, :, :written], v[:, :, :written], False)
    return torch.ops.ascend_bi.attention(q, k, v, mask, False, None, False, None, score)


def masks(batch: int, context: int) -> list[MaskPoint]:
    gen = torch.Generator(device="cuda").manual_seed(batch * 7 + context)
    keys, written = context + 8, context + 1
    q = _randn(batch, HEADS, 1, HEAD_DIM, gen=gen)
    k, v = (_randn(batch, KV_HEADS, keys, HEAD_DIM, gen=gen) for _ in range(2))
    caches = [(k, v)] + [(k.clone(), v.clone()) for _ in range(_copies(q, k, v) - 1)]
    keep = (torch.arange(keys, device="cuda") < written).expand(batch, 1, 1, keys).contiguous()
    cut = _masked(q, k, v, written, None, None)
    points = []
    for form, (mask, score) in _mask_forms(keep).items():
        equal = None if mask is None else torch.equal(_masked(q, k, v, written, mask, score), cut)
        us = graph_time_us([functools.partial(_masked, q, kk, vv, written, mask, score) for kk, vv in caches])
        points.append(MaskPoint(batch, keys, form, equal, us))
    return points


def mask_markdown(points: list[MaskPoint]) -> str:
    lines = ["| batch | cache keys | mask | equals the keys cut | ascend_bi µs |", "|---:|---:|---|:---:|---:|"]
    lines += [f"| {p.batch} | {p.keys} | {p.form} | {_yes(p.equals_cut)} | {p.bi_us:.1f} |" for p in points]
    return "\n".join(lines)


def _yes(check: bool | None) -> str:
    return "—" if check is None else "yes" if check else "NO"


def markdown(doc: dict[str, Any]) -> str:
    """The results tables of a run's JSON document (``--json``; also how bench_report renders it):
    decode and prefill points, then the mask forms."""
    points = [Point(**p) for p in doc["points"] if p["kind"] != "mask"]
    masks = [MaskPoint(**p) for p in doc["points"] if p["kind"] == "mask"]
    lines = [
        card_line(doc["info"]),
        "",
        "| kind | batch | context | bitwise invariant | decode == prefill | ascend_bi µs | SDPA (GQA) µs "
        "| SDPA (repeated KV) µs | ascend_bi / best stock |",
        "|---|---:|---:|:---:|:---:|---:|---:|---:|---:|",
    ]
    for p in points:
        lines.append(f"| {p.kind} | {p.batch} | {p.context} | {_yes(p.invariant)} | {_yes(p.decode_equals_prefill)} "
                     f"| {p.bi_us:.1f} | {p.stock_gqa_us:.1f} | {p.stock_repeated_us:.1f} "
                     f"| {p.bi_us / p.stock_us:.2f}× |")
    for kind in ("decode", "prefill"):
        ratios = [p.bi_us / p.stock_us for p in points if p.kind == kind]
        if ratios:
            lines.append(f"\n{kind}: ascend_bi time / best stock SDPA time, geo-mean {geomean(ratios):.2f}×, "
                         f"worst {max(ratios):.2f}×.")
    return "\n".join(lines) + "\n\n" + mask_markdown(masks)


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__.splitlines()[0], BATCHES)
    parser.add_argument("--contexts", type=int, nargs="*", default=list(CONTEXTS), help="key counts")
    args = parser.parse_args(argv)
    if not start("bench_attention"):
        return 2
    import ascend_compile.ops  # noqa: F401  (registers ascend_bi::attention)

    points = []
    for context in args.contexts:
        for batch in args.rows:
            points.append(decode(batch, context))
            logger.info("%s", points[-1])
    for length in args.contexts:
        points.append(prefill(length))
        logger.info("%s", points[-1])
    mask_points = [p for batch in args.rows for p in masks(batch, args.contexts[0])]
    finish(args, versions(), [*points, *mask_points], markdown)
    return 0 if all(p.invariant and p.decode_equals_prefill is not False for p in points) \
        and all(p.equals_cut is not False for p in mask_points) else 1


if __name__ == "__main__":
    sys.exit(main())
