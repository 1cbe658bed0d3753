"""Run several DisCO trainings in sequence under one DeepSpeed launch and save what each rank saw: used by
tests/test_deepspeed.py.

Launched as `accelerate launch --config_file recipes/accelerate/zero{2,3}.yaml --num_processes 2 --mixed_precision no
tests/ds_worker.py OUT CASES_JSON`: the DeepSpeed settings are the shipped config's (accelerate turns them into the
environment that TrainingArguments reads); each case is a dict with a `kind` and the training arguments that differ
from `disco_testing.layout_config`. For every case, each rank writes OUT/<name>.rank<r>.pt.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path

import torch
from disco_testing import (
    REWARDS,
    RecordingTrainer,
    layout_config,
    leave_together,
    prompt_dataset,
    tiny_model_and_tokenizer,
)
from test_resume import StopAt
from transformers import TrainerCallback


def full_state(model) -> dict[str, torch.Tensor]:
    """Every parameter in full (gathered from the ZeRO-3 partitions; ZeRO-2 keeps full parameters), cloned."""
    import deepspeed

    params = dict(model.named_parameters())
    with deepspeed.zero.GatheredParameters(list(params.values()), modifier_rank=None):
        return {name: p.detach().clone().cpu() for name, p in params.items()}


class CaptureFullParams(TrainerCallback):
    """The full parameters after every optimizer step (DeepSpeed steps inside the last micro-step's backward, so
    `on_pre_optimizer_step` would already see the update)."""

    def __init__(self):
        self.after_step: list[dict[str, torch.Tensor]] = []

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.after_step.append(full_state(model))


@contextlib.contextmanager
def without_launcher_deepspeed_settings():
    """The environment of a DeepSpeed JSON launch: accelerate refuses a `deepspeed=` config next to the settings an
    accelerate config's deepspeed_config section puts in the environment."""
    prefixes = ("ACCELERATE_DEEPSPEED_", "ACCELERATE_GRADIENT_", "ACCELERATE_CONFIG_DS_")
    names = [k for k in os.environ if k.startswith(prefixes)]
    saved = {k: os.environ.pop(k) for k in names + ["ACCELERATE_MIXED_PRECISION"] if k in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def make_trainer(out: Path, case: dict, callbacks=(), peft_config=None):
    config = {k: v for k, v in case.items() if k not in ("name", "kind", "layout", "save_model", "stop_at", "reward",
                                                         "num_prompts", "sampling_spread")}
    config.setdefault("optim", "sgd")
    model, tokenizer = tiny_model_and_tokenizer(dtype=torch.float32)
    args = layout_config(out, *case["layout"], **config)
    trainer = RecordingTrainer(
        model=model, reward_funcs=REWARDS[case.get("reward", "parity")], args=args,
        train_dataset=prompt_dataset(case.get("num_prompts", 24)), processing_class=tokenizer,
        callbacks=list(callbacks), peft_config=peft_config,
    )
    trainer.sampling_spread = case.get("sampling_spread", 0.0)  # sampler log-probs that are not pi_old's
    return trainer, model


def engine_facts(trainer) -> dict:
    engine = trainer.model_wrapped
    return {
        "engine": type(engine).__name__,
        "zero_stage": engine.zero_optimization_stage(),
        "engine_gradient_accumulation_steps": engine.gradient_accumulation_steps(),
        "engine_micro_batch": engine.train_micro_batch_size_per_gpu(),
        "engine_global_steps": engine.global_steps,
        "optimizer": type(engine.optimizer).__name__,
        "client_optimizer": type(getattr(engine, "client_optimizer", None)).__name__,
    }


def run_layout_case(out: Path, case: dict) -> dict:
    """Train with fixed generations; return the initial and per-step full parameters and the micro-batches seen."""
    capture = CaptureFullParams()
    trainer, model = make_trainer(out, case, [capture])
    initial = full_state(model)
    trainer.train()
    record = {
        "initial": initial,
        "params": [initial] + capture.after_step[:-1],  # before each step, as in disco_testing.run_layout
        "final": capture.after_step[-1],
        "micro_inputs": trainer.micro_inputs,
        "rounds": trainer.rounds,
        "log_history": trainer.state.log_history,
        "rank": trainer.accelerator.process_index,
        **engine_facts(trainer),
    }
    if case.get("save_model"):
        trainer.save_model(str(out / "saved_model"))
    return record


def run_lora_case(out: Path, case: dict) -> dict:
    from peft import LoraConfig

    peft_config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0)
    trainer, _ = make_trainer(out, case, peft_config=peft_config)
    initial = full_state(trainer.model)
    trainer.train()
    trainer.save_model(str(out / "adapter"))
    return {"initial": initial, "final": full_state(trainer.model), "rank": trainer.accelerator.process_index,
            "trainable": [n for n, p in trainer.model.named_parameters() if p.requires_grad], **engine_facts(trainer)}


def run_resume_case(out: Path, case: dict) -> dict:
    """An uninterrupted run, and a run stopped at a mid-generation checkpoint then resumed from it."""
    straight, _ = make_trainer(out / "straight", dict(case, save_strategy="no"))
    straight.train()
    stop = case["stop_at"]
    interrupted, _ = make_trainer(out / "resumed", dict(case, save_strategy="steps", save_steps=stop), [StopAt(stop)])
    interrupted.train()
    checkpoint = out / "resumed" / f"checkpoint-{stop}"
    at_checkpoint = full_state(interrupted.model)
    resumed, _ = make_trainer(out / "resumed", dict(case, save_strategy="no"))
    resumed.train(resume_from_checkpoint=str(checkpoint))
    return {
        "straight": full_state(straight.model), "at_checkpoint": at_checkpoint, "resumed": full_state(resumed.model),
        "steps": (straight.state.global_step, interrupted.state.global_step, resumed.state.global_step),
        "checkpoint_files": sorted(str(p.relative_to(checkpoint)) for p in checkpoint.rglob("*") if p.is_file()),
        "rank": resumed.accelerator.process_index, **engine_facts(resumed),
    }


def refusal(build) -> str | None:
    try:
        build()
    except ValueError as err:
        return str(err)
    return None


def run_geometry_case(out: Path, case: dict) -> dict:
    """DeepSpeed configs that batch otherwise than the training arguments, and one that agrees with them."""
    import io

    from disco_trl.scripts import train as train_script

    def json_config(**batching):
        config = {"zero_optimization": {"stage": 2}, **batching}
        with without_launcher_deepspeed_settings():
            layout_config(out, 4, 2, 2, deepspeed=config)

    def script(*extra) -> tuple[int, str]:
        argv = ["--model_name_or_path", str(out / "never-loaded"), "--output_dir", str(out), "--num_generations", "4",
                "--per_device_train_batch_size", "4", "--gradient_accumulation_steps", "2", "--report_to", "none",
                *extra]
        stderr = io.StringIO()
        with contextlib.redirect_stderr(stderr):
            status = train_script.main(argv)
        return status, stderr.getvalue().strip().splitlines()[-1]

    # What `accelerate launch` exports for `gradient_accumulation_steps: 4` in an accelerate config's deepspeed_config
    os.environ["ACCELERATE_GRADIENT_ACCUMULATION_STEPS"] = "4"
    try:
        script_accumulation = script("--use_cpu", "true")
    finally:
        os.environ.pop("ACCELERATE_GRADIENT_ACCUMULATION_STEPS")
    return {
        "rank": int(os.environ["RANK"]),
        "json_without_accumulation": refusal(lambda: json_config(train_micro_batch_size_per_gpu="auto")),
        "json_micro_batch": refusal(lambda: json_config(train_micro_batch_size_per_gpu=8)),
        "json_train_batch": refusal(lambda: json_config(train_batch_size=32, gradient_accumulation_steps="auto")),
        "json_agreeing": refusal(lambda: json_config(train_micro_batch_size_per_gpu=4, gradient_accumulation_steps=2)),
        "script_accumulation": script_accumulation,
        # last: without use_cpu, accelerate re-initialises its process state with 1 process
        "script_without_use_cpu": script(),
    }


RUNNERS = {"layout": run_layout_case, "lora": run_lora_case, "resume": run_resume_case, "geometry": run_geometry_case}


if __name__ == "__main__":
    out_dir, cases = Path(sys.argv[1]), json.loads(Path(sys.argv[2]).read_text())
    for case in cases:
        case_dir = out_dir / case["name"]
        record = RUNNERS[case["kind"]](case_dir, case)
        # which launch started this process: torchrun's node (machine) rank, local rank and world size
        record["launch"] = {k: os.environ.get(k) for k in ("GROUP_RANK", "LOCAL_RANK", "RANK", "WORLD_SIZE")}
        torch.save(record, out_dir / f"{case['name']}.rank{record['rank']}.pt")
    leave_together()
