"""What the benchmark compares: the methods, the model presets, the batch geometry, and how a trainer is built.

The methods are names of the project's one registry, `disco_trl.demo.methods` (the demo, `compare` and `study` use
it too). Generation is replaced by fixed completions (a deterministic function of the prompt and of the sample
index), so all trainers see identical tokens and no sampling noise; the reward is a fixed function of the completion
tokens.
"""

from __future__ import annotations

import argparse
import random
import zlib
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoTokenizer, PrinterCallback, Qwen2Config, Qwen2ForCausalLM
from trl import GRPOTrainer

from disco_trl import DiscoTrainer
from disco_trl.demo.methods import METHODS, build_config
from disco_trl.toy import build_tokenizer


BASELINE = "trl-default"  # every ratio is to this method: GRPOTrainer as it comes (TRL's default loss, beta 0)
REF_KL_METHOD = "trl-default-ref-kl"  # its beta is the command line's --ref-beta
SWEEP_METHODS = ("trl-default", "disco", "disco-lratio")

# Model shapes built locally with random weights (Qwen2 architecture). "qwen2.5-0.5b-shape" has the dimensions of
# Qwen2.5-0.5B (including its 151,936-row vocabulary, which dominates the LM-head cost) and is meant for a GPU.
MODEL_PRESETS: dict[str, dict[str, int]] = {
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                 intermediate_size=128, vocab_size=0),
    "cpu-small": dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      intermediate_size=384, vocab_size=2048),
    "qwen2.5-0.5b-shape": dict(hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                               intermediate_size=4864, vocab_size=151936),
}


@dataclass
class Workload:
    """The benchmark's fixed workload: how many fixed completions of which length a timed step trains on (not a run's
    batch settings, which are `disco_trl.geometry.BatchGeometry`)."""

    num_generations: int  # completions per question (G)
    questions_per_microbatch: int  # Q; per_device_train_batch_size = Q * G
    completion_length: int  # T, every fixed completion has exactly this many tokens
    grad_accum: int  # micro-batches per optimizer step
    micro_batch: int | None = None  # sequences per micro-batch when a group spans micro-batches (then Q is unused)

    @property
    def batch_size(self) -> int:
        return self.micro_batch or self.num_generations * self.questions_per_microbatch


# ---------------------------------------------------------------------------------------------------------- data
_COMPLETION_CACHE: dict[tuple, list[int]] = {}


def fixed_completion(prompt_ids: tuple[int, ...], index: int, length: int, vocab: int, banned: frozenset[int],
                     seed: int) -> list[int]:
    """A deterministic pseudo-random completion of exactly `length` tokens, without EOS/PAD/special tokens."""
    key = (prompt_ids, index, length, vocab, seed)
    cached = _COMPLETION_CACHE.get(key)
    if cached is None:
        state = zlib.crc32(repr(key).encode())
        generator = torch.Generator().manual_seed(state)
        ids = torch.randint(0, vocab, (length,), generator=generator).tolist()
        replacement = next(t for t in range(vocab) if t not in banned)
        cached = [t if t not in banned else replacement for t in ids]
        _COMPLETION_CACHE[key] = cached
    return cached


def bench_reward(completion_ids, **kwargs) -> list[float]:
    """Deterministic binary reward on the completion tokens: about 30% positives (imbalanced, as in the paper)."""
    return [1.0 if (zlib.crc32(bytes(str(ids[:16]), "ascii")) % 10) < 3 else 0.0 for ids in completion_ids]


def build_prompts(tokenizer, n: int, prompt_tokens: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    prompts = []
    for i in range(n):
        a, b, c, d = (rng.randint(2, 99) for _ in range(4))
        text = f"Question {i}: what is {a} + {b} * {c} - {d}?"
        filler = " Think step by step."
        while len(tokenizer(text)["input_ids"]) < prompt_tokens:
            text += filler
        prompts.append(text)
    return prompts


def make_model_dir(args: argparse.Namespace, preset: str, max_positions: int, workdir: Path):
    """Save a locally built random-weight model and its tokenizer; return (path, tokenizer, description)."""
    if args.model is not None:
        tokenizer = AutoTokenizer.from_pretrained(args.model)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        return args.model, tokenizer, f"{args.model} (pretrained weights)"

    tokenizer = build_tokenizer()
    dims = dict(MODEL_PRESETS[preset])
    vocab_size = max(dims.pop("vocab_size"), len(tokenizer))
    config = Qwen2Config(
        vocab_size=vocab_size, max_position_embeddings=max_positions, tie_word_embeddings=True, bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **dims,
    )
    with torch.random.fork_rng():
        torch.manual_seed(args.seed)
        model = Qwen2ForCausalLM(config)
    n_params = sum(p.numel() for p in model.parameters())
    path = workdir / f"model-{preset}"
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    del model
    desc = (f"locally built Qwen2 '{preset}' (random weights): {n_params / 1e6:.2f}M parameters, hidden "
            f"{dims['hidden_size']}, {dims['num_hidden_layers']} layers, vocab {vocab_size}")
    return str(path), tokenizer, desc


# ---------------------------------------------------------------------------------------------------------- trainers
def trainer_classes():
    """GRPOTrainer and DiscoTrainer whose generation returns fixed completions (identical tokens for all)."""

    class FixedCompletions:
        bench_completion_length: int = 0
        bench_seed: int = 0

        def _generate_single_turn(self, prompt_ids, images, multimodal_fields, num_generations,
                                  has_tool_images=False):
            tok = self.processing_class
            banned = frozenset(tok.all_special_ids) | {tok.eos_token_id, tok.pad_token_id}
            vocab = min(len(tok), self.model.config.vocab_size)
            seen: dict[tuple, int] = {}
            completions = []
            for ids in prompt_ids:
                key = tuple(ids)
                k = seen.get(key, 0)
                seen[key] = k + 1
                completion = fixed_completion(key, k, self.bench_completion_length, vocab, banned, self.bench_seed)
                self.bench_checksum = (getattr(self, "bench_checksum", 0)
                                       + zlib.crc32(bytes(str(completion), "ascii"))) % (1 << 61)
                self.bench_completions = getattr(self, "bench_completions", 0) + 1
                completions.append(list(completion))
            return completions, None

    class BenchGRPOTrainer(FixedCompletions, GRPOTrainer):
        pass

    class BenchDiscoTrainer(FixedCompletions, DiscoTrainer):
        pass

    return BenchGRPOTrainer, BenchDiscoTrainer


def build_trainer(method: str, geometry: Workload, model_path: str, tokenizer, dataset, args, max_steps: int,
                  workdir: Path, callbacks=(), reward_funcs=bench_reward, overrides=None, run_name: str | None = None):
    """A trainer for `method` (a name of the registry) with fixed completions; `overrides` are more config fields
    (a variant of the method), `run_name` names its output folder (default: the method)."""
    overrides = dict(overrides or {})
    if method == REF_KL_METHOD:
        overrides.setdefault("beta", args.ref_beta)
    common = dict(
        output_dir=str(workdir / f"out-{run_name or method}"),
        per_device_train_batch_size=geometry.batch_size,
        gradient_accumulation_steps=geometry.grad_accum,
        num_generations=geometry.num_generations,
        max_completion_length=geometry.completion_length,
        max_steps=max_steps,
        # Same optimisation settings for every method (DiscoConfig and GRPOConfig default some of them differently).
        learning_rate=1e-6,
        lr_scheduler_type="constant",
        weight_decay=0.0,
        temperature=1.0,
        max_grad_norm=1.0,
        bf16=args.bf16_enabled,
        use_cpu=args.device_resolved == "cpu",
        gradient_checkpointing=args.gradient_checkpointing == "on",
        seed=args.seed,
        data_seed=args.seed,
        logging_steps=10**9,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        log_completions=False,
        dataloader_num_workers=0,
        model_init_kwargs={"dtype": args.model_dtype} if args.model_dtype else None,
    )
    config = build_config(method, common, **overrides)
    grpo_cls, disco_cls = trainer_classes()
    trainer_cls = disco_cls if METHODS[method].trainer == "disco" else grpo_cls
    torch.manual_seed(args.seed)
    trainer = trainer_cls(model=model_path, reward_funcs=reward_funcs, args=config, train_dataset=dataset,
                          processing_class=tokenizer, callbacks=list(callbacks))
    trainer.remove_callback(PrinterCallback)  # the benchmark prints its own lines
    trainer.bench_completion_length = geometry.completion_length
    trainer.bench_seed = args.seed
    return trainer
