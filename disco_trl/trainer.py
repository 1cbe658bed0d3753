"""`DiscoTrainer`: TRL's `GRPOTrainer` with DisCO's objective (arXiv:2505.12366).

Everything TRL does stays TRL's: generation (transformers, vLLM server/colocate), reward functions, weight sync,
PEFT, DeepSpeed, logging, model cards. DisCO changes three things, each a small override:

1. `_calculate_rewards` / `_generate_and_score_completions`: carry each completion's raw reward and its question's
   group id to the loss (TRL keeps only normalised advantages, which DisCO does not use).
2. `_prepare_inputs`: shuffle the generation batch by whole questions instead of by rows, so that every question's
   completions land in one micro-batch on one process (the objective compares a question's positives with its
   negatives).
3. `_compute_loss`: minimise -J (DisCO or DisCO-b, `disco_trl.losses`) plus the squared-hinge KL penalty, scaled so
   that one optimizer step follows the gradient of the paper's mini-batch objective whatever the per-device batch,
   gradient accumulation, `steps_per_generation` or number of processes.
"""

from __future__ import annotations

import os
import textwrap
import warnings
from typing import Any

import torch
from trl import GRPOConfig, GRPOTrainer
from trl.models.utils import disable_gradient_checkpointing
from trl.trainer.utils import split_pixel_values_by_grid, split_tensor_dict, unsplit_pixel_values_by_grid

from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from . import checkpoints, metrics, skipping, vllm_support
from .config import DiscoConfig
from .losses import completion_labels, discriminative_objective, hinge_from_kl, sequence_scores
from .reward_checks import NoSignalWatch, check_reward_columns, with_output_check


def group_permutation(num_rows: int, group_size: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """A random row permutation that moves whole groups of `group_size` consecutive rows (order inside kept)."""
    if num_rows % group_size != 0:
        raise ValueError(f"{num_rows} rows cannot be cut into whole groups of {group_size}.")
    group_order = torch.randperm(num_rows // group_size, generator=generator)
    return (group_order[:, None] * group_size + torch.arange(group_size)[None, :]).reshape(-1)


def shuffle_groups(batch: dict[str, Any], group_size: int) -> dict[str, Any]:
    """Like TRL's `shuffle_sequence_dict`, but permutes whole questions so no group is split across micro-batches."""
    num_rows = len(batch["completion_ids"])
    permutation = group_permutation(num_rows, group_size)

    def permute(value):
        if value is None or (isinstance(value, torch.Tensor) and value.ndim == 0):
            return value
        if isinstance(value, torch.Tensor):
            return value[permutation.to(value.device)]
        return [value[i] for i in permutation.tolist()]

    return {key: permute(value) for key, value in batch.items()}


class DiscoTrainer(GRPOTrainer):
    """
    Trainer for DisCO, Discriminative Constrained Optimization ([arXiv:2505.12366](https://arxiv.org/abs/2505.12366)).

    A drop-in replacement for TRL's [`GRPOTrainer`]: same arguments (model, reward functions, datasets, PEFT config,
    callbacks, ...) with a [`DiscoConfig`]. For each question, the completions whose reward beats the question's mean
    (`reward_threshold="group_mean"`, TRL's advantage > 0) or a fixed threshold are positives, the others negatives;
    completions with no reward or an empty loss mask are neither. DisCO maximises, per mini-batch,

        J = 1/|B| sum_q [ mean_{o+} s(o+) - tau * log mean_{o-} exp(s(o-)/tau) ]     (DisCO, `disco_variant="dro"`)
        J = 1/|B| sum_q [ mean_{o+} s(o+) - mean_{o-} s(o-) ]                        (DisCO-b, `"basic"`)

    with s the mean token log-likelihood (`score_type="log_l"`) or likelihood ratio (`"l_ratio"`), subject to
    KL(pi_old || pi_theta) <= kl_delta, enforced by the penalty kl_beta * max(KL - kl_delta, 0)^2 computed on each
    micro-step's tokens (summed over processes). No reference model, no clipping, no advantage normalisation.
    """

    _tag_names = ["trl", "disco"]
    _name = "DisCO"
    _paper = {
        "title": "DisCO: Reinforcing Large Reasoning Models with Discriminative Constrained Optimization",
        "id": "2505.12366",
        # docstyle-ignore
        "citation": textwrap.dedent("""\
            @article{li2025disco,
                title        = {{DisCO: Reinforcing Large Reasoning Models with Discriminative Constrained Optimization}},
                author       = {Gang Li and Ming Lin and Tomer Galanti and Zhengzhong Tu and Tianbao Yang},
                year         = 2025,
                eprint       = {arXiv:2505.12366},
            }"""),
    }

    def __init__(
        self,
        model,
        reward_funcs=None,
        args: DiscoConfig | None = None,
        train_dataset=None,
        eval_dataset=None,
        processing_class=None,
        reward_processing_classes=None,
        callbacks=None,
        optimizers=(None, None),
        quantization_config=None,
        peft_config=None,
        tools=None,
        rollout_func=None,
        environment_factory=None,
    ):
        # Same parameters, order and defaults as GRPOTrainer.__init__ (tests/test_compatibility.py checks it).
        if args is None:
            from trl.trainer.utils import get_config_model_id

            model_name = model if isinstance(model, str) else get_config_model_id(model.config)
            args = DiscoConfig(f"{str(model_name).split('/')[-1]}-DisCO")
        elif not isinstance(args, DiscoConfig):
            kind = "GRPOConfig" if isinstance(args, GRPOConfig) else type(args).__name__
            raise TypeError(
                f"DiscoTrainer needs a DiscoConfig, got a {kind}. Build `DiscoConfig(...)` with the same arguments "
                "(it subclasses GRPOConfig) and set DisCO's own fields there (score_type, disco_variant, tau, kl_delta, "
                "kl_beta)."
            )
        if rollout_func is None and environment_factory is None:  # those add reward inputs of their own at run time
            check_reward_columns(reward_funcs, train_dataset)
        vllm_support.check_vllm_can_run(args, model)  # vLLM hook: refuse set-ups where vLLM cannot run
        super().__init__(
            model, reward_funcs, args=args, train_dataset=train_dataset, eval_dataset=eval_dataset,
            processing_class=processing_class, reward_processing_classes=reward_processing_classes,
            callbacks=callbacks, optimizers=optimizers, quantization_config=quantization_config,
            peft_config=peft_config, tools=tools, rollout_func=rollout_func, environment_factory=environment_factory,
        )
        vllm_support.adapt_to_vllm_platform(self)  # vLLM hook: weight push on vLLM's CPU backend
        self.reward_funcs = [with_output_check(func) for func in self.reward_funcs]
        self._disco_rewards_per_func = None
        self._no_signal_watch = NoSignalWatch(args.reward_threshold)
        if args.skip_uninformative_questions:
            self.add_callback(skipping.NoUpdateWithoutSignal(self))

    # ------------------------------------------------------------------ data flow: keep rewards and groups
    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        self._disco_rewards_per_func = rewards_per_func  # (all processes' completions, num_reward_funcs)
        return rewards_per_func

    def _generate_and_score_completions(self, inputs):
        output = super()._generate_and_score_completions(inputs)
        mode = "train" if self.model.training else "eval"
        group_size = self.num_generations if mode == "train" else self.num_generations_eval

        rewards_per_func = self._disco_rewards_per_func
        self._disco_rewards_per_func = None
        weights = self.reward_weights.to(rewards_per_func.device).unsqueeze(0)
        rewards = (rewards_per_func * weights).nansum(dim=1)  # TRL's weighted sum, all processes' completions
        rewards[torch.isnan(rewards_per_func).all(dim=1)] = torch.nan  # unscorable: neither positive nor negative

        num_local = output["completion_ids"].size(0)
        if mode == "train" and num_local % group_size != 0:
            raise RuntimeError(
                f"A process received {num_local} completions, not whole groups of {group_size}; check the batch sizes."
            )
        process_index = self.accelerator.process_index
        local_rewards = rewards[process_index * num_local : (process_index + 1) * num_local]
        output["disco_labels"] = self._labels(local_rewards, output)
        # Completions arrive grouped: G consecutive rows of the global batch share a question. The group id is the
        # question's index in the global generation batch, so ids are unique across processes.
        global_rows = torch.arange(num_local, device=rewards.device) + process_index * num_local
        output["disco_group_ids"] = global_rows // group_size
        self._log_group_statistics(self.accelerator.gather(output["disco_labels"]), rewards, group_size, mode)
        return output

    def _labels(self, local_rewards: torch.Tensor, output: dict) -> torch.Tensor:
        """Positives (1), negatives (0) and unusable completions (NaN) of this process, decided once per generation.

        With `reward_threshold="group_mean"` the comparison is TRL's own: a completion is positive when its advantage
        (reward minus its question's mean, after TRL's `multi_objective_aggregation`) is > 0. A completion whose loss
        mask is empty (e.g. truncated under `mask_truncated_completions`) has no score: it is neither.
        """
        scorable = self._loss_mask(output).sum(dim=1) > 0
        if self.args.reward_threshold == "group_mean":
            values, threshold = output["advantages"].to(local_rewards.device).clone(), 0.0
            values[torch.isnan(local_rewards)] = torch.nan
        else:
            values, threshold = local_rewards, float(self.args.reward_threshold)
        return completion_labels(values, scorable.to(values.device), threshold=threshold)

    def _log_group_statistics(self, labels: torch.Tensor, rewards: torch.Tensor, group_size: int, mode: str) -> None:
        """Per-question counts over the whole generation batch (all processes): what DisCO can learn from."""
        any_mixed = metrics.log_group_statistics(self._metrics[mode], labels, group_size,
                                                 numeric_threshold=self.args.reward_threshold != "group_mean")
        if mode == "train":
            self._no_signal_watch.update(any_mixed, rewards)

    def _prepare_inputs(self, generation_batch):
        mode = "train" if self.model.training else "eval"
        if mode != "train":
            return self._generate_and_score_completions(generation_batch)
        spg = self.args.steps_per_generation
        generate_every = spg * self.num_iterations
        if self._step % generate_every == 0 or self._buffered_inputs is None:
            batch = self._generate_and_score_completions(generation_batch)
            batch = split_pixel_values_by_grid(batch)
            batch = shuffle_groups(batch, self.num_generations)  # TRL shuffles rows; DisCO moves whole questions
            batches = split_tensor_dict(batch, spg)
            if self.args.skip_uninformative_questions:
                batches = self._drop_uninformative_questions(batches)
            self._buffered_inputs = [unsplit_pixel_values_by_grid(b) for b in batches]
        index = self._step % spg
        if self.args.skip_uninformative_questions:
            skipping.note_optimizer_step(self, self._buffered_inputs[index])
        if self.groups_span_micro_steps and self._step % self.args.gradient_accumulation_steps == 0:
            # First micro-step of an optimizer step whose groups are spread over several micro-steps.
            step_batches = self._buffered_inputs[index : index + self.current_gradient_accumulation_steps]
            self._attach_score_weights(step_batches, fresh=self._step % generate_every == 0)
        return self._buffered_inputs[index]

    def _drop_uninformative_questions(self, batches: list[dict]) -> list[dict]:
        """skip_uninformative_questions: the optimizer sees only questions with positives and negatives (skipping.py)."""
        return skipping.drop_uninformative_questions(
            batches, accumulation=self.args.gradient_accumulation_steps,
            rows_per_micro_batch=self.args.per_device_train_batch_size, reward_threshold=0.5,  # on disco_labels
            accelerator=self.accelerator,
        )

    @property
    def groups_span_micro_steps(self) -> bool:
        """True when a question's completions do not fit in one per-device micro-batch."""
        return self.args.per_device_train_batch_size % self.num_generations != 0

    def _forward_kwargs(self, inputs) -> dict:
        keys = ("pixel_values", "image_grid_thw", "num_images", "pixel_attention_mask", "spatial_shapes", "num_tiles",
                "image_sizes", "token_type_ids", "mm_token_type_ids", "image_position_ids")
        return {k: inputs.get(k) for k in keys}

    @torch.no_grad()
    def _current_scores(self, inputs, fresh: bool) -> torch.Tensor:
        """Scores s(o, q) under the current parameters, without gradient (the look-ahead of split groups)."""
        mask = self._loss_mask(inputs)
        old = inputs.get("old_per_token_logps")
        if fresh and self.args.score_type == "l_ratio":
            return torch.ones(mask.size(0), device=mask.device)  # pi_theta == pi_old right after generation
        if fresh and old is not None:
            per_token_logps = old.float()  # the old policy *is* the current one: reuse TRL's forward pass
        else:
            input_ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1)
            attention_mask = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
            with disable_gradient_checkpointing(self.model, self.args.gradient_checkpointing_kwargs):
                per_token_logps, _, _ = self._get_per_token_logps_and_entropies(
                    self.model, input_ids, attention_mask, inputs["completion_ids"].size(1),
                    **self._forward_kwargs(inputs),
                )
            per_token_logps = per_token_logps.float()
        old = per_token_logps if old is None else old.float()
        return sequence_scores(per_token_logps, old, mask, score_type=self.args.score_type)

    def _attach_score_weights(self, step_batches: list[dict], fresh: bool) -> None:
        """Exact DisCO gradient when groups span micro-steps.

        J depends on a completion only through its scalar score, so grad J = sum_i (dJ/ds_i) grad s_i. Parameters do not
        change within an optimizer step, so the weights dJ/ds_i can be computed up front from no-grad scores of all the
        step's completions on this process (each group lies wholly within them); each micro-step then back-propagates
        sum_i w_i s_i over its own completions. Costs one no-grad forward pass per optimizer step (none for the first
        step after a generation when TRL already computed the old policy's log-probs, or for L-ratio).
        """
        scores = torch.cat([self._current_scores(b, fresh) for b in step_batches]).float()
        labels = torch.cat([b["disco_labels"] for b in step_batches])
        group_ids = torch.cat([b["disco_group_ids"] for b in step_batches])
        # the step's full question count (skipping shrinks micro-batches, not the denominator)
        step_rows = self.args.per_device_train_batch_size * len(step_batches)
        num_questions = (step_rows // self.num_generations) * self.accelerator.num_processes
        scores.requires_grad_(True)
        with torch.enable_grad():
            objective = self._objective(scores, labels, group_ids, num_questions)
            (weights,) = torch.autograd.grad(objective, scores)
        for batch, w in zip(step_batches, weights.split([len(b["disco_labels"]) for b in step_batches])):
            batch["disco_score_weights"] = w
        # the step's objective (this process's share), logged once, on the step's first micro-batch
        step_batches[0]["disco_step_objective"] = objective.detach()
        for batch in step_batches[1:]:
            batch.pop("disco_step_objective", None)

    # ------------------------------------------------------------------ checkpoints
    # DisCO saves its generation buffer, micro-step counter and batch geometry with each checkpoint, one file per
    # process, so that a resumed run continues exactly where it stopped; which checkpoint a run may resume from (and
    # when a new run is refused) is decided in disco_trl.checkpoints.
    def train(self, resume_from_checkpoint=None, trial=None, ignore_keys_for_eval=None, **kwargs):
        """`Trainer.train`, with `resume_from_checkpoint=True` (or "last") meaning the newest *complete* checkpoint,
        and a new run refused in an output_dir that holds an earlier run's checkpoints (see disco_trl.checkpoints)."""
        checkpoint = checkpoints.resolve_resume_for_trainer(self, resume_from_checkpoint)
        return super().train(checkpoint, trial, ignore_keys_for_eval, **kwargs)

    def _save_checkpoint(self, model, trial):
        # DisCO's files first, Trainer's after (trainer_state.json last): a save cut short lacks trainer_state.json.
        folder = os.path.join(self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
        geometry = checkpoints.batch_geometry(self.args, self.accelerator.num_processes)
        checkpoints.save_rank_state(folder, self.accelerator.process_index, self._step, self._buffered_inputs, geometry)
        super()._save_checkpoint(model, trial)

    def _load_optimizer_and_scheduler(self, checkpoint):
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is None:
            return
        rank = self.accelerator.process_index
        state = checkpoints.load_rank_state(checkpoint, rank, self.accelerator.device)
        if state is None:  # a checkpoint of another trainer: TRL's behaviour (regenerate) applies
            warnings.warn(checkpoints.missing_state_warning(checkpoint, rank), checkpoints.ResumeWarning, stacklevel=2)
            return
        checkpoints.check_geometry(checkpoint, state, self.args, self.accelerator.num_processes)
        self._step = state["step"]
        self._buffered_inputs = state["buffered_inputs"]

    # ------------------------------------------------------------------ the objective
    def _global_sum(self, values: torch.Tensor) -> torch.Tensor:
        """Sum of a (detached) tensor over all processes."""
        if self.accelerator.num_processes == 1:
            return values
        return self.accelerator.reduce(values.detach().clone(), reduction="sum")

    @staticmethod
    def _loss_mask(inputs) -> torch.Tensor:
        mask = inputs["completion_mask"]
        if "tool_mask" in inputs:
            mask = mask * inputs["tool_mask"]
        return mask.to(torch.float32)

    def _objective(self, scores, labels, group_ids, num_questions) -> torch.Tensor:
        """J on the paper's binary rewards (`disco_labels`: 1 positive, 0 negative, NaN neither)."""
        args = self.args
        return discriminative_objective(
            scores, labels, group_ids, variant=args.disco_variant, tau=args.tau, reward_threshold=0.5,
            num_questions=num_questions,
        )

    def _compute_loss(self, model, inputs):
        prompt_ids, prompt_mask = inputs["prompt_ids"], inputs["prompt_mask"]
        completion_ids, completion_mask = inputs["completion_ids"], inputs["completion_mask"]
        input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
        attention_mask = torch.cat([prompt_mask, completion_mask], dim=1)
        logits_to_keep = completion_ids.size(1)
        mask = self._loss_mask(inputs)

        per_token_logps, entropies, aux_loss = self._get_per_token_logps_and_entropies(
            model,
            input_ids,
            attention_mask,
            logits_to_keep,
            compute_entropy=True,
            compute_aux_loss=self.aux_loss_enabled,
            **self._forward_kwargs(inputs),
        )
        per_token_logps = per_token_logps.float()
        # First update after generation: TRL skips the old policy's forward pass because it equals the current one.
        old_per_token_logps = inputs.get("old_per_token_logps")
        old_per_token_logps = per_token_logps.detach() if old_per_token_logps is None else old_per_token_logps.float()

        mode = "train" if self.model.training else "eval"
        args = self.args
        group_size = self.num_generations if mode == "train" else self.num_generations_eval
        num_processes = self.accelerator.num_processes
        accumulation = self.current_gradient_accumulation_steps if mode == "train" else 1

        scores = sequence_scores(per_token_logps, old_per_token_logps, mask, score_type=args.score_type)
        if "disco_score_weights" in inputs:
            # Groups span micro-steps: weights dJ/ds were computed from the whole step's scores (see
            # _attach_score_weights); this surrogate has exactly this micro-step's share of grad J.
            surrogate = (inputs["disco_score_weights"].to(scores.dtype) * scores).sum()
            step_objective = inputs.get("disco_step_objective")  # on the step's first micro-batch only
            objective = surrogate - surrogate.detach() + (0.0 if step_objective is None else step_objective)
            logged_objective = step_objective  # summed over processes: the step's mean J
        else:
            # Discriminative term. This micro-batch holds whole questions; the optimizer step spans `accumulation`
            # micro-steps on each of `num_processes` processes, so it covers this many questions in all:
            rows = self.args.per_device_train_batch_size if mode == "train" else completion_ids.size(0)
            num_questions_step = (rows // group_size) * accumulation * num_processes  # full count, even when skipping
            objective = self._objective(scores, inputs["disco_labels"], inputs["disco_group_ids"], num_questions_step)
            logged_objective = objective.detach() * accumulation  # summed over processes: this micro-step's mean J

        # Trust region: token-mean KL(pi_old || pi_theta) over this micro-step's tokens on all processes. The value is
        # global; the gradient flows through this process's tokens, and the processes' parts add up (below).
        local_kl_sum = ((old_per_token_logps - per_token_logps) * mask).sum()
        totals = self._global_sum(torch.stack([local_kl_sum.detach(), mask.sum()]))
        kl = (local_kl_sum + (totals[0] - local_kl_sum).detach()) / totals[1].clamp(min=1.0)
        penalty = hinge_from_kl(kl, delta=args.kl_delta, beta=args.kl_beta)

        # DDP (and DeepSpeed) average gradients over processes, so scale by the process count to sum the parts; the
        # penalty is averaged over the micro-steps of the optimizer step.
        loss = num_processes * (-objective + penalty / skipping.kl_micro_steps(inputs, accumulation))
        if self.aux_loss_enabled:
            # As in GRPOTrainer: the router's load-balancing loss, averaged over micro-steps and (by DDP) processes.
            loss = loss + self.router_aux_loss_coef * aux_loss / accumulation
            self._metrics[mode]["aux_loss"].append(self.accelerator.gather_for_metrics(aux_loss.detach()).mean().item())

        kl = kl if totals[1] > 0 else None  # no tokens on any process (skipping): no KL estimate to log
        self._log_loss_metrics(mode, logged_objective, kl, penalty, scores, inputs, mask, entropies)
        return loss

    def _log_loss_metrics(self, mode, logged_objective, kl, penalty, scores, inputs, mask, entropies) -> None:
        metrics.log_loss_metrics(self._metrics[mode], self._global_sum, logged_objective, kl, penalty, scores,
                                 inputs["disco_labels"], mask, entropies, kl_delta=self.args.kl_delta)
