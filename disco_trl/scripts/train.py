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
exists, its tokenizer is not empty, the reward functions accept what TRL passes them, and the dataset has the columns
they need. A run that already reached its end (`--resume_from_checkpoint last` in a requeued job of a finished run)
exits 0 with one line, "already finished at step N", touching nothing. docs/training.md has the launch command of
every setup.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

import yaml
from trl import ModelConfig, TrlParser, get_peft_config, get_quantization_config

from disco_trl import DiscoConfig, DiscoTrainer
from disco_trl.checkpoints import DiskFullError, NonFiniteError, RunFinished
from disco_trl.distributed import lost_peer_message
from disco_trl.preflight import FolderInUse, FolderLock, hold_folder
from disco_trl.rewards.checks import RewardOutputError
from disco_trl.scripts.checks import (
    ScriptError,
    check_batch_geometry,
    check_inputs_against_model,
    check_model,
    check_script_arguments,
    check_vllm,
    load_reward_funcs,
    load_train_dataset,
    resolve_resume_setting,
)


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
            "help": "If set, stop unless each optimizer update covers this many questions "
            "(per_device_train_batch_size "
            "x gradient_accumulation_steps x processes / num_generations) and say which gradient_accumulation_steps "
            "would. The paper's recipes set 32."
        },
    )

    def __post_init__(self):
        # a YAML recipe may give one name as a string ("reward_funcs: boxed_math_reward"): a list of one
        for name in ("reward_funcs", "keep_columns"):
            if isinstance(getattr(self, name), str):
                setattr(self, name, [getattr(self, name)])


# -------------------------------------------------------------------------------------------------------------- main
def make_parser(prog: str | None = "disco-trl train") -> TrlParser:
    return TrlParser((DiscoScriptArguments, DiscoConfig, ModelConfig), prog=prog)


def prepare(script_args: DiscoScriptArguments, training_args: DiscoConfig, model_args: ModelConfig):
    """Every check that can fail on the inputs, cheapest first, before any weights are loaded."""
    check_script_arguments(script_args)
    geometry = check_batch_geometry(script_args, training_args)
    FolderLock(training_args.output_dir, "a training run").check_free()  # DiscoTrainer.train takes it
    resolve_resume_setting(training_args)
    reward_funcs = load_reward_funcs(script_args.reward_funcs)
    model_config = check_model(model_args, training_args)
    check_vllm(training_args, model_args.model_name_or_path)  # after check_model: it reads the model's config
    dataset = load_train_dataset(script_args, reward_funcs)
    check_inputs_against_model(model_config, dataset, model_args, training_args)
    return geometry, reward_funcs, dataset


def train(script_args, training_args, model_args, geometry, reward_funcs, dataset):
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
    # the folder is held from the first step to the saved model (DiscoTrainer.train takes it again, re-entrantly)
    with hold_folder(trainer.accelerator, training_args.output_dir, "a training run (disco-trl train)"):
        trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
        trainer.save_model(training_args.output_dir)
        trainer.save_state()  # trainer_state.json: the logged dynamics (reward, entropy, disco/kl, step_time, ...)
    trainer.accelerator.print(f"Model saved to {training_args.output_dir}.")
    if training_args.push_to_hub:
        trainer.push_to_hub(dataset_name=script_args.dataset_name)
    # Leave together, then finish the trackers and destroy the process group: a process that tears its group down
    # while another still uses it (rank 0 saving its state, pushing to the Hub) can abort at exit.
    trainer.accelerator.wait_for_everyone()
    trainer.end()
    return trainer


def main(argv: list[str] | None = None, prog: str | None = "disco-trl train") -> int:
    """Entry point of `disco-trl train` and of `python examples/train_disco.py`. Returns the exit status."""
    parser = make_parser(prog)
    if (sys.argv[1:] if argv is None else argv)[-1:] == ["--config"]:
        return _error(parser, "--config needs the path of a YAML recipe, e.g. --config recipes/paper/qwen7b_logl.yaml")
    try:
        script_args, training_args, model_args = parser.parse_args_and_config(args=argv)
    except ValueError as err:  # DiscoConfig/GRPOConfig/TrainingArguments validation, unknown options
        return _error(parser, err)
    except (OSError, yaml.YAMLError) as err:  # --config: a missing or unreadable file, broken YAML
        return _error(parser, f"could not read the --config file: {err}")
    try:
        geometry, reward_funcs, dataset = prepare(script_args, training_args, model_args)
    except (ScriptError, FolderInUse) as err:
        return _error(parser, err)
    except RunFinished as done:  # a requeued job of a finished run: nothing to do, nothing touched
        if training_args.process_index == 0:
            print(f"{parser.prog}: {done}", flush=True)
        return 0
    try:
        train(script_args, training_args, model_args, geometry, reward_funcs, dataset)
    except FolderInUse as err:  # another run took the folder between the check above and the start
        return _error(parser, err)
    except (RewardOutputError, DiskFullError, NonFiniteError) as err:  # found during training
        return _error(parser, err, during_training=True)
    except RuntimeError as err:  # torch.distributed's errors are RuntimeErrors
        message = lost_peer_message(err, training_args.ddp_timeout)
        if message is None:
            raise
        return _error(parser, message, during_training=True)
    return 0


def _error(parser, err, during_training: bool = False) -> int:
    """One line on stderr. Exit status 2 (argparse's, for bad usage) before training; 1 for an error found during
    training, whose line starts on a line of its own (after the progress bar)."""
    start = "\n" if during_training else ""
    print(f"{start}{parser.prog}: error: {' '.join(str(err).split())}", file=sys.stderr, flush=True)
    return 1 if during_training else 2


if __name__ == "__main__":
    sys.exit(main(prog=None))  # argparse names the program after the script that was run
