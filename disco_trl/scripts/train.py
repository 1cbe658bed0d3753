#!/usr/bin/env python
# Copyright 2025 The disco-trl authors. Licensed under the Apache License, Version 2.0.
"""
Train a model with DisCO (Discriminative Constrained Optimization, arXiv:2505.12366) on a verifiable math set.

This one file is both `examples/train_disco.py` (a symlink to it, in TRL's script style) and the installed command
`disco-trl train`. Every option of `DiscoConfig` (which includes all of TRL's `GRPOConfig`), of TRL's `ModelConfig`
(model, dtype, LoRA, 4/8-bit) and of `DiscoScriptArguments` below can come from a YAML recipe, a flag, or both (flags
win):

    # CPU or one GPU
    python examples/train_disco.py --config recipes/lora/qwen2.5-0.5b-instruct_math_t4.yaml
    disco-trl train --config recipes/lora/qwen2.5-0.5b-instruct_math_t4.yaml --max_steps 20

    # several GPUs, DeepSpeed, vLLM: launch the same script with accelerate
    accelerate launch --config_file recipes/accelerate/zero3.yaml examples/train_disco.py \
        --config recipes/paper/qwen7b_logl.yaml

Before loading any weights the script checks, and stops with a message naming the setting and its fix: the batch
geometry (whole groups of `num_generations` completions per process, the recipe's questions per generation and per
update), that a checkpoint to resume from exists, is complete and has this run's batch settings, that a new run
would not overwrite an earlier run's checkpoints, that vLLM is installed when `use_vllm` is set, that the model
exists, and that the dataset has the columns the rewards need. docs/training.md has the launch command of every setup.
"""

from __future__ import annotations

import importlib
import os
import sys
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from trl import ModelConfig, TrlParser

from disco_trl import DiscoConfig


@dataclass
class DiscoScriptArguments:
    """Arguments of the training script that are neither training (`DiscoConfig`) nor model (`ModelConfig`) options."""

    dataset_name: str = field(
        default="deepscaler",
        metadata={
            "help": "Training set: 'deepscaler' (the paper's DeepScaleR-Preview), 'dapo-math-17k', 'math', a Hub "
            "dataset id, or a local JSON/JSONL/Parquet file. Read by `disco_trl.data.load_math_dataset`, which "
            "returns the columns `prompt` and `solution`."
        },
    )
    dataset_train_split: str | None = field(
        default=None, metadata={"help": "Split to train on (default: the source's training split)."}
    )
    dataset_limit: int | None = field(
        default=None, metadata={"help": "Keep only the first N questions (quick runs, debugging)."}
    )
    conversational: bool = field(
        default=True,
        metadata={"help": "Build chat-format prompts (the model's chat template is applied); False: plain text."},
    )
    question_field: str | None = field(
        default=None,
        metadata={"help": "For a local file or Hub dataset disco_trl.data does not know: the field with the problem."},
    )
    answer_field: str | None = field(
        default=None, metadata={"help": "Likewise: the field with the final answer (dotted paths reach into records)."}
    )
    solution_field: str | None = field(
        default=None,
        metadata={"help": "Likewise, when there is no answer field: a worked solution whose last \\boxed{} is the "
                  "answer."},
    )
    system_prompt: str | None = field(default=None, metadata={"help": "An optional system message for every prompt."})
    keep_columns: list[str] = field(
        default_factory=list,
        metadata={"help": "Other dataset fields to keep as columns (custom reward functions receive them)."},
    )
    reward_funcs: list[str] = field(
        default_factory=lambda: ["boxed_math_reward"],
        metadata={
            "help": "Reward functions: 'boxed_math_reward' (1 if the last \\boxed{} matches `solution`, the paper's "
            "binary reward) or a dotted import path 'package.module.function' with TRL's reward signature."
        },
    )
    expected_questions_per_generation: int | None = field(
        default=None,
        metadata={
            "help": "If set, stop unless each generation samples this many questions (generation_batch_size / "
            "num_generations). The paper's recipes set 128."
        },
    )
    expected_questions_per_update: int | None = field(
        default=None,
        metadata={
            "help": "If set, stop unless each optimizer update covers this many questions (per_device_train_batch_size "
            "x gradient_accumulation_steps x processes / num_generations) and say which gradient_accumulation_steps "
            "would. The paper's recipes set 32."
        },
    )


class ScriptError(Exception):
    """A problem with the inputs of a run, found before any compute is spent. The message says what to change."""


# ----------------------------------------------------------------------------------------------------- batch geometry
@dataclass(frozen=True)
class BatchGeometry:
    """How a launch cuts generation batches into optimizer updates (all counts are global, over processes)."""

    num_processes: int
    per_device_train_batch_size: int
    gradient_accumulation_steps: int
    num_generations: int
    generation_batch_size: int
    num_iterations: int = 1

    @property
    def completions_per_update(self) -> int:
        return self.per_device_train_batch_size * self.gradient_accumulation_steps * self.num_processes

    @property
    def questions_per_update(self) -> Fraction:
        return Fraction(self.completions_per_update, self.num_generations)

    @property
    def questions_per_generation(self) -> Fraction:
        return Fraction(self.generation_batch_size, self.num_generations)

    @property
    def updates_per_generation(self) -> Fraction:
        return Fraction(self.generation_batch_size * self.num_iterations, self.completions_per_update)

    def describe(self) -> str:
        return (
            f"{self.questions_per_generation} questions x {self.num_generations} completions per generation; "
            f"{self.questions_per_update} questions per optimizer update ({self.num_processes} "
            f"{'process' if self.num_processes == 1 else 'processes'} x "
            f"{self.per_device_train_batch_size} sequences per micro-batch x {self.gradient_accumulation_steps} "
            f"accumulation steps); {self.updates_per_generation} updates per generation"
        )


def batch_geometry(args: DiscoConfig, num_processes: int | None = None) -> BatchGeometry:
    """The geometry of `args` when launched on `num_processes` processes (default: this launch's)."""
    return BatchGeometry(
        num_processes=num_processes or args.world_size,
        per_device_train_batch_size=args.per_device_train_batch_size,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        num_generations=args.num_generations,
        generation_batch_size=args.generation_batch_size,
        num_iterations=args.num_iterations,
    )


def check_batch_geometry(
    script_args: DiscoScriptArguments, args: DiscoConfig, num_processes: int | None = None
) -> BatchGeometry:
    """Check the launch against the recipe's expected questions per generation and per update.

    (Whole groups per process are checked by `DiscoConfig` itself, when the arguments are parsed.)
    """
    geo = batch_geometry(args, num_processes)
    g = geo.num_generations
    want_gen = script_args.expected_questions_per_generation
    if want_gen is not None and geo.questions_per_generation != want_gen:
        raise ScriptError(
            f"generation_batch_size={geo.generation_batch_size} samples {geo.questions_per_generation} questions x "
            f"{g} completions per generation, but this recipe expects expected_questions_per_generation={want_gen}. "
            f"Set generation_batch_size={want_gen * g} (it counts completions over all processes)."
        )
    want_upd = script_args.expected_questions_per_update
    if want_upd is not None and geo.questions_per_update != want_upd:
        per_step = geo.per_device_train_batch_size * geo.num_processes
        needed = Fraction(want_upd * g, per_step)
        if needed.denominator == 1:
            fix = f"With this launch, set gradient_accumulation_steps={needed.numerator}."
        else:
            fix = (
                f"No gradient_accumulation_steps gives {want_upd * g} completions with {geo.num_processes} processes x "
                f"{geo.per_device_train_batch_size} per device; launch on a number of processes that divides "
                f"{Fraction(want_upd * g, geo.per_device_train_batch_size)}, or change per_device_train_batch_size."
            )
        raise ScriptError(
            f"This launch updates on {geo.questions_per_update} questions ({geo.num_processes} processes x "
            f"per_device_train_batch_size={geo.per_device_train_batch_size} x "
            f"gradient_accumulation_steps={geo.gradient_accumulation_steps} / num_generations={g}), but the recipe "
            f"expects expected_questions_per_update={want_upd}. {fix}"
        )
    if want_gen is not None and want_upd is not None and geo.updates_per_generation.denominator != 1:
        raise ScriptError(
            f"{geo.describe()}: a generation batch must be a whole number of updates (num_iterations="
            f"{geo.num_iterations})."
        )
    return geo


# ------------------------------------------------------------------------------------------------------------ checks
def check_vllm(args: DiscoConfig, model: str | None = None) -> None:
    """`use_vllm` needs a vLLM that can run here (disco_trl.vllm_support: installed, a device it runs on, a model it
    serves), gathered weights, and for server mode a CUDA device (TRL pushes weights to the server over NCCL)."""
    if not args.use_vllm:
        return
    from disco_trl.vllm_support import VLLMUnavailable, check_vllm_can_run

    try:
        check_vllm_can_run(args, model)
    except VLLMUnavailable as err:
        raise ScriptError(str(err)) from err
    import torch

    if args.vllm_mode == "server" and (args.use_cpu or not torch.cuda.is_available()):
        raise ScriptError(
            "vllm_mode='server' needs a CUDA device in the training process: TRL pushes the weights to the server "
            "over NCCL (VLLMClient.init_communicator). On a machine without a GPU use vllm_mode='colocate' (vLLM's "
            "CPU build, docs/training.md)."
        )
    if not args.ds3_gather_for_generation:
        raise ScriptError(
            "ds3_gather_for_generation=False cannot be used with vLLM (TRL syncs full weights into vLLM); set it to "
            "True, or drop use_vllm."
        )


_LOCAL_PREFIXES = ("/", "./", "../", "~", ".\\", "..\\")


def check_model(model_args: ModelConfig, args: DiscoConfig) -> None:
    """The model must be a local directory saved with `save_pretrained`, or a model id the Hub can resolve."""
    name = model_args.model_name_or_path
    if not name:
        raise ScriptError(
            "model_name_or_path is not set: pass a Hub id (e.g. deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B) or a local "
            "directory saved with save_pretrained (in the recipe or as --model_name_or_path)."
        )
    path = os.path.expanduser(name)
    if os.path.isdir(path):
        if not any(os.path.isfile(os.path.join(path, f)) for f in ("config.json", "adapter_config.json")):
            raise ScriptError(
                f"model_name_or_path={name!r} is a directory without config.json: point it at a directory written by "
                "model.save_pretrained(...) (with its tokenizer), or at a Hub id."
            )
        return
    if os.path.exists(path):
        raise ScriptError(
            f"model_name_or_path={name!r} is a file; it must be a model directory (save_pretrained) or a Hub id."
        )
    if name.startswith(_LOCAL_PREFIXES) or name.count("/") > 1 or os.sep != "/" and os.sep in name:
        raise ScriptError(
            f"model_name_or_path={name!r} does not exist: no such directory (and it is not a Hub id of the form "
            "'organisation/model'). Check the path, or save the model there first with save_pretrained."
        )
    # A Hub id: resolve its config now (a few kB) rather than failing after the dataset is prepared.
    from transformers import AutoConfig

    try:
        AutoConfig.from_pretrained(name, revision=model_args.model_revision, trust_remote_code=args.trust_remote_code)
    except (OSError, ValueError) as err:
        raise ScriptError(
            f"model_name_or_path={name!r} is not a local directory and could not be resolved on the Hugging Face Hub "
            f"(revision {model_args.model_revision!r}): {err}"
        ) from err


def resolve_resume(args: DiscoConfig) -> None:
    """`resume_from_checkpoint`: a checkpoint directory, or `last` (also `true`) for the newest complete one in
    output_dir. Without it, an output_dir holding an earlier run's checkpoints is refused unless overwrite_output_dir
    (the rules: disco_trl.checkpoints)."""
    from disco_trl.checkpoints import CheckpointError
    from disco_trl.checkpoints import resolve_resume as resolve

    value = args.resume_from_checkpoint
    if value is None or value is False or str(value).lower() in ("", "false", "none"):
        value = None
    elif str(value).lower() in ("last", "true"):
        value = True
    try:
        args.resume_from_checkpoint = resolve(args, value, args.world_size, args.process_index)
    except CheckpointError as err:
        raise ScriptError(str(err)) from err


def load_reward_funcs(names: list[str]) -> list[Any]:
    """Resolve reward names: `boxed_math_reward`, or dotted import paths to functions with TRL's reward signature."""
    if not names:
        raise ScriptError("reward_funcs is empty: DisCO needs a reward to split completions into positives and "
                          "negatives (use boxed_math_reward for math).")
    from disco_trl.rewards import boxed_math_reward

    registry = {"boxed_math_reward": boxed_math_reward}
    funcs = []
    for name in names:
        if name in registry:
            funcs.append(registry[name])
            continue
        if "." not in name:
            raise ScriptError(
                f"reward function {name!r} is unknown: use one of {sorted(registry)} or a dotted import path "
                "such as my_package.rewards.my_reward."
            )
        module_name, func_name = name.rsplit(".", 1)
        sys.path.insert(0, os.getcwd())  # as TRL's scripts do: rewards defined next to the recipe
        try:
            funcs.append(getattr(importlib.import_module(module_name), func_name))
        except (ImportError, AttributeError) as err:
            raise ScriptError(f"could not import reward function {name!r}: {err}") from err
    return funcs


def load_train_dataset(script_args: DiscoScriptArguments, reward_funcs: list[Any]):
    """Load the training set with `disco_trl.data.load_math_dataset`; check it has what the rewards read."""
    from disco_trl.data import load_math_dataset
    from disco_trl.reward_checks import check_reward_columns

    source = script_args.dataset_name
    try:
        dataset = load_math_dataset(
            source,
            script_args.dataset_train_split,
            conversational=script_args.conversational,
            limit=script_args.dataset_limit,
            question_field=script_args.question_field,
            answer_field=script_args.answer_field,
            solution_field=script_args.solution_field,
            system_prompt=script_args.system_prompt,
            keep_columns=script_args.keep_columns,
        )
    except (FileNotFoundError, ValueError, RuntimeError) as err:
        raise ScriptError(
            f"could not load the training set dataset_name={source!r}: {err} (script options: --question_field, "
            "--answer_field, --solution_field, --keep_columns)"
        ) from err
    # load_math_dataset always makes `prompt` and `solution` (what boxed_math_reward reads); custom rewards may read
    # other columns, which must be carried over from the source.
    try:
        check_reward_columns(reward_funcs, dataset)
    except ValueError as err:
        raise ScriptError(
            f"{err} With this script, carry a field of dataset_name={source!r} over with --keep_columns NAME."
        ) from err
    return dataset


# -------------------------------------------------------------------------------------------------------------- main
def make_parser(prog: str | None = "disco-trl train") -> TrlParser:
    return TrlParser((DiscoScriptArguments, DiscoConfig, ModelConfig), prog=prog)


def prepare(script_args: DiscoScriptArguments, training_args: DiscoConfig, model_args: ModelConfig):
    """Every check that can fail on the inputs, cheapest first, before any weights are loaded."""
    geometry = check_batch_geometry(script_args, training_args)
    resolve_resume(training_args)
    reward_funcs = load_reward_funcs(script_args.reward_funcs)
    check_model(model_args, training_args)
    check_vllm(training_args, model_args.model_name_or_path)  # after check_model: it reads the model's config
    dataset = load_train_dataset(script_args, reward_funcs)
    return geometry, reward_funcs, dataset


def train(script_args, training_args, model_args, geometry, reward_funcs, dataset):
    import transformers
    from packaging.version import Version
    from trl import get_peft_config, get_quantization_config

    from disco_trl import DiscoTrainer

    model_init_kwargs = dict(
        revision=model_args.model_revision,
        trust_remote_code=training_args.trust_remote_code,
        attn_implementation=model_args.attn_implementation,
        dtype=model_args.dtype,
    )
    if training_args.model_init_kwargs is not None:
        model_init_kwargs.update(training_args.model_init_kwargs)
    training_args.model_init_kwargs = model_init_kwargs

    trainer = DiscoTrainer(
        model=model_args.model_name_or_path,
        reward_funcs=reward_funcs,
        args=training_args,
        train_dataset=dataset,
        peft_config=get_peft_config(model_args),
        quantization_config=get_quantization_config(model_args),
    )
    trainer.accelerator.print(
        f"DisCO ({training_args.score_type}, {training_args.disco_variant}, tau={training_args.tau}) on "
        f"{len(dataset)} questions: {geometry.describe()}."
    )
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model(training_args.output_dir)
    trainer.save_state()  # trainer_state.json: the logged training dynamics (reward, entropy, disco/kl, step_time, ...)
    trainer.accelerator.print(f"Model saved to {training_args.output_dir}.")
    if training_args.push_to_hub:
        trainer.push_to_hub(dataset_name=script_args.dataset_name)
    if Version(transformers.__version__) >= Version("5.18.0"):
        trainer.end()  # finish the trackers and destroy the process group
    return trainer


def main(argv: list[str] | None = None, prog: str | None = "disco-trl train") -> int:
    """Entry point of `disco-trl train` and of `python examples/train_disco.py`. Returns the exit status."""
    parser = make_parser(prog)
    try:
        script_args, training_args, model_args = parser.parse_args_and_config(args=argv)
    except ValueError as err:  # DiscoConfig/GRPOConfig/TrainingArguments validation, unknown options
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return 2
    try:
        geometry, reward_funcs, dataset = prepare(script_args, training_args, model_args)
    except ScriptError as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return 2
    train(script_args, training_args, model_args, geometry, reward_funcs, dataset)
    return 0


if __name__ == "__main__":
    sys.exit(main(prog=None))  # argparse names the program after the script that was run
