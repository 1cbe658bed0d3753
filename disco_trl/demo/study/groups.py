"""How an experiment's training groups fall at the start, before any run (`disco-trl study --measure-groups`).

For each of a few seeds, the training questions of the experiment's mix that a run of that seed draws (the first
`batches` generation batches' worth of them, in the order drawn; the trainer shuffles them, so these are the same
questions' distribution, not necessarily its first batches) get `num_generations` completions each from the starting
model, sampled as the trainers sample (temperature, length), and scored with the demo's reward. The groups are counted
as a run records them (`experiment.group_statistics`): the fraction mixed, the mean number of negatives per positive
over the mixed groups (the imbalance DRO is designed for), and the fraction of the mixed groups with at least 2
negatives (where DRO's weights can differ from the basic form's). Nothing is trained.
"""

from __future__ import annotations

import statistics
import time

from transformers import AutoModelForCausalLM, AutoTokenizer

from ..evaluate import sample_completions
from ..experiment import group_statistics, reward_function, training_questions
from ..warmstart import train_problems
from . import plan


def measure_groups(exp: plan.Experiment, scale: plan.Scale, model_path: str, seeds: tuple[int, ...] = tuple(range(8)),
                   batches: int = 4) -> dict:
    """The group statistics of `batches` generation batches' worth of training questions per seed, pooled over the
    seeds (every group weighs once) and per seed, with the CPU seconds the sampling took."""
    model, tokenizer = AutoModelForCausalLM.from_pretrained(model_path), AutoTokenizer.from_pretrained(model_path)
    reward, cpu = reward_function(), time.process_time()
    pooled, per_seed = [], {}
    for seed in seeds:
        settings = plan.arm_settings(exp, exp.arms[0], seed, scale, delta=1e-5)
        questions = train_problems(training_questions(settings), seed=1000 + seed,
                                   difficulties=tuple(settings.train_difficulties),
                                   held_out_difficulties=tuple(settings.eval_difficulties))
        questions = questions[:batches * settings.questions_per_generation]
        samples = sample_completions(model, tokenizer, questions, num_samples=settings.num_generations,
                                     temperature=settings.temperature,
                                     max_new_tokens=settings.max_completion_length, seed=seed)
        g = settings.num_generations
        rewards = reward(completions=[[{"role": "assistant", "content": t}] for group in samples for t in group],
                         solution=[f"\\boxed{{{q.answer}}}" for q in questions for _ in range(g)])
        pooled += rewards
        per_seed[seed] = group_statistics(rewards, settings.num_generations)
    out = group_statistics(pooled, settings.num_generations)
    out.update(questions=len(pooled) // settings.num_generations, num_generations=settings.num_generations,
               mean_reward=statistics.fmean(
        0.0 if r is None else float(r) for r in pooled), difficulties=list(settings.train_difficulties),
        seeds=list(seeds), per_seed=per_seed, cpu_seconds=round(time.process_time() - cpu, 1))
    return out


def _f(value, digits: int = 2) -> str:
    return "n/a (no mixed group)" if value is None else f"{value:.{digits}f}"


def describe(name: str, measured: dict) -> str:
    """The measurement in a few lines."""
    per_seed = ", ".join(f"{s} {g['neg_per_pos_mixed']:.2f}" for s, g in measured["per_seed"].items()
                         if g["neg_per_pos_mixed"] is not None)
    return "\n".join([
        f"{name}: {measured['questions']} training questions of {measured['difficulties']} operations x "
        f"{measured['num_generations']} completions from the start, seeds {measured['seeds']} "
        f"({measured['cpu_seconds']:.1f} CPU s)",
        f"  mean reward {measured['mean_reward']:.3f}; groups mixed {measured['frac_mixed']:.3f}, all wrong "
        f"{measured['frac_all_wrong']:.3f}, all right {measured['frac_all_right']:.3f}",
        f"  negatives per positive in a mixed group: {_f(measured['neg_per_pos_mixed'])} (per seed: {per_seed})",
        f"  mixed groups with >= 2 negatives: {_f(measured['frac_mixed_with_2_negatives'], 3)}; positives per group "
        f"(k = 0..G): {measured['positives_histogram']}"])
