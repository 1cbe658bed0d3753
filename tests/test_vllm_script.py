"""The training script with vLLM on CPU: `examples/train_disco.py --use_vllm true --vllm_mode colocate` end to end, and
each refusal of a set-up vLLM cannot run, by its one-line message, before any weights are loaded."""

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from vllm_testing import require_vllm


require_vllm()

from disco_testing import free_port  # noqa: E402
from vllm_testing import (  # noqa: E402
    parity_reward,
    prompt_dataset,
    save_tiny_model,
    session_model_dir,
    vllm_config,
)

from disco_trl import DiscoTrainer, vllm_support  # noqa: E402
from disco_trl.scripts import train as train_script  # noqa: E402
from disco_trl.vllm_support import VLLMUnavailable  # noqa: E402


pytestmark = pytest.mark.vllm
TESTS_DIR = Path(__file__).parent
CPU_VLLM_FLAGS = ["--use_vllm", "true", "--vllm_mode", "colocate", "--use_cpu", "true",
                  "--vllm_gpu_memory_utilization", "0.1", "--vllm_enable_sleep_mode", "false",
                  "--vllm_max_model_length", "128"]


@pytest.fixture(scope="module")
def math_jsonl(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "arithmetic.jsonl"
    path.write_text("".join(json.dumps({"problem": f"Compute {a} + {b}.", "answer": str(a + b)}) + "\n"
                            for a in range(8) for b in (1, 2)))
    return path


def script_args(model_dir, dataset, output_dir, *extra):
    return ["--model_name_or_path", str(model_dir), "--dataset_name", str(dataset), "--output_dir", str(output_dir),
            "--num_generations", "4", "--per_device_train_batch_size", "4", "--gradient_accumulation_steps", "2",
            "--generation_batch_size", "16", "--max_completion_length", "8", "--max_steps", "2",
            "--logging_steps", "1", "--save_strategy", "no", "--report_to", "none", "--dtype", "float32",
            "--seed", "0", "--reward_funcs", "vllm_testing.chat_parity_reward", *extra]


def run_main(args, capsys):
    capsys.readouterr()  # drop what came before (e.g. saving the model)
    code = train_script.main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_vllm_script_trains_end_to_end_with_colocated_vllm(tmp_path_factory, math_jsonl, tmp_path):
    """`python examples/train_disco.py --use_vllm true --vllm_mode colocate ...` as users run it (its own process: the
    script ends by destroying the process group, which the in-process vLLM engines of the other tests share)."""
    out = tmp_path / "run"
    args = script_args(session_model_dir(tmp_path_factory), math_jsonl, out, *CPU_VLLM_FLAGS)
    # a fresh process, as a user's: without the rendezvous variables TRL's colocate mode set in this one
    # and with vLLM's default, torch.compile (the other tests run vLLM eagerly: vllm_testing.require_vllm)
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR",
                                                              "MASTER_PORT", "TORCH_COMPILE_DISABLE")}
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS_DIR), str(TESTS_DIR.parent), os.environ.get("PYTHONPATH", "")])
    env["MASTER_PORT"] = str(free_port())  # not TRL's first choice, 29500, which another test process may hold
    env["VLLM_LOGGING_LEVEL"] = "INFO"  # TRL lowers vLLM's logging to errors unless this is set
    result = subprocess.run([sys.executable, str(TESTS_DIR.parent / "examples" / "train_disco.py"), *args],
                            capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert "4 questions x 4 completions per generation; 2 questions per optimizer update" in output
    assert re.search(r"Initializing a V1 LLM engine .*model='[^']*tiny-qwen2-hd32'", output)  # vLLM generated
    assert "TORCH_COMPILE_DISABLE is set" not in output  # vLLM's default, torch.compile, as a user's run has it
    state = json.loads((out / "trainer_state.json").read_text())
    logs = [h for h in state["log_history"] if "disco/objective" in h]
    assert [h["step"] for h in logs] == [1, 2] and all(h["loss"] == h["loss"] for h in logs)
    assert (out / "model.safetensors").is_file()


def _refusal(capsys, args):
    start = time.monotonic()
    code, _, err = run_main(args, capsys)
    assert code == 2 and err.startswith("disco-trl train: error: ") and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and time.monotonic() - start < 30
    return err


def test_vllm_script_refuses_a_head_size_vllm_cpu_cannot_serve(math_jsonl, tmp_path, capsys):
    model_dir = save_tiny_model(tmp_path / "hd16", num_attention_heads=4, num_key_value_heads=2)  # 64 / 4 = 16
    err = _refusal(capsys, script_args(model_dir, math_jsonl, tmp_path / "o", *CPU_VLLM_FLAGS))
    assert "head_dim=16" in err and "32, 64, 80" in err and "drop use_vllm" in err


def test_vllm_script_refuses_sleep_mode_and_server_mode_on_cpu(tmp_path_factory, math_jsonl, tmp_path, capsys):
    model_dir = session_model_dir(tmp_path_factory)
    sleep = [*CPU_VLLM_FLAGS[:-4], "--vllm_enable_sleep_mode", "true", *CPU_VLLM_FLAGS[-2:]]
    err = _refusal(capsys, script_args(model_dir, math_jsonl, tmp_path / "a", *sleep))
    assert "vllm_enable_sleep_mode=True" in err and "no sleep mode" in err
    server = [*CPU_VLLM_FLAGS, "--vllm_mode", "server"]
    err = _refusal(capsys, script_args(model_dir, math_jsonl, tmp_path / "b", *server))
    assert "vllm_mode='server' needs a CUDA device" in err and "NCCL" in err


def test_vllm_that_finds_no_device_is_refused_in_one_line(tmp_path_factory, math_jsonl, tmp_path, capsys,
                                                         monkeypatch):
    """A vLLM build that finds no device here (a CUDA build on a machine without a visible GPU). The CPU build in
    this environment always finds its CPU, so only vLLM's platform answer is replaced: '' (its UnspecifiedPlatform)."""
    monkeypatch.setattr(vllm_support, "vllm_device_type", lambda: "")
    model_dir = session_model_dir(tmp_path_factory)
    err = _refusal(capsys, script_args(model_dir, math_jsonl, tmp_path / "o", *CPU_VLLM_FLAGS))
    assert "finds no device it can run on" in err and "scripts/setup_vllm.sh" in err


def test_vllm_trainer_refuses_an_unservable_model_before_loading_vllm(tmp_path):
    from transformers import AutoTokenizer

    model_dir = save_tiny_model(tmp_path / "hd16", num_attention_heads=4, num_key_value_heads=2)
    args = vllm_config(tmp_path / "o", 8, 1, 2)
    assert args.use_vllm and args.vllm_mode == "colocate"
    start = time.monotonic()
    with pytest.raises(VLLMUnavailable, match="head_dim=16"):
        DiscoTrainer(model=str(model_dir), reward_funcs=parity_reward, args=args, train_dataset=prompt_dataset(),
                     processing_class=AutoTokenizer.from_pretrained(model_dir))
    assert time.monotonic() - start < 10  # refused before any engine started (one takes 5-40 s)
