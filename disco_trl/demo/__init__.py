"""The CPU demo and the miniature comparison: a generated arithmetic task, a locally built and warm-started tiny
model, DisCO training (`disco-trl demo`), and DisCO vs TRL's GRPO-family losses (`disco-trl compare`)."""
