"""A model of a real model's shape with random weights, and a tokenizer whose vocabulary has the model's size.

Both are built locally, without any download, so that the GPU check runs on an air-gapped node:

* `QWEN25_1_5B`: the shape of Qwen2.5-1.5B (its config.json): hidden 1536, 28 layers, 12 attention heads with 2
  key/value heads (head dim 128), MLP 8960, vocabulary 151,936, tied embeddings, QKV bias. 1,543,714,304 parameters
  (1.54B, of which 1.31B outside the embedding), as the model card says.
* `word_level_tokenizer(vocab_size)`: a `tokenizers` WordLevel tokenizer whose vocabulary is the special tokens, the
  words and characters the check's prompts use, and synthetic tokens ``t0, t1, ...`` up to `vocab_size`, so the
  LM head has its real size (and cost) and every token id the model can sample decodes to text.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from tokenizers import Regex, Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM


QWEN25_1_5B: dict[str, Any] = dict(
    hidden_size=1536, num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2, intermediate_size=8960,
    vocab_size=151936, max_position_embeddings=32768, rope_theta=1_000_000.0, rms_norm_eps=1e-6,
    tie_word_embeddings=True,
)
# The same code path at a size a CPU runs in seconds (--cpu-smoke).
TINY: dict[str, Any] = dict(
    hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=128,
    vocab_size=1024, max_position_embeddings=4096, rope_theta=1_000_000.0, rms_norm_eps=1e-6,
    tie_word_embeddings=True,
)
SHAPES = {"qwen2.5-1.5b": QWEN25_1_5B, "tiny": TINY}

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "[UNK]"]
_WORDS = ("Compute what is Question Think step by the answer Put put final in boxed + - * / = ( ) { } \\ . , : ? !"
          ).split() + [str(d) for d in range(10)]


def expected_parameter_count(shape: dict[str, Any]) -> int:
    """Parameters of a Qwen2 decoder of this shape, from the architecture (not from building it)."""
    h, n_layers, vocab, inter = (shape[k] for k in ("hidden_size", "num_hidden_layers", "vocab_size",
                                                    "intermediate_size"))
    head_dim = h // shape["num_attention_heads"]
    kv = shape["num_key_value_heads"] * head_dim
    attention = (h * h + h) + 2 * (h * kv + kv) + h * h  # q (with bias), k and v (with bias), o (no bias)
    layer = attention + 3 * h * inter + 2 * h  # gate/up/down projections, two RMSNorms
    head = 0 if shape["tie_word_embeddings"] else vocab * h
    return vocab * h + n_layers * layer + h + head  # embedding, layers, final norm, untied head


def word_level_tokenizer(vocab_size: int):
    """A fast tokenizer of exactly `vocab_size` tokens, built in memory (no training corpus, no download)."""
    words = list(dict.fromkeys(SPECIALS + _WORDS))
    if vocab_size < len(words) + 1:
        raise ValueError(f"vocab_size must be > {len(words)}; got {vocab_size}.")
    vocab = {w: i for i, w in enumerate(words)}
    vocab.update({f"t{i}": len(words) + i for i in range(vocab_size - len(words))})
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.WhitespaceSplit(),
        pre_tokenizers.Split(Regex(r"[0-9]|[^\w\s]"), behavior="isolated"),
    ])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=SPECIALS[0], pad_token=SPECIALS[0],
                                   unk_token="[UNK]", additional_special_tokens=SPECIALS[1:3])
    fast.padding_side = "left"
    assert len(fast) == vocab_size, (len(fast), vocab_size)
    return fast


def qwen2_config(shape: dict[str, Any], tokenizer):
    return Qwen2Config(**shape, bos_token_id=None, eos_token_id=tokenizer.eos_token_id,
                       pad_token_id=tokenizer.pad_token_id, use_cache=True)


def build_random_model(shape: dict[str, Any], tokenizer, *, device: str = "cpu", dtype: str = "bfloat16",
                       seed: int = 0):
    """A Qwen2ForCausalLM of `shape` with random weights, created directly on `device` ('meta': no memory)."""
    config = qwen2_config(shape, tokenizer)
    torch_dtype = getattr(torch, dtype)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch_dtype)
    try:
        with torch.random.fork_rng(devices=[]), torch.device(device):
            torch.manual_seed(seed)
            model = Qwen2ForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)
    return model


def save_random_model(shape_name: str, path: Path, *, device: str, dtype: str = "bfloat16", seed: int = 0):
    """Build the model on `device`, save it and its tokenizer (save_pretrained) to `path`; return a description."""
    shape = SHAPES[shape_name]
    tokenizer = word_level_tokenizer(shape["vocab_size"])
    model = build_random_model(shape, tokenizer, device=device, dtype=dtype, seed=seed)
    n_params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    del model
    return {
        "path": str(path), "shape": shape_name, "parameters": n_params, "dtype": dtype,
        "description": f"Qwen2 of {shape_name}'s shape, random weights ({n_params / 1e6:.1f}M parameters, hidden "
        f"{shape['hidden_size']}, {shape['num_hidden_layers']} layers, vocab {shape['vocab_size']}, {dtype})",
    }
