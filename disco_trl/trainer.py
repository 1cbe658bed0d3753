"""`DiscoTrainer`: TRL's `GRPOTrainer` with DisCO's objective (arXiv:2505.12366).

Everything TRL does stays TRL's: generation (transformers, vLLM server/colocate), reward functions, weight sync,
PEFT, DeepSpeed, logging, model cards. DisCO overrides five GRPOTrainer methods, each for one reason:

1. `_calculate_rewards`: keep each completion's rewards per reward function (TRL passes on only GRPO's normalised
   advantages, which DisCO does not use), for `_generate_and_score_completions` to read.
2. `_generate_and_score_completions`: decide once per generation batch which completions are positives, negatives or
   neither (`disco_labels`), give each its question's id (`disco_group_ids`), and log the per-question counts; with
   fill_informative_questions, generate more rounds of prompts until the batch holds its nominal number of questions
   with signal (`filling`).
3. `_prepare_inputs`: TRL shuffles a new generation batch by rows; DisCO re-cuts it by whole questions
   (`geometry.cut_by_questions`), so that every question's completions land on one process within one optimizer
   step (the objective compares a question's positives with its negatives). Also where, per optimizer step, the
   look-ahead weights of questions larger than a micro-batch are attached and, with skip_uninformative_questions,
   questions without signal are dropped (`skipping`).
4. `_compute_loss`: minimise `losses.disco_loss` (-J of DisCO or DisCO-b plus the squared-hinge KL penalty), scaled so
   that one optimizer step follows the gradient of the paper's mini-batch objective whatever the per-device batch,
   gradient accumulation, `steps_per_generation` or number of processes. With vLLM, its samples are reweighted
   toward pi_old there (`disco_trl.vllm_support`: TRL's four modes with DisCO's meaning), and the mismatch is measured
   on every generation batch, from pi_old's log-probs wherever they are computed anyway.
5. `train`: `resume_from_checkpoint=True` (or "last") means the newest *complete* checkpoint, and a new run is refused
   in an output_dir holding an earlier run's checkpoints (`checkpoints.resolve_resume`). Trainer offers no hook
   before it resolves the checkpoint itself.

Saving and restoring DisCO's generation buffer with each checkpoint (`checkpoints.DiscoStateCallback`), the stop at a
NaN or inf loss or gradient norm before anything is saved (`checkpoints.NonFiniteGuard`) and the skipped update of a
step with nothing to learn (`skipping.NoUpdateWithoutSignal`) attach as Trainer callbacks.
"""

from __future__ import annotations

import textwrap

import torch
from trl import GRPOConfig, GRPOTrainer
from trl.models.utils import disable_gradient_checkpointing
from trl.trainer.utils import get_config_model_id

from . import checkpoints, filling, metrics, preflight, skipping, vllm_support
from .config import DiscoConfig
from .distributed import CollectiveTimeout
from .geometry import BatchGeometry, cut_by_questions
from .losses import (
    SamplingCorrection,
    completion_labels,
    disco_loss,
    discriminative_objective,
    question_log_weights,
    sequence_scores,
    token_kl_terms,
)
from .rewards.checks import NoSignalWatch, check_reward_columns, with_output_check


# Model inputs besides the token ids that TRL's batches may carry (vision-language models).
_FORWARD_KEYS = ("pixel_values", "image_grid_thw", "num_images", "pixel_attention_mask", "spatial_shapes", "num_tiles",
                 "image_sizes", "token_type_ids", "mm_token_type_ids", "image_position_ids")


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
                title        = {{DisCO: Reinforcing Large Reasoning Models with Discriminative Constrained
                Optimization}},
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
        args = _disco_config(args, model)
        if rollout_func is None and environment_factory is None:  # those add reward inputs of their own at run time
            check_reward_columns(reward_funcs, train_dataset)
        preflight.check_dataset_size(train_dataset, args)
        if isinstance(model, str) and processing_class is None:
            preflight.check_model_tokenizer(model, args)  # an empty tokenizer fails only at the first generation
        if args.fill_informative_questions:
            preflight.check_fill_dataset(train_dataset)
        if peft_config is not None:
            preflight.check_lora_targets(_model_or_config(model, args), peft_config)
        vllm_support.check_vllm_can_run(args, model)  # refuse set-ups where vLLM cannot run, before any model loads
        super().__init__(
            model, reward_funcs, args=args, train_dataset=train_dataset, eval_dataset=eval_dataset,
            processing_class=processing_class, reward_processing_classes=reward_processing_classes,
            callbacks=callbacks, optimizers=optimizers, quantization_config=quantization_config,
            peft_config=peft_config, tools=tools, rollout_func=rollout_func, environment_factory=environment_factory,
        )
        vllm_support.adapt_to_vllm_platform(self)  # the weight push on vLLM's CPU backend
        vllm_support.take_over_sampling_correction(self)  # DisCO's meaning of TRL's vLLM importance sampling
        self.add_callback(CollectiveTimeout())  # ddp_timeout bounds every wait for another process
        self.reward_funcs = [with_output_check(func) for func in self.reward_funcs]
        if rollout_func is None and environment_factory is None and not self._is_vlm:
            self._check_prompt_lengths(train_dataset)
        # (all processes' completions, reward functions) of the batch being scored: _calculate_rewards -> next method
        self._rewards_per_func_being_scored: torch.Tensor | None = None
        self._no_signal_watch = NoSignalWatch(args.reward_threshold)
        self._finite_guard = checkpoints.NonFiniteGuard(self)  # a NaN/inf loss or gradient norm stops the run
        self.add_callback(self._finite_guard)
        self._rounds_signal: list[tuple[bool, torch.Tensor]] = []  # (any mixed question, rewards) of each round
        self._checkpoint_state = checkpoints.DiscoStateCallback(self)
        self.add_callback(self._checkpoint_state)
        # with fill_informative_questions: the rounds that fill each generation batch, and their prompt stream
        self.batch_filler = None
        if args.fill_informative_questions:
            accelerator = self.accelerator
            self.batch_filler = filling.BatchFiller(args, accelerator.num_processes, accelerator.process_index)
        self._skipped_updates = None
        if args.skip_uninformative_questions:
            self._skipped_updates = skipping.NoUpdateWithoutSignal(is_deepspeed=self.is_deepspeed_enabled)
            self.add_callback(self._skipped_updates)

    def _check_prompt_lengths(self, dataset) -> None:
        """Every prompt, as TRL renders it, leaves room for max_completion_length tokens in the model's positions."""
        prompts = preflight.prompts_to_check(dataset)  # of a stream, its first rows only
        if prompts is None:
            return
        config = self.accelerator.unwrap_model(self.model).config
        preflight.check_prompt_lengths(prompts, self.processing_class,
                                       getattr(config, "max_position_embeddings", None),
                                       self.args.max_completion_length, self.chat_template_kwargs)

    @property
    def geometry(self) -> BatchGeometry:
        """How this run cuts its generation batches (over all of its processes)."""
        return BatchGeometry.from_args(self.args, self.accelerator.num_processes)

    # ------------------------------------------------------------------ data flow: labels and questions
    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        self._rewards_per_func_being_scored = rewards_per_func
        return rewards_per_func

    def _generate_and_score_completions(self, inputs):
        if self.batch_filler is None or not self.model.training:
            return self._score_generation(inputs)
        # fill_informative_questions: the batch's prompts come from the filler's stream, not from TRL's dataloader
        batch = self.batch_filler.generation_batch(self._score_generation, self.accelerator, self.processing_class,
                                                   self._metrics["train"], loss_mask=self._loss_mask)
        self._watch_signal()  # a batch whose later rounds found signal is no batch without signal
        return batch

    def _score_generation(self, inputs):
        """One generation of TRL's (completions, rewards, advantages) with DisCO's labels and question ids."""
        output = super()._generate_and_score_completions(inputs)
        if not self._sampled_by_vllm():  # e.g. a rollout_func's log-probs without vLLM: maybe placeholders
            output.pop(vllm_support.SAMPLING_LOGPS, None)
        mode = "train" if self.model.training else "eval"
        group_size = self.num_generations if mode == "train" else self.num_generations_eval
        rewards_per_func, self._rewards_per_func_being_scored = self._rewards_per_func_being_scored, None
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
        any_mixed = metrics.log_group_statistics(
            self._metrics[mode], self.accelerator.gather(output["disco_labels"]), group_size,
            numeric_threshold=self.args.reward_threshold != "group_mean",
        )
        if mode == "train":
            self._rounds_signal.append((any_mixed, rewards))
            if self.batch_filler is None:
                self._watch_signal()
        if "old_per_token_logps" in output:  # TRL computed pi_old's log-probs: measure vLLM's mismatch now, for free
            vllm_support.measure_mismatch(self.args, self.accelerator, self._metrics[mode], output,
                                          output["old_per_token_logps"], self._loss_mask(output))
        return output

    def _watch_signal(self) -> None:
        """Tell the no-signal watch about the generation batch just scored (with filling: all its rounds)."""
        rounds, self._rounds_signal = self._rounds_signal, []
        self._no_signal_watch.update(any(mixed for mixed, _ in rounds), torch.cat([r for _, r in rounds]))

    def _sampled_by_vllm(self) -> bool:
        """Whether the generation's log-probs are a real sampler's, to measure and correct against pi_old: with vLLM,
        as TRL's own correction assumes (a `rollout_func` must return log-probs, which without vLLM may be
        placeholders)."""
        return bool(self.use_vllm)

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

    def _prepare_inputs(self, generation_batch):
        if not self.model.training:
            return super()._prepare_inputs(generation_batch)
        buffered_before = self._buffered_inputs
        super()._prepare_inputs(generation_batch)  # TRL generates when due and buffers the batch, shuffled by rows
        spg, accumulation = self.args.steps_per_generation, self.args.gradient_accumulation_steps
        fresh = self._buffered_inputs is not buffered_before
        if fresh:
            batches = cut_by_questions(self._buffered_inputs)
            if self._skipped_updates is not None:
                batches = skipping.drop_uninformative_questions(
                    batches, accumulation=accumulation, rows_per_micro_batch=self.args.per_device_train_batch_size,
                    accelerator=self.accelerator,
                )
            self._buffered_inputs = batches
        index = self._step % spg
        if self._step % accumulation == 0:  # the first micro-step of an optimizer step
            if self._skipped_updates is not None:
                self._skipped_updates.observe_step(self._buffered_inputs[index], self._metrics["train"])
            if self.geometry.groups_span_micro_steps:
                step_batches = self._buffered_inputs[index : index + self.current_gradient_accumulation_steps]
                self._attach_score_weights(step_batches, fresh=self._step % (spg * self.num_iterations) == 0)
        return self._buffered_inputs[index]

    # ------------------------------------------------------------------ questions larger than a micro-batch
    def _forward_kwargs(self, inputs) -> dict:
        return {k: inputs.get(k) for k in _FORWARD_KEYS}

    @torch.no_grad()
    def _current_scores(self, inputs, fresh: bool) -> tuple[torch.Tensor, SamplingCorrection | None]:
        """Scores s(o, q) under the current parameters, without gradient (the look-ahead of split groups), and the
        batch's sampling correction (its log-weights not yet normalised per question), if any."""
        mask = self._loss_mask(inputs)
        old = inputs.get("old_per_token_logps")
        correcting = vllm_support.corrects(self.args, inputs)
        if fresh and self.args.score_type == "l_ratio" and not correcting:
            return torch.ones(mask.size(0), device=mask.device), None  # pi_theta == pi_old right after generation
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
        correction = vllm_support.new_correction(self.args, inputs, old, mask) if correcting else None
        if correction is not None:
            mask = correction.mask
        scores = sequence_scores(per_token_logps, old, mask, score_type=self.args.score_type,
                                 token_weights=None if correction is None else correction.token_weights)
        return scores, correction

    def _attach_score_weights(self, step_batches: list[dict], fresh: bool) -> None:
        """Exact DisCO gradient when groups span micro-steps.

        J depends on a completion only through its scalar score, so grad J = sum_i (dJ/ds_i) grad s_i. Parameters do
        not change within an optimizer step, so the weights dJ/ds_i can be computed up front from no-grad scores of
        all the step's completions on this process (each group lies wholly within them); each micro-step then
        back-propagates sum_i w_i s_i over its own completions. Costs one no-grad forward pass per optimizer step (none
        for the first step after a generation when TRL already computed the old policy's log-probs, or for L-ratio
        without the sampling correction). With the correction, its weights (normalised per question over the whole
        step) are attached too, for the micro-steps' scores and KL.
        """
        looked_ahead = [self._current_scores(b, fresh) for b in step_batches]
        scores = torch.cat([s for s, _ in looked_ahead]).float().requires_grad_(True)
        labels = torch.cat([b["disco_labels"] for b in step_batches])
        group_ids = torch.cat([b["disco_group_ids"] for b in step_batches])
        log_weights = None
        if all(c is not None for _, c in looked_ahead):
            log_weights = question_log_weights(torch.cat([c.log_weights for _, c in looked_ahead]), group_ids)
            sizes = [len(s) for s, _ in looked_ahead]
            for batch, (_, c), w in zip(step_batches, looked_ahead, log_weights.split(sizes)):
                vllm_support.attach_correction(batch, SamplingCorrection(c.mask, c.token_weights, w))
        with torch.enable_grad():
            # the step's full question count (skipping shrinks micro-batches, not the denominator)
            objective = self._objective(scores, labels, group_ids, self.geometry.questions_in(len(step_batches)),
                                        log_weights)
            (weights,) = torch.autograd.grad(objective, scores)
        for batch, w in zip(step_batches, weights.split([len(b["disco_labels"]) for b in step_batches])):
            batch["disco_score_weights"] = w
        stats = metrics.negative_weight_stats(scores, labels, group_ids, self.args.tau, self.args.disco_variant,
                                              log_weights)
        metrics.log_negative_weights(self._metrics["train"], self._global_sum(stats))
        # the step's objective (this process's share), logged once, on the step's first micro-batch
        step_batches[0]["disco_step_objective"] = objective.detach()
        for batch in step_batches[1:]:
            batch.pop("disco_step_objective", None)

    # ------------------------------------------------------------------ checkpoints
    def train(self, resume_from_checkpoint=None, trial=None, ignore_keys_for_eval=None, **kwargs):
        """`Trainer.train`, with `resume_from_checkpoint=True` (or "last") meaning the newest *complete* checkpoint,
        a new run refused in an output_dir that holds an earlier run's checkpoints (see disco_trl.checkpoints), and
        the output_dir held for the run: a second run into it is refused while this one lives."""
        with preflight.hold_folder(self.accelerator, self.args.output_dir, "a training run (DiscoTrainer.train)"):
            checkpoint = checkpoints.resolve_resume_for_trainer(self, resume_from_checkpoint)
            if self.batch_filler is not None:
                self.batch_filler.bind(self.train_dataset, self.data_collator)
            self._checkpoint_state.resume_from = checkpoint
            try:
                return super().train(checkpoint, trial, ignore_keys_for_eval, **kwargs)
            except (OSError, RuntimeError) as err:  # a failed save on a full disk, told as what it is
                full = checkpoints.full_disk_error(self.args.output_dir, self, err)
                if full is None:
                    raise
                raise full from err

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

    def _objective(self, scores, labels, group_ids, num_questions, log_weights=None) -> torch.Tensor:
        """J on the paper's binary rewards (`disco_labels`: 1 positive, 0 negative, NaN neither), with the sampling
        correction's per-completion weights when there are any."""
        return discriminative_objective(scores, labels, group_ids, variant=self.args.disco_variant, tau=self.args.tau,
                                        num_questions=num_questions, log_weights=log_weights)

    def _micro_step_objective(self, scores, inputs, mode: str, seen: vllm_support.LossView):
        """(This micro-step's share of the step's J, differentiable; the value to log, summed over processes)."""
        if "disco_score_weights" in inputs:
            # Groups span micro-steps: weights dJ/ds were computed from the whole step's scores (see
            # _attach_score_weights); this surrogate has exactly this micro-step's share of grad J.
            surrogate = (inputs["disco_score_weights"].to(scores.dtype) * scores).sum()
            step_objective = inputs.get("disco_step_objective")  # on the step's first micro-batch only
            objective = surrogate - surrogate.detach() + (0.0 if step_objective is None else step_objective)
            return objective, step_objective  # summed over processes: the step's mean J
        # This micro-batch holds whole questions; the optimizer step covers the geometry's question count in all
        # (in evaluation, one micro-batch is the whole step).
        if mode == "train":
            accumulation = self.current_gradient_accumulation_steps
            num_questions = self.geometry.questions_in(accumulation)
        else:
            num_questions = scores.numel() // self.num_generations_eval * self.accelerator.num_processes
            accumulation = 1
        objective = self._objective(scores, seen.labels, inputs["disco_group_ids"], num_questions, seen.log_weights)
        return objective, objective.detach() * accumulation  # summed over processes: this micro-step's mean J

    def _global_kl(self, per_token_logps, old_per_token_logps, seen: vllm_support.LossView):
        """The micro-step's token-mean KL(pi_old || pi_theta) over its tokens on all processes (importance-weighted
        under the sampling correction). The value is global; the gradient flows through this process's tokens, and
        the processes' parts add up (see disco_loss)."""
        sample_weights = None if seen.log_weights is None else torch.exp(seen.log_weights)
        local_sum, local_tokens = token_kl_terms(per_token_logps, old_per_token_logps, seen.mask,
                                                 estimator=self.args.kl_estimator, token_weights=seen.token_weights,
                                                 sample_weights=sample_weights)
        totals = self._global_sum(torch.stack([local_sum.detach(), local_tokens]))
        kl = (local_sum + (totals[0] - local_sum).detach()) / totals[1].clamp(min=1.0)
        return kl, totals[1] > 0

    def _compute_loss(self, model, inputs):
        input_ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1)
        attention_mask = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
        per_token_logps, entropies, aux_loss = self._get_per_token_logps_and_entropies(
            model, input_ids, attention_mask, inputs["completion_ids"].size(1), compute_entropy=True,
            compute_aux_loss=self.aux_loss_enabled, **self._forward_kwargs(inputs),
        )
        per_token_logps = per_token_logps.float()
        mode = "train" if self.model.training else "eval"
        # First update after generation: TRL skips the old policy's forward pass because it equals the current one.
        old_per_token_logps = inputs.get("old_per_token_logps")
        mask = self._loss_mask(inputs)
        if old_per_token_logps is None:
            old_per_token_logps = per_token_logps.detach()  # pi_old's log-probs: measure vLLM's mismatch, for free
            vllm_support.measure_mismatch(self.args, self.accelerator, self._metrics[mode], inputs,
                                          old_per_token_logps, mask)
        old_per_token_logps = old_per_token_logps.float()
        accumulation = self.current_gradient_accumulation_steps if mode == "train" else 1
        seen = vllm_support.loss_view(self.args, inputs, old_per_token_logps, mask)

        scores = sequence_scores(per_token_logps, old_per_token_logps, seen.mask, score_type=self.args.score_type,
                                 token_weights=seen.token_weights)
        objective, logged_objective = self._micro_step_objective(scores, inputs, mode, seen)
        kl, has_tokens = self._global_kl(per_token_logps, old_per_token_logps, seen)
        loss = disco_loss(objective, kl, kl_delta=self.args.kl_delta, kl_beta=self.args.kl_beta,
                          num_processes=self.accelerator.num_processes,
                          kl_micro_steps=skipping.kl_micro_steps(inputs, accumulation), penalty=self.args.kl_penalty)
        if self.aux_loss_enabled:
            # As in GRPOTrainer: the router's load-balancing loss, averaged over micro-steps and (by DDP) processes.
            loss = loss + self.router_aux_loss_coef * aux_loss / accumulation
            self._metrics[mode]["aux_loss"].append(self.accelerator.gather_for_metrics(aux_loss.detach()).mean().item())
        whole = "disco_score_weights" not in inputs  # the micro-batch holds whole questions
        weight_stats = metrics.negative_weight_stats(scores, seen.labels, inputs["disco_group_ids"], self.args.tau,
                                                     self.args.disco_variant, seen.log_weights) if whole else None
        metrics.log_loss_metrics(self._metrics[mode], self._global_sum, logged_objective, kl if has_tokens else None,
                                 scores, seen.labels, seen.mask, entropies, kl_delta=self.args.kl_delta,
                                 kl_beta=self.args.kl_beta, kl_penalty_kind=self.args.kl_penalty,
                                 weight_stats=weight_stats)
        if mode == "train":
            self._finite_guard.observe_loss(loss)  # NonFiniteGuard stops the run before a NaN update is saved
        return loss


def _model_or_config(model, args):
    """The model, or for a model id / path its config (LoRA targets are checked on it before any weights load)."""
    return model if not isinstance(model, str) else preflight.model_config(model, args)


def _disco_config(args, model) -> DiscoConfig:
    """`args`, or GRPOTrainer's default config as a DiscoConfig; a GRPOConfig is refused with the way to convert it."""
    if args is None:
        model_name = model if isinstance(model, str) else get_config_model_id(model.config)
        return DiscoConfig(f"{str(model_name).split('/')[-1]}-DisCO")
    if not isinstance(args, DiscoConfig):
        kind = "GRPOConfig" if isinstance(args, GRPOConfig) else type(args).__name__
        raise TypeError(
            f"DiscoTrainer needs a DiscoConfig, got a {kind}. Build `DiscoConfig(...)` with the same arguments "
            "(it subclasses GRPOConfig) and set DisCO's own fields there (score_type, disco_variant, tau, kl_delta, "
            "kl_beta)."
        )
    return args
