"""`BatchFiller`: generation rounds until every process's share of the batch holds questions with signal.

`DiscoTrainer` hands it the method that generates and scores one list of dataset rows (TRL's
`_generate_and_score_completions` plus DisCO's labels); the filler draws each round's prompts from its
`PromptStream`, counts the informative questions found on every process after each round (one all-gather of one
number per process), and stops when every process has its share or after `max_generation_rounds` rounds. All
processes run every round (generation and scoring hold collectives), and all decide from the same gathered counts, so
they agree on the number of rounds; the all-gather is bounded by `ddp_timeout` like every collective of the run.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from .batch import assemble, choose_questions, question_signal
from .stream import PromptStream


class BatchFiller:
    """Fills each generation batch of a DisCO run (`DiscoConfig.fill_informative_questions`)."""

    def __init__(self, args, num_processes: int, process_index: int):
        self.group_size = args.num_generations
        self.max_rounds = args.max_generation_rounds
        self.num_processes, self.process_index = num_processes, process_index
        self.global_questions = args.generation_batch_size // self.group_size  # per round, all processes
        self.target = self.global_questions // num_processes  # this process's share of the batch
        self.seed, self.shuffle = args.seed, args.shuffle_dataset
        self.dataset = None
        self.collate: Callable = list
        self.stream: PromptStream | None = None
        self._saved_stream: dict | None = None

    def bind(self, dataset, collate: Callable) -> None:
        """The training set the prompts come from (indexable: dataset[i] is one row) and the collator of its rows."""
        self.dataset, self.collate = dataset, collate
        self.stream = PromptStream(len(dataset), self.global_questions, self.seed, self.shuffle)
        if self._saved_stream is not None:
            self.stream.load_state_dict(self._saved_stream)
            self._saved_stream = None

    # ------------------------------------------------------------------------------------------ checkpoint state
    def state_dict(self) -> dict | None:
        return None if self.stream is None else self.stream.state_dict()

    def load_state_dict(self, state: dict | None) -> None:
        if state is None:
            return
        if self.stream is None:
            self._saved_stream = state  # loaded when the training set is bound
        else:
            self.stream.load_state_dict(state)

    # ------------------------------------------------------------------------------------------------ the rounds
    def draw_rows(self) -> list:
        """This process's rows of the stream's next generation batch: its share of the questions (as accelerate
        shards TRL's sampler), each repeated `num_generations` times."""
        chunk = self.stream.next_chunk()
        share = chunk[self.process_index * self.target : (self.process_index + 1) * self.target]
        rows = []
        for index in share:
            row = self.dataset[index]
            rows += [dict(row) for _ in range(self.group_size)]
        return self.collate(rows)

    def generation_batch(self, score: Callable[[list], dict[str, Any]], accelerator, processing_class, metrics, *,
                         loss_mask: Callable[[dict], torch.Tensor]) -> dict[str, Any]:
        """Generate and score rounds of prompts until every process found `target` informative questions or
        `max_rounds` rounds ran; return this process's batch (`target` questions, informative ones first in
        priority) and log the rounds' metrics. `loss_mask(batch)`: the trainer's loss mask, for the batch's
        `num_items_in_batch` (its loss tokens over all processes, as TRL counts them)."""
        rounds, signals = [], []
        found = torch.zeros(1, dtype=torch.long, device=accelerator.device)
        while True:
            rounds.append(score(self.draw_rows()))
            signals.append(question_signal(rounds[-1]["disco_labels"], self.group_size))
            found += int(signals[-1].sum())
            counts = accelerator.gather(found) if self.num_processes > 1 else found
            if bool((counts >= self.target).all()) or len(rounds) == self.max_rounds:
                break
        tokenizer = getattr(processing_class, "tokenizer", processing_class)
        batch = assemble(rounds, choose_questions(signals, self.target), self.group_size, tokenizer.pad_token_id,
                         first_group_id=self.process_index * self.target)
        if "num_items_in_batch" in batch:
            batch["num_items_in_batch"] = accelerator.gather(loss_mask(batch).sum().long()).sum()
        self._log(metrics, len(rounds), counts.clamp(max=self.target).sum().item())
        return batch

    def _log(self, metrics, num_rounds: int, kept: int) -> None:
        """Rounds this batch took, completions generated per informative question kept (all processes), whether the
        rounds ran out before every share was full, how full the batch is, and the passes over the data so far."""
        metrics["disco/fill/rounds"].append(float(num_rounds))
        nominal = self.target * self.num_processes
        metrics["disco/fill/out_of_rounds"].append(float(kept < nominal))
        metrics["disco/fill/informative_fraction"].append(kept / nominal)
        if kept:
            completions = num_rounds * self.global_questions * self.group_size
            metrics["disco/fill/completions_per_kept_question"].append(completions / kept)
        metrics["disco/fill/data_passes"].append(self.stream.passes)
