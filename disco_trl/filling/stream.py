"""`PromptStream`: the training prompts in the order a run draws them when it fills its batches.

An endless sequence of passes over the dataset, each a fresh permutation cut into chunks of one generation batch's
prompts (all processes' questions), exactly as TRL's `RepeatSampler` orders them: one `torch.Generator` seeded with the
run's seed, one `randperm` per pass, a pass's last incomplete chunk skipped. Without extra rounds the stream therefore
hands out the same generation batches as the dataloader of a run without filling; each extra round takes the next
chunk, so a prompt drawn to fill a batch is consumed: it is not drawn again before every prompt of its pass has been.

Its state (the generator's state at the start of the current pass, the pass and the chunk within it) is a few numbers
and one uint8 tensor, saved with each checkpoint (`disco_trl.checkpoints`), so a resumed run draws the same prompts.
"""

from __future__ import annotations

import torch


class PromptStream:
    """Chunks of `chunk` dataset indices, pass after pass over `num_prompts` (shuffled per pass with `seed`, as TRL's
    RepeatSampler; in order when `shuffle` is False)."""

    def __init__(self, num_prompts: int, chunk: int, seed: int | None, shuffle: bool = True):
        if chunk < 1 or num_prompts < chunk:
            raise ValueError(f"a pass of {num_prompts} prompts holds no chunk of {chunk} prompts")
        self.num_prompts, self.chunk, self.shuffle = num_prompts, chunk, shuffle
        self.chunks_per_pass = num_prompts // chunk
        self._generator = torch.Generator()
        if seed is not None:
            self._generator.manual_seed(seed)
        self._pass_start_state: torch.Tensor | None = None  # the generator's state before the current pass's draw
        self._order: list[int] | None = None  # the current pass's permutation (None: no pass begun)
        self.passes_begun = 0
        self.position = 0  # chunks taken from the current pass

    def _begin_pass(self) -> None:
        self._pass_start_state = self._generator.get_state()
        if self.shuffle:
            self._order = torch.randperm(self.num_prompts, generator=self._generator).tolist()
        else:
            self._order = list(range(self.num_prompts))
        self.passes_begun += 1
        self.position = 0

    def next_chunk(self) -> list[int]:
        """The next `chunk` dataset indices (a new pass begins when the current one has no whole chunk left)."""
        if self._order is None or self.position == self.chunks_per_pass:
            self._begin_pass()
        start = self.position * self.chunk
        self.position += 1
        return self._order[start : start + self.chunk]

    @property
    def chunks_drawn(self) -> int:
        return 0 if self._order is None else (self.passes_begun - 1) * self.chunks_per_pass + self.position

    @property
    def passes(self) -> float:
        """How many passes over the data the chunks drawn so far make (1.0: every prompt once)."""
        return self.chunks_drawn / self.chunks_per_pass

    def state_dict(self) -> dict:
        """Plain values and one uint8 tensor (what a checkpoint loaded with `weights_only=True` may hold)."""
        return {"num_prompts": self.num_prompts, "chunk": self.chunk, "shuffle": self.shuffle,
                "passes_begun": self.passes_begun, "position": self.position,
                "pass_start_state": None if self._pass_start_state is None else self._pass_start_state.clone()}

    def load_state_dict(self, state: dict) -> None:
        """Continue exactly where the stream whose `state_dict()` this is stopped (same dataset size and chunk)."""
        saved = (state["num_prompts"], state["chunk"], state["shuffle"])
        if saved != (self.num_prompts, self.chunk, self.shuffle):
            raise ValueError(
                f"the saved prompt stream drew chunks of {saved[1]} of {saved[0]} prompts (shuffle={saved[2]}), this "
                f"run draws chunks of {self.chunk} of {self.num_prompts} (shuffle={self.shuffle}): resume with the "
                "same training set and batch settings"
            )
        if state["pass_start_state"] is None:
            return  # saved before the first draw: the freshly seeded generator is that state
        self._generator.set_state(state["pass_start_state"].cpu())
        self._begin_pass()
        self.passes_begun, self.position = state["passes_begun"], state["position"]
