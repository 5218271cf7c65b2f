"""FX passes of the ``ascend_bi`` backend, one per file, run in the order of ``PIPELINE``.

A pass is ``pass(gm, settings) -> int`` (the number of rewrites it made).  The pipeline runner
(``pipeline.run_pipeline``) adds dumps, the per-graph report and the facts passes read.
"""

from __future__ import annotations

from collections.abc import Callable

import torch.fx

from ascend_compile.passes.canonicalize_input_writes import canonicalize_input_writes
from ascend_compile.passes.canonicalize_masks import canonicalize_masks
from ascend_compile.passes.canonicalize_rotary import canonicalize_rotary
from ascend_compile.passes.canonicalize_splits import canonicalize_splits
from ascend_compile.passes.canonicalize_squares import canonicalize_squares
from ascend_compile.passes.fix_contiguity import fix_contiguity
from ascend_compile.passes.fuse_gated_activation import fuse_gated_activation
from ascend_compile.passes.fuse_norm_rope import fuse_norm_rope
from ascend_compile.passes.fuse_paged_attention import fuse_paged_attention
from ascend_compile.passes.fuse_rms_norm import fuse_rms_norm
from ascend_compile.passes.fuse_rope import fuse_rope
from ascend_compile.passes.fuse_rope_attention import fuse_rope_attention
from ascend_compile.passes.fuse_sandwich_norms import fuse_sandwich_norms
from ascend_compile.passes.fuse_sibling_matmuls import fuse_sibling_matmuls
from ascend_compile.passes.fuse_sibling_norms import fuse_sibling_norms
from ascend_compile.passes.rewrite_attention import rewrite_attention
from ascend_compile.passes.rewrite_eager_attention import rewrite_eager_attention
from ascend_compile.passes.rewrite_matmul import rewrite_matmul
from ascend_compile.passes.rewrite_norms import rewrite_norms
from ascend_compile.passes.rewrite_reductions import rewrite_reductions
from ascend_compile.passes.rewrite_softmax import rewrite_softmax
from ascend_compile.passes.rewrite_vllm_ops import rewrite_vllm_ops
from ascend_compile.passes.share_computed_operands import share_computed_operands
from ascend_compile.passes.split_merged_projections import split_merged_projections
from ascend_compile.passes.verify_batch_invariance import verify_batch_invariance

Pass = Callable[[torch.fx.GraphModule, "Settings"], int]  # noqa: F821

#: The passes, in the order they run.  ``verify_batch_invariance`` is always last.
PIPELINE: tuple[Pass, ...] = (
    # Canonical forms first: the same maths written differently reaches the rewrites and fusions as one graph.
    canonicalize_squares,
    canonicalize_splits,
    canonicalize_rotary,  # reads canonicalize_splits' halves
    canonicalize_masks,
    canonicalize_input_writes,
    split_merged_projections,  # reads canonicalize_splits' slices
    rewrite_eager_attention,  # before the matmul and softmax rewrites: it reads their aten ops
    rewrite_matmul,
    rewrite_vllm_ops,
    rewrite_norms,
    rewrite_softmax,
    rewrite_attention,
    fuse_paged_attention,  # reads rewrite_attention's attention over a gathered paged cache
    rewrite_reductions,
    fuse_rms_norm,  # reads rewrite_reductions' mean
    fuse_sandwich_norms,  # reads fuse_rms_norm's norms
    fix_contiguity,
    fuse_sibling_matmuls,  # after fix_contiguity: the operands it groups are final
    fuse_gated_activation,  # reads fuse_sibling_matmuls' gate/up groups
    fuse_sibling_norms,  # reads fuse_rms_norm's norms and fuse_sibling_matmuls' query/key/value groups
    fuse_norm_rope,  # reads fuse_sibling_norms' pairs
    fuse_rope,  # after fuse_norm_rope: the rotations left have no norms before them
    fuse_rope_attention,  # reads fuse_norm_rope's and fuse_rope's cache-writing rotations
    share_computed_operands,  # after every fusion: it counts the templates that read a value
    verify_batch_invariance,
)
PASS_NAMES: tuple[str, ...] = tuple(p.__name__ for p in PIPELINE)
