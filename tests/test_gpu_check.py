"""The air-gapped GPU check on CPU: scripts/offline_bundle.sh --dry-run, scripts/gpu_check.sh --dry-run and
--cpu-smoke (the whole code path at tiny size), and the random model of Qwen2.5-1.5B's shape (built on meta)."""

from __future__ import annotations

import importlib.metadata
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from benchlib.random_model import (
    QWEN25_1_5B,
    TINY,
    build_random_model,
    expected_parameter_count,
    word_level_tokenizer,
)


ROOT = Path(__file__).resolve().parents[1]
METHODS = ["trl-default", "trl-default-ref-kl", "disco", "disco-lratio"]  # names of disco_trl.demo.methods
BUNDLE = ROOT / "scripts" / "offline_bundle.sh"
CHECK = ROOT / "scripts" / "gpu_check.sh"
ENV = {**os.environ, "PYTHON": sys.executable, "PYTHONPATH": str(ROOT)}


def run(*args, timeout=120):
    return subprocess.run(["bash", *map(str, args)], capture_output=True, text=True, env=ENV, timeout=timeout)


# ------------------------------------------------------------------------------------------------ the bundle
def test_bundle_dry_run_lists_what_the_node_lacks_and_fetches_nothing(tmp_path):
    target = tmp_path / "bundle"
    proc = run(BUNDLE, target, "--dry-run")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert not target.exists(), "a dry run creates nothing"
    for flag in ("--only-binary=:all:", "--python-version 3.12", "manylinux2014_x86_64", "--no-deps"):
        assert flag in out, flag
    # The pins are the versions this suite runs with (what is tested is what is bundled).
    for dist in ("trl", "datasets", "math-verify", "transformers"):
        assert f"{dist}{'[antlr4-13-2]' if dist == 'math-verify' else ''}=={importlib.metadata.version(dist)}" in out
    assert f"pip wheel --no-deps --no-build-isolation deepspeed=={importlib.metadata.version('deepspeed')}" in out
    pin = re.search(r"transformers>=([\d.]+)", (ROOT / "setup.cfg").read_text()).group(1)
    assert f"transformers: node 5.17.0, our pin >={pin} -> bundled" in out
    assert "torch==2.11.*" in out and "not bundled: vLLM" in out and "limit: 60 MiB" in out


def test_bundle_works_with_the_pip_of_a_fresh_venv(tmp_path):
    """A fresh venv's pip (23.2.1 for Python 3.11.7) refuses --platform for `pip install` without --target; the bundle
    resolves with --target, and checks offline first that the pip accepts its options. Without the suite's packages
    in that Python it falls back to the recorded versions, and says so."""
    venv = tmp_path / "fresh"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True, timeout=120)
    python = venv / "bin" / "python"
    pip = subprocess.run([str(python), "-m", "pip", "--version"], capture_output=True, text=True, check=True)
    version = pip.stdout.split()[1]
    proc = subprocess.run(["bash", str(BUNDLE), str(tmp_path / "bundle"), "--dry-run"], capture_output=True, text=True,
                          env={**ENV, "PYTHON": str(python)}, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert f"pip {version} of {python}: accepts the resolve options (checked offline on a stub wheel)" in proc.stdout
    assert "--target <tmp>/target" in proc.stdout
    assert f"(recorded in this script: {python} lacks trl datasets math-verify transformers deepspeed" in proc.stdout
    assert not (tmp_path / "bundle").exists()


def test_bundle_says_in_one_line_to_upgrade_a_pip_that_refuses_its_options(tmp_path):
    """A pip that refuses --platform even with --target (as pip < 23.3 does without it) stops the bundle before
    anything is fetched, with one line that names the pip and the upgrade."""
    python = tmp_path / "python"
    python.write_text(
        "#!/usr/bin/env bash\n"
        'if [[ " $* " == *" --dry-run "* && " $* " == *" --platform "* ]]; then\n'
        "  echo \"ERROR: Can not use any platform or abi specific options unless installing via '--target'\" >&2\n"
        "  exit 1\n"
        "fi\n"
        f'exec {sys.executable} "$@"\n')
    python.chmod(0o755)
    proc = subprocess.run(["bash", str(BUNDLE), str(tmp_path / "bundle"), "--dry-run"], capture_output=True, text=True,
                          env={**ENV, "PYTHON": str(python)}, timeout=120)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("offline_bundle: error: pip ") and f"of {python} refuses the options" in lines[0]
    assert "Can not use any platform or abi specific options" in lines[0]
    assert lines[0].endswith(f"upgrade it with {python} -m pip install --upgrade pip")
    assert not (tmp_path / "bundle").exists()


def test_bundle_needs_a_directory():
    proc = run(BUNDLE)
    assert proc.returncode == 2 and "usage: bash scripts/offline_bundle.sh DIR" in proc.stderr


# ------------------------------------------------------------------------------------------------ the check's plan
def test_gpu_check_dry_run_prints_the_offline_install_and_the_planned_geometry(tmp_path):
    out = tmp_path / "out"
    proc = run(CHECK, "--dry-run", "--bundle", tmp_path / "wheels", "--out", out)
    assert proc.returncode == 0, proc.stderr
    assert f"--no-index --find-links {tmp_path / 'wheels'}" in proc.stdout
    assert not out.exists()
    plan = json.loads(proc.stdout[proc.stdout.index("{"):])
    model = plan["model"]
    assert (model["hidden_size"], model["num_hidden_layers"], model["vocab_size"]) == (1536, 28, 151936)
    assert model["dtype"] == "bfloat16" and model["gradient_checkpointing"] and plan["device"] == "cuda"
    assert plan["methods"] == METHODS
    one, two = plan["interleaved"], plan["split_groups"]
    assert one["num_generations"] == 8 and one["completion_length"] == 1024
    assert one["questions_per_microbatch"] * one["grad_accum"] == 4  # 8 completions x 4 questions per step
    assert two["micro_batch"] == 4 and two["num_generations"] == 8 and two["micro_batch"] * two["grad_accum"] == 32
    large = plan["loss_only_large"]
    assert large["num_generations"] * large["questions"] == 64 and large["completion_length"] == 8192
    assert plan["zero3"]["max_steps"] == 3


def test_gpu_check_refuses_unknown_options():
    proc = run(CHECK, "--bundel", "x")
    assert proc.returncode == 1 and "unknown option '--bundel'" in proc.stderr


# ------------------------------------------------------------------------------------------------ the random model
def test_random_model_has_qwen2_5_1_5b_parameter_count_on_meta():
    tokenizer = word_level_tokenizer(QWEN25_1_5B["vocab_size"])
    assert len(tokenizer) == 151936
    model = build_random_model(QWEN25_1_5B, tokenizer, device="meta")
    n = sum(p.numel() for p in model.parameters())
    assert n == expected_parameter_count(QWEN25_1_5B) == 1_543_714_304  # the model card's 1.54B
    assert n - 151936 * 1536 == 1_310_340_608  # and its 1.31B outside the embedding
    assert model.lm_head.weight is model.model.embed_tokens.weight  # tied, as in Qwen2.5-1.5B
    assert all(p.device.type == "meta" and p.dtype == torch.bfloat16 for p in model.parameters())
    cfg = model.config
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.intermediate_size) == (12, 2, 8960)
    assert model.model.layers[0].self_attn.q_proj.bias is not None


def test_word_level_tokenizer_covers_the_prompts_and_every_id_decodes():
    tokenizer = word_level_tokenizer(500)
    ids = tokenizer("Compute 12 + 3. Think step by step.")["input_ids"]
    assert tokenizer.unk_token_id not in ids
    assert tokenizer.decode(ids).replace(" ", "") == "Compute12+3.Thinkstepbystep."
    tokens = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    assert len(set(tokens)) == 500 and all(tokens) and re.fullmatch(r"t\d+", tokens[-1])
    with pytest.raises(ValueError, match="vocab_size must be >"):
        word_level_tokenizer(10)


def test_smoke_reward_makes_every_group_mixed():
    from benchlib.rewards import one_right_per_group

    prompts = ["Compute 1 + 2."] * 4 + [[{"role": "user", "content": "Compute 2 + 4."}]] * 4
    chats = [[{"role": "assistant", "content": f"say {i}"}] for i in range(4)]
    completions = [f"answer {i}" for i in range(4)] + chats
    rewards = one_right_per_group(prompts=prompts, completions=completions)
    assert rewards[:4].count(1.0) == 1 and rewards[4:].count(1.0) == 1 and set(rewards) == {0.0, 1.0}
    assert one_right_per_group(prompts=prompts[:4], completions=["same"] * 4) == [1.0] * 4  # ties all count


# ------------------------------------------------------------------------------------------------ the whole path
@pytest.mark.slow
def test_cpu_smoke_runs_all_four_measurements(tmp_path):
    proc = run(CHECK, "--cpu-smoke", "--out", tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((tmp_path / "gpu_check.json").read_text())
    md = (tmp_path / "gpu_check.md").read_text()
    methods = METHODS
    for name in ("interleaved", "split_groups"):
        section = result[name]
        assert section["identical_completions_across_methods"] is True
        assert list(section["summary"]) == methods
        assert section["summary"]["trl-default"]["step_ratio"] == {"median": 1.0, "min": 1.0, "max": 1.0}
        for m in methods:
            assert section["summary"][m]["step_s"]["median"] > 0 and section["summary"][m]["step_peak_ratio"]
        rows = {r["microbatch"]["rows"] for r in section["runs"]}
        assert rows == {section["geometry"]["sequences_per_microbatch"]}
    assert result["split_groups"]["geometry"]["sequences_per_microbatch"] == 4  # groups of 8 span micro-batches
    large = result["loss_only_large"]
    assert all(large["time_s"][m] > 0 for m in ("trl-default", "disco", "disco-lratio"))
    ratio = large["time_s"]["disco"] / large["time_s"]["trl-default"]
    assert large["ratio_to_baseline"]["disco"] == pytest.approx(ratio)
    z = result["zero3"]
    assert z["ok"] and z["returncode"] == 0 and z["steps_logged"] == 3 and z["losses_finite"]
    assert "disco/kl" in z["disco_metrics"] and len(z["step_time_s"]) == 3
    # the GPU run's launch (accelerate, zero3.yaml, one process) on DeepSpeed's CPU accelerator
    assert " -m accelerate.commands.launch --config_file " in z["command"]
    assert z["command"].split("--config_file ")[1].startswith(str(ROOT / "recipes" / "accelerate" / "zero3.yaml"))
    assert z["deepspeed_cpu_accelerator"] is True
    # every question has right and wrong completions, so a loss of 0 would be a broken loss
    assert z["frac_mixed_questions"] == [1.0, 1.0, 1.0]
    assert z["losses_nonzero"] and all(x != 0 and math.isfinite(x) for x in z["losses"]), z["losses"]
    for title in ("## 1. Interleaved", "## 2. Groups larger", "## 3. Loss alone", "## 4. ZeRO-3"):
        assert title in md
    assert "| `disco` |" in md and result["model"]["parameters"] == expected_parameter_count(TINY)


@pytest.mark.gpu
def test_gpu_check_on_cuda(tmp_path):
    proc = run(CHECK, "--out", tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((tmp_path / "gpu_check.json").read_text())
    assert result["zero3"]["ok"] and result["memory_method"].startswith("torch.cuda.max_memory_allocated")
