"""Generation for `disco-trl eval`: vLLM or `transformers` sampling with one seed per (problem, sample).

Every completion is drawn from its own random stream, seeded by `sample_seed(seed, problem_key, sample)`: which
other prompts share its batch, the batch size, and whether the run is fresh, resumed or extended (``--num-samples``
raised in an existing folder) do not change it. With vLLM each sample is its own request with that seed; with
`transformers`, `PerSampleSampler` draws each row's next token from the row's own `torch.Generator`
(temperature, then top-p, as the protocol says) and hands `generate` a one-token distribution.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


__all__ = ["DTYPES", "PerSampleSampler", "check_device", "check_dtype", "check_model_source", "make_generator",
           "sample_seed"]

_PATH_PREFIXES = ("./", "../", "/", "~", ".\\", "..\\")


def check_model_source(source: str | os.PathLike, role: str = "model") -> None:
    """FileNotFoundError when `source` is meant as a local path (it starts with ./ ../ / or ~, or has more than one
    "/", which no Hub id has) and does not exist. An existing path, or an ``org/name`` / ``name`` Hub id, passes."""
    text = os.fspath(source)
    path = Path(text).expanduser()
    if path.exists():
        return
    looks_like_path = text.startswith(_PATH_PREFIXES) or text in (".", "..") or text.count("/") > 1 or (
        os.sep != "/" and os.sep in text
    )
    if looks_like_path:
        raise FileNotFoundError(
            f"evaluate: {role} path {text!r} does not exist ({path.absolute()}); pass an existing folder or a Hub id "
            "(org/name)."
        )


DTYPES = ("auto", "bfloat16", "float16", "float32")


def check_dtype(dtype: Any) -> None:
    if dtype not in DTYPES:
        raise ValueError(f"evaluate: dtype (--dtype) must be one of {', '.join(DTYPES)}; got {dtype!r}.")


def check_device(device: Any) -> None:
    """ValueError unless `device` (None: the default) names a device this torch build has and can see."""
    if device is None:
        return
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise ValueError(f"evaluate: device (--device) {device!r} is not a device name ({exc}); use cpu, cuda, "
                         "cuda:1, ...") from None
    if parsed.type == "cpu":
        return
    backend = torch.backends.mps if parsed.type == "mps" else getattr(torch, parsed.type, None)
    if not getattr(backend, "is_available", lambda: False)():
        build = ""
        if parsed.type == "cuda" and not torch.version.cuda:
            build = f" (torch {torch.__version__} is a build without CUDA)"
        raise ValueError(f"evaluate: device (--device) {device!r}: no {parsed.type} device is available here{build}; "
                         "use --device cpu, or leave it out (the default is cuda when a GPU is visible, else cpu).")
    count = getattr(backend, "device_count", lambda: 1)()
    if parsed.index is not None and parsed.index >= count:
        raise ValueError(f"evaluate: device (--device) {device!r}: only {count} {parsed.type} device(s) are visible "
                         f"(indices 0..{count - 1}).")


def sample_seed(seed: int, problem_key: str, sample: int) -> int:
    """The seed of one completion: a function of the run's seed, the problem and the sample index only."""
    digest = hashlib.sha256(f"{seed}\x00{problem_key}\x00{sample}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def _vllm_usable() -> bool:
    if importlib.util.find_spec("vllm") is None:
        return False
    try:
        return torch.cuda.is_available()
    except ImportError:  # pragma: no cover
        return False


class PerSampleSampler:
    """A `transformers` logits processor that samples row i from its own generator (temperature + top-p).

    It returns logits that are -inf everywhere except at the drawn token, so `generate`'s own sampling step can only
    pick that token. Step t of row i uses the t-th uniform number of row i's stream (drawn `block` at a time), so a
    row's tokens depend on its seed and its own logits only.
    """

    block = 256  # uniform numbers drawn per row at once (fixed: the streams must not depend on anything else)

    def __init__(self, seeds: list[int], *, temperature: float, top_p: float):
        self.generators = [torch.Generator().manual_seed(s) for s in seeds]
        self.temperature = temperature
        self.top_p = top_p
        self._uniforms = None
        self._step = 0

    def _next_uniforms(self, device):
        if self._step % self.block == 0:
            draws = [torch.rand(self.block, generator=g, dtype=torch.float64) for g in self.generators]
            self._uniforms = torch.stack(draws).to(device)
        uniform = self._uniforms[:, self._step % self.block]
        self._step += 1
        return uniform

    def __call__(self, input_ids, scores):
        probs = torch.softmax(scores.float() / self.temperature, dim=-1)
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        nucleus = (sorted_probs.cumsum(dim=-1) - sorted_probs) < self.top_p  # smallest top set with mass >= top_p
        cumulative = (sorted_probs * nucleus).cumsum(dim=-1)
        target = (self._next_uniforms(cumulative.device) * cumulative[:, -1].double()).to(cumulative.dtype)
        rank = torch.searchsorted(cumulative, target[:, None], right=True)
        rank = torch.minimum(rank, nucleus.sum(dim=-1, keepdim=True) - 1)  # rounding never lands outside the nucleus
        tokens = order.gather(-1, rank)
        one_hot = torch.full_like(scores, float("-inf"))
        return one_hot.scatter_(-1, tokens, 0.0)


class TransformersGenerator:
    """Batched sampling with `model.generate` (any device; the CPU fallback and the in-memory-model path)."""

    name = "transformers"

    def __init__(self, model, tokenizer, *, batch_size: int):
        self.model = model
        self.tokenizer = tokenizer
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"TransformersGenerator: batch_size must be >= 1, got {batch_size!r}.")
        self.batch_size = batch_size
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.was_training = bool(getattr(model, "training", False))
        self.model.eval()

    def close(self) -> None:
        if self.was_training:  # an in-memory model goes back to training mode (evaluate between training phases)
            self.model.train()

    def generate(self, prompts: list[str], seeds: list[int], *, temperature: float, top_p: float, max_new_tokens: int):
        """One (text, completion tokens, finish reason) per prompt; prompt i sampled with seeds[i]."""
        enc = self._encode(prompts)
        kwargs: dict[str, Any] = dict(max_new_tokens=max_new_tokens, pad_token_id=self.tokenizer.pad_token_id)
        if temperature > 0:
            # the protocol's sampler only: no top-k or repetition penalty from the model's generation_config, and
            # generate's own warpers neutral (PerSampleSampler applies temperature and top-p)
            sampler = PerSampleSampler(seeds, temperature=temperature, top_p=top_p)
            kwargs.update(do_sample=True, temperature=1.0, top_p=1.0, top_k=0, repetition_penalty=1.0,
                          logits_processor=[sampler])
        else:
            kwargs.update(do_sample=False, repetition_penalty=1.0)
        with torch.no_grad():
            out = self.model.generate(**enc, **kwargs)
        return [self._decode(ids) for ids in out[:, enc["input_ids"].shape[1] :].tolist()]

    def _encode(self, prompts: list[str]) -> dict:
        tok = self.tokenizer
        old_side = tok.padding_side
        tok.padding_side = "left"
        try:
            enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        finally:
            tok.padding_side = old_side
        device = next(self.model.parameters()).device
        return {k: v.to(device) for k, v in enc.items()}

    def _eos_ids(self) -> set:
        eos = self.model.generation_config.eos_token_id
        if eos is None:
            eos = self.tokenizer.eos_token_id
        return set(eos if isinstance(eos, list) else [eos]) - {None}

    def _decode(self, ids: list[int]) -> tuple[str, int, str]:
        eos_ids = self._eos_ids()
        length, finish = len(ids), "length"
        for pos, tid in enumerate(ids):
            if tid in eos_ids:
                length, finish = pos + 1, "stop"
                break
        return self.tokenizer.decode(ids[:length], skip_special_tokens=True), length, finish


class VLLMGenerator:
    """vLLM sampling: one request per sample, each with its own seed (prefix caching shares the prompt's work)."""

    name = "vllm"
    batch_size = 2048  # samples per vLLM call: enough to keep the GPU busy, few enough to save progress often

    def __init__(self, model_path: str, tokenizer_path: str | None, *, seed: int, dtype: str, **llm_kwargs: Any):
        from vllm import LLM  # noqa: PLC0415 - optional: only the vLLM backend needs it

        kwargs = {k: v for k, v in llm_kwargs.items() if v is not None}
        # vLLM's own sampling defaults, not the model's generation_config.json (which may set top_k, a repetition
        # penalty...): the protocol is temperature and top-p only
        kwargs.setdefault("generation_config", "vllm")
        self.llm = LLM(model=model_path, tokenizer=tokenizer_path or model_path, seed=seed, dtype=dtype, **kwargs)
        self.tokenizer = self.llm.get_tokenizer()

    def generate(self, prompts: list[str], seeds: list[int], *, temperature: float, top_p: float, max_new_tokens: int):
        from vllm import SamplingParams  # noqa: PLC0415 - optional: only the vLLM backend needs it

        params = [
            SamplingParams(n=1, temperature=temperature, top_p=top_p, max_tokens=max_new_tokens, seed=s) for s in seeds
        ]
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        return [(o.text, len(o.token_ids), o.finish_reason or "stop") for request in outputs for o in request.outputs]


def _load_transformers(model_path: str, tokenizer_path: str | None, dtype: str, device: str | None):
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path or model_path)
    torch_dtype = "auto" if dtype == "auto" else getattr(torch, dtype)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch_dtype)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return model.to(device), tokenizer


def make_generator(model: Any, tokenizer: Any, *, backend: str, batch_size: int, seed: int, dtype: str,
                   device: str | None, vllm_kwargs: dict[str, Any] | None):
    """The backend for `model` (a path / Hub id, or an in-memory model with its tokenizer)."""
    if not isinstance(model, str | os.PathLike):
        if backend == "vllm":
            raise ValueError("evaluate: backend='vllm' needs a model path, not an in-memory model.")
        return TransformersGenerator(model, tokenizer, batch_size=batch_size)
    tokenizer_path = tokenizer if isinstance(tokenizer, str) else None
    if backend == "vllm" or (backend == "auto" and _vllm_usable()):
        return VLLMGenerator(str(model), tokenizer_path, seed=seed, dtype=dtype, **dict(vllm_kwargs or {}))
    loaded_model, loaded_tok = _load_transformers(str(model), tokenizer_path, dtype, device)
    return TransformersGenerator(loaded_model, loaded_tok, batch_size=batch_size)
