"""The report: per-method summaries as ratios to the baseline in the same repetition, the Markdown tables, and the
machine description."""

from __future__ import annotations

import contextlib
import os
import platform
import statistics
from pathlib import Path
from typing import Any

import torch
import transformers
import trl

from .methods import BASELINE, METHODS


# ---------------------------------------------------------------------------------------------------------- summary
def _stats(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def summarise(runs: list[dict[str, Any]], methods: list[str]) -> dict[str, Any]:
    reps = sorted({r["rep"] for r in runs})
    by = {(r["rep"], r["method"]): r for r in runs}
    summary = {}
    for m in methods:
        entry: dict[str, Any] = {"label": METHODS[m].description}
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


def fmt_ratio(stats: dict[str, float] | None) -> str:
    if not stats:
        return "n/a"
    return f"{stats['median']:.3f} [{stats['min']:.3f}, {stats['max']:.3f}]"


def fmt(stats: dict[str, float] | None, scale: float = 1.0, digits: int = 1) -> str:
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
        *([f"- Names: {result['renamed']['note']}: "
           + ", ".join(f"`{old}` -> `{new}`" for old, new in result["renamed"]["names"].items())]
          if result.get("renamed") else []),
        "",
        f"Ratios are to the baseline `{BASELINE}` (TRL's default loss, beta 0) in the same repetition: median "
        "[min, max] over repetitions. "
        "Times are wall-clock medians (the JSON also has the CPU time of the running thread: `step_cpu_s`, "
        "`loss_cpu_s`).",
        "",
        "| method | step ms | step ratio | loss-only ms | loss-only ratio | peak step MiB | peak step ratio "
        "| peak loss MiB | peak loss ratio |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for m, s in result["summary"].items():
        lines.append(
            f"| `{m}` | {fmt(s['step_s'], 1e3)} | {fmt_ratio(s['step_ratio'])} | {fmt(s['loss_s'], 1e3)} | "
            f"{fmt_ratio(s['loss_ratio'])} | {fmt(s['step_peak_mib'])} | {fmt_ratio(s['step_peak_ratio'])} | "
            f"{fmt(s['loss_peak_mib'])} | {fmt_ratio(s['loss_peak_ratio'])} |"
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
            f"Overhead share = (DisCO function time - {BASELINE} function time) / {BASELINE} compute_loss time. "
            "Times in ms.",
            "",
            f"| axis | G | Q | T | fn {BASELINE} | fn disco | fn disco-lratio | compute_loss {BASELINE} | "
            "disco ratio | disco-lratio ratio | disco overhead share | disco-lratio overhead share |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in result["sweep"]:
            fn = r["fn_s"]
            cl = r.get("compute_loss_s")
            model_cols = (
                f"{cl[BASELINE] * 1e3:.1f} | {r['compute_loss_ratio']['disco']:.3f} | "
                f"{r['compute_loss_ratio']['disco-lratio']:.3f} | {100 * r['fn_overhead_share']['disco']:+.2f}% | "
                f"{100 * r['fn_overhead_share']['disco-lratio']:+.2f}%"
                if cl else "n/a | n/a | n/a | n/a | n/a"
            )
            lines.append(
                f"| {r['axis']} | {r['num_generations']} | {r['questions_per_microbatch']} | {r['completion_length']} "
                f"| {fn[BASELINE] * 1e3:.3f} | {fn['disco'] * 1e3:.3f} | {fn['disco-lratio'] * 1e3:.3f} | "
                f"{model_cols} |"
            )
        if result.get("sweep_verdict"):
            lines += ["", "Overhead share, first -> last point of each axis (flat = grows by at most 2 points):", ""]
            for key, v in result["sweep_verdict"].items():
                lines.append(f"- {key}: {100 * v['share_first']:+.2f}% -> {100 * v['share_last']:+.2f}% "
                             f"({'flat or shrinks' if v['flat_or_shrinks'] else 'GROWS'})")
    return "\n".join(lines) + "\n"


def machine_info(device: str) -> dict[str, Any]:
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
