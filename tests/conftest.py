"""Shared markers for the suite (declared in pyproject.toml):

* `needs_benchmarks`: reads the paper's benchmark files (../shared/data/benchmarks or $DISCO_BENCHMARK_DIR); skipped,
  with the reason, where they are absent.
* `gpu`: needs a CUDA device; skipped on CPU machines.
* `slow`: end-to-end runs that take more than a few seconds (`-m "not slow"` leaves them out).

Shared fixtures: `float64_default` (the pure loss tests, in float64), `tiny_model_dir` (a tiny Qwen2 model and its
tokenizer saved with save_pretrained, as users save models) and `math_jsonl` (a local JSONL training set shaped like
the public math sets).

DeepSpeed's CPU accelerator JIT-compiles its communication op into TORCH_EXTENSIONS_DIR (default
~/.cache/torch_extensions/py311_cpu/, one folder per Python version and device, not per environment). Two virtual
environments with different torch installs on one machine then rebuild it in turn, each build recompiling for a
minute or more inside a test's launch. Each environment gets its own folder instead (scripts/setup_env.sh builds the
op there once); a TORCH_EXTENSIONS_DIR set by the user wins.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch

from disco_trl.data import benchmark_dir
from disco_trl.toy import build_tiny_qwen2, build_tokenizer


os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path(sys.prefix) / "torch_extensions"))


def pytest_collection_modifyitems(config, items):
    skips = {
        "needs_benchmarks": (benchmark_dir() is None, "benchmark files not found (set DISCO_BENCHMARK_DIR)"),
        "gpu": (not torch.cuda.is_available(), "needs a CUDA device"),
    }
    for item in items:
        for marker, (skip, reason) in skips.items():
            if skip and marker in item.keywords:
                item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture
def float64_default():
    """Tensors made in the test default to float64 (the pure loss tests compare against loops in float64)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A tiny Qwen2 model and its tokenizer, saved the way users save models (save_pretrained)."""
    path = tmp_path_factory.mktemp("tiny-model")
    tokenizer = build_tokenizer()
    build_tiny_qwen2(tokenizer, hidden_size=32, num_hidden_layers=1, intermediate_size=64).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def math_jsonl(tmp_path_factory):
    """A local JSONL training set in the shape of the public math sets (problem, answer)."""
    path = tmp_path_factory.mktemp("data") / "arithmetic.jsonl"
    rows = [{"problem": f"Compute {a} + {b}.", "answer": str(a + b), "difficulty": a % 3}
            for a in range(8) for b in (1, 2)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path
