"""DiscoTrainer is called exactly like GRPOTrainer: same signature, no reward functions when an environment owns the
reward, positional arguments, custom rollouts whose environment tokens (`env_mask` / `tool_mask`) are excluded."""

import inspect
import zlib

import pytest
import torch
from disco_testing import CaptureGrads, parity_reward, prompt_dataset, short_run_config, tiny_model_and_tokenizer
from trl import GRPOTrainer

from disco_trl import DiscoTrainer


def test_signature_is_grpo_trainers():
    ours = inspect.signature(DiscoTrainer.__init__).parameters
    theirs = inspect.signature(GRPOTrainer.__init__).parameters
    assert list(ours) == list(theirs)
    for name, param in theirs.items():
        assert ours[name].kind == param.kind, name
        assert ours[name].default == param.default, name


def test_positional_arguments_land_where_grpo_trainer_puts_them(tmp_path):
    model, tokenizer = tiny_model_and_tokenizer(dtype=torch.float32)
    args, train, evaluation = short_run_config(tmp_path), prompt_dataset(8), prompt_dataset(4)
    trainer = DiscoTrainer(model, parity_reward, args, train, evaluation, tokenizer)
    assert trainer.args is args and trainer.train_dataset is train and trainer.eval_dataset is evaluation
    assert trainer.processing_class is tokenizer and trainer.reward_func_names == ["parity_reward"]


def test_no_reward_source_is_trls_error(tmp_path):
    model, tokenizer = tiny_model_and_tokenizer(dtype=torch.float32)
    with pytest.raises(ValueError, match="No reward source provided"):
        DiscoTrainer(model, args=short_run_config(tmp_path), train_dataset=prompt_dataset(),
                     processing_class=tokenizer)


# A chat template that renders tool calls and tool messages (TRL requires one with environments).
TOOL_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
    "{% for c in m.get('tool_calls') or [] %}<tool_call>{{ c['function']['name'] }} "
    "{{ c['function']['arguments'] | tojson }}</tool_call>{% endfor %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


class CountingEnvironment:
    """Owns both the data (reset returns the prompt) and the reward (a fixed function of the instance)."""

    created = 0

    def __init__(self):
        CountingEnvironment.created += 1
        self.number = CountingEnvironment.created

    def reset(self, **kwargs):
        return f"Add one to {self.number}."

    def get_reward(self) -> float:
        return float(self.number % 3 == 0)


def test_environment_owned_reward_and_data_train(tmp_path, monkeypatch):
    monkeypatch.setenv("TRL_EXPERIMENTAL_SILENCE", "1")
    model, tokenizer = tiny_model_and_tokenizer(dtype=torch.float32)
    tokenizer.chat_template = TOOL_TEMPLATE
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer = DiscoTrainer(model, args=short_run_config(tmp_path), processing_class=tokenizer,
                           environment_factory=CountingEnvironment)  # no reward_funcs, no train_dataset
    assert trainer.reward_func_names == ["CountingEnvironment"]
    trainer.train()
    logs = [e for e in trainer.state.log_history if "disco/frac_mixed_questions" in e]
    assert logs and max(e["disco/frac_mixed_questions"] for e in logs) > 0
    assert any(not torch.equal(before[n], p) for n, p in trainer.model.named_parameters())


class EnvMaskRollout:
    """A custom multi-turn rollout: each completion is model tokens, then (optionally) environment tokens that the
    model did not generate (`env_mask` 0). Model tokens depend only on (prompt, sample index)."""

    def __init__(self, tokenizer, env_tokens: int):
        self.tokenizer, self.env_tokens = tokenizer, env_tokens

    def __call__(self, prompts, trainer):
        prompt_ids, completion_ids, logprobs, env_mask, model_lengths = [], [], [], [], []
        seen: dict[str, int] = {}
        vocab = len(self.tokenizer)
        for prompt in prompts:
            text = prompt if isinstance(prompt, str) else prompt[-1]["content"]
            k = seen[text] = seen.get(text, -1) + 1
            g = torch.Generator().manual_seed(zlib.crc32(f"{text}|{k}".encode()))
            model_part = torch.randint(3, vocab, (int(torch.randint(2, 6, (1,), generator=g)),), generator=g).tolist()
            env_part = torch.randint(3, vocab, (self.env_tokens,), generator=g).tolist()
            prompt_ids.append(self.tokenizer(text)["input_ids"])
            completion_ids.append(model_part + env_part)
            logprobs.append([0.0] * (len(model_part) + len(env_part)))
            env_mask.append([1] * len(model_part) + [0] * len(env_part))
            model_lengths.append(len(model_part))
        return {"prompt_ids": prompt_ids, "completion_ids": completion_ids, "logprobs": logprobs,
                "env_mask": env_mask, "model_length": model_lengths}


def model_token_reward(completion_ids, model_length, **kwargs):
    return [float(zlib.crc32(repr(ids[:n]).encode()) % 3 == 0) for ids, n in zip(completion_ids, model_length)]


def _train_with_rollout(tmp_path, env_tokens):
    model, tokenizer = tiny_model_and_tokenizer()
    capture = CaptureGrads()
    args = short_run_config(tmp_path, max_completion_length=16, kl_delta=0.0, learning_rate=1e-2, max_grad_norm=0.0)
    trainer = DiscoTrainer(model, model_token_reward, args, prompt_dataset(), processing_class=tokenizer,
                           callbacks=[capture],
                           rollout_func=EnvMaskRollout(tokenizer, env_tokens))
    trainer.train()
    return capture.grads, trainer.state.log_history


def test_env_mask_tokens_count_in_neither_scores_nor_kl(tmp_path, monkeypatch):
    """Appending environment tokens (env_mask 0) after the model's tokens changes nothing: not the scores and
    gradients (both steps), not the KL estimate of the second, off-policy step (its value depends on which tokens
    are averaged: random completions make it negative here, so the hinge stays off). The rollout's placeholder
    log-probs (0.0, without vLLM) are neither measured nor corrected against: the correction is vLLM's."""
    monkeypatch.setenv("TRL_EXPERIMENTAL_SILENCE", "1")
    with_env, logs_env = _train_with_rollout(tmp_path / "env", env_tokens=5)
    plain, logs_plain = _train_with_rollout(tmp_path / "plain", env_tokens=0)
    assert len(with_env) == len(plain) == 2
    for step in range(2):
        for name, grad in plain[step].items():
            torch.testing.assert_close(with_env[step][name], grad, rtol=1e-9, atol=1e-12, msg=f"step {step} {name}")
    kl_env = [e["disco/kl"] for e in logs_env if "disco/kl" in e]
    kl_plain = [e["disco/kl"] for e in logs_plain if "disco/kl" in e]
    assert kl_env == pytest.approx(kl_plain, rel=1e-9) and abs(kl_env[-1]) > 1e-3
    assert not any(key.startswith("sampling/") for entry in logs_env for key in entry)


class CountingGenerations(DiscoTrainer):
    generations = 0

    def _generate_and_score_completions(self, inputs):
        CountingGenerations.generations += 1
        return super()._generate_and_score_completions(inputs)


def test_num_iterations_reuses_each_generation_batch(tmp_path):
    """num_iterations=2: two updates per generation batch, the second against the old policy (KL != 0)."""
    model, tokenizer = tiny_model_and_tokenizer(dtype=torch.float32)
    CountingGenerations.generations = 0
    args = short_run_config(tmp_path, steps_per_generation=1, num_iterations=2, max_steps=4)
    trainer = CountingGenerations(model, parity_reward, args, prompt_dataset(), processing_class=tokenizer)
    trainer.train()
    assert CountingGenerations.generations == 2
    kls = [e["disco/kl"] for e in trainer.state.log_history if "disco/kl" in e]
    assert kls[0] == 0.0 and kls[2] == 0.0 and kls[1] != 0.0 and kls[3] != 0.0


def test_train_with_iterable_dataset(tmp_path):
    """TRL's test_train_with_iterable_dataset, with DisCO: a streaming dataset (`load_dataset(..., streaming=True)`,
    no length, so max_steps is set) trains as it does with GRPOTrainer."""
    from datasets import load_dataset

    data = tmp_path / "prompts.jsonl"
    prompt_dataset().to_json(str(data))
    stream = load_dataset("json", data_files=str(data), split="train", streaming=True)
    model, tokenizer = tiny_model_and_tokenizer(dtype=torch.float32)
    trainer = DiscoTrainer(model, parity_reward, short_run_config(tmp_path / "out", max_steps=2), stream,
                           processing_class=tokenizer)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    assert trainer.state.global_step == 2 and trainer.state.log_history[-1]["train_loss"] is not None
    assert any(not torch.equal(p, trainer.model.get_parameter(n)) for n, p in before.items())


def test_checks_on_a_stream_read_a_bounded_prefix_of_it(tmp_path):
    """The checks before training (prompt lengths, reward signatures) look at the first rows of a stream at most: a
    stream of a million rows is not read to its end when the trainer is built."""
    from datasets import IterableDataset

    from disco_trl.preflight import STREAM_PREFIX

    read = []

    def rows():
        for i in range(10**6):
            read.append(i)
            yield {"prompt": f"Q{i % 24}: {i % 24} + {2 * (i % 24)} =", "solution": str(3 * (i % 24))}

    model, tokenizer = tiny_model_and_tokenizer(dtype=torch.float32)
    DiscoTrainer(model, parity_reward, short_run_config(tmp_path, max_steps=2), IterableDataset.from_generator(rows),
                 processing_class=tokenizer)
    assert 0 < len(read) <= STREAM_PREFIX
