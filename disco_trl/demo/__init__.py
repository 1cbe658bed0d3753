"""The CPU demo, the miniature comparison and the study: a generated arithmetic task, a locally built and
warm-started tiny model, DisCO training (`disco-trl demo`), DisCO vs TRL's GRPO-family losses (`disco-trl compare`)
and where DisCO's design should show (`disco-trl study`). The methods they (and benchmarks/) train are the registry
in `methods.py`; one run is `experiment.run_method`."""
