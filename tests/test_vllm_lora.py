"""LoRA with vLLM colocated, on vLLM's CPU backend: vLLM serves the base model with the adapter merged in, and the
adapter the trainer saves loads back.

TRL merges the adapter into the base weights for each sync (PEFT's merge_adapter), pushes the merged tensors under the
base model's names, and unmerges. The test rebuilds the merged weights itself from the adapter's tensors
(W + B A * alpha / r), and compares them with the weights vLLM computes with, read back from its own kernels.
"""

import pytest
import torch
from vllm_testing import require_vllm


require_vllm()

from vllm_testing import (  # noqa: E402
    PROBE_TEXT,
    load_model,
    run_vllm,
    session_model_dir,
    trainer_sequence_logprobs,
    vllm_and_expected,
)


pytestmark = pytest.mark.vllm
BF16_LOGP_TOL = 0.02  # as in test_vllm_colocate.py
R, ALPHA = 4, 8


def merged_weights(peft_params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The base model's tensors (its own names) with each LoRA adapter merged: W + (B @ A) * alpha / r."""
    merged = {}
    for name, value in peft_params.items():
        if "lora_" in name:
            continue
        base = name.removeprefix("base_model.model.").replace(".base_layer", "")
        if name.endswith(".base_layer.weight"):
            prefix = name.rsplit(".base_layer.", 1)[0]
            lora_a = peft_params[f"{prefix}.lora_A.default.weight"]
            lora_b = peft_params[f"{prefix}.lora_B.default.weight"]
            value = value + (lora_b @ lora_a) * (ALPHA / R)
        merged[base] = value
    return merged


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    from peft import LoraConfig

    model_dir = session_model_dir(tmp_path_factory)
    adapter_dir = tmp_path_factory.mktemp("adapter")
    lora = LoraConfig(r=R, lora_alpha=ALPHA, target_modules=["q_proj", "v_proj", "down_proj"], task_type="CAUSAL_LM")
    result = run_vllm(tmp_path_factory.mktemp("lora"), model_dir, 8, 1, 1, max_steps=3, dtype=torch.float32,
                      peft_config=lora, learning_rate=2e-2, after_training=lambda t: t.save_model(str(adapter_dir)))
    return result | {"model_dir": model_dir, "adapter_dir": adapter_dir}


def test_vllm_serves_the_base_model_with_the_adapter_merged(lora_run):
    syncs = lora_run["syncs"]
    assert [s["step"] for s in syncs] == [0, 1, 2]
    for sync in syncs:
        merged = merged_weights(sync["trainer"])
        for key, (got, expected) in vllm_and_expected(merged, sync["vllm"]).items():
            assert torch.equal(got, expected), f"step {sync['step']}: vLLM's {key} is not base + adapter"
        gap = float((sync["vllm_logps"] - sync["trainer_logps"]).abs().max())  # the PEFT model, adapter active
        assert gap < BF16_LOGP_TOL, f"step {sync['step']}: vLLM and the adapted trainer differ by {gap:.3f}"
    # the adapter had moved by the last sync, and what vLLM serves is not the bare base model
    last = syncs[-1]
    base_only = {n.removeprefix("base_model.model.").replace(".base_layer", ""): v
                 for n, v in last["trainer"].items() if "lora_" not in n}
    pairs = vllm_and_expected(base_only, last["vllm"])
    differs = [k for k, (got, base) in pairs.items() if not torch.equal(got, base)]
    assert any("qkv_proj" in k for k in differs) and any("down_proj" in k for k in differs)
    assert float((last["vllm_logps"] - syncs[0]["vllm_logps"]).abs().max()) > 3 * BF16_LOGP_TOL


def test_vllm_lora_trains_only_the_adapter_and_the_saved_adapter_reloads(lora_run):
    from peft import PeftModel

    initial, final = lora_run["initial"], lora_run["final"]
    changed = {n for n, p in final.items() if "lora_" not in n
               and not torch.equal(p, initial[n.removeprefix("base_model.model.").replace(".base_layer", "")])}
    # TRL's merge/unmerge for each sync (W + d - d in float32) may round the base weights by an ulp, never more
    for name in changed:
        base = initial[name.removeprefix("base_model.model.").replace(".base_layer", "")]
        assert torch.allclose(final[name], base, rtol=0, atol=4 * torch.finfo(torch.float32).eps * base.abs().max())
    assert any("lora_B" in n and p.abs().max() > 0 for n, p in final.items())  # lora_B starts at zero
    base, tokenizer = load_model(lora_run["model_dir"], torch.float32)
    loaded = PeftModel.from_pretrained(base, str(lora_run["adapter_dir"]))
    adapter = {n: p for n, p in loaded.named_parameters() if "lora_" in n}
    assert adapter and all(torch.equal(p, final[n]) for n, p in adapter.items())
    ids = tokenizer(PROBE_TEXT)["input_ids"]
    assert float(trainer_sequence_logprobs(loaded, ids).sub(lora_run["syncs"][0]["trainer_logps"]).abs().max()) > 0.05
