#!/usr/bin/env python
"""What `skip_uninformative_questions` saves: step time and loss-only time against GRPOTrainer, as ratios, at several
fractions of informative questions, in one run.

Methods, all on the same locally built model, batch geometry, fixed completions (benchlib.methods) and seed, named as
in the registry `disco_trl.demo.methods`:

* `trl-default`: TRL's GRPOTrainer, default loss, beta=0 (the baseline of every ratio);
* `disco`: DiscoTrainer, log-L, DRO, the option off (the paper's objective: every question is trained on);
* `disco-skip-25`, `disco-skip-50`, `disco-skip-75`: `disco` with the option on, with 25%, 50%, 75% of the
  questions informative.

The reward decides which questions are informative: question i (its prompt starts "Question i:") is informative when
i % 20 < 20 * fraction; the completions of an informative question are positive for the first 2 of every 8 (so it has
both kinds), the others get 0 (all negative). GRPO and the option-off DisCO do the same work whatever the fraction;
they run with the 50% reward. Which questions a generation batch draws is random (the sampler), so the fraction
trained on is measured and reported (`disco/frac_mixed_questions` as the trainer saw it).

Protocol (benchlib.timing): in each repetition every method has its own trainer, their optimizer steps interleave one
at a time (the baton), order rotated between repetitions; per trainer `--warmup-steps` untimed steps, then `--steps`
timed ones. Loss-only: `compute_loss` + backward over **all the micro-batches of one optimizer step** as the trainer
prepares them (with the option on: the packed kept questions and the placeholders), interleaved across methods. Every
ratio is to `trl-default` in the same repetition; median [min, max] over repetitions.

    flock /tmp/disco-cpu.lock python benchmarks/bench_skipping.py --output-dir docs/skipping
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from benchlib.methods import BASELINE, Workload, build_prompts, build_trainer, make_model_dir
from benchlib.report import machine_info
from benchlib.timing import Baton, MemoryMeter, loss_and_backward, make_step_timer, run_in_threads
from datasets import Dataset
from transformers import TrainerCallback
from transformers.utils import logging as hf_logging


def methods_for(fractions: list[float]) -> dict[str, tuple[str, dict, str, float]]:
    """name -> (registry method, config overrides, label, informative fraction of its reward)."""
    methods = {
        BASELINE: (BASELINE, {}, "GRPOTrainer, TRL default loss, beta=0", 0.5),
        "disco": ("disco", {}, "DiscoTrainer, log-L, DRO, skipping off", 0.5),
    }
    for f in fractions:
        methods[f"disco-skip-{round(100 * f)}"] = (
            "disco", {"skip_uninformative_questions": True},
            f"DiscoTrainer, skip_uninformative_questions=True, {round(100 * f)}% informative", f)
    return methods


def informative_reward(fraction: float, group_size: int):
    """Question i informative iff i % 20 < 20 * fraction; its completions: 2 positives in every group of 8."""
    positives = max(1, round(group_size / 4))

    def reward(prompts, completion_ids, **kwargs):
        out = []
        for row, prompt in enumerate(prompts):
            text = prompt if isinstance(prompt, str) else prompt[-1]["content"]
            question = int(re.search(r"Question (\d+):", text).group(1))
            informative = question % 20 < round(20 * fraction)
            out.append(1.0 if informative and row % group_size < positives else 0.0)
        return out

    reward.__name__ = f"informative_{round(100 * fraction)}"
    return reward


def prepared_step(trainer) -> list[dict]:
    """The micro-batches of one optimizer step, as the trainer's own `_prepare_inputs` makes them."""
    trainer.model.train()
    trainer._buffered_inputs = None
    accumulation = trainer.args.gradient_accumulation_steps
    trainer.current_gradient_accumulation_steps = accumulation
    generation_batch = next(iter(trainer.get_train_dataloader()))
    inputs = []
    for micro_step in range(accumulation):
        trainer._step = micro_step
        inputs.append(trainer._prepare_inputs(generation_batch))
    return inputs


class MixedFractionProbe:
    """Keeps the trainer's `disco/frac_mixed_questions` values (TRL clears its metrics when it logs at the end)."""

    def __init__(self):
        probe = self

        class Callback(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                probe.values = list(probe.trainer._metrics["train"].get("disco/frac_mixed_questions", []))

        self.callback, self.trainer, self.values = Callback(), None, []


def run_repetition(order, methods, geometry, model_path, tokenizer, dataset, args, workdir, meter):
    baton = Baton(list(range(len(order))))
    timers, trainers, probes = [], [], []
    for slot, name in enumerate(order):
        method, overrides, _, fraction = methods[name]
        timer = make_step_timer(meter, args.warmup_steps, args.steps, baton, slot)
        probe = MixedFractionProbe()
        trainer = build_trainer(method, geometry, model_path, tokenizer, dataset, args,
                                args.warmup_steps + args.steps + 1, workdir, [probe.callback, timer],
                                reward_funcs=informative_reward(fraction, geometry.num_generations),
                                overrides=overrides, run_name=name)
        timer.trainer = probe.trainer = trainer
        probes.append(probe)
        timers.append(timer)
        trainers.append(trainer)
    errors = {}

    def work(slot):
        try:
            baton.wait_turn(slot)
            trainers[slot].train()
        except BaseException as exc:  # reported below
            errors[slot] = exc
        finally:
            baton.pass_on(slot, finished=True)

    run_in_threads(order, work, errors)
    seen = [probe.values for probe in probes]

    steps = [prepared_step(trainer) for trainer in trainers]
    loss_times = [[] for _ in order]
    for call in range(args.loss_reps + 1):
        for slot, trainer in enumerate(trainers):
            trainer.model.zero_grad(set_to_none=True)
            t0 = time.perf_counter()
            for inputs in steps[slot]:
                loss_and_backward(trainer, inputs)
            if call >= 1:
                loss_times[slot].append(time.perf_counter() - t0)
            trainer.model.zero_grad(set_to_none=True)
    results = []
    for slot, name in enumerate(order):
        results.append({
            "method": name,
            "step_s": timers[slot].times,
            "step_median_s": statistics.median(timers[slot].times),
            "loss_step_s": loss_times[slot],
            "loss_step_median_s": statistics.median(loss_times[slot]),
            "frac_mixed_seen": statistics.mean(seen[slot]) if seen[slot] else None,
            "loss_step_rows": [int((b["completion_mask"].sum(dim=1) > 0).sum()) for b in steps[slot]],
        })
    trainers.clear()  # free the trainers before the next repetition builds its own
    steps.clear()
    meter.settle()
    return results


def summarise(runs, names):
    reps = sorted({r["rep"] for r in runs})
    by = {(r["rep"], r["method"]): r for r in runs}
    out = {}
    for name in names:
        entry = {}
        for key in ("step_median_s", "loss_step_median_s"):
            values = [by[(rep, name)][key] for rep in reps]
            ratios = [by[(rep, name)][key] / by[(rep, BASELINE)][key] for rep in reps]
            entry[key] = statistics.median(values)
            entry[key.replace("median_s", "ratio")] = {"median": statistics.median(ratios), "min": min(ratios),
                                                       "max": max(ratios)}
        seen = [by[(rep, name)]["frac_mixed_seen"] for rep in reps if by[(rep, name)]["frac_mixed_seen"] is not None]
        entry["frac_mixed_seen"] = statistics.mean(seen) if seen else None
        rows = [sum(by[(rep, name)]["loss_step_rows"]) for rep in reps]
        entry["loss_step_rows"] = statistics.mean(rows)
        out[name] = entry
    return out


def markdown(result) -> str:
    def ratio(s):
        return f"{s['median']:.3f} [{s['min']:.3f}, {s['max']:.3f}]"

    lines = [f"Command: `{result['command']}`", "",
             f"| method | informative questions (seen) | step ms | step ratio to {BASELINE} | "
             f"loss-only ms (one step) | loss-only ratio to {BASELINE} | rows trained in the loss-only step |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for name, e in result["summary"].items():
        seen = "n/a" if e["frac_mixed_seen"] is None else f"{e['frac_mixed_seen']:.2f}"
        lines.append(f"| `{name}` | {seen} | {1e3 * e['step_median_s']:.1f} | {ratio(e['step_ratio'])} | "
                     f"{1e3 * e['loss_step_median_s']:.1f} | {ratio(e['loss_step_ratio'])} | "
                     f"{e['loss_step_rows']:.0f} |")
    return "\n".join(lines) + "\n"


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="bench_skipping.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke configuration (tiny model, 1 repetition)")
    p.add_argument("--reps", type=int, default=None, help="repetitions (default 5; quick 1)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per run (default 3; quick 1)")
    p.add_argument("--warmup-steps", type=int, default=1)
    p.add_argument("--loss-reps", type=int, default=None, help="timed loss-only passes (default 3; quick 1)")
    p.add_argument("--fractions", default="0.25,0.5,0.75", help="informative fractions to measure")
    p.add_argument("--num-generations", type=int, default=8)
    p.add_argument("--questions-per-microbatch", type=int, default=2)
    p.add_argument("--grad-accum", type=int, default=4)
    p.add_argument("--completion-length", type=int, default=None, help="tokens per completion (default 128; quick 16)")
    p.add_argument("--prompt-tokens", type=int, default=64)
    p.add_argument("--model-preset", default=None, help="benchlib model preset (default cpu-small; quick tiny)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output-dir", default="outputs/bench_skipping")
    args = p.parse_args(argv)
    quick = args.quick
    for name, (q, full) in dict(reps=(1, 5), steps=(1, 3), loss_reps=(1, 3), completion_length=(16, 128),
                                model_preset=("tiny", "cpu-small")).items():
        if getattr(args, name) is None:
            setattr(args, name, q if quick else full)
    args.fractions = [float(f) for f in args.fractions.split(",") if f.strip()]
    if not all(0 < f <= 1 for f in args.fractions):
        p.error("--fractions must be numbers in (0, 1]")
    # what benchlib.methods.build_trainer and make_model_dir read
    args.model, args.model_dtype, args.bf16_enabled = None, "float32", False
    args.device_resolved, args.gradient_checkpointing, args.ref_beta = "cpu", "on", 0.04
    return args


def main(argv=None):
    args = parse_args(argv)
    hf_logging.set_verbosity_error()
    torch.set_num_threads(args.threads)
    meter = MemoryMeter("cpu")
    methods = methods_for(args.fractions)
    names = list(methods)
    geometry = Workload(args.num_generations, args.questions_per_microbatch, args.completion_length, args.grad_accum)
    t0 = time.perf_counter()
    runs = []
    with tempfile.TemporaryDirectory(prefix="bench-skipping-") as tmp:
        workdir = Path(tmp)
        model_path, tokenizer, model_desc = make_model_dir(
            args, args.model_preset, args.completion_length + 4 * args.prompt_tokens + 64, workdir)
        n = (args.warmup_steps + args.steps + 3) * geometry.questions_per_microbatch * geometry.grad_accum
        dataset = Dataset.from_dict({"prompt": build_prompts(tokenizer, max(n, 40), args.prompt_tokens, args.seed)})
        # untimed warm-up of the baseline: imports, allocator
        run_repetition([BASELINE], methods, geometry, model_path, tokenizer, dataset, args, workdir, meter)
        for rep in range(args.reps):
            order = names[rep % len(names):] + names[: rep % len(names)]
            for r in run_repetition(order, methods, geometry, model_path, tokenizer, dataset, args, workdir, meter):
                r["rep"] = rep
                runs.append(r)
                print(f"[bench-skipping] rep {rep} {r['method']:>14}: step {1e3 * r['step_median_s']:7.1f} ms, "
                      f"loss-only step {1e3 * r['loss_step_median_s']:7.1f} ms, rows {sum(r['loss_step_rows'])}",
                      flush=True)
    result = {
        "command": "python benchmarks/bench_skipping.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "config": {"model": model_desc, "num_generations": geometry.num_generations,
                   "questions_per_microbatch": geometry.questions_per_microbatch,
                   "per_device_train_batch_size": geometry.batch_size, "grad_accum": geometry.grad_accum,
                   "completion_length": geometry.completion_length, "prompt_tokens": args.prompt_tokens,
                   "reps": args.reps, "steps": args.steps, "warmup_steps": args.warmup_steps,
                   "loss_reps": args.loss_reps, "fractions": args.fractions, "threads": args.threads,
                   "methods": {n: m[2] for n, m in methods.items()}},
        "machine": machine_info("cpu"),
        "summary": summarise(runs, names),
        "runs": runs,
        "wall_s": round(time.perf_counter() - t0, 1),
    }
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_skipping.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "bench_skipping.md").write_text(markdown(result))
    print(markdown(result))
    return result


if __name__ == "__main__":
    main()
