"""The scaling sweep: how the loss cost grows with completions per question, completion length and questions per
micro-batch -- the pure loss functions alone and, optionally, compute_loss + backward through a small model.

The methods are `SWEEP_METHODS`: the baseline (`trl-default`, TRL's clipped token loss with its default reduction)
and DisCO with both scores (`disco`, `disco-lratio`); every timing is keyed by those names."""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from disco_trl.losses import disco_loss as disco_step_loss
from disco_trl.losses import discriminative_objective, sequence_scores, token_mean_kl

from .methods import BASELINE, SWEEP_METHODS, Workload, build_trainer, make_model_dir
from .timing import MemoryMeter, loss_and_backward, prepared_microbatch, time_loss_only


DISCO_SWEEP = tuple(m for m in SWEEP_METHODS if m != BASELINE)  # the DisCO scores, compared with the baseline

# --------------------------------------------------------------------------------------------------------- pure losses
def grpo_token_loss(logps, old_logps, advantages, mask, *, loss_type: str = "dapo", epsilon: float = 0.2):
    """TRL's clipped token surrogate (as in GRPOTrainer._compute_loss, beta=0) with its 'dapo' (TRL's default) or
    'grpo' reduction."""
    coef_1 = torch.exp(logps - old_logps)
    coef_2 = torch.clamp(coef_1, 1 - epsilon, 1 + epsilon)
    adv = advantages.unsqueeze(1)
    per_token = -torch.min(coef_1 * adv, coef_2 * adv)
    if loss_type == "grpo":
        return ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()
    return (per_token * mask).sum() / mask.sum().clamp(min=1.0)


def disco_pure_loss(logps, old_logps, labels, group_ids, mask, *, score_type: str, tau: float, num_questions: int):
    """What DiscoTrainer._compute_loss computes after the log-probs (one process, no accumulation)."""
    scores = sequence_scores(logps, old_logps, mask, score_type=score_type)
    objective = discriminative_objective(scores, labels, group_ids, variant="dro", tau=tau,
                                         num_questions=num_questions)
    return disco_step_loss(objective, token_mean_kl(logps, old_logps, mask), kl_delta=1e-4, kl_beta=1e3)


def pure_loss_inputs(g: int, q: int, t: int, device: str, seed: int):
    """Random (B, T) log-probs, old log-probs, a mask with random lengths, labels, group ids and GRPO's advantages."""
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
    logps0, old, mask, rewards, group_ids, advantages = pure_loss_inputs(g, q, t, device, seed)
    fns = {
        "trl-default": lambda x: grpo_token_loss(x, old, advantages, mask, loss_type="dapo"),
        "disco": lambda x: disco_pure_loss(x, old, rewards, group_ids, mask, score_type="log_l", tau=10.0,
                                           num_questions=q),
        "disco-lratio": lambda x: disco_pure_loss(x, old, rewards, group_ids, mask, score_type="l_ratio", tau=1.0,
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
    single = max(statistics.median([once(fns[BASELINE]) for _ in range(3)]), 1e-6)
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
            geometry = Workload(num_generations=g, questions_per_microbatch=q, completion_length=t, grad_accum=1)
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
                    loss_and_backward(trainer, inputs[method])
                    meter.sync()
                    samples[method].append(time.perf_counter() - t_start)
            row["compute_loss_s"] = {m: statistics.median(v) for m, v in samples.items()}
            base_step = row["compute_loss_s"][BASELINE]
            row["fn_overhead_share"] = {m: (row["fn_s"][m] - row["fn_s"][BASELINE]) / base_step for m in DISCO_SWEEP}
            row["compute_loss_ratio"] = {m: row["compute_loss_s"][m] / base_step for m in DISCO_SWEEP}
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
        for m in DISCO_SWEEP:
            first, last = pts[0]["fn_overhead_share"][m], pts[-1]["fn_overhead_share"][m]
            verdict[f"{axis}/{m}"] = {"share_first": first, "share_last": last,
                                      "flat_or_shrinks": last <= max(first, 0.0) + 0.02}
    return verdict
