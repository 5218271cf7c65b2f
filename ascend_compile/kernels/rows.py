"""View any reduction as rows: the reduced dims last and flattened, one row per kept index.

Every row kernel family (sums, statistics, softmax) reduces the last dimension of a 2-D view;
this module builds that view (a copy only when the permuted dims cannot be flattened in place)
and shapes results back.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch


def normalize_dims(x: torch.Tensor, dims: Sequence[int] | None) -> list[int]:
    """Sorted, non-negative reduced dims; ``None`` or empty means every dim (aten's convention)."""
    rank = max(x.dim(), 1)
    if not dims:
        return list(range(x.dim()))
    return sorted({d % rank for d in dims})


def as_rows(x: torch.Tensor, dims: list[int]) -> tuple[torch.Tensor, list[int]]:
    """``(rows, n)`` view of ``x`` with ``dims`` reduced, and the kept sizes."""
    kept = [d for d in range(x.dim()) if d not in dims]
    kept_sizes = [x.shape[d] for d in kept]
    n = math.prod(x.shape[d] for d in dims)
    return x.permute(*kept, *dims).reshape(math.prod(kept_sizes), n), kept_sizes


def shape_result(flat: torch.Tensor, x: torch.Tensor, dims: list[int], kept_sizes: list[int],
                 keepdim: bool) -> torch.Tensor:
    """Per-row results back in the reduction's output shape."""
    out = flat.reshape(kept_sizes)
    if keepdim:
        for d in dims:
            out = out.unsqueeze(d)
    return out
