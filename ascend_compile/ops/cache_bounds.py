"""What a cache-writing op checks before its kernel runs: the caches' device and dtype, and the write slots.

Eager ``index_copy_`` raises when a slot is past the cache's end (transformers' static cache when it is
full) or when the cache's dtype or device is not the written tensor's.  A Triton store checks none of it:
a fused cache-writing kernel given a slot past the end writes into the next head's rows or past the
allocation (seen on the CPU: a corrupted heap, then a segfault); given a cache of another dtype it
converts silently; given one on another device it writes through a pointer that is not that device's.
So the ops that write caches (``rope.py``, ``rope_attention.py``) call ``check_cache`` first, and raise
as eager does, naming the cache and its length.

Devices and dtypes are metadata, checked everywhere.  The slots are data: they are read where that costs
no wait for the device, on the CPU.  On GPUs and NPUs reading them would synchronize every layer of every
step, and cannot happen at all while a device graph is captured or replayed; there the kernels' stores
mask slots outside the cache (``kernels/rope.py``, ``kernels/rope_attention.py``): nothing is written out
of bounds, and the positions that do not fit are dropped rather than reported.
"""

from __future__ import annotations

import torch


def check_cache(op: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor,
                v_cache: torch.Tensor, index: torch.Tensor, append: bool, paged: bool = False) -> None:
    """Raise unless ``k``/``v`` (batch, length, kv heads, dim) can be written to ``k_cache``/``v_cache`` (batch, kv
    heads, slots, dim) as eager's ``index_copy_`` would write them: the same device as ``q`` (``index`` too: the
    kernel reads it), the same dtypes, and slots inside the caches -- at ``index`` (one slot per position) or,
    with ``append``, from the write position ``index`` (one element) on.  ``paged``: the caches are (blocks,
    block size, kv heads, dim) and ``index`` holds a slot per token."""
    if not q.device == k.device == v.device == k_cache.device == v_cache.device == index.device:  # every layer
        tensors = {"query": q, "key": k, "value": v, "k_cache": k_cache, "v_cache": v_cache, "slot index": index}
        raise ValueError(f"ascend_bi::{op}: the caches, the step's tensors and the slot index must be on one "
                         f"device, got {', '.join(f'{name} on {t.device}' for name, t in tensors.items())}")
    if k_cache.dtype != k.dtype or v_cache.dtype != v.dtype:
        raise ValueError(f"ascend_bi::{op}: k_cache {k_cache.dtype} and v_cache {v_cache.dtype} must have the "
                         f"dtypes of the key {k.dtype} and value {v.dtype} written to them (as index_copy_ requires)")
    check_slots(op, k_cache, index, index.numel() if paged else k.shape[1], append, paged)


def check_slots(op: str, k_cache: torch.Tensor, index: torch.Tensor, length: int, append: bool,
                paged: bool = False) -> None:
    """Raise ``IndexError`` unless the ``length`` positions go to slots inside ``k_cache`` (batch, kv heads,
    slots, dim; ``paged``: blocks, block size, kv heads, dim); nothing is read off the CPU (see the module's
    docstring)."""
    if index.device.type != "cpu" or length == 0 or index.numel() == 0:
        return
    slots = k_cache.shape[0] * k_cache.shape[1] if paged else k_cache.shape[2]
    if append:
        first = int(index.reshape(-1)[0])
        last = first + length - 1
    else:
        first, last = int(index.min()), int(index.max())
    if first < 0 or last >= slots:
        where = f"from write position {first}" if append else f"at slots {first}..{last}"
        raise IndexError(
            f"ascend_bi::{op}: {length} position(s) {where} do not fit the key/value cache: k_cache and v_cache "
            f"{tuple(k_cache.shape)} hold {slots} slots ({'blocks x block size' if paged else 'dim 2'}), slots "
            f"0..{slots - 1}; this op wrote nothing (eager index_copy_ raises here too"
            f"{'' if paged else ': the static cache is full, give it a larger max_cache_len'})")
