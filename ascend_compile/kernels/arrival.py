"""Arrival counters: how a split launch folds its partials without a second launch.

A split schedule runs the parts of one output tile (K-chunks of a matmul) in separate programs.
Each program writes its partial to a workspace and bumps the tile's counter; the program that
arrives last reads every partial back in the plan's order, folds them, writes the tile and resets
the counter to zero.  Arrival order decides only *which* program folds, never the arithmetic, so
the bits are those of the serial schedule.  (Attention's key splits fold in a second launch
instead: on an H200 the counter and the read-back cost its decode step more than a launch.)  The
kernels that append to a cache count on one too, so that the last program advances its position
(not attention's split programs: their fold launch advances it).

One buffer per device serves every kernel: inference runs one compute stream per device, and each
launch leaves all its counters at zero.  The last program resets a counter with a relaxed exchange:
only a later launch reads it again, and the kernel boundary orders the two (an acquire-release
exchange made the program's output stores complete first; docs/decisions/0002-split-k-arrival-counter.md).
"""

from __future__ import annotations

import torch

#: Counters per device; a split launch needs one per output tile (schedules split only when tiles
#: are fewer than compute units, so far fewer than this).
COUNTERS_PER_DEVICE = 1 << 16

_counters: dict[torch.device, torch.Tensor] = {}


def arrival_counters(device: torch.device) -> torch.Tensor:
    """The device's zeroed int32 counters (allocated on first use)."""
    counters = _counters.get(device)
    if counters is None:
        counters = torch.zeros(COUNTERS_PER_DEVICE, dtype=torch.int32, device=device)
        _counters[device] = counters
    return counters
