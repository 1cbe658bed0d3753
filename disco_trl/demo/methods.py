"""The methods the demo, `disco-trl compare`, `disco-trl study` and the benchmarks train, in one registry.

A method is a name, a label for tables and plots, the trainer it runs (DisCO's `DiscoTrainer` or TRL's
`GRPOTrainer`) and the config fields that make it that method; everything else (geometry, sampling, learning rate,
steps) is the caller's and the same for every method it compares.

=====================  =====================================================================================
disco                  DisCO, log-L score, DRO objective (tau 10): `DiscoConfig(score_type="log_l")`
disco-lratio           DisCO, L-ratio score, DRO objective (tau 1): `DiscoConfig(score_type="l_ratio")`
disco-b                DisCO-b, log-L score, basic objective: `DiscoConfig(disco_variant="basic")`
disco-skip             `disco`, trained only on questions with signal: `skip_uninformative_questions=True`
disco-fill             `disco` with dynamic sampling: generation rounds until each batch holds its nominal number
                       of questions with signal: `fill_informative_questions=True` (`--max-generation-rounds`)
grpo                   TRL `GRPOConfig(loss_type="grpo", beta=0.001)`: group-std advantages, KL to the reference
dr_grpo                TRL `GRPOConfig(loss_type="dr_grpo", scale_rewards="none")`
dapo                   TRL `GRPOConfig(loss_type="dapo", epsilon_high=0.28)` (clip-higher; no dynamic sampling)
trl-default            TRL `GRPOConfig()` as it comes: its default loss (`loss_type="dapo"` in TRL 1.16, without
                       clip-higher), beta 0, no reference model; the benchmarks' baseline
trl-default-ref-kl     the same with a reference-model KL, beta 0.04 (the benchmarks' `--ref-beta`)
grpo-beta0             `loss_type="grpo"` at beta 0: the `grpo` loss without its reference model
=====================  =====================================================================================

`DEMO_METHODS` are the paper's comparison (what `compare` and `study` run by default); `BENCHMARK_METHODS` are what
`benchmarks/bench_disco.py` times by default; `FILL_METHODS` are the measurement of filling (docs/comparison.md).
Every command accepts every name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from trl import GRPOConfig, GRPOTrainer

from ..config import DiscoConfig
from ..trainer import DiscoTrainer


@dataclass(frozen=True)
class Method:
    label: str  # in tables and plots
    trainer: str  # "disco": DiscoTrainer and DiscoConfig; "grpo": TRL's GRPOTrainer and GRPOConfig
    config: dict[str, Any] = field(default_factory=dict)  # the config fields that make the method
    description: str = ""


METHODS: dict[str, Method] = {
    "disco": Method("DisCO (log-L)", "disco", {"score_type": "log_l", "disco_variant": "dro"},
                    "DiscoTrainer, log-L score, DRO objective"),
    "disco-lratio": Method("DisCO (L-ratio)", "disco", {"score_type": "l_ratio", "disco_variant": "dro"},
                           "DiscoTrainer, L-ratio score, DRO objective"),
    "disco-b": Method("DisCO-b (log-L)", "disco", {"score_type": "log_l", "disco_variant": "basic"},
                      "DiscoTrainer, log-L score, basic objective (DisCO-b)"),
    "disco-skip": Method("DisCO, skip uninformative", "disco",
                         {"score_type": "log_l", "disco_variant": "dro", "skip_uninformative_questions": True},
                         "DiscoTrainer, log-L score, DRO objective, skip_uninformative_questions=True"),
    "disco-fill": Method("DisCO, fill (dynamic sampling)", "disco",
                         {"score_type": "log_l", "disco_variant": "dro", "fill_informative_questions": True},
                         "DiscoTrainer, log-L score, DRO objective, fill_informative_questions=True"),
    "grpo": Method("GRPO", "grpo", {"loss_type": "grpo", "beta": 0.001, "scale_rewards": "group", "epsilon": 0.2},
                   "GRPOTrainer, loss_type='grpo', KL to the reference model with beta=0.001"),
    "dr_grpo": Method("Dr. GRPO", "grpo",
                      {"loss_type": "dr_grpo", "beta": 0.0, "scale_rewards": "none", "epsilon": 0.2},
                      "GRPOTrainer, loss_type='dr_grpo', rewards not scaled, beta=0"),
    "dapo": Method("DAPO", "grpo",
                   {"loss_type": "dapo", "beta": 0.0, "scale_rewards": "group", "epsilon": 0.2, "epsilon_high": 0.28},
                   "GRPOTrainer, loss_type='dapo' with clip-higher (epsilon_high=0.28), beta=0"),
    "trl-default": Method("TRL default", "grpo", {},
                          "GRPOTrainer, TRL's default loss at beta=0 (TRL 1.16: loss_type='dapo', no clip-higher)"),
    "trl-default-ref-kl": Method("TRL default + ref. KL", "grpo", {"beta": 0.04},
                                 "GRPOTrainer, TRL's default loss + reference-model KL (beta>0)"),
    "grpo-beta0": Method("GRPO, beta 0", "grpo", {"loss_type": "grpo", "beta": 0.0},
                         "GRPOTrainer, loss_type='grpo', beta=0"),
}
DEMO_METHODS = ("disco", "disco-lratio", "disco-b", "grpo", "dr_grpo", "dapo")
BENCHMARK_METHODS = ("trl-default", "grpo-beta0", "trl-default-ref-kl", "disco", "disco-lratio")
FILL_METHODS = ("disco", "disco-skip", "disco-fill")
DISCO_METHODS = tuple(name for name, m in METHODS.items() if m.trainer == "disco")


def fills(name: str) -> bool:
    """Whether method `name` fills its batches by itself (then it draws up to max_generation_rounds times the
    prompts)."""
    return bool(check_method(name).config.get("fill_informative_questions"))


def check_method(name: str) -> Method:
    """The registry's entry for `name`, or a ValueError that lists the names."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose from {', '.join(METHODS)}")
    return METHODS[name]


def build_config(name: str, common: dict[str, Any], **overrides) -> GRPOConfig:
    """The trainer config of method `name`: `common` (what every compared method shares), then the method's own
    fields, then `overrides`."""
    config_class = DiscoConfig if check_method(name).trainer == "disco" else GRPOConfig
    return config_class(**{**common, **METHODS[name].config, **overrides})


def trainer_class(name: str) -> type[GRPOTrainer]:
    return DiscoTrainer if check_method(name).trainer == "disco" else GRPOTrainer
