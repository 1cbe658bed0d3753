"""Held-out evaluation for the demo: Pass@1 averaged over several sampled completions per question.

This is the paper's metric (Pass@1 estimated from k samples at the training temperature), computed with the same
prompt format, sampling settings and reward function as training, on questions kept out of every training set.
"""

from __future__ import annotations

from collections import defaultdict

import torch

from . import task
from .warmstart import prompt_string


@torch.no_grad()
def sample_completions(model, tokenizer, problems: list[task.Problem], *, num_samples: int, temperature: float,
                       max_new_tokens: int, seed: int, batch_size: int = 256) -> list[list[str]]:
    """`num_samples` completions per problem (plain strings, special tokens removed), sampled like the trainers do."""
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}.")
    was_training = model.training
    model.eval()
    prompts = [prompt_string(tokenizer, p) for p in problems for _ in range(num_samples)]
    texts: list[str] = []
    eos = tokenizer.eos_token_id
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start : start + batch_size]
            inputs = tokenizer(chunk, return_tensors="pt", padding=True, add_special_tokens=False)
            kwargs = dict(max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id, eos_token_id=eos)
            if temperature > 0:
                kwargs.update(do_sample=True, temperature=temperature, top_p=1.0, top_k=0)
            else:
                kwargs.update(do_sample=False)
            out = model.generate(**inputs, **kwargs)
            for row in out[:, inputs["input_ids"].size(1) :].tolist():
                if eos in row:
                    row = row[: row.index(eos)]
                texts.append(tokenizer.decode(row, skip_special_tokens=True))
    if was_training:
        model.train()
    return [texts[i * num_samples : (i + 1) * num_samples] for i in range(len(problems))]


def evaluate_pass_at_1(model, tokenizer, problems: list[task.Problem], reward_fn, *, num_samples: int = 8,
                       temperature: float = 0.6, max_new_tokens: int = 64, seed: int = 0) -> dict:
    """Pass@1 = mean over questions of the fraction of its `num_samples` completions that are correct.

    Returns {"pass@1", "pass@1_by_ops" {num_ops: value}, "boxed_rate" (answers in \\boxed{}), "num_questions",
    "num_samples", "example" (one question with a sampled completion)}. `reward_fn` is called as the trainers call
    it: `reward_fn(completions=[[{"role": "assistant", "content": text}], ...], solution=[...])`.
    """
    samples = sample_completions(model, tokenizer, problems, num_samples=num_samples, temperature=temperature,
                                 max_new_tokens=max_new_tokens, seed=seed)
    flat = [text for group in samples for text in group]
    solutions = [f"\\boxed{{{p.answer}}}" for p in problems for _ in range(num_samples)]
    rewards = reward_fn(completions=[[{"role": "assistant", "content": t}] for t in flat], solution=solutions)
    rewards = [0.0 if r is None else float(r) for r in rewards]
    per_question = [sum(rewards[i * num_samples : (i + 1) * num_samples]) / num_samples for i in range(len(problems))]
    by_ops: dict[int, list[float]] = defaultdict(list)
    for p, value in zip(problems, per_question):
        by_ops[p.num_ops].append(value)
    return {
        "pass@1": sum(per_question) / max(1, len(per_question)),
        "pass@1_by_ops": {k: sum(v) / len(v) for k, v in sorted(by_ops.items())},
        "boxed_rate": sum("\\boxed{" in t for t in flat) / max(1, len(flat)),
        "num_questions": len(problems),
        "num_samples": num_samples,
        "example": {"prompt": problems[0].prompt_text, "completion": samples[0][0], "answer": problems[0].answer}
        if problems else None,
    }


def vllm_greedy_pass_at_1(llm, tokenizer, problems, reward_fn, *, max_new_tokens: int) -> dict:
    """Greedy Pass@1 of the model a vLLM engine serves now (e.g. the one TRL's colocate mode trains with), for the
    real-model demo's `word_problems`: the fraction of questions whose greedy reply `reward_fn` scores 1.

    The prompts are `word_problems.prompt_text`, as the trainers get them. Greedy decoding needs no sampling seed
    (vLLM's CPU build cannot take a per-request one). Returns
    {"pass@1", "pass@1_by_kind" {kind: value}, "mean_reply_tokens", "num_questions", "examples" (three replies)}."""
    from vllm import SamplingParams  # noqa: PLC0415 - optional: installed only where vLLM runs

    from .word_problems import prompt_text  # noqa: PLC0415

    prompts = [prompt_text(tokenizer, p) for p in problems]
    outputs = llm.generate(prompts, SamplingParams(temperature=0.0, max_tokens=max_new_tokens), use_tqdm=False)
    replies = [o.outputs[0] for o in outputs]
    rewards = reward_fn(completions=[r.text for r in replies], solution=[str(p.answer) for p in problems])
    by_kind: dict[str, list[float]] = defaultdict(list)
    for p, r in zip(problems, rewards):
        by_kind[p.kind].append(float(r))
    return {
        "pass@1": sum(map(float, rewards)) / max(1, len(problems)),
        "pass@1_by_kind": {k: sum(v) / len(v) for k, v in sorted(by_kind.items())},
        "mean_reply_tokens": sum(len(r.token_ids) for r in replies) / max(1, len(replies)),
        "num_questions": len(problems),
        "examples": [{"question": p.text, "answer": p.answer, "reply": r.text} for p, r in
                     list(zip(problems, replies))[:3]],
    }
