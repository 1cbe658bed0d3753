"""How a run cuts its batches, in one type: `BatchGeometry`, and the checks that every launch cuts them as DisCO needs.

DisCO compares each question's completions with each other, so a question's `num_generations` completions must stay
on one process and inside one optimizer step, and each optimizer step is normalised by the questions it covers. Three
things decide the cut: the training arguments (`BatchGeometry.from_args`), the recipe's expectations
(`check_expected_questions`) and, under DeepSpeed, the engine's own config (`check_deepspeed_geometry`: the engine
counts micro-batches itself). The same type describes a launch in the training script's log and is stored with each
checkpoint, so a resumed run can be refused when its geometry differs (`disco_trl.checkpoints`).

Cutting by questions (`cut_by_questions`): TRL shuffles a generation batch by rows before cutting it into
micro-batches; DisCO re-cuts TRL's micro-batches so that every micro-batch (or, when a question is larger than a
micro-batch, consecutive micro-batches of one optimizer step) holds whole questions. The questions come in the order in
which TRL's random row order first meets them (a uniformly random question order), so DisCO draws no random numbers
of its own here: with the same seed, DisCO and GRPOTrainer consume the same random stream.

DeepSpeed traps: accelerate writes `gradient_accumulation_steps: 1` into a DeepSpeed config that does not name it
(silent), and on a machine without a GPU accelerate's DeepSpeed set-up counts 1 process however many run unless
`use_cpu` is set. `check_deepspeed_geometry` refuses both when the configuration is built, before any model loads,
naming the values and the fix.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from fractions import Fraction
from typing import Any

import torch
import torch.distributed as dist
from trl.trainer.utils import split_pixel_values_by_grid, split_tensor_dict, unsplit_pixel_values_by_grid


# The fields a checkpoint's buffered generation batch depends on (with the number of processes, saved as world_size).
CHECKPOINT_FIELDS = ("per_device_train_batch_size", "gradient_accumulation_steps", "steps_per_generation",
                     "num_generations", "num_iterations")


@dataclass(frozen=True)
class BatchGeometry:
    """How a launch cuts generation batches into optimizer updates (completion counts are over all processes)."""

    num_processes: int
    per_device_train_batch_size: int
    gradient_accumulation_steps: int
    steps_per_generation: int
    num_generations: int
    generation_batch_size: int
    num_iterations: int = 1

    @classmethod
    def from_args(cls, args, num_processes: int | None = None) -> BatchGeometry:
        """The geometry of training arguments `args` launched on `num_processes` processes (default: this launch's)."""
        return cls(
            num_processes=num_processes or args.world_size,
            per_device_train_batch_size=args.per_device_train_batch_size,
            gradient_accumulation_steps=args.gradient_accumulation_steps,
            steps_per_generation=args.steps_per_generation,
            num_generations=args.num_generations,
            generation_batch_size=args.generation_batch_size,
            num_iterations=args.num_iterations,
        )

    @property
    def completions_per_update(self) -> int:
        return self.per_device_train_batch_size * self.gradient_accumulation_steps * self.num_processes

    @property
    def questions_per_update(self) -> Fraction:
        return Fraction(self.completions_per_update, self.num_generations)

    @property
    def questions_per_generation(self) -> Fraction:
        return Fraction(self.generation_batch_size, self.num_generations)

    @property
    def updates_per_generation(self) -> Fraction:
        return Fraction(self.generation_batch_size * self.num_iterations, self.completions_per_update)

    def questions_in(self, micro_steps: int) -> int:
        """How many questions `micro_steps` micro-batches on every process hold (whole groups)."""
        return self.per_device_train_batch_size * micro_steps * self.num_processes // self.num_generations

    @property
    def groups_span_micro_steps(self) -> bool:
        """True when a question's completions do not fit in one per-device micro-batch."""
        return self.per_device_train_batch_size % self.num_generations != 0

    def checkpoint_fields(self) -> dict:
        """What a checkpoint records of the geometry (a saved generation batch only fits a run with the same)."""
        values = asdict(self)
        return {**{name: values[name] for name in CHECKPOINT_FIELDS}, "world_size": self.num_processes}

    def describe(self) -> str:
        processes = "process" if self.num_processes == 1 else "processes"
        return (
            f"{self.questions_per_generation} questions x {self.num_generations} completions per generation; "
            f"{self.questions_per_update} questions per optimizer update ({self.num_processes} {processes} x "
            f"{self.per_device_train_batch_size} sequences per micro-batch x {self.gradient_accumulation_steps} "
            f"accumulation steps); {self.updates_per_generation} updates per generation"
        )


def check_expected_questions(geometry: BatchGeometry, per_generation: int | None, per_update: int | None) -> None:
    """ValueError unless the launch samples `per_generation` questions per generation and updates on `per_update`
    questions (the recipe's expected_questions_per_generation / _per_update), naming the setting that would."""
    g = geometry.num_generations
    if per_generation is not None and geometry.questions_per_generation != per_generation:
        raise ValueError(
            f"generation_batch_size={geometry.generation_batch_size} samples {geometry.questions_per_generation} "
            f"questions x {g} completions per generation, but this recipe expects expected_questions_per_generation="
            f"{per_generation}. Set generation_batch_size={per_generation * g} (it counts completions over all "
            "processes)."
        )
    if per_update is not None and geometry.questions_per_update != per_update:
        raise ValueError(_update_mismatch(geometry, per_update))
    if per_generation is not None and per_update is not None and geometry.updates_per_generation.denominator != 1:
        raise ValueError(
            f"{geometry.describe()}: a generation batch must be a whole number of updates (num_iterations="
            f"{geometry.num_iterations})."
        )


def _update_mismatch(geometry: BatchGeometry, per_update: int) -> str:
    g, per_device = geometry.num_generations, geometry.per_device_train_batch_size
    needed = Fraction(per_update * g, per_device * geometry.num_processes)
    if needed.denominator == 1:
        fix = f"With this launch, set gradient_accumulation_steps={needed.numerator}."
    else:
        fix = (
            f"No gradient_accumulation_steps gives {per_update * g} completions with {geometry.num_processes} "
            "processes "
            f"x {per_device} per device; launch on a number of processes that divides "
            f"{Fraction(per_update * g, per_device)}, or change per_device_train_batch_size."
        )
    return (
        f"This launch updates on {geometry.questions_per_update} questions ({geometry.num_processes} processes x "
        f"per_device_train_batch_size={per_device} x gradient_accumulation_steps="
        f"{geometry.gradient_accumulation_steps} / num_generations={g}), but the recipe expects "
        f"expected_questions_per_update={per_update}. {fix}"
    )


def check_whole_groups(args) -> None:
    """Each question's completions must stay on one process and inside one optimizer step.

    Either the per-device micro-batch holds whole groups (the fast path), or, when a group is larger than a
    micro-batch (e.g. 8 completions, 4 sequences per GPU), a group spans consecutive micro-steps of one optimizer
    step on one process: the trainer then gathers the group's scores before the first micro-step (exact, at the
    cost of one extra no-grad forward pass per optimizer step; see DiscoTrainer).

    Called before GRPOConfig's own checks too: with a batch that cannot hold whole groups, TRL would report the
    `generation_batch_size` it derives (per_device_train_batch_size x processes x steps_per_generation), a setting
    the user never set. `steps_per_generation` is then the user's value, or gradient_accumulation_steps (TRL's
    default) when generation_batch_size is unset too; when only generation_batch_size is set, its share of the check
    waits for the value TRL derives (which needs the number of processes).
    """
    g = args.num_generations
    per_device = args.per_device_train_batch_size
    if g is None or per_device % g == 0:
        return
    accumulation, spg = args.gradient_accumulation_steps, args.steps_per_generation
    if spg is None and args.generation_batch_size is None:
        spg = accumulation  # what GRPOConfig derives
    per_step = per_device * accumulation
    if per_step % g == 0 and (spg is None or spg % accumulation == 0):
        return
    if per_step % g != 0:
        fix_ga = next(k for k in range(accumulation, accumulation * g + 1) if (per_device * k) % g == 0)
        raise ValueError(
            f"per_device_train_batch_size={per_device} x gradient_accumulation_steps={accumulation} = {per_step} "
            f"completions per process and optimizer step cannot hold whole groups of num_generations={g}: DisCO "
            f"compares each question's completions with each other, so they must stay on one process within one "
            f"optimizer step. Use per_device_train_batch_size a multiple of {g}, or gradient_accumulation_steps="
            f"{fix_ga} so that per_device_train_batch_size x gradient_accumulation_steps is a multiple of {g}."
        )
    raise ValueError(
        f"per_device_train_batch_size={per_device} does not hold whole groups of num_generations={g}, so groups "
        f"span micro-steps; steps_per_generation={spg} must then be a multiple of gradient_accumulation_steps="
        f"{accumulation} so that no optimizer step straddles two generation batches. Set steps_per_generation to a "
        f"multiple of {accumulation} (or leave it unset), or use per_device_train_batch_size a multiple of {g}."
    )


_AUTO = (None, "auto")


def _source(args) -> tuple[str, dict | None]:
    """Where the DeepSpeed config came from (for the message) and its raw content when it is a file or a dict."""
    given = getattr(args, "deepspeed", None)
    if isinstance(given, dict):
        return "the DeepSpeed config dict passed as `deepspeed`", given
    path = given or os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE", "none")
    if path and path != "none":
        try:
            with open(path) as f:
                raw = json.load(f)
        except (OSError, ValueError):
            raw = None
        return f"the DeepSpeed config file {path}", raw
    return "the accelerate config's deepspeed_config (or `accelerate launch --gradient_accumulation_steps`)", None


def _expected(args) -> dict[str, tuple[int, str, str]]:
    """DeepSpeed key -> (value the training arguments imply, their name, how it is computed)."""
    per_device, accumulation = args.per_device_train_batch_size, args.gradient_accumulation_steps
    world = args.world_size
    total = per_device * accumulation * world
    return {
        "train_micro_batch_size_per_gpu": (per_device, "per_device_train_batch_size", ""),
        "gradient_accumulation_steps": (accumulation, "gradient_accumulation_steps", ""),
        "train_batch_size": (
            total, "per_device_train_batch_size x gradient_accumulation_steps x processes",
            f" ({per_device} x {accumulation} x {world})",
        ),
    }


def _fix(key: str, value, name: str, source: str, raw: dict | None) -> str:
    if raw is None and key == "gradient_accumulation_steps":
        follow = "Remove gradient_accumulation_steps from " + source
    else:
        follow = f'Set "{key}": "auto" in {source}'
    other = f"make {name} = {value}" if key == "train_batch_size" else f"set {name}={value} in the training arguments"
    return f"{follow} so that DeepSpeed follows the training arguments, or {other}."


def _check_process_count(args) -> None:
    """On a machine without a GPU, accelerate's DeepSpeed set-up counts 1 process unless `use_cpu` is set."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == args.world_size:
        return
    raise ValueError(
        f"DeepSpeed runs {dist.get_world_size()} processes, but the training arguments count world_size="
        f"{args.world_size} (accelerate does so under DeepSpeed on a machine without a GPU), so generation batches "
        "and "
        f"DisCO's gradient normalisation would be sized for {args.world_size}. On CPU, set use_cpu=True "
        "(--use_cpu true); DeepSpeed then runs on its CPU accelerator with gloo."
    )


def check_deepspeed_geometry(args) -> None:
    """Raise ValueError when DeepSpeed would batch otherwise than the training arguments say."""
    plugin = getattr(args, "deepspeed_plugin", None)
    if plugin is None:
        return
    _check_process_count(args)
    config = plugin.deepspeed_config
    source, raw = _source(args)
    for key, (want, name, detail) in _expected(args).items():
        value = config.get(key)
        if value in _AUTO or int(value) == want:
            continue
        implicit = ""
        if raw is not None and key not in raw and key == "gradient_accumulation_steps":
            implicit = f" (accelerate sets {value} when {source} does not name it)"
        raise ValueError(
            f"DeepSpeed batch geometry: {source} gives {key}={value}{implicit}, but the training arguments give "
            f"{name}={want}{detail}. DeepSpeed would count micro-batches and optimizer steps otherwise than DisCO, "
            f"splitting the groups of num_generations={args.num_generations} completions across optimizer steps (a "
            f"wrong gradient). " + _fix(key, value, name, source, raw)
        )


# ------------------------------------------------------------------------------------ cutting by questions
def question_order(group_ids: torch.Tensor) -> torch.Tensor:
    """A row permutation that puts each question's rows together (in their order), the questions in the order of
    their first row."""
    _, question, counts = torch.unique(group_ids, return_inverse=True, return_counts=True)
    first_row = torch.full((counts.numel(),), group_ids.numel(), dtype=torch.long).scatter_reduce(
        0, question, torch.arange(group_ids.numel()), reduce="amin")
    rank = torch.empty_like(first_row)
    rank[torch.argsort(first_row)] = torch.arange(first_row.numel())
    return torch.sort(rank[question] * group_ids.numel() + torch.arange(group_ids.numel())).indices


def concat_rows(batches: list[dict[str, Any]]) -> dict[str, Any]:
    """Micro-batches as one batch (per-row values concatenated, scalars and None taken from the first)."""
    out = {}
    for key, first in batches[0].items():
        if isinstance(first, torch.Tensor) and first.ndim > 0:
            out[key] = torch.cat([b[key] for b in batches])
        elif isinstance(first, list):
            out[key] = [row for b in batches for row in b[key]]
        else:
            out[key] = first
    return out


def select_rows(batch: dict[str, Any], rows: torch.Tensor) -> dict[str, Any]:
    """`batch` restricted to (or reordered by) the row indices `rows` (a 1-D long tensor), scalars unchanged."""
    out = {}
    for key, value in batch.items():
        if isinstance(value, torch.Tensor) and value.ndim > 0:
            out[key] = value[rows.to(value.device)]
        elif isinstance(value, list):
            out[key] = [value[i] for i in rows.tolist()]
        else:
            out[key] = value
    return out


def cut_by_questions(micro_batches: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Re-cut a generation batch's micro-batches (rows in random order, each carrying `disco_group_ids`) into as many
    micro-batches of the same size, holding whole questions."""
    batch = concat_rows([split_pixel_values_by_grid(b) for b in micro_batches])
    batch = select_rows(batch, question_order(batch["disco_group_ids"].cpu()))
    return [unsplit_pixel_values_by_grid(b) for b in split_tensor_dict(batch, len(micro_batches))]
