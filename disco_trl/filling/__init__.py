"""Fill each generation batch with questions that carry signal (`DiscoConfig.fill_informative_questions`).

DAPO's dynamic sampling (verl's `filter_groups` with `max_num_gen_batches`) for DisCO, off by default. A question
whose completions are all right or all wrong adds exactly 0 to DisCO's objective; with the option on, a generation
batch that holds fewer questions with both right and wrong completions than it was sized for draws and generates more
prompts, round after round, until every process's share is full or `max_generation_rounds` rounds have run:

* **Where the prompts come from** (`stream.PromptStream`): one stream per run, pass after pass over the training
  set, each pass a permutation cut into generation batches exactly as TRL's `RepeatSampler` cuts it (same seed, same
  generator). The batch's first round and its extra rounds take the stream's next generation batches in turn, so a
  prompt drawn to fill a batch is consumed: it is not drawn again before every prompt of its pass has been. Each
  process takes its share of every round as accelerate shards TRL's sampler. The stream's position is saved with
  every checkpoint, so a resumed run draws the same prompts. TRL's dataloader keeps pacing Trainer's loop (one
  element per micro-step, its length and its skipping on resume unchanged), but its rows are not used: the
  stream's are. Training length is counted in optimizer steps (`max_steps`, required); `disco/fill/data_passes`
  counts the passes over the data.
* **What the step sees** (`batch`): per process, exactly its nominal number of questions: the first ones with signal
  in generation order, and when `max_generation_rounds` ran out before there were enough, every informative question
  found completed by questions without signal (`disco/fill/out_of_rounds` = 1 for that batch). Informative questions
  beyond the nominal number (the surplus of the last round) are dropped: kept for a later batch, their completions
  would be off-policy there. With `skip_uninformative_questions` the completing questions are then dropped from the
  micro-batches as usual (`disco_trl.skipping`).
* **The objective** keeps its denominator: the step's nominal question count (docs/method.md compares it with the
  paper's).

`rounds.BatchFiller` runs the rounds for `DiscoTrainer` and logs `disco/fill/*` (docs/method.md lists them).
"""

from .batch import assemble, choose_questions, question_signal
from .rounds import BatchFiller
from .stream import PromptStream


__all__ = ["BatchFiller", "PromptStream", "assemble", "choose_questions", "question_signal"]
