"""``ascend_bi::`` reduction ops: sum/mean, var_mean, logsumexp, softmax/log_softmax, layer_norm, cumsum,
rms_norm, add_rms_norm, rms_norm_sandwich and rms_norm_pair.

Each op computes what its aten counterpart computes, with the summation order fixed by a row
plan.  Every output is contiguous, in the real and the fake impl alike, so Inductor's layout for
the op's result is the layout it gets.  Fake impls take shapes and dtypes from aten's own meta
functions.
"""

from __future__ import annotations

import torch

from ascend_compile.kernels.norms import bi_layer_norm
from ascend_compile.kernels.reduce import bi_sum, bi_var_mean
from ascend_compile.kernels.rms_norm import NormForm, bi_rms_norm, bi_rms_norm_pair, bi_rms_norm_sandwich
from ascend_compile.kernels.scan import bi_cumsum
from ascend_compile.kernels.softmax import bi_logsumexp, bi_softmax
from ascend_compile.ops.library import bi_op

aten = torch.ops.aten


def _like(ref: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return x.new_empty(ref.shape, dtype=ref.dtype)


@bi_op("sum")
def sum_(x: torch.Tensor, dims: list[int], keepdim: bool, dtype: torch.dtype | None, mean: bool) -> torch.Tensor:
    """``aten.sum.dim_IntList`` (``mean=False``) or ``aten.mean.dim`` (``mean=True``)."""
    return bi_sum(x, dims, keepdim, dtype, mean=mean).contiguous()


@sum_.register_fake
def _(x: torch.Tensor, dims: list[int], keepdim: bool, dtype: torch.dtype | None, mean: bool) -> torch.Tensor:
    reduce = aten.mean.dim if mean else aten.sum.dim_IntList
    return _like(reduce(x, dims, keepdim, dtype=dtype), x)


@bi_op("var_mean")
def var_mean(x: torch.Tensor, dims: list[int], correction: float, keepdim: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``aten.var_mean.correction``; ``var``/``std`` are this op's first output (square-rooted)."""
    var, mean = bi_var_mean(x, dims, correction, keepdim)
    return var.contiguous(), mean.contiguous()


@var_mean.register_fake
def _(x: torch.Tensor, dims: list[int], correction: float, keepdim: bool) -> tuple[torch.Tensor, torch.Tensor]:
    var, mean = aten.var_mean.correction(x, dims, correction=correction, keepdim=keepdim)
    return _like(var, x), _like(mean, x)


@bi_op("logsumexp")
def logsumexp(x: torch.Tensor, dims: list[int], keepdim: bool) -> torch.Tensor:
    return bi_logsumexp(x, dims, keepdim).contiguous()


@logsumexp.register_fake
def _(x: torch.Tensor, dims: list[int], keepdim: bool) -> torch.Tensor:
    return _like(aten.logsumexp.default(x, dims, keepdim), x)


@bi_op("softmax")
def softmax(x: torch.Tensor, dim: int, log: bool) -> torch.Tensor:
    """``aten._softmax`` (``log=False``) or ``aten._log_softmax`` (``log=True``)."""
    return bi_softmax(x, dim, log=log).contiguous()


@softmax.register_fake
def _(x: torch.Tensor, dim: int, log: bool) -> torch.Tensor:
    return x.new_empty(x.shape)


@bi_op("layer_norm")
def layer_norm(x: torch.Tensor, normalized_shape: list[int], weight: torch.Tensor | None,
               bias: torch.Tensor | None, eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``aten.native_layer_norm``: (output, mean, rstd), statistics in fp32 (as aten's meta says)."""
    out, mean, rstd = bi_layer_norm(x, normalized_shape, weight, bias, eps)
    return out.contiguous(), mean, rstd


@layer_norm.register_fake
def _(x: torch.Tensor, normalized_shape: list[int], weight: torch.Tensor | None,
      bias: torch.Tensor | None, eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    out, mean, rstd = aten.native_layer_norm.default(x, normalized_shape, weight, bias, eps)
    # The statistics are fp32 whatever the input dtype, as the real impl returns them; aten's own CPU
    # kernel (so its fake on CPU tensors) gives 16-bit inputs 16-bit statistics.
    return _like(out, x), x.new_empty(mean.shape, dtype=torch.float32), x.new_empty(rstd.shape, dtype=torch.float32)


@bi_op("cumsum")
def cumsum(x: torch.Tensor, dim: int, dtype: torch.dtype | None) -> torch.Tensor:
    return bi_cumsum(x, dim, dtype).contiguous()


@cumsum.register_fake
def _(x: torch.Tensor, dim: int, dtype: torch.dtype | None) -> torch.Tensor:
    return _like(aten.cumsum.default(x, dim, dtype=dtype), x)


@bi_op("rms_norm")
def rms_norm(x: torch.Tensor, weight: torch.Tensor | None, eps: float,
             eps_tensor: torch.Tensor | None = None, form: int = 0) -> torch.Tensor:
    """RMSNorm over the last dim, ``weight * (h * rsqrt(mean(h**2) + eps)).to(x.dtype)`` with ``h = x.float()``,
    rounded as the ``NormForm`` flags ``form`` say (none: transformers' Llama/Qwen form).  ``eps_tensor``, a
    CPU scalar, replaces ``eps`` when Dynamo made the epsilon a graph input (``dynamic=True`` lifts float
    attributes)."""
    return bi_rms_norm(x, None, weight, eps_value(eps, eps_tensor), NormForm(form))[0]


@rms_norm.register_fake
def _(x: torch.Tensor, weight: torch.Tensor | None, eps: float, eps_tensor: torch.Tensor | None = None,
      form: int = 0) -> torch.Tensor:
    return x.new_empty(x.shape)


@bi_op("add_rms_norm")
def add_rms_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor | None, eps: float,
                 eps_tensor: torch.Tensor | None = None, form: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(rms_norm(x + residual), x + residual)``: the residual add and the norm after it, one launch; the sum
    has the residual's dtype (an fp32 residual stream under ``NormForm.FP32_RESIDUAL``)."""
    out, total = bi_rms_norm(x, residual, weight, eps_value(eps, eps_tensor), NormForm(form))
    return out, total


@add_rms_norm.register_fake
def _(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor | None, eps: float,
      eps_tensor: torch.Tensor | None = None, form: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    return x.new_empty(x.shape), x.new_empty(x.shape, dtype=residual.dtype)


@bi_op("rms_norm_sandwich")
def rms_norm_sandwich(x: torch.Tensor, pre_x: torch.Tensor, pre_weight: torch.Tensor, pre_eps: float,
                      pre_eps_tensor: torch.Tensor | None, pre_form: int, weight: torch.Tensor | None, eps: float,
                      eps_tensor: torch.Tensor | None = None, form: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``add_rms_norm(x, rms_norm(pre_x, pre_weight, pre_eps, pre_eps_tensor, pre_form), weight, eps, eps_tensor,
    form)`` in one launch (``fuse_sandwich_norms`` inserts it): the first norm's output is never stored."""
    return bi_rms_norm_sandwich(x, pre_x, pre_weight, eps_value(pre_eps, pre_eps_tensor), NormForm(pre_form),
                                weight, eps_value(eps, eps_tensor), NormForm(form))


@rms_norm_sandwich.register_fake
def _(x: torch.Tensor, pre_x: torch.Tensor, pre_weight: torch.Tensor, pre_eps: float,
      pre_eps_tensor: torch.Tensor | None, pre_form: int, weight: torch.Tensor | None, eps: float,
      eps_tensor: torch.Tensor | None = None, form: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    return x.new_empty(x.shape), x.new_empty(x.shape)


@bi_op("rms_norm_pair")
def rms_norm_pair(xs: list[torch.Tensor], weights: list[torch.Tensor], eps: list[float],
                  eps_tensors: list[torch.Tensor | None], form: int = 0) -> list[torch.Tensor]:
    """``[rms_norm(x, w, e, form=form) for x, w, e in zip(xs, weights, eps)]`` for two inputs in one launch
    (a layer's query and key norms); ``eps_tensors`` as ``rms_norm``'s ``eps_tensor``, one per input."""
    return bi_rms_norm_pair(xs, weights, [eps_value(e, t) for e, t in zip(eps, eps_tensors, strict=True)],
                            NormForm(form))


@rms_norm_pair.register_fake
def _(xs: list[torch.Tensor], weights: list[torch.Tensor], eps: list[float],
      eps_tensors: list[torch.Tensor | None], form: int = 0) -> list[torch.Tensor]:
    return [x.new_empty(x.shape) for x in xs]


def eps_value(eps: float, eps_tensor: torch.Tensor | None) -> float:
    """``eps``, or the lifted epsilon tensor's value when Dynamo made it a graph input."""
    return float(eps_tensor) if eps_tensor is not None else eps
