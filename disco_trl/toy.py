"""Tiny, fully local models and tokenizers for tests, the CPU demo, notebooks' quick mode and benchmarks.

Nothing here touches a hub: the tokenizer is trained with the `tokenizers` library on a corpus you pass in (or a
default math alphabet), and the model is a Qwen2-style causal LM built from a config with random weights.
Real runs load real models by hub id or local path through the usual `transformers` calls; this module only exists
so that everything can be exercised offline on a 2-core machine.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM


EOS_TOKEN = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIAL_TOKENS = [EOS_TOKEN, IM_START, IM_END]

# A ChatML template (the one Qwen models use), so conversational datasets work with the toy tokenizer.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

DEFAULT_CORPUS = [
    "Compute 12 + 7 * 3 - 5. Let's think step by step and output the final answer within \\boxed{}.",
    "7 * 3 = 21. 12 + 21 = 33. 33 - 5 = 28. The answer is \\boxed{28}.",
    "0123456789 +-*/=()[]{}<>.,;:!?'\"\\^_ abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ",
    "<think> </think> user assistant system",
]


def build_tokenizer(corpus: Iterable[str] | None = None, vocab_size: int = 256) -> PreTrainedTokenizerFast:
    """Train a small byte-level BPE tokenizer on `corpus` and wrap it as a `PreTrainedTokenizerFast`.

    The tokenizer pads on the left (as TRL's GRPO-style trainers require), uses `<|endoftext|>` as both EOS and PAD,
    and carries a ChatML chat template.
    """
    corpus = list(corpus) if corpus is not None else list(DEFAULT_CORPUS)
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=EOS_TOKEN,
        pad_token=EOS_TOKEN,
        padding_side="left",
        additional_special_tokens=[IM_START, IM_END],
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_tiny_qwen2(
    tokenizer: PreTrainedTokenizerFast,
    *,
    hidden_size: int = 64,
    num_hidden_layers: int = 2,
    num_attention_heads: int = 4,
    num_key_value_heads: int = 2,
    intermediate_size: int = 128,
    max_position_embeddings: int = 512,
    seed: int = 0,
) -> Qwen2ForCausalLM:
    """A Qwen2-architecture causal LM with random weights, sized for CPU tests (about 100k parameters by default)."""

    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        num_key_value_heads=num_key_value_heads,
        intermediate_size=intermediate_size,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return instantiate(Qwen2ForCausalLM, config, tokenizer, seed)


def instantiate(model_class, config, tokenizer: PreTrainedTokenizerFast, seed: int):
    """`model_class(config)` with weights drawn from `seed` (the global RNG untouched), generating with `tokenizer`'s
    end and padding tokens."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = model_class(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model
