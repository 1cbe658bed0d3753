"""The study's design as data (pre-registered in docs/study.md): the four experiments, their arms, seeds and
settings, the primary comparisons, and the calibration of delta.

* `dro` (A): DisCO log-L at tau 10, 1, 0.3, 0.1, 0.03 and DisCO-b, at the shared rate; where DRO's weights concentrate.
* `trust-region` (B): DisCO log-L with the squared hinge (the paper's), without it, and with a fixed KL penalty, at
  3e-5 and 1e-4; delta set by the paper's rule from a calibration run (`calibration_settings`, `delta_from_run`).
* `long` (C): DisCO, DisCO-b, GRPO and DAPO at one rate (3e-5) on a fixed, repeating pool of training questions,
  640 steps.
* Statistics (D) are `stats.py`; every experiment reports gains against each seed's own start, paired differences over
  seeds, 95% t intervals and Holm-adjusted p-values over its primary comparisons.
* `dro-powered` (E, study v3): DisCO log-L at tau 0.03 against DisCO-b under heavy imbalance (trained and evaluated on
  the 4-operation questions only), 320 steps, 32 seeds: powered to detect half a point.

Every run shares one geometry (`base_settings`): 16 questions x 8 completions per generation batch, 8 updates per
batch, held-out Pass@1 on 100 test questions x 32 samples, the exact-KL diagnostic on; A-C train and evaluate on the
2-4 operation mix, E on the 4-operation questions, each experiment's delta calibrated on its own mix
(`calibration_job`). `Scale` shrinks a design for tests and cost probes without changing what it is.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field, replace

from ..experiment import RunSettings
from ..methods import DISCO_METHODS


SHARED_LR = 1e-5  # A and the delta calibration: one rate for every arm (docs/study.md, "The learning rates")
LONG_LR = 3e-5  # C: one rate for every method, where clipping binds (docs/study.md, "The learning rates")
DIFFICULTIES = (2, 3, 4)
KL_BETA = 1e3  # the paper's squared-hinge weight
HARD_DIFFICULTIES = (4,)  # E: the 4-operation questions, where mixed groups hold >= 4 negatives per positive
CALIBRATION_SEED = 100  # not one of the evaluation seeds
EXPERIMENTS = ("dro", "trust-region", "long", "dro-powered")
DRO_EXPERIMENTS = ("dro", "dro-powered")  # the experiments that compare DRO's tau with the basic form


@dataclass(frozen=True)
class Scale:
    """The sizes of a study; the defaults are the pre-registered design."""

    steps: int = 160  # A and B: optimizer steps per run
    long_steps: int = 640  # C
    long_eval_every: int = 160  # C: held-out evaluations during the run
    calibration_steps: int = 160  # the delta calibration run
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)  # A and B
    long_seeds: tuple[int, ...] = (0, 1, 2)  # C
    eval_questions: int = 100
    eval_samples: int = 32
    questions_per_generation: int = 16
    updates_per_generation: int = 8
    train_pool: int = 256  # C: the fixed pool of training questions
    calibration_eval_questions: int = 10  # the calibration run is scored on little (its numbers are not used)
    powered_steps: int = 320  # E
    powered_seeds: tuple[int, ...] = tuple(range(32))  # E: 0.5 points detectable at v2's paired SD (docs/study.md)


@dataclass(frozen=True)
class Arm:
    """One setting of an experiment: a method of the registry with RunSettings overrides."""

    name: str  # in file names and tables
    label: str
    method: str
    overrides: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Comparison:
    """A declared comparison: gain(a) - gain(b), paired over seeds."""

    name: str
    a: str  # arm names
    b: str
    primary: bool = True


@dataclass(frozen=True)
class Experiment:
    name: str
    title: str
    arms: tuple[Arm, ...]
    seeds: tuple[int, ...]
    steps: int
    eval_every: int = 0
    train_pool: int = 0
    comparisons: tuple[Comparison, ...] = ()
    margin: float = 0.015  # "not shown": every primary 95% interval inside [-margin, +margin] (Pass@1 points / 100)
    learning_rate: float = SHARED_LR  # every arm's, unless the arm sets its own
    difficulties: tuple[int, ...] = DIFFICULTIES  # the training and held-out mix (numbers of operations)
    design: str = "study v2"  # the pre-registration it belongs to (docs/study.md)

    def arm(self, name: str) -> Arm:
        return next(a for a in self.arms if a.name == name)


def base_settings(scale: Scale, method: str, seed: int, lr: float,
                  difficulties: tuple[int, ...] = DIFFICULTIES) -> RunSettings:
    """The geometry, task and evaluation every run of the study shares (on one mix of questions)."""
    return RunSettings(method=method, seed=seed, learning_rate=lr, max_steps=scale.steps,
                       questions_per_generation=scale.questions_per_generation,
                       updates_per_generation=scale.updates_per_generation, train_difficulties=difficulties,
                       eval_difficulties=difficulties, eval_questions=scale.eval_questions,
                       eval_samples=scale.eval_samples, eval_split="test", kl_beta=KL_BETA, exact_kl=True,
                       disable_tqdm=True)


def dro_experiment(scale: Scale) -> Experiment:
    taus = (10.0, 1.0, 0.3, 0.1, 0.03)  # 0.03: on the warm start measured here, even 0.1 keeps the ESS near 0.9
    arms = tuple(Arm(f"tau{t:g}", f"DisCO log-L, tau {t:g}", "disco", {"tau": t}) for t in taus)
    arms += (Arm("basic", "DisCO-b log-L", "disco-b"),)
    comparisons = tuple(Comparison(f"tau {t:g} - DisCO-b", f"tau{t:g}", "basic", primary=t != 10.0) for t in taus)
    return Experiment("dro", "A. DRO: tau against the basic form", arms, scale.seeds, scale.steps,
                      comparisons=comparisons)


def trust_region_experiment(scale: Scale) -> Experiment:
    arms, comparisons = [], []
    for lr in (3e-5, 1e-4):
        tag = f"{lr:g}"
        arms += [Arm(f"hinge-{tag}", f"squared hinge (paper), lr {tag}", "disco", {"learning_rate": lr}),
                 Arm(f"off-{tag}", f"no KL penalty, lr {tag}", "disco", {"learning_rate": lr, "kl_beta": 0.0}),
                 Arm(f"fixed-{tag}", f"fixed KL penalty, lr {tag}", "disco",
                     {"learning_rate": lr, "kl_penalty": "linear"})]
        comparisons += [Comparison(f"hinge - off, lr {tag}", f"hinge-{tag}", f"off-{tag}"),
                        Comparison(f"hinge - fixed, lr {tag}", f"hinge-{tag}", f"fixed-{tag}")]
    return Experiment("trust-region", "B. Trust region: squared hinge, none, fixed penalty", tuple(arms), scale.seeds,
                      scale.steps, comparisons=tuple(comparisons))


def long_experiment(scale: Scale) -> Experiment:
    arms = (Arm("disco", "DisCO log-L (tau 10)", "disco"), Arm("disco-b", "DisCO-b log-L", "disco-b"),
            Arm("grpo", "GRPO", "grpo"), Arm("dapo", "DAPO", "dapo"))
    comparisons = (Comparison("DisCO - GRPO", "disco", "grpo"), Comparison("DisCO - DAPO", "disco", "dapo"),
                   Comparison("DisCO - DisCO-b", "disco", "disco-b"))
    return Experiment("long", "C. Long runs on a repeating pool", arms, scale.long_seeds, scale.long_steps,
                      eval_every=scale.long_eval_every, train_pool=scale.train_pool, comparisons=comparisons,
                      margin=0.02, learning_rate=LONG_LR)


def dro_powered_experiment(scale: Scale) -> Experiment:
    """E (study v3): the one comparison tau 0.03 - DisCO-b, on the 4-operation questions, 320 steps, 32 seeds; its
    margin for "not shown" (0.6 points) is what the planned seeds reach with 80% probability when there is no effect
    (docs/study.md, "Study v3")."""
    arms = (Arm("tau0.03", "DisCO log-L, tau 0.03", "disco", {"tau": 0.03}), Arm("basic", "DisCO-b log-L", "disco-b"))
    return Experiment("dro-powered", "E. DRO, powered: tau 0.03 against the basic form on 4-operation questions", arms,
                      scale.powered_seeds, scale.powered_steps,
                      comparisons=(Comparison("tau 0.03 - DisCO-b", "tau0.03", "basic"),), margin=0.006,
                      difficulties=HARD_DIFFICULTIES, design="study v3")


BUILDERS = {"dro": dro_experiment, "trust-region": trust_region_experiment, "long": long_experiment,
            "dro-powered": dro_powered_experiment}


def experiment(name: str, scale: Scale) -> Experiment:
    if name not in BUILDERS:
        raise ValueError(f"unknown experiment {name!r}; choose from {', '.join(EXPERIMENTS)} or all")
    return BUILDERS[name](scale)


def needs_delta(arm: Arm) -> bool:
    """Whether the arm's runs depend on delta: a DisCO method with a KL penalty (beta > 0)."""
    return arm.method in DISCO_METHODS and arm.overrides.get("kl_beta", KL_BETA) > 0


def arm_settings(exp: Experiment, arm: Arm, seed: int, scale: Scale, delta: float | None) -> RunSettings:
    """One run's settings: the shared base, the experiment's length and pool, the arm's overrides, and delta where
    the arm has a KL penalty (0 for DisCO without one, whose loss does not depend on it; the fixed penalty's weight is
    the squared hinge's weight at KL = 2 delta: 2 * beta * delta)."""
    settings = base_settings(scale, arm.method, seed, exp.learning_rate, exp.difficulties)
    settings.max_steps, settings.eval_every, settings.train_pool = exp.steps, exp.eval_every, exp.train_pool
    for key, value in arm.overrides.items():
        setattr(settings, key, value)
    if arm.method in DISCO_METHODS:
        if needs_delta(arm) and (delta is None or not delta > 0):
            raise ValueError(f"arm {arm.name!r} needs delta (from the calibration run), got {delta}")
        settings.kl_delta = delta if needs_delta(arm) else 0.0
        if settings.kl_penalty == "linear":
            settings.kl_beta = 2.0 * KL_BETA * delta
    settings.validate()
    return settings


def jobs(exp: Experiment, scale: Scale, delta: float | None, *, with_delta: bool | None = None) -> list:
    """(settings, tag) of every run, seed-major (a partial experiment still covers every arm); with `with_delta`
    True / False, only the runs that do / do not depend on delta."""
    return [(arm_settings(exp, arm, seed, scale, delta if needs_delta(arm) else None), f"{exp.name}-{arm.name}")
            for seed in exp.seeds for arm in exp.arms if with_delta is None or needs_delta(arm) == with_delta]


def calibration_settings(scale: Scale, difficulties: tuple[int, ...] = DIFFICULTIES) -> RunSettings:
    """The delta calibration run: DisCO log-L at the shared rate, KL penalty off (beta 0), seed 100, on a mix."""
    settings = base_settings(scale, "disco", CALIBRATION_SEED, SHARED_LR, difficulties)
    settings.max_steps, settings.kl_beta = scale.calibration_steps, 0.0
    settings.eval_questions, settings.eval_samples = min(scale.calibration_eval_questions, scale.eval_questions), 1
    settings.validate()
    return settings


def calibration_job(exp: Experiment, scale: Scale) -> tuple[RunSettings, str]:
    """(settings, tag) of the calibration run that sets `exp`'s delta: on its own mix of questions (the paper's rule:
    the KL per update of the setting that is trained), one per mix, shared by the experiments on that mix."""
    mix = tuple(exp.difficulties)
    return calibration_settings(scale, mix), "calibration" + ("" if mix == DIFFICULTIES else
                                                             "-ops" + "".join(map(str, mix)))


def update_index(step: int, updates_per_generation: int) -> int:
    """Which update of its generation batch a logged optimizer step is (0: the first, where pi_theta = pi_old)."""
    return (step - 1) % updates_per_generation


def delta_from_run(run: dict) -> dict:
    """The paper's rule for delta: the median KL per update at the chosen rate. Here: the median of the exact
    KL(pi_old || pi_theta) over every update of the calibration run except the first of each generation batch (where
    the KL is 0 by construction), rounded to 2 significant digits. Also reports the token estimate's median."""
    upg = run["settings"]["updates_per_generation"]
    rows = [e for e in run["log_history"] if "demo/kl_exact" in e and update_index(e["step"], upg) > 0]
    if not rows:
        raise ValueError("the calibration run logged no exact KL after a first update")
    exact = statistics.median(e["demo/kl_exact"] for e in rows)
    if not exact > 0:
        raise ValueError(f"the calibration run made no update (median exact KL {exact}): no delta can be set")
    estimate = statistics.median(e["disco/kl"] for e in rows if "disco/kl" in e)
    mix = tuple(run["settings"].get("train_difficulties", DIFFICULTIES))
    return {"delta": float(f"{exact:.2g}"), "median_exact_kl": exact, "median_estimate": estimate,
            "updates": len(rows),
            "rule": "median exact KL(pi_old || pi_theta) over updates 2..8 of each generation batch, hinge off, "
                    f"lr {run['settings']['learning_rate']:g}, seed {run['settings']['seed']}"
                    + ("" if mix == DIFFICULTIES else f", on {'-'.join(map(str, mix))}-operation questions"),
            **{k: run[k] for k in ("cpu_seconds", "started_at", "finished_at") if run.get(k) is not None}}


def scaled(scale: Scale, **changes) -> Scale:
    return replace(scale, **changes)
