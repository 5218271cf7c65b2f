"""Finding a tensor by its distance in memory from another.

A launch that serves several tensors of one kind (the weights of a matmul group, the two inputs of
a norm pair) takes the first as its pointer and the others as offsets from it, so nothing is
concatenated or copied.
"""

from __future__ import annotations

import torch


def element_distance(first: torch.Tensor, second: torch.Tensor) -> int:
    """Elements of ``first``'s dtype from ``first``'s data to ``second``'s."""
    gap = second.data_ptr() - first.data_ptr()
    if gap % first.element_size():
        raise ValueError(f"ascend_bi: two {first.dtype} tensors one launch addresses from the first are not a whole "
                         "number of elements apart")
    return gap // first.element_size()
