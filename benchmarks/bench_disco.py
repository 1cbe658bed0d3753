#!/usr/bin/env python
"""DisCO vs GRPO cost benchmark: step time, loss-only time and peak memory, side by side, in one process.

What it measures (see benchmarks/README.md and docs/performance.md):

* Trainer runs. For each method (TRL's GRPOTrainer with its default loss, with ``loss_type="grpo"``, with a
  reference-model KL ``beta>0``; DiscoTrainer with log-L and L-ratio scores, DRO objective) it builds a fresh trainer on
  the same locally saved model, data, batch geometry, completion length and seed, trains a few steps and records
  - the median wall time of an optimizer step (``on_step_begin`` -> ``on_step_end``: preparing the batch, i.e. fixed
    "generation", rewards, reference-model forward where there is one, then forward+backward of every micro-batch,
    gradient clipping and the optimizer step), after warm-up steps;
  - the loss-only time: ``trainer.compute_loss(model, inputs)`` + ``backward()`` on one fixed micro-batch prepared by
    the trainer's own ``_prepare_inputs`` (so DisCO gets its ``disco_rewards``/``disco_group_ids``, GRPO its
    advantages and, with beta>0, the reference log-probs);
  - peak memory, in tensor bytes, measured in one extra untimed step and one extra untimed loss call: on CUDA
    ``torch.cuda.max_memory_allocated``; on CPU the allocator events of ``torch.profiler`` (``profile_memory=True``),
    plus, for the step, the training state kept between steps (see `MemoryMeter`).
  Generation is replaced by fixed completions (a deterministic function of the prompt and of the sample index), so all
  trainers see identical tokens and no sampling noise; a checksum of every completion served is recorded per run.
  Methods alternate at the finest grain the Trainer allows: in each repetition every method's trainer runs its own
  ``train()`` in a thread, and a baton lets one run at a time, handing over after every optimizer step (the order
  rotates between repetitions); the loss-only calls alternate the same way. A slow phase of a shared machine therefore
  hits every method alike. Every number is reported as a ratio to the GRPO baseline of the same repetition, with min
  and max across repetitions.

* Scaling sweep. How the cost of the loss grows with completions per question, completion length and questions per
  micro-batch: the pure loss functions alone (``disco_trl.losses`` vs TRL's clipped token loss, on (B, T) log-prob
  tensors, forward+backward) and, optionally, ``compute_loss`` + backward through a small model, from which the DisCO
  overhead's share of the loss step is derived.

Run ``python benchmarks/bench_disco.py --help``. ``--quick`` is the small smoke configuration used by the tests.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Make `disco_trl` importable when the script is run from a checkout without `pip install -e .`.
_REPO_ROOT = Path(__file__).resolve().parents[1]
if str(_REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(_REPO_ROOT))

BASELINE = "grpo"

# name -> (trainer kind, config overrides, label)
METHODS: dict[str, tuple[str, dict[str, Any], str]] = {
    "grpo": ("grpo", {}, "GRPOTrainer, TRL default loss (loss_type='dapo'), beta=0"),
    "grpo_loss_grpo": ("grpo", {"loss_type": "grpo"}, "GRPOTrainer, loss_type='grpo', beta=0"),
    "grpo_ref_kl": ("grpo", {"beta": None}, "GRPOTrainer, TRL default loss + reference-model KL (beta>0)"),
    "disco_log_l": ("disco", {"score_type": "log_l", "disco_variant": "dro"}, "DiscoTrainer, log-L score, DRO"),
    "disco_l_ratio": ("disco", {"score_type": "l_ratio", "disco_variant": "dro"}, "DiscoTrainer, L-ratio score, DRO"),
}
SWEEP_METHODS = ("grpo", "disco_log_l", "disco_l_ratio")

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


# ---------------------------------------------------------------------------------------------------------- options
@dataclass
class Geometry:
    num_generations: int  # completions per question (G)
    questions_per_microbatch: int  # Q; per_device_train_batch_size = Q * G
    completion_length: int  # T, every fixed completion has exactly this many tokens
    grad_accum: int  # micro-batches per optimizer step

    @property
    def batch_size(self) -> int:
        return self.num_generations * self.questions_per_microbatch


def _int_list(text: str, name: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise SystemExit(f"error: {name} must be a comma-separated list of integers, e.g. '4,8,16'; got {text!r}.")
    if not values or any(v <= 0 for v in values):
        raise SystemExit(f"error: {name} must list positive integers; got {text!r}.")
    return values


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="bench_disco.py",
        description="Time DiscoTrainer against TRL's GRPOTrainer (steps, loss-only, peak memory) and sweep the loss "
        "cost over completions per question, completion length and questions per micro-batch.",
    )
    p.add_argument("--quick", action="store_true",
                   help="Small smoke configuration (tiny model, short completions, 2 repetitions, small sweep).")
    p.add_argument("--output-dir", default="outputs/benchmarks",
                   help="Where results.json and results.md go (default outputs/benchmarks, git-ignored).")
    p.add_argument("--reps", type=int, default=None, help="Repetitions of every method (default 10; --quick: 2).")
    p.add_argument("--steps", type=int, default=None, help="Timed optimizer steps per run (default 3; --quick: 1).")
    p.add_argument("--warmup-steps", type=int, default=None, help="Untimed steps before (default 1).")
    p.add_argument("--loss-reps", type=int, default=None,
                   help="Timed compute_loss+backward calls per run (default 3; --quick: 2), after one warm-up call.")
    p.add_argument("--methods", default=",".join(METHODS),
                   help=f"Comma-separated subset of {list(METHODS)}; must include the baseline '{BASELINE}'.")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="'auto': CUDA when available, else CPU.")
    p.add_argument("--threads", type=int, default=None,
                   help="torch intra-op threads (default: 1 on CPU, the reproducible choice on a shared machine; "
                   "unchanged on CUDA).")
    p.add_argument("--model", default=None,
                   help="A real model (hub id or local path) to benchmark instead of a locally built preset; its "
                   "tokenizer is loaded from the same place.")
    p.add_argument("--model-preset", choices=list(MODEL_PRESETS), default=None,
                   help="Locally built random-weight model (default: cpu-small; --quick: tiny).")
    p.add_argument("--num-generations", type=int, default=None, help="Completions per question G (default 8; quick 4).")
    p.add_argument("--questions-per-microbatch", type=int, default=2,
                   help="Questions per micro-batch Q (per_device_train_batch_size = Q * G).")
    p.add_argument("--grad-accum", type=int, default=None,
                   help="gradient_accumulation_steps, micro-batches per optimizer step (default 2; --quick: 1).")
    p.add_argument("--completion-length", type=int, default=None,
                   help="Tokens in every completion (default 128; --quick: 32).")
    p.add_argument("--prompt-tokens", type=int, default=64, help="Approximate prompt length in tokens.")
    p.add_argument("--ref-beta", type=float, default=0.04, help="beta of the 'grpo_ref_kl' method (> 0).")
    p.add_argument("--model-dtype", choices=["float32", "bfloat16"], default="float32",
                   help="dtype the weights are loaded in (model_init_kwargs), the same for every method.")
    p.add_argument("--bf16", choices=["auto", "on", "off"], default="auto",
                   help="Mixed precision for every method alike ('auto': on with CUDA, off on CPU).")
    p.add_argument("--gradient-checkpointing", choices=["on", "off"], default="on",
                   help="Same for every method (TRL's GRPOConfig default is on).")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-sweep", dest="sweep", action="store_false", help="Skip the scaling sweep.")
    p.add_argument("--no-sweep-model", dest="sweep_model", action="store_false",
                   help="In the sweep, time only the pure loss functions (no compute_loss through a model).")
    p.add_argument("--sweep-generations", default=None, help="G values (default 4,8,16,32,64; quick 4,8).")
    p.add_argument("--sweep-lengths", default=None, help="T values (default 128,512,2048,8192; quick 32,64).")
    p.add_argument("--sweep-questions", default=None, help="Q values (default 1,2,4,8; quick 1,2).")
    p.add_argument("--sweep-base-generations", type=int, default=8, help="G while another axis varies.")
    p.add_argument("--sweep-base-length", type=int, default=None, help="T while another axis varies (default 256).")
    p.add_argument("--sweep-reps", type=int, default=None,
                   help="Timed samples per sweep point and method (default 5; quick 2).")
    p.add_argument("--sweep-model-preset", choices=list(MODEL_PRESETS), default="tiny",
                   help="Model for the sweep's compute_loss timings.")
    p.add_argument("--sweep-max-tokens", type=int, default=None,
                   help="Skip the model part of sweep points with more completion tokens per micro-batch than this "
                   "(default: 16384 on CPU, 65536 on CUDA); the pure loss functions are timed at every point.")
    args = p.parse_args(argv)
    _fill_defaults(args)
    _validate(args)
    return args


def _fill_defaults(args: argparse.Namespace) -> None:
    quick = args.quick
    defaults = dict(
        reps=(2, 10), steps=(1, 3), warmup_steps=(1, 1), loss_reps=(2, 3), num_generations=(4, 8), grad_accum=(1, 2),
        completion_length=(32, 128), model_preset=("tiny", "cpu-small"), sweep_generations=("2,4", "4,8,16,32,64"),
        sweep_lengths=("16,32", "128,512,2048,8192"), sweep_questions=("1,2", "1,2,4,8"), sweep_base_length=(16, 256),
        sweep_reps=(2, 5),
    )
    for name, (q, full) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, q if quick else full)
    if quick:
        args.sweep_base_generations = min(args.sweep_base_generations, 2)
        args.prompt_tokens = min(args.prompt_tokens, 24)


def _validate(args: argparse.Namespace) -> None:
    def fail(msg: str):
        raise SystemExit(f"error: {msg}")

    for name in ("reps", "steps", "loss_reps", "questions_per_microbatch", "grad_accum", "completion_length",
                 "prompt_tokens", "sweep_base_generations", "sweep_base_length", "sweep_reps"):
        if getattr(args, name) < 1:
            fail(f"--{name.replace('_', '-')} must be >= 1; got {getattr(args, name)}.")
    if args.warmup_steps < 0:
        fail(f"--warmup-steps must be >= 0; got {args.warmup_steps}.")
    if args.num_generations < 2:
        fail(f"--num-generations must be >= 2 (DisCO compares a question's completions); got {args.num_generations}.")
    if args.threads is not None and args.threads < 1:
        fail(f"--threads must be >= 1; got {args.threads}.")
    if not args.ref_beta > 0:
        fail(f"--ref-beta must be > 0 (it is the reference-model KL weight of 'grpo_ref_kl'); got {args.ref_beta}.")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        fail(f"--methods has unknown name(s) {unknown}; choose from {list(METHODS)}.")
    if BASELINE not in methods:
        fail(f"--methods must include the baseline '{BASELINE}' (every ratio is taken against it).")
    args.methods = list(dict.fromkeys(methods))
    args.sweep_generations = _int_list(args.sweep_generations, "--sweep-generations")
    args.sweep_lengths = _int_list(args.sweep_lengths, "--sweep-lengths")
    args.sweep_questions = _int_list(args.sweep_questions, "--sweep-questions")
    if min(args.sweep_generations) < 2:
        fail("--sweep-generations values must be >= 2.")
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            fail("--device cuda was asked for but torch.cuda.is_available() is False; use --device cpu or auto.")


# ---------------------------------------------------------------------------------------------------------- memory
class MemoryMeter:
    """Peak memory of a pass, as bytes of tensors (not process RSS, which the CPU allocator's caching makes noisy).

    * CUDA: ``torch.cuda.max_memory_allocated()`` during the pass minus ``memory_allocated()`` at its start.
    * CPU: the allocator events recorded by ``torch.profiler`` with ``profile_memory=True``; the peak of their running
      sum (bytes allocated minus bytes freed during the pass). Frees of blocks allocated before the pass are not
      reported by the profiler, so this is the peak of the memory the pass allocates, never below the true peak.

    Memory is measured in dedicated untimed passes, so the profiler never runs while steps are timed.
    """

    def __init__(self, device: str):
        import torch

        self.torch = torch
        self.device = device
        state = ("; the step adds the bytes of the training state alive at its start (policy and reference-model "
                 "parameters and buffers, optimizer state)")
        if device == "cuda":
            self.method = "torch.cuda.max_memory_allocated during the pass minus memory_allocated at its start" + state
        else:
            self.method = ("tensor bytes from the torch.profiler allocator events (profile_memory=True): peak of the "
                           "running sum of bytes allocated minus freed during the pass" + state)

    def sync(self) -> None:
        if self.device == "cuda":
            self.torch.cuda.synchronize()

    def settle(self) -> None:
        gc.collect()
        if self.device == "cuda":
            self.torch.cuda.synchronize()
            self.torch.cuda.empty_cache()

    @contextlib.contextmanager
    def measuring(self):
        """Yields a dict that receives 'start_bytes', 'peak_bytes' (absolute) and 'extra_bytes' (peak - start)."""
        out: dict[str, int] = {}
        self.settle()
        if self.device == "cuda":
            out["start_bytes"] = self.torch.cuda.memory_allocated()
            self.torch.cuda.reset_peak_memory_stats()
            try:
                yield out
            finally:
                self.torch.cuda.synchronize()
                out["peak_bytes"] = self.torch.cuda.max_memory_allocated()
                out["extra_bytes"] = out["peak_bytes"] - out["start_bytes"]
            return
        from torch.profiler import ProfilerActivity, profile

        prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
        prof.start()
        try:
            yield out
        finally:
            prof.stop()
            events = sorted(
                (e.start_ns(), e.nbytes())
                for e in prof.profiler.kineto_results.events()
                if e.name() == "[memory]" and str(e.device_type()).endswith("CPU")
            )
            running = peak = 0
            for _, nbytes in events:
                running += nbytes
                peak = max(peak, running)
            out["start_bytes"] = 0
            out["peak_bytes"] = out["extra_bytes"] = peak


def training_state_bytes(trainer) -> int:
    """Bytes of the tensors a trainer keeps between steps: parameters and buffers (policy, reference model) and
    optimizer state, each storage counted once."""
    import torch

    seen: dict[int, int] = {}

    def add(t):
        if isinstance(t, torch.Tensor):
            storage = t.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()

    for model in (trainer.model, getattr(trainer, "ref_model", None)):
        if model is not None:
            for t in list(model.parameters()) + list(model.buffers()):
                add(t)
    if trainer.optimizer is not None:
        for state in trainer.optimizer.state.values():
            for t in state.values():
                add(t)
    return sum(seen.values())


# ---------------------------------------------------------------------------------------------------------- data
_COMPLETION_CACHE: dict[tuple, list[int]] = {}


def fixed_completion(prompt_ids: tuple[int, ...], index: int, length: int, vocab: int, banned: frozenset[int],
                     seed: int) -> list[int]:
    """A deterministic pseudo-random completion of exactly `length` tokens, without EOS/PAD/special tokens."""
    key = (prompt_ids, index, length, vocab, seed)
    cached = _COMPLETION_CACHE.get(key)
    if cached is None:
        import torch

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
    import random

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
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    from disco_trl.toy import build_tokenizer

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
    from trl import GRPOTrainer

    from disco_trl import DiscoTrainer

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


def build_trainer(method: str, geometry: Geometry, model_path: str, tokenizer, dataset, args, max_steps: int,
                  workdir: Path, callbacks=()):
    import torch
    from transformers import PrinterCallback
    from trl import GRPOConfig

    from disco_trl import DiscoConfig

    kind, overrides, _ = METHODS[method]
    overrides = dict(overrides)
    if "beta" in overrides:
        overrides["beta"] = args.ref_beta
    common = dict(
        output_dir=str(workdir / f"out-{method}"),
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
    config_cls = DiscoConfig if kind == "disco" else GRPOConfig
    config = config_cls(**common, **overrides)
    grpo_cls, disco_cls = trainer_classes()
    trainer_cls = disco_cls if kind == "disco" else grpo_cls
    torch.manual_seed(args.seed)
    trainer = trainer_cls(model=model_path, reward_funcs=bench_reward, args=config, train_dataset=dataset,
                          processing_class=tokenizer, callbacks=list(callbacks))
    trainer.remove_callback(PrinterCallback)  # the benchmark prints its own lines
    trainer.bench_completion_length = geometry.completion_length
    trainer.bench_seed = args.seed
    return trainer


class Baton:
    """Lets exactly one trainer thread run at a time, handing over at optimizer-step boundaries in a fixed order.

    Every trainer of a repetition runs its own ``trainer.train()`` in a thread, but only the baton holder runs: the
    others wait inside their ``on_step_end`` callback (or before ``train()``). So the methods' steps interleave one
    optimizer step at a time, and a slow phase of a shared machine hits all methods alike instead of one run.
    """

    def __init__(self, order: list[int], timeout: float = 1800.0):
        self.order = order
        self.holder = order[0] if order else None
        self.done: set[int] = set()
        self.timeout = timeout
        self._cond = threading.Condition()

    def wait_turn(self, i: int) -> None:
        with self._cond:
            if not self._cond.wait_for(lambda: self.holder == i, timeout=self.timeout):
                raise RuntimeError(f"benchmark thread {i} waited {self.timeout:.0f} s for its turn")

    def pass_on(self, i: int, finished: bool = False) -> None:
        with self._cond:
            if finished:
                self.done.add(i)
            k = self.order.index(i)
            rotation = self.order[k + 1:] + self.order[: k + 1]  # ends with i itself
            self.holder = next((j for j in rotation if j not in self.done), None)
            self._cond.notify_all()


def make_step_timer(meter: MemoryMeter, warmup: int, timed: int, baton: Baton | None = None, slot: int = 0):
    """Steps [0, warmup): untimed; [warmup, warmup + timed): timed; the step after them: untimed memory step.

    Set `.trainer` before training: the memory step records the trainer's persistent state at its start. With a
    baton, the callback hands over to the next trainer after each step and waits for its next turn."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.trainer = None
            self.times: list[float] = []
            self.cpu_times: list[float] = []
            self.memory: dict[str, int] | None = None
            self.state_bytes: int | None = None
            self._index = 0
            self._t0 = self._c0 = 0.0
            self._measuring = None

        def on_step_begin(self, args, state, control, **kwargs):
            if self._index == warmup + timed:
                self.state_bytes = training_state_bytes(self.trainer)
                self._measuring = meter.measuring()
                self.memory = self._measuring.__enter__()
            meter.sync()
            self._t0, self._c0 = time.perf_counter(), time.thread_time()

        def on_step_end(self, args, state, control, **kwargs):
            meter.sync()
            elapsed, cpu = time.perf_counter() - self._t0, time.thread_time() - self._c0
            if warmup <= self._index < warmup + timed:
                self.times.append(elapsed)
                self.cpu_times.append(cpu)
            elif self._index == warmup + timed:
                self._measuring.__exit__(None, None, None)
            self._index += 1
            if baton is not None:
                baton.pass_on(slot)
                baton.wait_turn(slot)

    return StepTimer()


def prepared_microbatch(trainer):
    """One training micro-batch, prepared by the trainer itself (fixed generation, rewards, advantages/groups)."""
    trainer.model.train()
    trainer._buffered_inputs = None
    trainer._step = 0
    trainer.current_gradient_accumulation_steps = trainer.args.gradient_accumulation_steps
    generation_batch = next(iter(trainer.get_train_dataloader()))
    return trainer._prepare_inputs(generation_batch)


def _loss_and_backward(trainer, inputs) -> None:
    with trainer.compute_loss_context_manager():
        loss = trainer.compute_loss(trainer.model, inputs)
    trainer.accelerator.backward(loss)


def time_loss_only(trainer, inputs, reps: int, meter: MemoryMeter) -> tuple[list[float], list[float], int]:
    """compute_loss + backward on fixed inputs: `reps` timed calls after one warm-up call, then one memory call.

    Returns (wall times, process CPU times, peak extra bytes)."""
    model = trainer.model
    times, cpu_times = [], []
    for i in range(reps + 1):
        model.zero_grad(set_to_none=True)
        meter.sync()
        t0, c0 = time.perf_counter(), time.process_time()
        _loss_and_backward(trainer, inputs)
        meter.sync()
        if i >= 1:
            times.append(time.perf_counter() - t0)
            cpu_times.append(time.process_time() - c0)
    model.zero_grad(set_to_none=True)
    with meter.measuring() as mem:
        _loss_and_backward(trainer, inputs)
    model.zero_grad(set_to_none=True)
    return times, cpu_times, mem["extra_bytes"]


def microbatch_digest(inputs) -> dict[str, Any]:
    return {
        "rows": int(inputs["completion_ids"].size(0)),
        "completion_tokens": int(inputs["completion_mask"].sum().item()),
        "prompt_tokens": int(inputs["prompt_mask"].sum().item()),
    }


def run_repetition(order: list[str], geometry: Geometry, model_path: str, tokenizer, dataset, args, workdir: Path,
                   meter: MemoryMeter, *, steps: int, warmup: int, loss_reps: int) -> list[dict[str, Any]]:
    """One repetition: a trainer per method, training with steps interleaved (see `Baton`), then the loss-only calls
    interleaved too (one call per method in turn)."""
    meter.settle()
    baton = Baton(list(range(len(order))))
    timers, trainers, build_s = [], [], []
    for slot, method in enumerate(order):
        timer = make_step_timer(meter, warmup, steps, baton, slot)
        t_build = time.perf_counter()
        trainer = build_trainer(method, geometry, model_path, tokenizer, dataset, args, warmup + steps + 1, workdir,
                                [timer])
        build_s.append(time.perf_counter() - t_build)
        timer.trainer = trainer
        timers.append(timer)
        trainers.append(trainer)

    errors: dict[int, BaseException] = {}

    def work(slot: int) -> None:
        try:
            baton.wait_turn(slot)
            trainers[slot].train()
            trainers[slot].bench_checksum_in_training = trainers[slot].bench_checksum
            trainers[slot].bench_completions_in_training = trainers[slot].bench_completions
        except BaseException as exc:  # reported below, in the main thread
            errors[slot] = exc
        finally:
            baton.pass_on(slot, finished=True)

    threads = [threading.Thread(target=work, args=(slot,), name=f"bench-{m}") for slot, m in enumerate(order)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        slot, exc = next(iter(errors.items()))
        raise RuntimeError(f"training {order[slot]} failed: {exc!r}") from exc
    for method, timer in zip(order, timers):
        if len(timer.times) != steps or timer.memory is None:
            raise RuntimeError(f"{method}: expected {steps} timed steps and a memory step, got {len(timer.times)}.")

    # Loss-only: fixed inputs prepared by each trainer, one warm-up call each, then calls interleaved across methods.
    inputs = [prepared_microbatch(trainer) for trainer in trainers]
    loss_times: list[list[float]] = [[] for _ in order]
    loss_cpu: list[list[float]] = [[] for _ in order]
    for call in range(loss_reps + 1):
        for slot, trainer in enumerate(trainers):
            trainer.model.zero_grad(set_to_none=True)
            meter.sync()
            t0, c0 = time.perf_counter(), time.thread_time()
            _loss_and_backward(trainer, inputs[slot])
            meter.sync()
            if call >= 1:
                loss_times[slot].append(time.perf_counter() - t0)
                loss_cpu[slot].append(time.thread_time() - c0)
            trainer.model.zero_grad(set_to_none=True)
    results = []
    for slot, (method, trainer, timer) in enumerate(zip(order, trainers, timers)):
        with meter.measuring() as mem:
            _loss_and_backward(trainer, inputs[slot])
        trainer.model.zero_grad(set_to_none=True)
        results.append({
            "method": method,
            "position": slot,
            "state_bytes_at_memory_step": timer.state_bytes,
            "build_s": build_s[slot],
            "step_s": timer.times,
            "step_median_s": statistics.median(timer.times),
            "step_cpu_s": timer.cpu_times,
            "step_cpu_median_s": statistics.median(timer.cpu_times),
            # the state kept between steps + the most the step allocates on top of it
            "step_peak_bytes": timer.state_bytes + timer.memory["extra_bytes"],
            "loss_s": loss_times[slot],
            "loss_median_s": statistics.median(loss_times[slot]),
            "loss_cpu_s": loss_cpu[slot],
            "loss_cpu_median_s": statistics.median(loss_cpu[slot]),
            "loss_peak_bytes": mem["extra_bytes"],
            "completions_served": trainer.bench_completions_in_training,
            "completion_checksum": trainer.bench_checksum_in_training,
            "microbatch": microbatch_digest(inputs[slot]),
        })
    del trainers, inputs, timers
    meter.settle()
    return results


# ---------------------------------------------------------------------------------------------------------- pure losses
def grpo_token_loss(logps, old_logps, advantages, mask, *, loss_type: str = "dapo", epsilon: float = 0.2):
    """TRL's clipped token surrogate (as in GRPOTrainer._compute_loss, beta=0) with its 'dapo' or 'grpo' reduction."""
    import torch

    coef_1 = torch.exp(logps - old_logps)
    coef_2 = torch.clamp(coef_1, 1 - epsilon, 1 + epsilon)
    adv = advantages.unsqueeze(1)
    per_token = -torch.min(coef_1 * adv, coef_2 * adv)
    if loss_type == "grpo":
        return ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()
    return (per_token * mask).sum() / mask.sum().clamp(min=1.0)


def disco_loss(logps, old_logps, rewards, group_ids, mask, *, score_type: str, tau: float, num_questions: int):
    """What DiscoTrainer._compute_loss computes after the log-probs (one process, no accumulation)."""
    from disco_trl.losses import discriminative_objective, hinge_from_kl, sequence_scores

    scores = sequence_scores(logps, old_logps, mask, score_type=score_type)
    objective = discriminative_objective(scores, rewards, group_ids, variant="dro", tau=tau, num_questions=num_questions)
    kl = ((old_logps - logps) * mask).sum() / mask.sum().clamp(min=1.0)
    return -objective + hinge_from_kl(kl, delta=1e-4, beta=1e3)


def pure_loss_inputs(g: int, q: int, t: int, device: str, seed: int):
    import torch

    gen = torch.Generator().manual_seed(seed)
    b = g * q
    logps = (-3.0 * torch.rand(b, t, generator=gen)).to(device)
    old = (logps + 0.01 * torch.randn(b, t, generator=gen).to(device)).detach()
    lengths = torch.randint(max(1, t // 4), t + 1, (b,), generator=gen)
    mask = (torch.arange(t)[None, :] < lengths[:, None]).float().to(device)
    rewards = (torch.rand(b, generator=gen) < 0.3).float().to(device)
    group_ids = (torch.arange(b) // g).to(device)
    grouped = rewards.view(q, g)
    advantages = ((grouped - grouped.mean(1, keepdim=True)) / (grouped.std(1, keepdim=True) + 1e-4)).view(-1)
    return logps, old, mask, rewards, group_ids, advantages


def time_pure_losses(g: int, q: int, t: int, reps: int, meter: MemoryMeter, device: str, seed: int) -> dict:
    import torch

    logps0, old, mask, rewards, group_ids, advantages = pure_loss_inputs(g, q, t, device, seed)
    fns = {
        "grpo": lambda x: grpo_token_loss(x, old, advantages, mask, loss_type="dapo"),
        "disco_log_l": lambda x: disco_loss(x, old, rewards, group_ids, mask, score_type="log_l", tau=10.0,
                                            num_questions=q),
        "disco_l_ratio": lambda x: disco_loss(x, old, rewards, group_ids, mask, score_type="l_ratio", tau=1.0,
                                              num_questions=q),
    }

    def once(fn):
        x = logps0.clone().requires_grad_(True)
        meter.sync()
        t0 = time.perf_counter()
        fn(x).backward()
        meter.sync()
        return time.perf_counter() - t0

    # Calibrate how many calls make one sample (>= ~5 ms) so that small sizes are above timer noise.
    for fn in fns.values():
        once(fn)
    single = max(statistics.median([once(fns["grpo"]) for _ in range(3)]), 1e-6)
    inner = max(1, min(200, int(0.005 / single)))
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for r in range(reps):
        order = list(fns)[r % len(fns):] + list(fns)[: r % len(fns)]
        for name in order:
            samples[name].append(sum(once(fns[name]) for _ in range(inner)) / inner)
    return {name: statistics.median(v) for name, v in samples.items()} | {"calls_per_sample": inner}


def sweep_points(args) -> list[tuple[str, int, int, int]]:
    """(axis, G, Q, T): one axis varies while the others stay at the base values."""
    g0, t0, q0 = args.sweep_base_generations, args.sweep_base_length, 1
    points = [("generations", g, q0, t0) for g in args.sweep_generations]
    points += [("completion_length", g0, q0, t) for t in args.sweep_lengths]
    points += [("questions", g0, q, t0) for q in args.sweep_questions]
    # The largest corner of the three axes at once (on CPU its model part is usually over --sweep-max-tokens).
    corner = ("all_max", max(args.sweep_generations), max(args.sweep_questions), max(args.sweep_lengths))
    if corner[1:] not in {p[1:] for p in points}:
        points.append(corner)
    return points


def run_sweep(args, meter: MemoryMeter, workdir: Path, dataset_for) -> list[dict[str, Any]]:
    points = sweep_points(args)
    model_path = tokenizer = None
    if args.sweep_model:
        max_t = max(t for _, _, _, t in points)
        model_path, tokenizer, desc = make_model_dir(
            argparse.Namespace(**{**vars(args), "model": None}), args.sweep_model_preset,
            max_t + 4 * args.prompt_tokens + 64, workdir / "sweep")
        args.sweep_model_description = desc
    measured: dict[tuple[int, int, int], dict[str, Any]] = {}  # the base point is shared by the axes: time it once
    rows = []
    for axis, g, q, t in points:
        if (g, q, t) in measured:
            rows.append({**measured[(g, q, t)], "axis": axis})
            continue
        row: dict[str, Any] = {"axis": axis, "num_generations": g, "questions_per_microbatch": q,
                               "completion_length": t, "completion_tokens": g * q * t}
        print(f"[sweep] {axis}: G={g} Q={q} T={t}", flush=True)
        row["fn_s"] = time_pure_losses(g, q, t, args.sweep_reps, meter, args.device_resolved, args.seed)
        run_model = args.sweep_model and (args.sweep_max_tokens is None or g * q * t <= args.sweep_max_tokens)
        if run_model:
            geometry = Geometry(num_generations=g, questions_per_microbatch=q, completion_length=t, grad_accum=1)
            dataset = dataset_for(tokenizer, 4 * q)
            trainers, inputs = {}, {}
            for method in SWEEP_METHODS:
                trainers[method] = build_trainer(method, geometry, model_path, tokenizer, dataset, args, 1, workdir)
                inputs[method] = prepared_microbatch(trainers[method])
            samples: dict[str, list[float]] = {m: [] for m in SWEEP_METHODS}
            for method in SWEEP_METHODS:  # one untimed warm-up call each
                time_loss_only(trainers[method], inputs[method], 1, meter)
            for r in range(args.sweep_reps):  # alternate: one call per method per round
                order = list(SWEEP_METHODS)[r % 3:] + list(SWEEP_METHODS)[: r % 3]
                for method in order:
                    trainer = trainers[method]
                    trainer.model.zero_grad(set_to_none=True)
                    meter.sync()
                    t_start = time.perf_counter()
                    _loss_and_backward(trainer, inputs[method])
                    meter.sync()
                    samples[method].append(time.perf_counter() - t_start)
            row["compute_loss_s"] = {m: statistics.median(v) for m, v in samples.items()}
            grpo_step = row["compute_loss_s"]["grpo"]
            for m in ("disco_log_l", "disco_l_ratio"):
                row[f"{m}_fn_overhead_share"] = (row["fn_s"][m] - row["fn_s"]["grpo"]) / grpo_step
                row[f"{m}_compute_loss_ratio"] = row["compute_loss_s"][m] / grpo_step
            del trainers, inputs
            meter.settle()
        else:
            row["compute_loss_s"] = None
        measured[(g, q, t)] = row
        rows.append(row)
    return rows


def sweep_verdict(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per axis: does the DisCO loss-function overhead, as a share of the loss step, stay flat or shrink?

    'Flat' allows the share to grow by at most 2 percentage points from the smallest to the largest point of the axis.
    """
    verdict = {}
    for axis in dict.fromkeys(r["axis"] for r in rows):
        pts = [r for r in rows if r["axis"] == axis and r.get("compute_loss_s")]
        if len(pts) < 2:
            continue
        for m in ("disco_log_l", "disco_l_ratio"):
            first, last = pts[0][f"{m}_fn_overhead_share"], pts[-1][f"{m}_fn_overhead_share"]
            verdict[f"{axis}/{m}"] = {"share_first": first, "share_last": last,
                                      "flat_or_shrinks": last <= max(first, 0.0) + 0.02}
    return verdict


# ---------------------------------------------------------------------------------------------------------- summary
def _stats(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def summarise(runs: list[dict[str, Any]], methods: list[str]) -> dict[str, Any]:
    reps = sorted({r["rep"] for r in runs})
    by = {(r["rep"], r["method"]): r for r in runs}
    summary = {}
    for m in methods:
        entry: dict[str, Any] = {"label": METHODS[m][2]}
        for key, field in (("step_s", "step_median_s"), ("loss_s", "loss_median_s"),
                           ("step_cpu_s", "step_cpu_median_s"), ("loss_cpu_s", "loss_cpu_median_s"),
                           ("step_peak_mib", "step_peak_bytes"), ("loss_peak_mib", "loss_peak_bytes")):
            scale = 1 / 2**20 if key.endswith("mib") else 1.0
            values = [by[(r, m)].get(field) for r in reps]
            base = [by[(r, BASELINE)].get(field) for r in reps]
            ratio_key = key.rsplit("_", 1)[0] + "_ratio"  # step_ratio, loss_ratio, step_peak_ratio, ...
            if any(v is None for v in values + base):
                entry[key] = entry[ratio_key] = None
                continue
            entry[key] = _stats([v * scale for v in values])
            ratios = [v / b for v, b in zip(values, base) if b > 0]
            entry[ratio_key] = _stats(ratios) if ratios else None
        summary[m] = entry
    return summary


def _fmt_ratio(stats: dict[str, float] | None) -> str:
    if not stats:
        return "n/a"
    return f"{stats['median']:.3f} [{stats['min']:.3f}, {stats['max']:.3f}]"


def _fmt(stats: dict[str, float] | None, scale: float = 1.0, digits: int = 1) -> str:
    return "n/a" if not stats else f"{stats['median'] * scale:.{digits}f}"


def markdown(result: dict[str, Any]) -> str:
    cfg, machine = result["config"], result["machine"]
    lines = [
        "# DisCO vs GRPO: cost per step",
        "",
        f"- Machine: {machine['device_name']}; torch threads {machine['torch_threads']}; torch {machine['torch']}, "
        f"TRL {machine['trl']}, transformers {machine['transformers']}",
        f"- Command: `{result['command']}`",
        f"- Model: {cfg['model_description']}; weights {cfg['model_dtype']}, bf16 autocast "
        f"{cfg['bf16']}, gradient checkpointing {cfg['gradient_checkpointing']}",
        f"- Geometry: {cfg['num_generations']} completions/question, {cfg['questions_per_microbatch']} questions/"
        f"micro-batch (per_device_train_batch_size {cfg['per_device_train_batch_size']}), gradient_accumulation_steps "
        f"{cfg['grad_accum']}, completion length {cfg['completion_length']} tokens (fixed completions), prompt "
        f"~{cfg['prompt_tokens_mean']:.0f} tokens",
        f"- {cfg['reps']} repetitions, methods alternating (rotated order); per run {cfg['warmup_steps']} warm-up + "
        f"{cfg['steps']} timed optimizer steps + 1 untimed memory step, then 1 warm-up + {cfg['loss_reps']} timed "
        "compute_loss+backward calls + 1 untimed memory call",
        f"- Peak memory: {result['memory_method']}",
        f"- Load average (1/5/15 min) before {result['load_avg_before']}, after {result['load_avg_after']}; "
        f"wall time {result['wall_s']:.0f} s",
        "",
        "Ratios are to `grpo` (TRL's default loss) in the same repetition: median [min, max] over repetitions. "
        "Times are wall-clock medians (the JSON also has the CPU time of the running thread: `step_cpu_s`, "
        "`loss_cpu_s`).",
        "",
        "| method | step ms | step ratio | loss-only ms | loss-only ratio | peak step MiB | peak step ratio "
        "| peak loss MiB | peak loss ratio |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for m, s in result["summary"].items():
        lines.append(
            f"| `{m}` | {_fmt(s['step_s'], 1e3)} | {_fmt_ratio(s['step_ratio'])} | {_fmt(s['loss_s'], 1e3)} | "
            f"{_fmt_ratio(s['loss_ratio'])} | {_fmt(s['step_peak_mib'])} | {_fmt_ratio(s['step_peak_ratio'])} | "
            f"{_fmt(s['loss_peak_mib'])} | {_fmt_ratio(s['loss_peak_ratio'])} |"
        )
    lines += ["", "Methods: " + "; ".join(f"`{m}` = {s['label']}" for m, s in result["summary"].items()) + "."]
    if result.get("sweep"):
        lines += [
            "",
            "## Scaling sweep: the loss alone",
            "",
            f"Pure loss functions, forward+backward on (B, T) log-prob tensors (B = G x Q, random lengths in "
            f"[T/4, T]); `compute_loss` = `trainer.compute_loss` + backward through "
            f"{cfg.get('sweep_model_description') or 'no model (skipped)'}. "
            "Overhead share = (DisCO function time - GRPO function time) / GRPO compute_loss time. Times in ms.",
            "",
            "| axis | G | Q | T | fn GRPO | fn DisCO log-L | fn DisCO L-ratio | compute_loss GRPO | "
            "log-L ratio | L-ratio ratio | log-L overhead share | L-ratio overhead share |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in result["sweep"]:
            fn = r["fn_s"]
            cl = r.get("compute_loss_s")
            model_cols = (
                f"{cl['grpo'] * 1e3:.1f} | {r['disco_log_l_compute_loss_ratio']:.3f} | "
                f"{r['disco_l_ratio_compute_loss_ratio']:.3f} | {100 * r['disco_log_l_fn_overhead_share']:+.2f}% | "
                f"{100 * r['disco_l_ratio_fn_overhead_share']:+.2f}%"
                if cl else "n/a | n/a | n/a | n/a | n/a"
            )
            lines.append(
                f"| {r['axis']} | {r['num_generations']} | {r['questions_per_microbatch']} | {r['completion_length']} "
                f"| {fn['grpo'] * 1e3:.3f} | {fn['disco_log_l'] * 1e3:.3f} | {fn['disco_l_ratio'] * 1e3:.3f} | "
                f"{model_cols} |"
            )
        if result.get("sweep_verdict"):
            lines += ["", "Overhead share, first -> last point of each axis (flat = grows by at most 2 points):", ""]
            for key, v in result["sweep_verdict"].items():
                lines.append(f"- {key}: {100 * v['share_first']:+.2f}% -> {100 * v['share_last']:+.2f}% "
                             f"({'flat or shrinks' if v['flat_or_shrinks'] else 'GROWS'})")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------------------- main
def machine_info(device: str) -> dict[str, Any]:
    import torch
    import transformers
    import trl

    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    name = f"CPU {cpu}, {os.cpu_count()} logical cores"
    if device == "cuda":
        name = f"GPU {torch.cuda.get_device_name(0)} (host CPU {cpu}, {os.cpu_count()} cores)"
    return {
        "device": device, "device_name": name, "platform": platform.platform(), "python": platform.python_version(),
        "torch": torch.__version__, "trl": trl.__version__, "transformers": transformers.__version__,
        "torch_threads": torch.get_num_threads(),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    t_start = time.perf_counter()
    load_before = [round(x, 2) for x in os.getloadavg()]

    import torch

    if args.device == "auto":
        args.device_resolved = "cuda" if torch.cuda.is_available() else "cpu"
    else:
        args.device_resolved = args.device
    on_cuda = args.device_resolved == "cuda"
    if args.threads is not None or not on_cuda:
        torch.set_num_threads(args.threads or 1)
    args.bf16_enabled = args.bf16 == "on" or (args.bf16 == "auto" and on_cuda)
    if args.sweep_max_tokens is None:
        args.sweep_max_tokens = 65536 if on_cuda else 16384

    from datasets import Dataset
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*pin_memory.*")
    meter = MemoryMeter(args.device_resolved)
    out_dir = Path(args.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    geometry = Geometry(args.num_generations, args.questions_per_microbatch, args.completion_length, args.grad_accum)
    prompt_lengths = []

    def dataset_for(tokenizer, n):
        prompts = build_prompts(tokenizer, n, args.prompt_tokens, args.seed)
        prompt_lengths.extend(len(tokenizer(p)["input_ids"]) for p in prompts)
        return Dataset.from_dict({"prompt": prompts})

    with tempfile.TemporaryDirectory(prefix="disco-bench-") as tmp:
        workdir = Path(tmp)
        model_path, tokenizer, model_desc = make_model_dir(
            args, args.model_preset, args.completion_length + 4 * args.prompt_tokens + 64, workdir)
        questions_needed = (args.warmup_steps + args.steps + 2) * geometry.questions_per_microbatch * geometry.grad_accum
        dataset = dataset_for(tokenizer, questions_needed)
        main_prompt_mean = statistics.mean(prompt_lengths)

        print(f"[bench] {args.device_resolved}, {torch.get_num_threads()} threads; model: {model_desc}", flush=True)
        # One untimed run of the baseline first: imports, allocator and kernel warm-up are paid before any measurement.
        run_repetition([BASELINE], geometry, model_path, tokenizer, dataset, args, workdir, meter,
                       steps=1, warmup=1, loss_reps=1)
        # Everything imported so far is long-lived: move it out of the collector's reach, so that the gc.collect()
        # before each measurement is quick (it otherwise walks every module object of torch/transformers/TRL).
        gc.collect()
        gc.freeze()
        runs = []
        for rep in range(args.reps):
            order = args.methods[rep % len(args.methods):] + args.methods[: rep % len(args.methods)]
            results = run_repetition(order, geometry, model_path, tokenizer, dataset, args, workdir, meter,
                                     steps=args.steps, warmup=args.warmup_steps, loss_reps=args.loss_reps)
            for result in results:
                result["rep"] = rep
                runs.append(result)
                print(f"[bench] rep {rep} {result['method']:>15}: step {1e3 * result['step_median_s']:8.1f} ms, "
                      f"loss-only {1e3 * result['loss_median_s']:8.1f} ms, peak step "
                      f"{result['step_peak_bytes'] / 2**20:7.1f} MiB", flush=True)
        checksums = {r["rep"]: set() for r in runs}
        for r in runs:
            checksums[r["rep"]].add(r["completion_checksum"])
        identical = all(len(v) == 1 for v in checksums.values())

        sweep = sweep_rows = None
        if args.sweep:
            sweep_rows = run_sweep(args, meter, workdir, dataset_for)
            sweep = sweep_rows

    load_after = [round(x, 2) for x in os.getloadavg()]
    cfg = {
        "model_description": model_desc, "model_preset": None if args.model else args.model_preset,
        "model": args.model, "model_dtype": args.model_dtype, "bf16": args.bf16_enabled,
        "gradient_checkpointing": args.gradient_checkpointing, "num_generations": geometry.num_generations,
        "questions_per_microbatch": geometry.questions_per_microbatch,
        "per_device_train_batch_size": geometry.batch_size, "grad_accum": geometry.grad_accum,
        "completion_length": geometry.completion_length, "prompt_tokens_mean": main_prompt_mean,
        "reps": args.reps, "steps": args.steps, "warmup_steps": args.warmup_steps, "loss_reps": args.loss_reps,
        "methods": args.methods, "ref_beta": args.ref_beta, "seed": args.seed, "quick": args.quick,
        "sweep_model_description": getattr(args, "sweep_model_description", None),
        "sweep_max_tokens": args.sweep_max_tokens,
    }
    result = {
        "command": " ".join(["python", "benchmarks/bench_disco.py", *(sys.argv[1:] if argv is None else argv)]),
        "config": cfg,
        "machine": machine_info(args.device_resolved),
        "memory_method": meter.method,
        "load_avg_before": load_before,
        "load_avg_after": load_after,
        "identical_completions_across_methods": identical,
        "summary": summarise(runs, args.methods),
        "runs": runs,
        "sweep": sweep,
        "sweep_verdict": sweep_verdict(sweep_rows) if sweep_rows else None,
        "wall_s": time.perf_counter() - t_start,
    }
    (out_dir / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    (out_dir / "results.md").write_text(markdown(result))
    print(markdown(result))
    print(f"[bench] wrote {out_dir / 'results.json'} and {out_dir / 'results.md'}", flush=True)
    return result


if __name__ == "__main__":
    main()
