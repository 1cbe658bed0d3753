"""Run several layouts in one torchrun launch (2 CPU processes, gloo); save each rank's record per layout: the
2-process tests' launcher (disco_testing.torchrun_many; one launch instead of one per layout keeps them fast)."""

import json
import sys
from pathlib import Path

import torch
from disco_testing import leave_together, run_layout


if __name__ == "__main__":
    out, runs = sys.argv[1], json.loads(sys.argv[2])
    for name, per_device, accumulation, spg, max_steps, config in runs:
        folder = Path(out) / name
        folder.mkdir(parents=True, exist_ok=True)
        result = run_layout(str(folder), per_device, accumulation, spg, max_steps, **config)
        torch.save(result, folder / f"rank{result['rank']}.pt")
    leave_together()
