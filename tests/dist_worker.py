"""Run one layout under torchrun (2 CPU processes, gloo) and save each rank's record: used by test_split_invariance."""

import json
import sys

import torch
from disco_testing import leave_together, run_layout


if __name__ == "__main__":
    out, per_device, accumulation, spg, max_steps, extra = sys.argv[1:7]
    result = run_layout(out, int(per_device), int(accumulation), int(spg), int(max_steps), **json.loads(extra))
    torch.save(result, f"{out}/rank{result['rank']}.pt")
    leave_together()
