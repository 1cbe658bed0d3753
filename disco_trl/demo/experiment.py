"""One RL run on the demo task, shared by `disco-trl demo` (run.py), `compare`, `study` and the benchmarks.

`run_method(...)` loads the starting model from its folder (normally the shipped start, `shipped.py`; the same
`from_pretrained` path a real run uses), evaluates held-out Pass@1, trains with one method of the registry
(`disco_trl.demo.methods`: DisCO or one of TRL's GRPO-family losses) under the same geometry, and evaluates again.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import time
import warnings
from dataclasses import asdict, dataclass

import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
from transformers.trainer_callback import PrinterCallback, ProgressCallback
from transformers.utils import logging as hf_logging

from ..losses import KL_ESTIMATORS, KL_PENALTIES, check_tau, completion_labels, question_counts
from ..rewards import boxed_math_reward
from . import task
from .evaluate import evaluate_pass_at_1
from .exact_kl import exact_kl_trainer
from .methods import DISCO_METHODS, METHODS, build_config, fills, trainer_class
from .shipped import model_key
from .warmstart import eval_problems, train_problems


@dataclass
class RunSettings:
    """Everything one run needs besides the warm-started model. Defaults: the paper's settings scaled down."""

    method: str = "disco"
    seed: int = 0
    max_steps: int = 160  # optimizer steps (4 per generation batch)
    learning_rate: float = 1e-5  # constant; DisCO's best in the sweep of docs/comparison.md (paper: 2e-6 for 1.5B)
    num_generations: int = 8  # completions per question (paper: 8)
    questions_per_generation: int = 16  # generation batch (paper: 128)
    updates_per_generation: int = 4  # optimizer steps per generation batch (paper: 128 / 32 = 4)
    temperature: float = 0.6  # paper: 0.6 (training and evaluation)
    max_completion_length: int = 64
    train_difficulties: tuple[int, ...] = (1, 2, 3, 4)  # same mix as the held-out questions
    eval_questions: int = 100
    eval_samples: int = 8
    eval_split: str = "test"  # held-out questions: "test" (reported) or "val" (hyperparameter choice)
    eval_difficulties: tuple[int, ...] = (1, 2, 3, 4)  # the held-out mix (its own reserved pool, see warmstart.py)
    also_eval_split: str | None = None  # evaluate before/after on this split too (e.g. "val" to choose a rate)
    eval_every: int = 0  # optimizer steps between held-out evaluations during training (0: before/after only)
    tau: float | None = None  # DisCO's DRO temperature (None: the paper's default per score)
    kl_delta: float = 1e-4
    kl_beta: float = 1e3
    disable_tqdm: bool = False
    skip_uninformative_questions: bool = False  # DisCO only: train on questions with both right and wrong answers
    fill_informative_questions: bool = False  # DisCO only: generation rounds until each batch is full of those
    max_generation_rounds: int = 10  # with filling (this option or a method that fills): rounds per batch at most
    kl_penalty: str = "squared_hinge"  # DisCO only: the paper's squared hinge, or "linear" (kl_beta * KL, fixed)
    kl_estimator: str = "log_ratio"  # DisCO only: the paper's token estimate of the KL, or "k3"
    train_pool: int = 0  # 0: fresh training questions; N: a fixed pool of N questions, repeated (epochs)
    exact_kl: bool = False  # log the exact KL(pi_old || pi_theta) per micro-step (demo/exact_kl.py; a diagnostic)

    def validate(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method={self.method!r} is unknown; choose one of {', '.join(METHODS)}.")
        if self.max_steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.max_steps}.")
        if not (self.learning_rate > 0 and math.isfinite(self.learning_rate)):
            raise ValueError(f"learning rate must be a positive number, got {self.learning_rate}.")
        if self.num_generations < 2:
            raise ValueError(f"num_generations must be >= 2 (positives are compared with negatives), got "
                             f"{self.num_generations}.")
        if self.questions_per_generation < 1 or self.updates_per_generation < 1:
            raise ValueError("questions_per_generation and updates_per_generation must be >= 1.")
        if self.questions_per_generation % self.updates_per_generation:
            raise ValueError(
                f"questions_per_generation={self.questions_per_generation} must be a multiple of "
                f"updates_per_generation={self.updates_per_generation} (each update takes whole questions)."
            )
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}.")
        if self.eval_questions < 1 or self.eval_samples < 1:
            raise ValueError("eval questions and eval samples must be >= 1.")
        if self.eval_split not in ("test", "val"):
            raise ValueError(f"eval_split must be 'test' or 'val', got {self.eval_split!r}.")
        if self.also_eval_split not in (None, "test", "val") or self.also_eval_split == self.eval_split:
            raise ValueError(f"also_eval_split must be None or the other split than eval_split={self.eval_split!r}, "
                             f"got {self.also_eval_split!r}.")
        for name in ("train_difficulties", "eval_difficulties"):
            value = tuple(getattr(self, name))
            if not value or any(not isinstance(d, int) or not 1 <= d <= 4 for d in value):
                raise ValueError(f"{name} must list numbers of operations between 1 and 4, got {value}.")
        if self.eval_questions > 100:
            raise ValueError(f"at most 100 held-out questions are reserved per split; got {self.eval_questions}.")
        if self.tau is not None:
            check_tau(self.tau)
        if not (self.kl_delta >= 0 and self.kl_beta >= 0):
            raise ValueError(f"kl_delta and kl_beta must be >= 0, got {self.kl_delta} and {self.kl_beta}.")
        if self.eval_every < 0:
            raise ValueError(f"eval_every must be >= 0, got {self.eval_every}.")
        self._validate_disco_options()

    def _validate_disco_options(self) -> None:
        if self.method not in DISCO_METHODS:
            for name in ("skip_uninformative_questions", "fill_informative_questions", "kl_penalty", "kl_estimator"):
                if getattr(self, name) != getattr(RunSettings, name):
                    raise ValueError(f"{name} is a DisCO option; method={self.method!r} is not DisCO.")
        if self.kl_penalty not in KL_PENALTIES or self.kl_estimator not in KL_ESTIMATORS:
            raise ValueError(f"kl_penalty must be one of {KL_PENALTIES} and kl_estimator one of {KL_ESTIMATORS}; "
                             f"got {self.kl_penalty!r} and {self.kl_estimator!r}.")
        if self.max_generation_rounds < 1:
            raise ValueError(f"max_generation_rounds must be >= 1, got {self.max_generation_rounds}.")
        if self.train_pool < 0 or self.train_pool % self.questions_per_generation:
            raise ValueError(f"train_pool must be 0 (fresh questions) or a multiple of questions_per_generation="
                             f"{self.questions_per_generation}, got {self.train_pool}.")


def reward_function():
    """The demo's reward: the project's boxed-answer math reward (the same code path as real math training)."""
    return boxed_math_reward


def build_args(settings: RunSettings, output_dir: str, **overrides):
    """The trainer config for `settings.method`: same geometry, sampling and learning rate for every method;
    `overrides` are further config fields (the real-model demo's vLLM options)."""
    micro_batch = settings.num_generations * settings.questions_per_generation // settings.updates_per_generation
    common = dict(
        output_dir=output_dir,
        seed=settings.seed,
        data_seed=settings.seed,
        max_steps=settings.max_steps,
        learning_rate=settings.learning_rate,
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        per_device_train_batch_size=micro_batch,
        gradient_accumulation_steps=1,
        steps_per_generation=settings.updates_per_generation,
        num_generations=settings.num_generations,
        temperature=settings.temperature,
        top_p=1.0,
        top_k=0,
        max_completion_length=settings.max_completion_length,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        bf16=False,
        disable_tqdm=settings.disable_tqdm,
        dataloader_num_workers=0,
        max_grad_norm=1.0,
        log_completions=False,
        shuffle_dataset=True,
    )
    if settings.method in DISCO_METHODS:
        common.update(kl_delta=settings.kl_delta, kl_beta=settings.kl_beta, tau=settings.tau,
                      skip_uninformative_questions=settings.skip_uninformative_questions,
                      fill_informative_questions=settings.fill_informative_questions,
                      max_generation_rounds=settings.max_generation_rounds if filling(settings) else None,
                      kl_penalty=settings.kl_penalty, kl_estimator=settings.kl_estimator)
    return build_config(settings.method, common, **overrides)


def filling(settings: RunSettings) -> bool:
    """Whether the run fills its batches (`fill_informative_questions`, set or implied by its method)."""
    return settings.method in DISCO_METHODS and (settings.fill_informative_questions or fills(settings.method))


def quiet_libraries() -> None:
    """Keep the console readable: the progress bar and our own lines, not per-step dicts and library chatter."""
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()  # weight loading/saving bars (the trainer's own progress bar stays)
    for name in ("trl", "accelerate", "datasets", "math_verify", "latex2sympy2_extended"):
        logging.getLogger(name).setLevel(logging.ERROR)
    deepspeed = logging.getLogger("DeepSpeed")  # its "Setting accelerator to CPU" line; deepspeed resets the level
    if errors_only not in deepspeed.filters:  # when it is imported, so a filter (which stays) does it
        deepspeed.addFilter(errors_only)
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def errors_only(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.ERROR


class LiveMetricsProgress(ProgressCallback):
    """TRL's (transformers') progress bar, showing the latest reward / entropy / KL instead of printing a dict per
    step."""

    def __init__(self):
        super().__init__()
        self._shown: dict[str, str] = {}

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or self.training_bar is None or not logs:
            return
        for key, short in (("reward", "reward"), ("entropy", "entropy"), ("disco/kl", "kl_old"), ("kl", "kl_ref")):
            if logs.get(key) is not None:
                self._shown[short] = f"{float(logs[key]):.3g}"
        if self._shown:
            self.training_bar.set_postfix(self._shown, refresh=False)


def recording_reward(reward_fn, num_generations: int, updates_per_generation: int, history: list):
    """`reward_fn`, also recording how the positives fall in each generation batch (the same statistic for every
    method, so the GRPO family's groups can be compared with DisCO's): per batch, the fraction of groups that are
    mixed / all wrong / all right, the mean number of negatives per positive over mixed groups, and how many groups
    have k = 0..G positives, and how many completions the batch generated. The trainers score a generation (each
    round of a filled batch) in one call, the G completions of a prompt consecutive."""

    @functools.wraps(reward_fn)
    def record(*args, completions, trainer_state=None, **kwargs):
        if trainer_state is not None:
            kwargs["trainer_state"] = trainer_state
        rewards = reward_fn(*args, completions=completions, **kwargs)
        if len(rewards) % num_generations == 0 and len(rewards):
            step = len(history) * updates_per_generation if trainer_state is None else trainer_state.global_step
            history.append({"step": step, "completions": len(rewards), **group_statistics(rewards, num_generations)})
        return rewards

    return record


def group_statistics(rewards: list, num_generations: int) -> dict:
    """How a batch's groups (each question's `num_generations` consecutive completions) fall: the fraction mixed / all
    wrong / all right, the mean number of negatives per positive over the mixed groups, the fraction of the mixed
    groups with at least 2 negatives, and how many groups have k = 0..G positives. The paper's labels (the demo's
    rewards are 0/1), counted per question as DisCO counts them."""
    values = torch.tensor([0.0 if r is None else float(r) for r in rewards])
    labels = completion_labels(values, torch.ones_like(values, dtype=torch.bool), threshold=0.5)
    counts = question_counts(labels, torch.arange(len(values)) // num_generations)
    positives = [int(k) for k in counts.positives]
    mixed = [k for k, m in zip(positives, counts.mixed.tolist()) if m]
    return {
        "frac_mixed": len(mixed) / len(positives),
        "frac_all_wrong": sum(k == 0 for k in positives) / len(positives),
        "frac_all_right": sum(k == num_generations for k in positives) / len(positives),
        "neg_per_pos_mixed": (sum((num_generations - k) / k for k in mixed) / len(mixed)) if mixed else None,
        "frac_mixed_with_2_negatives": (sum(num_generations - k >= 2 for k in mixed) / len(mixed)) if mixed else None,
        "positives_histogram": [sum(k == j for k in positives) for j in range(num_generations + 1)],
    }


def eval_kwargs(settings: RunSettings) -> dict:
    """How every held-out evaluation of a run samples (the same before, during and after training)."""
    return dict(num_samples=settings.eval_samples, temperature=settings.temperature,
                max_new_tokens=settings.max_completion_length, seed=settings.seed + 1)


def eval_point(step: int, evaluation: dict, train_seconds: float = 0.0, completions: int = 0) -> dict:
    """One point of a run's `eval_history`: held-out Pass@1 after `step` optimizer steps, `train_seconds` of training
    (held-out evaluations left out) and `completions` generated."""
    return {"step": step, "pass@1": evaluation["pass@1"],
            "pass@1_by_ops": {str(k): v for k, v in evaluation["pass@1_by_ops"].items()},
            "train_seconds": round(train_seconds, 2), "completions": completions}


class HeldOutEval(TrainerCallback):
    """Held-out Pass@1 every `settings.eval_every` optimizer steps during training, appended to `history`, with the
    training time so far (its own evaluations left out) and the completions generated so far (`group_history`)."""

    def __init__(self, tokenizer, problems, reward_fn, settings: RunSettings, history: list, group_history: list):
        self.tokenizer, self.problems, self.reward_fn = tokenizer, problems, reward_fn
        self.settings, self.history, self.group_history = settings, history, group_history
        self.started, self.eval_seconds = time.perf_counter(), 0.0

    def progress(self) -> tuple[float, int]:
        """(seconds of training so far, evaluations left out; completions generated so far)."""
        seconds = time.perf_counter() - self.started - self.eval_seconds
        return seconds, sum(g.get("completions", 0) for g in self.group_history)

    def on_train_begin(self, args, state, control, **kwargs):
        self.started, self.eval_seconds = time.perf_counter(), 0.0

    def on_step_end(self, args, state, control, model=None, **kwargs):
        every = self.settings.eval_every
        if every and state.global_step % every == 0 and state.global_step < self.settings.max_steps:
            seconds, completions = self.progress()
            start = time.perf_counter()
            result = evaluate_pass_at_1(model, self.tokenizer, self.problems, self.reward_fn,
                                        **eval_kwargs(self.settings))
            self.history.append(eval_point(state.global_step, result, seconds, completions))
            model.train()
            self.eval_seconds += time.perf_counter() - start


_START_EVALS: dict[tuple, dict] = {}  # the starting model's evaluations, shared by the runs of one process


def start_key(model_path: str, settings: RunSettings, split: str) -> dict:
    """What the warm start's held-out evaluation depends on (the same for every method and rate of a seed)."""
    return {"model": model_key(model_path), "split": split,
            "difficulties": list(settings.eval_difficulties), "questions": settings.eval_questions,
            **eval_kwargs(settings)}


def starting_pass_at_1(model_path: str, tokenizer, problems, reward_fn, settings: RunSettings, split: str) -> dict:
    """The warm start's held-out Pass@1 (the same for every method and rate: same model, questions and sampling
    seed), computed once per process."""
    key = (os.path.abspath(model_path), *map(str, start_key(model_path, settings, split).values()))
    if key not in _START_EVALS:
        model = AutoModelForCausalLM.from_pretrained(model_path)
        _START_EVALS[key] = evaluate_pass_at_1(model, tokenizer, problems, reward_fn, **eval_kwargs(settings))
    return _START_EVALS[key]


def start_evaluation(settings: RunSettings, model_path: str, split: str) -> dict:
    """`starting_pass_at_1` for `settings`' held-out questions of `split` (loads the tokenizer and the questions)."""
    problems = eval_problems(settings.eval_questions, split, tuple(settings.eval_difficulties))
    return starting_pass_at_1(model_path, AutoTokenizer.from_pretrained(model_path), problems, reward_function(),
                              settings, split)


def training_questions(settings: RunSettings) -> int:
    """How many training questions a run draws: its fixed pool (repeated by the trainer, one epoch after another), or
    one fresh question per question slot of the run (plus one generation batch of slack), every slot of every
    generation round when the run fills its batches (so that a filled run draws fresh questions too)."""
    if settings.train_pool:
        return settings.train_pool
    rounds = settings.max_generation_rounds if filling(settings) else 1  # a filled batch draws up to this many
    return (settings.max_steps // settings.updates_per_generation + 1) * settings.questions_per_generation * rounds


def build_trainer(settings: RunSettings, model_path: str, output_dir: str, tokenizer, reward_fn, held_out,
                  history: list, group_history: list):
    """The method's trainer on fresh training questions, recording group statistics and held-out evaluations."""
    train_set = train_problems(training_questions(settings), seed=1000 + settings.seed,
                               difficulties=tuple(settings.train_difficulties),
                               held_out_difficulties=tuple(settings.eval_difficulties),
                               distinct=bool(settings.train_pool))  # a fixed pool: each question once
    train_reward = recording_reward(reward_fn, settings.num_generations, settings.updates_per_generation,
                                    group_history)
    torch.manual_seed(settings.seed)
    cls = trainer_class(settings.method)
    trainer = (exact_kl_trainer(cls) if settings.exact_kl else cls)(
        model=model_path, reward_funcs=train_reward, args=build_args(settings, output_dir),
        train_dataset=Dataset.from_list(task.to_rl_rows(train_set)), processing_class=tokenizer,
        callbacks=[HeldOutEval(tokenizer, held_out, reward_fn, settings, history, group_history)])
    if settings.disable_tqdm:
        trainer.remove_callback(PrinterCallback)  # no per-step dicts on the console (the metrics are in the result)
    else:
        trainer.remove_callback(ProgressCallback)
        trainer.add_callback(LiveMetricsProgress())
    return trainer


def run_method(settings: RunSettings, model_path: str, output_dir: str, log=print, save_model: bool = True,
               start_eval=None) -> dict:
    """Train one method from the warm-started model at `model_path`; returns a JSON-able result dict:
    pass@1 before/after (and per difficulty), the trainer's log history, timings. With `save_model`, the trained
    model and tokenizer go to `output_dir/final_model` and the result to `output_dir/result.json`. `start_eval`,
    if given, returns the warm start's evaluation of a split (`start_eval(split)`, e.g. from a cache shared by
    processes)."""
    settings.validate()
    quiet_libraries()
    os.makedirs(output_dir, exist_ok=True)
    reward_fn, tokenizer = reward_function(), AutoTokenizer.from_pretrained(model_path)
    splits = [settings.eval_split] + ([settings.also_eval_split] if settings.also_eval_split else [])
    problems = {s: eval_problems(settings.eval_questions, s, tuple(settings.eval_difficulties)) for s in splits}
    # The warm start's evaluation is shared by every run of a seed (cached), so it is not counted in this run's time.
    before = {s: start_eval(s) if start_eval is not None else
              starting_pass_at_1(model_path, tokenizer, problems[s], reward_fn, settings, s) for s in splits}
    start, cpu_start = time.time(), time.process_time()
    log(f"[{settings.method}] held-out Pass@1 before training: {before[splits[0]]['pass@1']:.3f} "
        f"({settings.eval_questions} questions x {settings.eval_samples} samples, T={settings.temperature})")

    history, group_history = [eval_point(0, before[splits[0]])], []
    trainer = build_trainer(settings, model_path, output_dir, tokenizer, reward_fn, problems[splits[0]], history,
                            group_history)
    train_start = time.time()
    trainer.train()
    train_seconds = time.time() - train_start

    held_out = next(c for c in trainer.callback_handler.callbacks if isinstance(c, HeldOutEval))
    seconds, completions = held_out.progress()
    after = {s: evaluate_pass_at_1(trainer.model, tokenizer, problems[s], reward_fn, **eval_kwargs(settings))
             for s in splits}
    history.append(eval_point(settings.max_steps, after[splits[0]], seconds, completions))
    log(f"[{settings.method}] held-out Pass@1 after {settings.max_steps} steps: {after[splits[0]]['pass@1']:.3f}")
    also = splits[1] if len(splits) > 1 else None
    result = {
        "method": settings.method,
        "label": METHODS[settings.method].label,
        "settings": asdict(settings),
        "model_path": model_path,
        "pass@1_before": before[splits[0]]["pass@1"],
        "pass@1_after": after[splits[0]]["pass@1"],
        "before": before[splits[0]],
        "after": after[splits[0]],
        "eval_history": history,
        "group_history": group_history,
        "also_eval": None if also is None else {"split": also, "before": before[also], "after": after[also]},
        "log_history": trainer.state.log_history,
        "train_seconds": round(train_seconds, 1),
        "total_seconds": round(time.time() - start, 1),
        "cpu_seconds": round(time.process_time() - cpu_start, 1),  # this process, all threads
    }
    if save_model:
        save_run(trainer, tokenizer, result, output_dir)
    return result


def save_run(trainer, tokenizer, result: dict, output_dir: str) -> None:
    """The trained model and tokenizer in `output_dir/final_model`, the result in `output_dir/result.json`."""
    trainer.model.save_pretrained(os.path.join(output_dir, "final_model"))
    tokenizer.save_pretrained(os.path.join(output_dir, "final_model"))
    with open(os.path.join(output_dir, "result.json"), "w") as f:
        json.dump(result, f, indent=1, default=str)
