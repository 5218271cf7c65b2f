"""Built-in models for the demo, the CLI and the benchmarks: real decoder structure, random weights.

``TinyDecoder`` is a Llama/Qwen-style decoder-only LM written with plain torch ops (RMSNorm,
rotary embeddings, causal SDPA attention, SwiGLU MLP, tied LM head) so that it needs no
downloads and compiles on any device.  ``qwen3_0_6b`` and ``llama_3_2_1b`` are transformers'
Qwen3 and Llama with the Qwen3-0.6B and Llama-3.2-1B configurations (random weights, no downloads).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class DecoderConfig:
    vocab: int = 1024
    hidden: int = 256
    layers: int = 2
    heads: int = 4
    intermediate: int = 704
    rope_theta: float = 10000.0
    eps: float = 1e-6


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype) * self.weight


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


class Block(nn.Module):
    def __init__(self, cfg: DecoderConfig) -> None:
        super().__init__()
        self.heads = cfg.heads
        self.attn_norm = RMSNorm(cfg.hidden, cfg.eps)
        self.qkv = nn.Linear(cfg.hidden, 3 * cfg.hidden, bias=True)
        self.o = nn.Linear(cfg.hidden, cfg.hidden, bias=False)
        self.mlp_norm = RMSNorm(cfg.hidden, cfg.eps)
        self.gate_up = nn.Linear(cfg.hidden, 2 * cfg.intermediate, bias=False)
        self.down = nn.Linear(cfg.intermediate, cfg.hidden, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.attn_norm(x)).view(b, t, 3, self.heads, d // self.heads).unbind(2)
        q, k, v = (y.transpose(1, 2) for y in (q, k, v))
        q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
        attn = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.o(attn.transpose(1, 2).reshape(b, t, d))
        gate, up = self.gate_up(self.mlp_norm(x)).chunk(2, dim=-1)
        return x + self.down(F.silu(gate) * up)


class TinyDecoder(nn.Module):
    """Decoder-only LM: tokens (batch, seq) -> logits (batch, seq, vocab)."""

    def __init__(self, cfg: DecoderConfig = DecoderConfig()) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab, cfg.hidden)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.layers))
        self.norm = RMSNorm(cfg.hidden, cfg.eps)
        head_dim = cfg.hidden // cfg.heads
        inv_freq = 1.0 / cfg.rope_theta ** (torch.arange(0, head_dim, 2).float() / head_dim)
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        for p in self.parameters():
            if p.dim() == 2:
                nn.init.normal_(p, std=1.0 / math.sqrt(p.shape[-1]))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(tokens.shape[1], device=tokens.device, dtype=torch.float32)
        angles = torch.outer(positions, self.inv_freq)
        cos = torch.cat((angles, angles), dim=-1).cos().to(self.embed.weight.dtype)
        sin = torch.cat((angles, angles), dim=-1).sin().to(self.embed.weight.dtype)
        x = self.embed(tokens)
        for block in self.blocks:
            x = block(x, cos, sin)
        return F.linear(self.norm(x), self.embed.weight)


def tiny_decoder(device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, seed: int = 0) -> TinyDecoder:
    torch.manual_seed(seed)
    return TinyDecoder().to(device=device, dtype=dtype).eval()


#: Qwen3-0.6B's configuration (transformers ``Qwen3Config`` fields).
QWEN3_0_6B: dict[str, object] = dict(
    hidden_size=1024, intermediate_size=3072, num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8,
    head_dim=128, vocab_size=151936, max_position_embeddings=40960, rms_norm_eps=1e-6, rope_theta=1_000_000.0,
    tie_word_embeddings=True, hidden_act="silu",
)


#: Llama-3.2-1B's configuration (the model family without query/key norms; default rotary angles).
LLAMA_3_2_1B: dict[str, object] = dict(
    hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
    head_dim=64, vocab_size=128256, max_position_embeddings=131072, rms_norm_eps=1e-5, rope_theta=500_000.0,
    tie_word_embeddings=True, hidden_act="silu",
)


def qwen3_0_6b(num_hidden_layers: int | None = None, attn_implementation: str = "sdpa", device: str = "cuda",
               dtype: torch.dtype = torch.bfloat16) -> nn.Module:
    """transformers' Qwen3 with the Qwen3-0.6B configuration (fewer layers when asked), random weights."""
    return _random_weights("Qwen3", QWEN3_0_6B, num_hidden_layers, attn_implementation, device, dtype)


def llama_3_2_1b(num_hidden_layers: int | None = None, attn_implementation: str = "sdpa", device: str = "cuda",
                 dtype: torch.dtype = torch.bfloat16) -> nn.Module:
    """transformers' Llama with the Llama-3.2-1B configuration (fewer layers when asked), random weights."""
    return _random_weights("Llama", LLAMA_3_2_1B, num_hidden_layers, attn_implementation, device, dtype)


def _random_weights(family: str, fields: dict[str, object], num_hidden_layers: int | None,
                    attn_implementation: str, device: str, dtype: torch.dtype) -> nn.Module:
    """transformers' ``family`` model with ``fields`` (its own layer count unless given), random weights."""
    import transformers

    config = getattr(transformers, f"{family}Config")(**{**fields, "num_hidden_layers": num_hidden_layers
                                                           or fields["num_hidden_layers"]})
    config._attn_implementation = attn_implementation
    torch.manual_seed(0)
    return getattr(transformers, f"{family}ForCausalLM")(config).to(device=device, dtype=dtype).eval()
