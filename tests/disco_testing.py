"""Shared helpers for trainer tests: a tiny local model, a prompt dataset, a reward, and a trainer whose generations
are a fixed function of (prompt, sample index) so that different batch layouts see identical completions."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import zlib
from pathlib import Path

import torch
from datasets import Dataset
from transformers import TrainerCallback

from disco_trl import DiscoConfig, DiscoTrainer
from disco_trl.filling import question_signal
from disco_trl.toy import build_tiny_qwen2, build_tokenizer, instantiate


GROUP = 4  # completions per question in these tests


def tiny_moe_model(tokenizer, arch: str, seed: int = 0, router_aux_loss_coef: float = 0.01):
    """A tiny mixture-of-experts causal LM (4 experts, 2 per token) of the Qwen3-MoE or GPT-OSS architecture."""
    from transformers import GptOssConfig, GptOssForCausalLM, Qwen3MoeConfig, Qwen3MoeForCausalLM

    common = dict(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=8, num_experts_per_tok=2, router_aux_loss_coef=router_aux_loss_coef,
                  tie_word_embeddings=False, eos_token_id=tokenizer.eos_token_id,
                  pad_token_id=tokenizer.pad_token_id, bos_token_id=None, experts_implementation="eager")
    if arch == "qwen3_moe":
        config, cls = Qwen3MoeConfig(intermediate_size=64, moe_intermediate_size=32, num_experts=4,
                                     max_position_embeddings=256, **common), \
            Qwen3MoeForCausalLM
    elif arch == "gpt_oss":
        config, cls = GptOssConfig(intermediate_size=32, num_local_experts=4, sliding_window=16,
                                   layer_types=["sliding_attention", "full_attention"], **common), GptOssForCausalLM
    else:
        raise ValueError(f"unknown MoE architecture {arch!r}")
    return instantiate(cls, config, tokenizer, seed)


def tiny_model_and_tokenizer(seed: int = 0, dtype=torch.float64, arch: str = "qwen2"):
    tokenizer = build_tokenizer()
    if arch == "qwen2":
        model = build_tiny_qwen2(tokenizer, seed=seed)
    else:
        model = tiny_moe_model(tokenizer, arch, seed=seed)
    return model.to(dtype), tokenizer


class ScriptedGenerator:
    """Stands in for `disco-trl eval`'s transformers generator (monkeypatch `disco_trl.eval.run.make_generator`):
    completions come from a table, so the metrics are known exactly."""

    name = "transformers"

    def __init__(self, answers, batch_size=64):
        self.answers = answers  # problem text -> list of completions, consumed in order
        self.batch_size = batch_size
        self.prompts_seen = []

    def generate(self, prompts, **kwargs):
        self.prompts_seen += prompts
        out = []
        for prompt in prompts:
            key = next(k for k in self.answers if k in prompt)
            out.append((self.answers[key].pop(0), 5, "stop"))
        return out


def prompt_dataset(n: int = 24, conversational: bool = False) -> Dataset:
    prompts = [f"Q{i}: {i} + {2 * i} =" for i in range(n)]
    if conversational:
        prompts = [[{"role": "user", "content": p}] for p in prompts]
    return Dataset.from_dict({"prompt": prompts, "solution": [str(3 * i) for i in range(n)]})


def parity_reward(completions, **kwargs):
    """1.0 for roughly a third of completions, as a fixed function of the completion text."""
    texts = [c if isinstance(c, str) else c[0]["content"] for c in completions]
    return [float(zlib.crc32(t.encode()) % 3 == 0) for t in texts]


def _question_number(prompt) -> int:
    text = prompt if isinstance(prompt, str) else prompt[-1]["content"]
    return int(re.search(r"Q(\d+):", text).group(1))


def half_informative_reward(completions, prompts, **kwargs):
    """parity_reward on even-numbered questions; 0 on odd ones (all negative: no signal for DisCO)."""
    rewards = parity_reward(completions)
    return [r if _question_number(p) % 2 == 0 else 0.0 for r, p in zip(rewards, prompts)]


def tenth_informative_reward(completions, prompts, **kwargs):
    """parity_reward on questions whose number is a multiple of 10; 0 on the others (a pool where about 10% of the
    questions can carry signal)."""
    rewards = parity_reward(completions)
    return [r if _question_number(p) % 10 == 0 else 0.0 for r, p in zip(rewards, prompts)]


def first_step_reward(completions, trainer_state=None, **kwargs):
    """parity_reward for the generation of the first optimizer step, 0 afterwards (nothing left to learn)."""
    step = trainer_state.global_step if trainer_state is not None else 0
    return parity_reward(completions) if step == 0 else [0.0] * len(completions)


REWARDS = {"parity": parity_reward, "half_informative": half_informative_reward, "first_step": first_step_reward,
           "tenth_informative": tenth_informative_reward}


class FixedGenerationTrainer(DiscoTrainer):
    """Completions depend only on the prompt tokens and on which of the group's samples this is. With
    `sampling_spread` > 0 the generation also reports the "sampler's" log-probs, as vLLM does: the uniform
    -log(vocabulary) plus a fixed offset in [-spread, spread] per token, a known sampler that is not pi_old."""

    max_len = 6
    sampling_spread = 0.0

    def _sampled_by_vllm(self) -> bool:
        return self.sampling_spread > 0  # the generation plays vLLM's role

    def _generate_single_turn(self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
        seen: dict[tuple, int] = {}
        completion_ids, logprobs = [], []
        vocab = len(self.processing_class)
        eos = self.processing_class.eos_token_id
        for ids in prompt_ids:
            key = tuple(ids)
            k = seen.get(key, 0)
            seen[key] = k + 1
            g = torch.Generator().manual_seed(zlib.crc32(repr((key, k)).encode()))
            length = int(torch.randint(1, self.max_len + 1, (1,), generator=g))
            tokens = torch.randint(3, vocab, (length,), generator=g).tolist()
            if torch.rand(1, generator=g).item() < 0.5:
                tokens[-1] = eos
            completion_ids.append(tokens)
            offsets = self.sampling_spread * (2 * torch.rand(length, generator=g, dtype=torch.float64) - 1)
            logprobs.append((offsets - math.log(vocab)).tolist())
        return completion_ids, logprobs if self.sampling_spread > 0 else None


class CaptureGrads(TrainerCallback):
    """Records every parameter's gradient just before each optimizer step (after all micro-steps and all-reduce)."""

    def __init__(self):
        self.grads: list[dict[str, torch.Tensor]] = []

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.grads.append(
            {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
        )


def short_run_config(tmp_path, **overrides) -> DiscoConfig:
    """Two updates on one generation batch of 2 questions x 4 completions, real sampling (T=1), no checkpoints."""
    kwargs = dict(output_dir=str(tmp_path), per_device_train_batch_size=8, num_generations=4, steps_per_generation=2,
                  max_completion_length=8, max_steps=2, learning_rate=5e-3, temperature=1.0, report_to="none",
                  save_strategy="no", logging_steps=1, seed=3, use_cpu=True)
    kwargs.update(overrides)
    return DiscoConfig(**kwargs)


def layout_config(tmp_path, per_device, accumulation, steps_per_generation, **overrides) -> DiscoConfig:
    kwargs = dict(
        output_dir=str(tmp_path),
        per_device_train_batch_size=per_device,
        gradient_accumulation_steps=accumulation,
        steps_per_generation=steps_per_generation,
        num_generations=GROUP,
        max_completion_length=FixedGenerationTrainer.max_len,
        max_steps=1,
        learning_rate=1e-3,
        max_grad_norm=0.0,
        report_to="none",
        save_strategy="no",
        logging_steps=1,
        seed=7,
        use_cpu=True,
        gradient_checkpointing=False,
        disable_dropout=True,
    )
    kwargs.update(overrides)
    return DiscoConfig(**kwargs)


class RecordingTrainer(FixedGenerationTrainer):
    """Also records, for each micro-step, the tensors the loss saw (to rebuild the objective independently)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.micro_inputs: list[dict] = []
        self.rounds: list[dict] = []  # each generation as scored: its questions' numbers and which carry signal

    def _score_generation(self, inputs):
        output = super()._score_generation(inputs)
        if self.model.training:
            texts = self.processing_class.batch_decode(output["prompt_ids"][::GROUP], skip_special_tokens=True)
            self.rounds.append({"step": self.state.global_step, "questions": [_question_number(t) for t in texts],
                                "signal": question_signal(output["disco_labels"], GROUP).tolist()})
        return output

    def _compute_loss(self, model, inputs):
        keep = ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask", "sampling_per_token_logps")
        record = {k: inputs[k].detach().clone() for k in keep if k in inputs}
        record["step"] = self.state.global_step
        self.micro_inputs.append(record)
        return super()._compute_loss(model, inputs)


class CaptureParamsAndGrads(CaptureGrads):
    def __init__(self):
        super().__init__()
        self.params: list[dict[str, torch.Tensor]] = []

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        super().on_pre_optimizer_step(args, state, control, model=model, **kwargs)
        self.params.append({n: p.detach().clone() for n, p in model.named_parameters()})


def run_layout(tmp_path, per_device, accumulation, steps_per_generation, max_steps=1, arch="qwen2", reward="parity",
               num_prompts=24, sampling_spread=0.0, **config):
    """Train `max_steps` optimizer steps with fixed generations. Returns what the reference needs (this process).
    `arch` names the tiny model's architecture, `reward` one of REWARDS; the training set has `num_prompts`
    questions; `sampling_spread` > 0: the generation reports sampler log-probs that are not pi_old's
    (FixedGenerationTrainer)."""
    model, tokenizer = tiny_model_and_tokenizer(arch=arch)
    initial = {n: p.detach().clone() for n, p in model.named_parameters()}
    args = layout_config(tmp_path, per_device, accumulation, steps_per_generation, max_steps=max_steps, **config)
    capture = CaptureParamsAndGrads()
    trainer = RecordingTrainer(
        model=model,
        reward_funcs=REWARDS[reward],
        args=args,
        train_dataset=prompt_dataset(num_prompts),
        processing_class=tokenizer,
        callbacks=[capture],
    )
    trainer.sampling_spread = sampling_spread
    trainer.train()
    return {
        "initial": initial,
        "grads": capture.grads,
        "params": capture.params,
        "micro_inputs": trainer.micro_inputs,
        "rounds": trainer.rounds,
        "log_history": trainer.state.log_history,
        "rank": trainer.accelerator.process_index,
    }


TESTS_DIR = Path(__file__).parent


def leave_together() -> None:
    """End a distributed worker as the training script does: wait for every rank, then destroy the process group. A
    rank that exits while another still holds its gloo connections can abort in the group's destructor ("terminate
    called without an active exception"), and under a multi-machine launch its launcher then takes the rendezvous
    store down under the others."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on now (the system picks it): launches of pytest-xdist's workers
    and of other runs on the machine do not meet at a fixed port."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def torchrun(script: str, *args: str) -> None:
    """Run tests/`script` under torchrun on 2 CPU processes (gloo) at a free port, with the tests' and this checkout's
    folders first on PYTHONPATH (a worktree checkout must import its own disco_trl); fail with its output's tail."""
    pythonpath = os.pathsep.join(p for p in (str(TESTS_DIR), str(TESTS_DIR.parent), os.environ.get("PYTHONPATH")) if p)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=pythonpath)
    launcher = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
    cmd = [launcher, "--nproc_per_node", "2", "--master_port", str(free_port()), str(TESTS_DIR / script), *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]


def torchrun_many(tmp_path, runs):
    """Several layouts in one launch of 2 CPU processes (tests/dist_many_worker.py): `runs` is a list of
    [name, per_device, accumulation, steps_per_generation, max_steps, config]; returns {name: both ranks' records}."""
    out = Path(tmp_path) / "dist"
    out.mkdir()
    torchrun("dist_many_worker.py", str(out), json.dumps(runs))
    return {name: [torch.load(out / name / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
            for name, *_ in runs}


# --------------------------------------------------------------------------------------------------- demo starts
def tiny_start(folder, seed: int = 0, **extra) -> str:
    """A tiny demo start (1 layer, hidden 32, 6 SFT steps; seconds) written as a start folder, like the shipped one
    (`disco_trl.demo.shipped.write_start`); `extra` goes into its record (e.g. `start_eval`). Returns the folder."""
    from disco_trl.demo.shipped import write_start
    from disco_trl.demo.warmstart import build_warm_started

    model, tokenizer, build = build_warm_started(tiny_start_config(seed), log=None)
    write_start(model, tokenizer, build, folder, **extra)
    return str(folder)


def tiny_start_config(seed: int = 0):
    from disco_trl.demo.warmstart import WarmStartConfig

    return WarmStartConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                           intermediate_size=64, sft_steps=6, sft_batch_size=8, sft_warmup_steps=2, seed=seed)
