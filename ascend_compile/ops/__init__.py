"""``ascend_bi::*`` custom ops: what the passes insert, and what eager mode installs over aten.

Importing this package registers every op with ``torch.library`` (fake impls included, so the ops
trace under Dynamo, AOTAutograd and Inductor with dynamic shapes).
"""

from ascend_compile.ops import attention, matmul, packed_mm, reductions, rope, rope_attention  # noqa: F401  (registers the ops)
