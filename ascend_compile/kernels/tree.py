"""Layout-independent sums for reduction kernels.

``tl.sum`` reduces in an order that follows the register layout the compiler picks, and that
layout can change with pointer alignment or vector width: two launches of one kernel could then
add a row's elements in different orders.  ``tree_sum`` spells the order out instead -- adjacent
pairs, then adjacent pairs of those, ... -- through ``reshape`` and ``split``, whose meaning does
not depend on the layout.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def tree_sum(x, BLOCK: tl.constexpr):
    """Sum of a 1-D block of ``BLOCK`` (a power of two, at most 65536) elements, in a fixed
    pairwise order; returns a block of one element."""
    for level in tl.static_range(1, 17):
        if (BLOCK >> level) >= 1:
            left, right = tl.split(tl.reshape(x, (BLOCK >> level, 2)))
            x = left + right
    return x


@triton.jit
def tree_sum_rows(x, ROWS: tl.constexpr, BLOCK: tl.constexpr):
    """Per-row sums of a ``(ROWS, BLOCK)`` tile, each row in ``tree_sum``'s fixed pairwise order;
    returns a block of ``ROWS`` elements."""
    for level in tl.static_range(1, 17):
        if (BLOCK >> level) >= 1:
            left, right = tl.split(tl.reshape(x, (ROWS, BLOCK >> level, 2)))
            x = left + right
    return tl.reshape(x, (ROWS,))
