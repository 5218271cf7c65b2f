"""``ascend-bi demo``: does a request get the same bits whatever batch it runs in?

Compiles the built-in decoder with stock ``torch.compile`` and with ``ascend_bi``, runs one
probe sequence alone and then inside batches of random companion sequences (at a random row),
and compares the probe's logits bit for bit.  Each step feeds one token per sequence, so every
matmul runs at M = batch size -- the shapes of a decode step, where stock kernels change their
summation order with the batch.
"""

from __future__ import annotations

import logging
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch

logger = logging.getLogger(__name__)

DEFAULT_BATCH_SIZES = (2, 3, 8, 16, 32)


@dataclass(frozen=True)
class DemoRow:
    mode: str
    batch: int
    bitwise_equal: bool
    max_abs_diff: float
    ms_per_step: float


def _modes(model: torch.nn.Module) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    import ascend_compile

    def eager_bi(tokens: torch.Tensor) -> torch.Tensor:
        with ascend_compile.eager_mode(tokens.device):
            return model(tokens)

    return {
        "eager": model,
        "torch.compile": torch.compile(model, dynamic=True),
        "ascend_bi eager_mode": eager_bi,
        "ascend_bi": torch.compile(model, backend="ascend_bi", dynamic=True),
    }


def _time_ms(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(1e3 * (time.perf_counter() - start))
    return statistics.median(times)


def run_demo(device: str = "cpu", dtype: torch.dtype = torch.float32,
             batch_sizes: tuple[int, ...] = DEFAULT_BATCH_SIZES, repeats: int = 3, seed: int = 0,
             progress: Callable[[str], None] = lambda _: None) -> list[DemoRow]:
    from ascend_compile.tools.models import tiny_decoder

    model = tiny_decoder(device, dtype, seed)
    gen = torch.Generator().manual_seed(seed + 1)
    rng = random.Random(seed)
    vocab = model.cfg.vocab
    probe = torch.randint(0, vocab, (1, 1), generator=gen).to(device)
    batches = []
    for bs in batch_sizes:
        tokens = torch.randint(0, vocab, (bs, 1), generator=gen).to(device)
        row = rng.randrange(bs)
        tokens[row] = probe[0]
        batches.append((bs, row, tokens))
    rows = []
    with torch.no_grad():
        for mode, fn in _modes(model).items():
            progress(f"{mode}: batch 1 (reference)")
            alone = fn(probe)[0, -1].clone()
            for bs, row, tokens in batches:
                progress(f"{mode}: batch {bs}")
                logits = fn(tokens)[row, -1]
                ms = _time_ms(lambda fn=fn, tokens=tokens: fn(tokens), torch.device(device), repeats)
                rows.append(DemoRow(mode, bs, torch.equal(logits, alone),
                                    (logits.double() - alone.double()).abs().max().item(), ms))
    return rows


def format_table(rows: list[DemoRow]) -> str:
    header = f"{'mode':<22} {'batch':>5}  {'bitwise equal':<13}  {'max |diff|':>10}  {'ms/step':>9}"
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(f"{r.mode:<22} {r.batch:>5}  {'yes' if r.bitwise_equal else 'NO':<13}  "
                     f"{r.max_abs_diff:>10.2e}  {r.ms_per_step:>9.1f}")
    return "\n".join(lines)


def as_json(rows: list[DemoRow]) -> list[dict[str, object]]:
    return [asdict(r) for r in rows]
