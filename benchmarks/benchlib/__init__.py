"""The parts of benchmarks/bench_disco.py, one concern per module (the scripts in benchmarks/ import them):

* `methods`: what is compared -- the baseline and the sweep's methods (names of the project's method registry,
  `disco_trl.demo.methods`), model presets, the batch geometry, fixed completions, the reward, prompts, the locally
  built model, and building a trainer.
* `timing`: the timing protocol -- peak-memory meter, the baton that interleaves trainers one optimizer step at a
  time, the step timer, loss-only timing, one repetition of every method.
* `sweep`: the scaling sweep of the loss cost (pure loss functions and compute_loss through a model).
* `report`: summaries as per-repetition ratios, the Markdown report, the machine description.

And for the air-gapped GPU check (benchmarks/gpu_check.py): `random_model` (Qwen2.5-1.5B's shape with random weights,
a word-level tokenizer of the model's vocabulary) and `gpu_report` (its Markdown).
"""
