"""Tiny transformers models built from configs with random weights (no downloads)."""

from __future__ import annotations

import torch

#: One decoder layer: every op kind and the KV cache are there, and a second layer repeats the same
#: code paths at twice the compile time and Triton-interpreter time.
LAYERS = 1
#: model name -> (config class name, model class name, extra config fields)
MODELS: dict[str, tuple[str, str, dict[str, object]]] = {
    # Query heads 128 wide in all: the query and key projections share a launch, so do their norms.
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", {"head_dim": 32}),
    "llama": ("LlamaConfig", "LlamaForCausalLM", {}),
    "mistral": ("MistralConfig", "MistralForCausalLM", {"sliding_window": None}),
    "gemma3": ("Gemma3TextConfig", "Gemma3ForCausalLM", {"head_dim": 16, "sliding_window": 64}),
    "gpt2": ("GPT2Config", "GPT2LMHeadModel", {"n_embd": 64, "n_layer": LAYERS, "n_head": 4, "n_positions": 64}),
    "phi3": ("Phi3Config", "Phi3ForCausalLM", {"pad_token_id": 0}),
}
VOCAB = 512


def tiny_model(name: str, attn_implementation: str = "eager", dtype: torch.dtype = torch.float32,
               layers: int = LAYERS) -> torch.nn.Module:
    import transformers

    config_name, model_name, extra = MODELS[name]
    fields: dict[str, object] = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                                     num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    fields.update(extra)
    config = getattr(transformers, config_name)(**fields)
    config._attn_implementation = attn_implementation
    torch.manual_seed(0)
    model = getattr(transformers, model_name)(config)
    return model.to(dtype).eval()


def qwen3_0_6b(num_hidden_layers: int = 28, attn_implementation: str = "eager",
               device: str = "cuda", dtype: torch.dtype = torch.bfloat16) -> torch.nn.Module:
    """Qwen3 with the Qwen3-0.6B configuration (fewer layers when asked), random weights."""
    from ascend_compile.tools.models import qwen3_0_6b as build

    return build(num_hidden_layers, attn_implementation, device, dtype)
