"""The benchmark zoo: one decoder's maths written the ways real code writes it, random weights, no downloads.

A speed-up counts when it holds on models written differently, so the zoo holds the same decoder
(Qwen3-like: grouped-query attention, query/key RMSNorms, rotary embeddings, a SiLU-gated MLP, a
tied head) written as

- ``plain``: a hand-written ``nn.Module`` -- RMSNorm written out with ``x * x``, separate
  projections, rotary by ``torch.cat``, a KV cache grown with ``torch.cat``,
  ``F.scaled_dot_product_attention(..., enable_gqa=True)``;
- ``vllm``: as vLLM writes its layers -- flattened tokens, one ``qkv_proj`` split in three, one
  ``gate_up_proj`` halved by ``SiluAndMul``, RMSNorm adding the residual in float32 and returning
  ``(out, residual)``, rotary by ``index_select`` on a ``cos_sin_cache`` by ``positions``
  (``RotaryEmbedding.forward_static``, neox or GPT-J), keys and values written into a paged cache
  by ``slot_mapping`` and attention over it by block table (a step as vLLM runs it with attention
  in the graph), the caches at fixed addresses (``mark_static_address``) as vLLM allocates them once;
- transformers' ``Qwen3``, ``Llama``, ``Gemma3`` and ``Phi3`` with a static cache.

Every entry builds a model once and its decode step -- ``step(*inputs(batch))`` returns the logits
of the new token, ``(batch, vocab)`` -- whose sequence ``i`` has the same token and cache in every
batch, so sequence 0's logits must have the same bits at every batch size.  The maths of ``plain`` and
``vllm`` are checked against transformers and vLLM themselves in ``tests/tools/test_zoo.py``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class ZooConfig:
    """One decoder's sizes (defaults: Qwen3-0.6B's)."""

    vocab: int = 151936
    hidden: int = 1024
    layers: int = 28
    heads: int = 16
    kv_heads: int = 8
    head_dim: int = 128
    intermediate: int = 3072
    eps: float = 1e-6
    rope_theta: float = 1_000_000.0
    #: Keys and values a sequence can hold (the static cache's length, the paged cache's blocks).
    max_context: int = 1024
    block_size: int = 16

    @property
    def q_size(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.kv_heads * self.head_dim


#: Small enough for Triton's interpreter on a CPU (tests, ``bench_zoo --structure``).
TINY = ZooConfig(vocab=512, hidden=128, layers=2, heads=4, kv_heads=2, head_dim=32, intermediate=256, max_context=64)


@dataclass
class ZooModel:
    """A model's decode step: ``step(*inputs(batch))`` -> logits ``(batch, vocab)``."""

    step: Callable[..., torch.Tensor]
    #: The module whose weights the step runs.
    module: nn.Module
    #: The step's inputs for ``batch`` sequences, each with the zoo's cached context.
    inputs: Callable[[int], tuple[Any, ...]]
    #: Weight and cache bytes one step must read at a batch size (for the HBM floor).
    bytes_read: Callable[[int], int]
    layers: int


def _generator(device: torch.device | str, seed: int) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def _sequence_rows(shape: tuple[int, ...], batch: int, seed: int, device: torch.device | str,
                   dtype: torch.dtype) -> torch.Tensor:
    """``batch`` rows of random values where row ``i`` is the same whatever ``batch`` is."""
    return torch.stack([torch.randn(shape, generator=_generator(device, seed * 1_000_003 + i), device=device,
                                    dtype=torch.float32).to(dtype) for i in range(batch)])


def _tokens(batch: int, vocab: int, device: torch.device | str) -> torch.Tensor:
    return torch.tensor([(7919 * i + 13) % vocab for i in range(batch)], device=device)


def _init_(module: nn.Module, seed: int) -> None:
    """Random weights, scaled so that activations stay O(1) through many layers; norms start near 1."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("norm.weight") or name.endswith("norm.weight_offset"):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(p.shape[-1]))


def rope_angles(cfg: ZooConfig, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of every position's angles, (len(positions), head_dim // 2), in float32."""
    inv_freq = 1.0 / cfg.rope_theta ** (torch.arange(0, cfg.head_dim, 2, device=positions.device).float()
                                        / cfg.head_dim)
    angles = positions.float()[:, None] * inv_freq[None, :]
    return angles.cos(), angles.sin()


# --- plain: a hand-written nn.Module ---------------------------------------------------------------------------


class PlainRMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        x32 = x32 * torch.rsqrt((x32 * x32).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


class PlainLayer(nn.Module):
    def __init__(self, cfg: ZooConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.input_norm = PlainRMSNorm(cfg.hidden, cfg.eps)
        self.q = nn.Linear(cfg.hidden, cfg.q_size, bias=False)
        self.k = nn.Linear(cfg.hidden, cfg.kv_size, bias=False)
        self.v = nn.Linear(cfg.hidden, cfg.kv_size, bias=False)
        self.q_norm = PlainRMSNorm(cfg.head_dim, cfg.eps)
        self.k_norm = PlainRMSNorm(cfg.head_dim, cfg.eps)
        self.o = nn.Linear(cfg.q_size, cfg.hidden, bias=False)
        self.mlp_norm = PlainRMSNorm(cfg.hidden, cfg.eps)
        self.gate = nn.Linear(cfg.hidden, cfg.intermediate, bias=False)
        self.up = nn.Linear(cfg.hidden, cfg.intermediate, bias=False)
        self.down = nn.Linear(cfg.intermediate, cfg.hidden, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, past_k: torch.Tensor,
                past_v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b, t, _ = x.shape
        cfg = self.cfg
        h = self.input_norm(x)
        q = self.q_norm(self.q(h).view(b, t, cfg.heads, cfg.head_dim)).transpose(1, 2)
        k = self.k_norm(self.k(h).view(b, t, cfg.kv_heads, cfg.head_dim)).transpose(1, 2)
        v = self.v(h).view(b, t, cfg.kv_heads, cfg.head_dim).transpose(1, 2)
        q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
        k, v = torch.cat((past_k, k), dim=2), torch.cat((past_v, v), dim=2)
        attn = F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
        x = x + self.o(attn.transpose(1, 2).reshape(b, t, cfg.q_size))
        h = self.mlp_norm(x)
        return x + self.down(F.silu(self.gate(h)) * self.up(h)), k, v


class PlainDecoder(nn.Module):
    """One decode step over KV caches grown by ``torch.cat``: ``(tokens (batch, 1), position, caches)``."""

    def __init__(self, cfg: ZooConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab, cfg.hidden)
        self.layers = nn.ModuleList(PlainLayer(cfg) for _ in range(cfg.layers))
        self.norm = PlainRMSNorm(cfg.hidden, cfg.eps)

    def forward(self, tokens: torch.Tensor, position: torch.Tensor, keys: list[torch.Tensor],
                values: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        cos, sin = rope_angles(self.cfg, position)
        dtype = self.embed.weight.dtype
        cos, sin = torch.cat((cos, cos), -1).to(dtype), torch.cat((sin, sin), -1).to(dtype)
        x = self.embed(tokens)
        new_keys, new_values = [], []
        for layer, k, v in zip(self.layers, keys, values, strict=True):
            x, k, v = layer(x, cos, sin, k, v)
            new_keys.append(k)
            new_values.append(v)
        return F.linear(self.norm(x), self.embed.weight)[:, -1], new_keys, new_values


def _plain(cfg: ZooConfig, context: int, device: str, dtype: torch.dtype) -> ZooModel:
    model = PlainDecoder(cfg)
    _init_(model, 0)
    model = model.to(device=device, dtype=dtype).eval()
    shape = (cfg.kv_heads, context, cfg.head_dim)

    def inputs(batch: int) -> tuple[Any, ...]:
        keys = [_sequence_rows(shape, batch, 2 * n, device, dtype) for n in range(cfg.layers)]
        values = [_sequence_rows(shape, batch, 2 * n + 1, device, dtype) for n in range(cfg.layers)]
        return _tokens(batch, cfg.vocab, device)[:, None], torch.tensor([context], device=device), keys, values

    def step(tokens: torch.Tensor, position: torch.Tensor, keys: list[torch.Tensor],
             values: list[torch.Tensor]) -> torch.Tensor:
        return model(tokens, position, keys, values)[0]

    return ZooModel(step, model, inputs, lambda batch: _weight_bytes(model) + _kv_bytes(cfg, batch, context, dtype),
                    cfg.layers)


def _kv_bytes(cfg: ZooConfig, batch: int, context: int, dtype: torch.dtype) -> int:
    return 2 * cfg.layers * batch * context * cfg.kv_size * torch.finfo(dtype).bits // 8


# --- vllm: as vLLM writes its layers ---------------------------------------------------------------------------


class VllmRMSNorm(nn.Module):
    """vLLM's ``RMSNorm.forward_native`` (vLLM IR ``rms_norm`` / ``fused_add_rms_norm``): the residual
    is added in float32 and the norm reads that unrounded sum; returns ``(out, residual)`` with one."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.variance_epsilon = eps

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> Any:
        orig_dtype = x.dtype
        x = x.to(torch.float32)
        if residual is not None:
            x = x + residual.to(torch.float32)
            residual = x.to(orig_dtype)
        variance = x.pow(2).mean(dim=-1, keepdim=True)
        x = x * torch.rsqrt(variance + self.variance_epsilon)
        x = x.to(self.weight.dtype) * self.weight
        return x.to(orig_dtype) if residual is None else (x.to(orig_dtype), residual)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, neox: bool) -> torch.Tensor:
    """vLLM's ``ApplyRotaryEmb.forward_static``: ``x`` (tokens, heads, rotary dim), cos/sin (tokens, dim // 2)."""
    cos, sin = cos.unsqueeze(-2).to(x.dtype), sin.unsqueeze(-2).to(x.dtype)
    x1, x2 = torch.chunk(x, 2, dim=-1) if neox else (x[..., ::2], x[..., 1::2])
    o1 = x1 * cos - x2 * sin
    o2 = x2 * cos + x1 * sin
    return torch.cat((o1, o2), dim=-1) if neox else torch.stack((o1, o2), dim=-1).flatten(-2)


class VllmRotary(nn.Module):
    """vLLM's ``RotaryEmbedding.forward_static`` over a ``cos_sin_cache`` (max positions, head_dim)."""

    def __init__(self, cfg: ZooConfig, neox: bool) -> None:
        super().__init__()
        self.head_size, self.neox = cfg.head_dim, neox
        cos, sin = rope_angles(cfg, torch.arange(cfg.max_context))
        self.register_buffer("cos_sin_cache", torch.cat((cos, sin), dim=-1), persistent=False)

    def forward(self, positions: torch.Tensor, query: torch.Tensor,
                key: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cos_sin = self.cos_sin_cache.index_select(0, positions.flatten())
        cos, sin = cos_sin.chunk(2, dim=-1)
        rotated = []
        for x in (query, key):
            shape = x.shape
            x = x.view(positions.numel(), -1, self.head_size)
            rotated.append(apply_rotary(x, cos, sin, self.neox).reshape(shape))
        return rotated[0], rotated[1]


class VllmLayer(nn.Module):
    def __init__(self, cfg: ZooConfig, rotary_emb: VllmRotary) -> None:
        super().__init__()
        self.cfg = cfg
        self.input_layernorm = VllmRMSNorm(cfg.hidden, cfg.eps)
        self.qkv_proj = nn.Linear(cfg.hidden, cfg.q_size + 2 * cfg.kv_size, bias=False)
        self.q_norm = VllmRMSNorm(cfg.head_dim, cfg.eps)
        self.k_norm = VllmRMSNorm(cfg.head_dim, cfg.eps)
        self.rotary_emb = rotary_emb
        self.o_proj = nn.Linear(cfg.q_size, cfg.hidden, bias=False)
        self.post_attention_layernorm = VllmRMSNorm(cfg.hidden, cfg.eps)
        self.gate_up_proj = nn.Linear(cfg.hidden, 2 * cfg.intermediate, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate, cfg.hidden, bias=False)

    def attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_cache: torch.Tensor,
                  value_cache: torch.Tensor, slot_mapping: torch.Tensor, block_tables: torch.Tensor,
                  seq_lens: torch.Tensor) -> torch.Tensor:
        """Write the step's keys and values at their slots, then attend over each sequence's blocks."""
        cfg = self.cfg
        tokens = q.shape[0]
        key_cache.view(-1, cfg.kv_heads, cfg.head_dim).index_copy_(0, slot_mapping, k.view(tokens, cfg.kv_heads, -1))
        value_cache.view(-1, cfg.kv_heads, cfg.head_dim).index_copy_(0, slot_mapping,
                                                                     v.view(tokens, cfg.kv_heads, -1))
        keys = key_cache[block_tables].flatten(1, 2).transpose(1, 2)  # (batch, kv heads, blocks x block, dim)
        values = value_cache[block_tables].flatten(1, 2).transpose(1, 2)
        visible = torch.arange(keys.shape[2], device=q.device)[None, :] < seq_lens[:, None]
        query = q.view(tokens, 1, cfg.heads, cfg.head_dim).transpose(1, 2)
        out = F.scaled_dot_product_attention(query, keys, values, attn_mask=visible[:, None, None, :],
                                             enable_gqa=True)
        return out.transpose(1, 2).reshape(tokens, cfg.q_size)

    def forward(self, positions: torch.Tensor, hidden: torch.Tensor, residual: torch.Tensor | None,
                cache: tuple[torch.Tensor, torch.Tensor], slot_mapping: torch.Tensor, block_tables: torch.Tensor,
                seq_lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.cfg
        if residual is None:
            residual = hidden
            hidden = self.input_layernorm(hidden)
        else:
            hidden, residual = self.input_layernorm(hidden, residual)
        q, k, v = self.qkv_proj(hidden).split([cfg.q_size, cfg.kv_size, cfg.kv_size], dim=-1)
        q = self.q_norm(q.view(*q.shape[:-1], cfg.heads, cfg.head_dim)).view(q.shape)
        k = self.k_norm(k.view(*k.shape[:-1], cfg.kv_heads, cfg.head_dim)).view(k.shape)
        q, k = self.rotary_emb(positions, q, k)
        attn = self.attention(q, k, v, *cache, slot_mapping, block_tables, seq_lens)
        hidden, residual = self.post_attention_layernorm(self.o_proj(attn), residual)
        gate_up = self.gate_up_proj(hidden)
        d = gate_up.shape[-1] // 2
        return self.down_proj(F.silu(gate_up[..., :d]) * gate_up[..., d:]), residual


class VllmDecoder(nn.Module):
    """One step over flattened tokens: ``(input_ids (tokens,), positions, caches, slot_mapping, block_tables,
    seq_lens)``; each layer's cache is a (blocks, block size, kv heads, head dim) key and value pair."""

    def __init__(self, cfg: ZooConfig, neox: bool = True) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab, cfg.hidden)
        # One rotary module for every layer, as vLLM's ``get_rope`` returns the instance it cached for
        # the same sizes.
        rotary_emb = VllmRotary(cfg, neox)
        self.layers = nn.ModuleList(VllmLayer(cfg, rotary_emb) for _ in range(cfg.layers))
        self.norm = VllmRMSNorm(cfg.hidden, cfg.eps)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, caches: list[tuple[torch.Tensor, torch.Tensor]],
                slot_mapping: torch.Tensor, block_tables: torch.Tensor, seq_lens: torch.Tensor) -> torch.Tensor:
        hidden, residual = self.embed_tokens(input_ids), None
        for layer, cache in zip(self.layers, caches, strict=True):
            hidden, residual = layer(positions, hidden, residual, cache, slot_mapping, block_tables, seq_lens)
        hidden, _ = self.norm(hidden, residual)
        return F.linear(hidden, self.embed_tokens.weight)


def _vllm(cfg: ZooConfig, context: int, device: str, dtype: torch.dtype, neox: bool = True) -> ZooModel:
    model = VllmDecoder(cfg, neox)
    _init_(model, 0)
    model = model.to(device=device, dtype=dtype).eval()
    blocks_per_seq = -(-cfg.max_context // cfg.block_size)
    cache_shape = (blocks_per_seq, cfg.block_size, cfg.kv_heads, cfg.head_dim)

    def inputs(batch: int) -> tuple[Any, ...]:
        # Sequence i owns blocks [i * blocks_per_seq, (i + 1) * blocks_per_seq): the same blocks in every batch.
        block_tables = torch.arange(batch * blocks_per_seq, device=device).view(batch, blocks_per_seq)
        caches = [tuple(_sequence_rows(cache_shape, batch, 2 * n + which, device, dtype).flatten(0, 1)
                        for which in (0, 1)) for n in range(cfg.layers)]
        for cache in caches:  # allocated once and read in place, as vLLM's are (and transformers' StaticCache)
            for tensor in cache:
                torch._dynamo.mark_static_address(tensor)
        slot_mapping = block_tables[:, context // cfg.block_size] * cfg.block_size + context % cfg.block_size
        return (_tokens(batch, cfg.vocab, device), torch.full((batch,), context, device=device), caches, slot_mapping,
                block_tables, torch.full((batch,), context + 1, device=device))

    return ZooModel(model, model, inputs,
                    lambda batch: _weight_bytes(model) + _kv_bytes(cfg, batch, context + 1, dtype), cfg.layers)


# --- transformers -------------------------------------------------------------------------------------------


def transformers_config(family: str, cfg: ZooConfig) -> Any:
    """transformers' ``family`` configuration with the zoo's sizes."""
    import transformers

    fields: dict[str, Any] = dict(
        vocab_size=cfg.vocab, hidden_size=cfg.hidden, num_hidden_layers=cfg.layers, num_attention_heads=cfg.heads,
        num_key_value_heads=cfg.kv_heads, head_dim=cfg.head_dim, intermediate_size=cfg.intermediate,
        rms_norm_eps=cfg.eps, rope_theta=cfg.rope_theta, max_position_embeddings=cfg.max_context,
        tie_word_embeddings=True, hidden_act="silu",
    )
    if family == "Gemma3Text":
        # Global attention in every layer: a sliding layer's cache counts its length in a Python int, which
        # Dynamo guards on, so each step would compile anew.
        fields.update(sliding_window=cfg.max_context, hidden_activation="gelu_pytorch_tanh",
                      query_pre_attn_scalar=cfg.head_dim, layer_types=["full_attention"] * cfg.layers)
    if family == "Phi3":
        fields.update(pad_token_id=0, bos_token_id=0, eos_token_id=0)
        del fields["head_dim"]  # Phi-3 derives it from hidden size and heads
    return getattr(transformers, f"{family}Config")(**fields)


def _transformers(family: str, cfg: ZooConfig, context: int, device: str, dtype: torch.dtype) -> ZooModel:
    import transformers
    from transformers import StaticCache

    config = transformers_config(family, cfg)
    config._attn_implementation = "sdpa"
    model = getattr(transformers, f"{family.removesuffix('Text')}ForCausalLM")(config)
    _init_(model, 0)
    model = model.to(device=device, dtype=dtype).eval()

    def inputs(batch: int) -> tuple[Any, ...]:
        cache = StaticCache(config=config, max_cache_len=cfg.max_context)
        ids = _tokens(batch, cfg.vocab, device)[:, None]
        with torch.no_grad():  # lays the cache out
            model(input_ids=ids, past_key_values=cache, cache_position=torch.arange(1, device=device), use_cache=True)
        for n, layer in enumerate(cache.layers):
            for which, tensor in enumerate((layer.keys, layer.values)):
                tensor.zero_()
                tensor[:, :, :context] = _sequence_rows(tuple(tensor[0, :, :context].shape), batch, 2 * n + which,
                                                        device, dtype)
            layer.cumulative_length.fill_(context)  # the layer writes the step's key after the context
        return ids, cache, torch.tensor([context], device=device)

    def step(ids: torch.Tensor, cache: Any, position: torch.Tensor) -> torch.Tensor:
        return model(input_ids=ids, past_key_values=cache, cache_position=position, use_cache=True).logits[:, -1]

    return ZooModel(step, model, inputs, lambda batch: _weight_bytes(model) + _kv_bytes(cfg, batch, context, dtype),
                    cfg.layers)


def _weight_bytes(model: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


Builder = Callable[[ZooConfig, int, str, torch.dtype], ZooModel]

#: Zoo entry name -> model builder ``(config, context, device, dtype)``.
ZOO: dict[str, Builder] = {
    "qwen3": lambda *a: _transformers("Qwen3", *a),
    "llama": lambda *a: _transformers("Llama", *a),
    "gemma3": lambda *a: _transformers("Gemma3Text", *a),
    "phi3": lambda *a: _transformers("Phi3", *a),
    "plain": _plain,
    "vllm": _vllm,
    "vllm-gptj": lambda *a: _vllm(*a, neox=False),
}


def build(name: str, *, cfg: ZooConfig = ZooConfig(), context: int = 512, device: str = "cuda",
          dtype: torch.dtype = torch.bfloat16) -> ZooModel:
    """Zoo entry ``name``'s model, random weights, its decode step over ``context`` cached tokens."""
    if name not in ZOO:
        raise ValueError(f"unknown zoo model {name!r}; accepted: {', '.join(ZOO)}")
    if not 0 < context < cfg.max_context:
        raise ValueError(f"context {context} must be positive and below the caches' length {cfg.max_context}")
    return ZOO[name](cfg, context, device, dtype)
