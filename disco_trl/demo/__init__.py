"""The CPU demo, the miniature comparison and the study: a generated arithmetic task, a locally built and
warm-started tiny model, DisCO training (`disco-trl demo`), DisCO vs TRL's GRPO-family losses (`disco-trl compare`)
and where DisCO's design should show (`disco-trl study`). The methods they (and benchmarks/) train are the registry
in `methods.py`; one run is `experiment.run_method`. The real-model demo (`disco-trl demo --model smollm2`, `real.py`
and `real_run.py`) trains SmolLM2-135M-Instruct (`smollm2.smollm2_dir`) on `word_problems` with vLLM and LoRA."""
