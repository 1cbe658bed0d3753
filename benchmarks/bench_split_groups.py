"""Cost of groups larger than a micro-batch (the score look-ahead) against the whole-group layout.

Same model, same fixed completions, same optimizer-step size (2 questions x 8 completions = 16 sequences):

* whole groups:  per_device_train_batch_size=8,  gradient_accumulation_steps=2
* split groups:  per_device_train_batch_size=4,  gradient_accumulation_steps=4   (each group spans 2 micro-steps)
* split groups:  per_device_train_batch_size=2,  gradient_accumulation_steps=8   (each group spans 4 micro-steps)

with 4 optimizer steps per generation (steps_per_generation = 4 x accumulation), so one step in four reuses TRL's old
log-probs for the look-ahead and three pay a no-grad forward pass. Reports the median time per optimizer step and the
share of it spent in the look-ahead.

    python benchmarks/bench_split_groups.py [--reps 3] [--completion-length 64] [--output-dir benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import zlib
from pathlib import Path

import torch
from datasets import Dataset
from transformers import TrainerCallback

from disco_trl import DiscoConfig, DiscoTrainer
from disco_trl.toy import build_tiny_qwen2, build_tokenizer


GROUP = 8
LAYOUTS = {"whole groups (8 per micro-batch)": (8, 2), "split groups (4 per micro-batch)": (4, 4),
           "split groups (2 per micro-batch)": (2, 8)}


class FixedTrainer(DiscoTrainer):
    """Deterministic completions of fixed length: timings exclude sampling."""

    completion_length = 64

    def _generate_single_turn(self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
        out, seen = [], {}
        for ids in prompt_ids:
            k = seen.get(tuple(ids), 0)
            seen[tuple(ids)] = k + 1
            g = torch.Generator().manual_seed(zlib.crc32(repr((tuple(ids), k)).encode()))
            out.append(torch.randint(3, len(self.processing_class), (self.completion_length,), generator=g).tolist())
        return out, None

    def _attach_score_weights(self, step_batches, fresh):
        start = time.perf_counter()
        super()._attach_score_weights(step_batches, fresh)
        self.lookahead_seconds += time.perf_counter() - start


class StepTimer(TrainerCallback):
    def __init__(self):
        self.times, self._t = [], None

    def on_step_begin(self, args, state, control, **kwargs):
        self._t = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.times.append(time.perf_counter() - self._t)


def reward(completions, **kwargs):
    return [float(zlib.crc32(c.encode()) % 3 == 0) for c in completions]


def run(per_device, accumulation, steps, completion_length, hidden):
    tokenizer = build_tokenizer()
    model = build_tiny_qwen2(tokenizer, hidden_size=hidden, num_hidden_layers=4, intermediate_size=4 * hidden,
                             num_attention_heads=4, num_key_value_heads=2)
    FixedTrainer.completion_length = completion_length
    timer = StepTimer()
    with tempfile.TemporaryDirectory() as out:
        args = DiscoConfig(output_dir=out, per_device_train_batch_size=per_device, num_generations=GROUP,
                           gradient_accumulation_steps=accumulation, steps_per_generation=4 * accumulation,
                           max_completion_length=completion_length, max_steps=steps, report_to="none",
                           save_strategy="no", learning_rate=1e-4, use_cpu=True, gradient_checkpointing=False,
                           disable_tqdm=True, logging_steps=steps)
        prompts = [f"Q{i}: {i} + {i} =" for i in range(64)]
        trainer = FixedTrainer(model=model, reward_funcs=reward, args=args, processing_class=tokenizer,
                               train_dataset=Dataset.from_dict({"prompt": prompts}), callbacks=[timer])
        trainer.lookahead_seconds = 0.0
        trainer.train()
    # drop generation steps (every 4th) so the timing is the update itself
    update_steps = [t for i, t in enumerate(timer.times) if i % 4 != 0]
    return {"step_seconds": statistics.median(update_steps),
            "lookahead_share": trainer.lookahead_seconds / sum(timer.times)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--steps", type=int, default=8, help="optimizer steps per run (two generations)")
    parser.add_argument("--completion-length", type=int, default=64)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output-dir", default="benchmarks/results")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    results = {name: [] for name in LAYOUTS}
    for _ in range(args.reps):  # alternate layouts within each repetition
        for name, (per_device, accumulation) in LAYOUTS.items():
            results[name].append(run(per_device, accumulation, args.steps, args.completion_length, args.hidden))
    base = statistics.median(r["step_seconds"] for r in results[next(iter(LAYOUTS))])
    rows = []
    for name, runs in results.items():
        times = [r["step_seconds"] for r in runs]
        rows.append({
            "layout": name,
            "median_step_s": statistics.median(times),
            "min_step_s": min(times),
            "max_step_s": max(times),
            "ratio_to_whole": statistics.median(times) / base,
            "lookahead_share": statistics.median(r["lookahead_share"] for r in runs),
        })
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"argv": sys.argv, "torch_threads": args.threads, "completion_length": args.completion_length,
            "hidden": args.hidden, "reps": args.reps}
    (out / "split_groups.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    lines = ["| layout | median s/step | min | max | x whole | look-ahead share of time |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['layout']} | {r['median_step_s']:.3f} | {r['min_step_s']:.3f} | {r['max_step_s']:.3f} | "
              f"{r['ratio_to_whole']:.2f} | {100 * r['lookahead_share']:.1f}% |" for r in rows]
    (out / "split_groups.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
