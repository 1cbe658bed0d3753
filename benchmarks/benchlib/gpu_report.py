"""The GPU check's Markdown report (benchmarks/gpu_check.py): one table per measurement, ratios to the baseline
(`trl-default`: GRPOTrainer with TRL's default loss, beta 0)."""

from __future__ import annotations

from typing import Any

from .methods import BASELINE
from .report import fmt, fmt_ratio


def _trainer_table(section: dict[str, Any]) -> list[str]:
    geo = section["geometry"]
    lines = [
        f"{geo['questions_per_step']} questions x {geo['num_generations']} completions per optimizer step, "
        f"{geo['sequences_per_microbatch']} sequences per micro-batch x {geo['gradient_accumulation_steps']} "
        f"accumulation steps, completions of {geo['completion_length']} tokens (fixed). Identical completions across "
        f"methods: {section['identical_completions_across_methods']}.",
        "",
        "| method | step ms | step ratio | loss-only ms | loss-only ratio | peak step GiB | peak step ratio |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for m, s in section["summary"].items():
        lines.append(f"| `{m}` | {fmt(s['step_s'], 1e3)} | {fmt_ratio(s['step_ratio'])} | {fmt(s['loss_s'], 1e3)} "
                     f"| {fmt_ratio(s['loss_ratio'])} | {fmt(s['step_peak_mib'], 1 / 1024, 2)} | "
                     f"{fmt_ratio(s['step_peak_ratio'])} |")
    return lines + [""]


def _loss_table(section: dict[str, Any]) -> list[str]:
    t, r, syncs = section["time_s"], section["ratio_to_baseline"], section["host_syncs"]
    return [
        f"Pure loss functions, forward+backward, {section['completions']} completions ({section['questions']} "
        f"questions) x {section['completion_length']} tokens.",
        "",
        f"| loss | ms | ratio to `{BASELINE}` | host syncs |",
        "|---|---:|---:|---:|",
        f"| `{BASELINE}` (TRL clipped token loss) | {1e3 * t[BASELINE]:.3f} | 1.000 | {syncs[BASELINE]} |",
        f"| `disco` (log-L) | {1e3 * t['disco']:.3f} | {r['disco']:.3f} | {syncs['disco']} |",
        f"| `disco-lratio` (L-ratio) | {1e3 * t['disco-lratio']:.3f} | {r['disco-lratio']:.3f} | - |",
        "",
    ]


def _zero3_lines(z: dict[str, Any]) -> list[str]:
    steps = z["step_time_s"]
    mixed = [x for x in z.get("frac_mixed_questions") or [] if x is not None]
    return [
        f"- ok: **{z['ok']}** (exit status {z['returncode']}, {z['steps_logged']} optimizer steps logged, losses "
        f"finite: {z['losses_finite']}, non-zero: {z.get('losses_nonzero')})",
        f"- losses: {', '.join(f'{x:.4g}' for x in z['losses'])}; fraction of questions with right and wrong "
        f"completions: {', '.join(f'{x:g}' for x in mixed) or '-'}",
        f"- step time (s): {', '.join(f'{x:.2f}' for x in steps) or 'not logged'}; whole run {z['wall_s']:.0f} s "
        "(start-up included)",
        f"- DisCO metrics logged: {', '.join(f'`{k}`' for k in z['disco_metrics']) or 'none'}",
        f"- command: `{z['command']}`",
        "",
    ]


def markdown(result: dict[str, Any]) -> str:
    machine, model = result["machine"], result["model"]
    lines = [
        "# GPU check: DisCO vs GRPO",
        "",
        f"- Machine: {machine['device_name']}; torch {machine['torch']}, TRL {machine['trl']}, transformers "
        f"{machine['transformers']}",
        f"- Command: `{result['command']}`; wall time {result['wall_s']:.0f} s (phases: "
        + ", ".join(f"{k} {v:.0f} s" for k, v in result["phases"].items()) + ")",
        f"- Model: {model['description']}; gradient checkpointing on",
        f"- Peak memory: {result['memory_method']}",
        "",
        f"Ratios are to `{BASELINE}` (TRL's default loss, beta 0) in the same repetition: median [min, max].",
        "",
    ]
    titles = {"interleaved": "## 1. Interleaved step time and memory", "split_groups":
              "## 2. Groups larger than a micro-batch", "loss_only_large": "## 3. Loss alone at a large batch",
              "zero3": "## 4. ZeRO-3 on one GPU (examples/train_disco.py, transformers generation)"}
    for name, title in titles.items():
        if name not in result:
            continue
        lines += [title, ""]
        if name in ("interleaved", "split_groups"):
            lines += _trainer_table(result[name])
        elif name == "loss_only_large":
            lines += _loss_table(result[name])
        else:
            lines += _zero3_lines(result[name])
    return "\n".join(lines)
