"""Shared markers for the suite (declared in pyproject.toml):

* `needs_benchmarks`: reads the paper's benchmark files (../shared/data/benchmarks or $DISCO_BENCHMARK_DIR); skipped,
  with the reason, where they are absent.
* `gpu`: needs a CUDA device; skipped on CPU machines.
* `slow`: end-to-end runs that take more than a few seconds (`-m "not slow"` leaves them out).
"""

from __future__ import annotations

import pytest
import torch

from disco_trl.data import benchmark_dir


def pytest_collection_modifyitems(config, items):
    skips = {
        "needs_benchmarks": (benchmark_dir() is None, "benchmark files not found (set DISCO_BENCHMARK_DIR)"),
        "gpu": (not torch.cuda.is_available(), "needs a CUDA device"),
    }
    for item in items:
        for marker, (skip, reason) in skips.items():
            if skip and marker in item.keywords:
                item.add_marker(pytest.mark.skip(reason=reason))
