"""`disco-trl demo --check-start` and `--rebuild-start`: the shipped start, checked and measured, or built again.

`--check-start` verifies the start's files against its record and measures its held-out Pass@1 with the demo's own
evaluation (the one every run starts with; seconds), next to the Pass@1 recorded when it was built.

`--rebuild-start` builds the start again with the project's own code (`warmstart.build_warm_started`, the default
`WarmStartConfig`: minutes of CPU), measures it the same way, writes it as a start folder (`shipped.write_start`:
the same files and record as the shipped one, so it can be used with `--start-model` or shipped in its place), and
reports whether it matches the shipped start: the same fingerprint, or how far it is (largest weight difference, SFT
loss and start Pass@1 of both). The SFT is not bit-reproducible across CPUs and thread counts, so a rebuild on another
machine is expected to differ; on the machine and thread count that built it, it matches.
"""

from __future__ import annotations

import json
import os

from transformers import AutoModelForCausalLM, AutoTokenizer

from .evaluate import evaluate_pass_at_1
from .experiment import RunSettings, eval_kwargs, reward_function
from .shipped import compare_starts, read_record, write_record, write_start
from .warmstart import WarmStartConfig, build_warm_started, eval_problems


REBUILT_FOLDER = "rebuilt-start"


def measure_start(model, tokenizer, settings: RunSettings) -> dict:
    """The start's held-out Pass@1 under `settings`' evaluation (the demo's: 100 test questions x 8 samples, T=0.6,
    sampling seed = run seed + 1), with the settings that define it."""
    problems = eval_problems(settings.eval_questions, settings.eval_split, tuple(settings.eval_difficulties))
    result = evaluate_pass_at_1(model, tokenizer, problems, reward_function(), **eval_kwargs(settings))
    return {"pass@1": result["pass@1"], "pass@1_by_ops": {str(k): v for k, v in result["pass@1_by_ops"].items()},
            "split": settings.eval_split, "questions": settings.eval_questions,
            "difficulties": list(settings.eval_difficulties), **eval_kwargs(settings)}


def describe(evaluation: dict) -> str:
    by_ops = ", ".join(f"{k} op {v:.2f}" for k, v in evaluation["pass@1_by_ops"].items())
    return (f"{evaluation['pass@1']:.3f} ({by_ops}; {evaluation['questions']} {evaluation['split']} questions x "
            f"{evaluation['num_samples']} samples, T={evaluation['temperature']}, sampling seed {evaluation['seed']})")


def check_start(path: str, settings: RunSettings, log=print) -> dict:
    """Measure the (already verified) start at `path`; print it beside the Pass@1 its record holds."""
    record = read_record(path) if os.path.isfile(os.path.join(path, "start.json")) else {}
    model = AutoModelForCausalLM.from_pretrained(path)
    evaluation = measure_start(model, AutoTokenizer.from_pretrained(path), settings)
    build = record.get("build", {})
    log(f"[start] {path}: fingerprint {record.get('fingerprint', 'not recorded')} (files verified against start.json)"
        if record else f"[start] {path}: no start.json (not a disco-trl start folder; nothing to verify against)")
    if build:
        log(f"[start] {build['num_parameters'] / 1e6:.2f}M parameters, SFT loss {build['sft_final_loss']:.4f}, "
            f"built with torch {record['environment']['libraries']['torch']} on {record['environment']['cpu']} "
            f"({record['environment']['torch_threads']} thread(s))")
    log(f"[start] held-out Pass@1 measured now: {describe(evaluation)}")
    recorded = record.get("start_eval")
    if recorded:
        same = {k: v for k, v in recorded.items() if not k.startswith("pass@1")} == \
               {k: v for k, v in evaluation.items() if not k.startswith("pass@1")}
        log(f"[start] held-out Pass@1 recorded at build: {recorded['pass@1']:.3f}"
            + ("" if same else " (under other evaluation settings)"))
    return evaluation


def rebuild_and_compare(cfg: WarmStartConfig, folder: str, reference: str | None, settings: RunSettings,
                        log=print) -> dict | None:
    """Build the start of `cfg` into `folder` (with its record and held-out evaluation) and compare it with the
    start at `reference` (None: compare with nothing); the comparison is also written to
    `folder/../rebuild_report.json`."""
    model, tokenizer, build = build_warm_started(cfg, log=log)
    write_start(model, tokenizer, build, folder)  # before the evaluation (a padded call would be saved with it)
    evaluation = measure_start(model, tokenizer, settings)
    record = write_record(folder, build, start_eval=evaluation)
    log(f"[rebuild] rebuilt start: fingerprint {record['fingerprint']}, SFT loss {build['sft_final_loss']:.4f}, "
        f"held-out Pass@1 {describe(evaluation)}")
    if reference is None:
        return None
    comparison = compare_starts(folder, reference)
    with open(os.path.join(os.path.dirname(os.path.abspath(folder)), "rebuild_report.json"), "w") as f:
        json.dump(comparison, f, indent=1)
    for line in report_lines(comparison):
        log(line)
    return comparison


def report_lines(comparison: dict) -> list[str]:
    """The comparison in words: match, or how far the rebuilt start is from the reference."""
    fp, loss, p1 = comparison["fingerprint"], comparison["sft_final_loss"], comparison["start_pass@1"]
    if comparison["match"]:
        return [f"[rebuild] MATCH: the rebuilt start has the reference's fingerprint {fp['reference']} (weights and "
                f"tokenizer bit for bit)."]
    lines = [f"[rebuild] DIFFERENT: fingerprint {fp['rebuilt']} against the reference's {fp['reference']}. The SFT is "
             "not bit-reproducible across CPUs and thread counts, so this is expected on another machine.",
             f"[rebuild] tokenizer: {comparison['tokenizer']}"]
    weights = comparison["weights"]
    if weights["max_abs"] is None:
        lines.append(f"[rebuild] weights: {weights['note']}")
    else:
        lines.append(f"[rebuild] weights: largest |difference| {weights['max_abs']:.3g} (in {weights['tensor']}; the "
                     f"largest |weight| is {weights['largest_weight']:.3g}); {weights['identical_tensors']} of "
                     f"{weights['tensors']} tensors identical")

    def both(pair, fmt):
        return " / ".join("n/a" if pair[k] is None else format(pair[k], fmt) for k in ("rebuilt", "reference"))

    lines.append(f"[rebuild] SFT loss (rebuilt / reference): {both(loss, '.4f')}; start Pass@1: {both(p1, '.3f')}")
    return lines
