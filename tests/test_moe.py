"""Mixture-of-experts models (tiny Qwen3-MoE and GPT-OSS built from configs): DisCO trains them as TRL's GRPOTrainer
does, with the router's load-balancing loss added at TRL's scale and logged under TRL's key `aux_loss`."""

import pytest
import torch
from disco_testing import (
    GROUP,
    parity_reward,
    prompt_dataset,
    run_layout,
    short_run_config,
    tiny_model_and_tokenizer,
    torchrun_many,
)

from disco_trl import DiscoTrainer


ARCHS = ["qwen3_moe", "gpt_oss"]


@pytest.mark.parametrize("arch", ARCHS)
def test_moe_trains_and_logs_aux_loss(tmp_path, arch):
    model, tokenizer = tiny_model_and_tokenizer(dtype=torch.float32, arch=arch)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer = DiscoTrainer(model, parity_reward, short_run_config(tmp_path), prompt_dataset(),
                           processing_class=tokenizer)
    assert trainer.aux_loss_enabled and trainer.router_aux_loss_coef == pytest.approx(0.01)
    trainer.train()
    logged = [e["aux_loss"] for e in trainer.state.log_history if "aux_loss" in e]
    assert len(logged) == 2 and all(v > 0 and torch.isfinite(torch.tensor(v)) for v in logged)
    # the router itself is trained (its only direct gradient besides the experts' outputs is the aux loss)
    routers = [n for n in before if "router" in n or "mlp.gate.weight" in n]
    assert routers, list(before)[:10]
    assert any(not torch.equal(before[n], trainer.model.get_parameter(n)) for n in routers)


def _aux_gradient(records, coef, accumulation, arch, num_processes):
    """coef * (1/(GA * P)) * sum over the step's micro-batches of all processes of grad aux_loss, from scratch."""
    model, _ = tiny_model_and_tokenizer(arch=arch)
    model.load_state_dict(records[0]["initial"])
    total = 0.0
    for record in records:
        for rec in (m for m in record["micro_inputs"] if m["step"] == 0):
            input_ids = torch.cat([rec["prompt_ids"], rec["completion_ids"]], dim=1)
            attention = torch.cat([rec["prompt_mask"], rec["completion_mask"]], dim=1)
            total = total + model(input_ids=input_ids, attention_mask=attention, output_router_logits=True).aux_loss
    (coef * total / (accumulation * num_processes)).backward()
    return {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


def _assert_aux_part(with_aux, without_aux, expected):
    # the models run in float64, but transformers' load-balancing loss works in float32: agreement to ~1e-7
    scale = max(grad.abs().max().item() for grad in expected.values())
    for name, grad in expected.items():
        diff = with_aux[name] - without_aux.get(name, torch.zeros_like(grad))
        torch.testing.assert_close(diff, grad, rtol=1e-5, atol=1e-6 * scale, msg=name)
    # and the tolerance can see a scale error: half or double the coefficient would fail it
    name = max(expected, key=lambda n: expected[n].abs().max().item())
    diff = with_aux[name] - without_aux.get(name, torch.zeros_like(expected[name]))
    for wrong_scale in (0.5, 2.0):
        with pytest.raises(AssertionError):
            torch.testing.assert_close(diff, wrong_scale * expected[name], rtol=1e-5, atol=1e-6 * scale)


@pytest.mark.parametrize("arch", ARCHS)
def test_aux_loss_gradient_scale_with_accumulation(tmp_path, arch):
    """Gradient(coef) - gradient(coef=0) on the same completions = coef * mean over micro-steps of grad aux."""
    coef, accumulation = 0.5, 2
    runs = {c: run_layout(tmp_path / f"c{c}", GROUP, accumulation, 2, arch=arch, router_aux_loss_coef=c)
            for c in (coef, 0.0)}
    assert any("aux_loss" in e for e in runs[coef]["log_history"])
    assert not any("aux_loss" in e for e in runs[0.0]["log_history"])  # coef 0 disables it, as in TRL
    expected = _aux_gradient([runs[coef]], coef, accumulation, arch, num_processes=1)
    _assert_aux_part(runs[coef]["grads"][0], runs[0.0]["grads"][0], expected)


@pytest.mark.slow
def test_aux_loss_gradient_scale_two_processes(tmp_path):
    """Under DDP the aux term is averaged over processes, like GRPOTrainer's; DisCO's own term is summed."""
    coef = 0.5
    runs = torchrun_many(tmp_path, [[f"coef {c}", GROUP, 1, 1, 1, dict(arch="qwen3_moe", router_aux_loss_coef=c)]
                                    for c in (coef, 0.0)])  # one launch
    records = {c: runs[f"coef {c}"] for c in (coef, 0.0)}
    expected = _aux_gradient(records[coef], coef, 1, "qwen3_moe", num_processes=2)
    for rank in (0, 1):  # DDP leaves the same all-reduced gradient on both ranks
        _assert_aux_part(records[coef][rank]["grads"][0], records[0.0][rank]["grads"][0], expected)


def test_moe_with_lora_trains_only_the_adapter(tmp_path):
    from peft import LoraConfig, PeftModel

    model, tokenizer = tiny_model_and_tokenizer(dtype=torch.float32, arch="qwen3_moe")
    base = {n: p.detach().clone() for n, p in model.named_parameters()}
    peft_config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    trainer = DiscoTrainer(model, parity_reward, short_run_config(tmp_path, learning_rate=5e-2), prompt_dataset(),
                           processing_class=tokenizer, peft_config=peft_config)
    lora_before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_" in n}
    trainer.train()
    assert any("aux_loss" in e for e in trainer.state.log_history)
    changed = [n for n, p in trainer.model.named_parameters() if "lora_" in n and not torch.equal(lora_before[n], p)]
    assert changed, "no adapter weight changed"
    for name, param in trainer.model.get_base_model().named_parameters():
        if "lora_" not in name:
            clean = name.replace(".base_layer", "")
            assert torch.equal(param, base[clean]), f"base weight {clean} changed"
    trainer.save_model(str(tmp_path / "adapter"))
    fresh, _ = tiny_model_and_tokenizer(dtype=torch.float32, arch="qwen3_moe")
    loaded = PeftModel.from_pretrained(fresh, str(tmp_path / "adapter"))
    trained = dict(trainer.model.named_parameters())
    for name, param in loaded.named_parameters():
        if "lora_" in name:
            torch.testing.assert_close(param, trained[name])
