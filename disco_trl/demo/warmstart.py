"""The demo's starting model: a task tokenizer, a small Qwen2-style LM, and a short supervised warm start.

The paper starts RL from distilled SFT models that are right sometimes and wrong often. The demo imitates that with a
model built locally (nothing is downloaded): a byte-level BPE tokenizer trained with the `tokenizers` library on the
task's text (digits are kept as single tokens, so arithmetic is learnable), a ~1M-parameter Qwen2 architecture, and
600 steps of supervised fine-tuning on worked solutions written by a teacher that slips (`task.slipped_solution`):
the model learns the procedure, and also learns to slip now and then, so easy questions are mostly solved and hard
ones mostly not -- the kind of starting point RL with verifiable rewards improves by sharpening.

This code built the start the package ships (`shipped.py`, `disco_trl/demo/shipped_start/`), which every demo,
comparison and study run starts from; `disco-trl demo --rebuild-start` runs it again and compares. The SFT is not
bit-reproducible across machines, which is why the start is shipped rather than rebuilt on each machine.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import asdict, dataclass

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from .. import toy
from . import task


NUM_EVAL_PROBLEMS_RESERVED = 200  # expressions kept out of every training set (the held-out pool, see eval_problems)


@dataclass(frozen=True)
class WarmStartConfig:
    """Everything that determines the warm-started model (recorded beside the shipped start, `shipped.py`)."""

    hidden_size: int = 128
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    intermediate_size: int = 512
    vocab_size: int = 320
    sft_steps: int = 600
    sft_batch_size: int = 64
    sft_learning_rate: float = 3e-3
    sft_warmup_steps: int = 20
    slip_rate: float = 0.15  # per-step probability that the teacher's demonstration slips (see task.py)
    seed: int = 0

    def validate(self) -> None:
        for name in ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                     "intermediate_size", "sft_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"WarmStartConfig.{name} must be >= 1, got {getattr(self, name)}.")
        if self.sft_steps < 0:
            raise ValueError(f"WarmStartConfig.sft_steps must be >= 0, got {self.sft_steps}.")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"WarmStartConfig.hidden_size={self.hidden_size} must be divisible by num_attention_heads="
                f"{self.num_attention_heads}."
            )
        if not 0.0 <= self.slip_rate < 1.0:
            raise ValueError(f"WarmStartConfig.slip_rate must be in [0, 1), got {self.slip_rate}.")
        if not self.sft_learning_rate > 0:
            raise ValueError(f"WarmStartConfig.sft_learning_rate must be > 0, got {self.sft_learning_rate}.")


# ----------------------------------------------------------------------------------------------- data splits
EVAL_SPLITS = ("test", "val")


DEFAULT_DIFFICULTIES = (1, 2, 3, 4)


def eval_problems(n: int, split: str = "test",
                  difficulties: tuple[int, ...] = DEFAULT_DIFFICULTIES) -> list[task.Problem]:
    """Held-out questions, balanced over `difficulties` (numbers of operations; default 1-4). The reserved pool of
    that mix is cut in two halves: "test" (the reported Pass@1) and "val" (for choosing hyperparameters, e.g. the
    comparison's learning-rate sweep). Training sets exclude the whole pool (`train_problems`)."""
    half = NUM_EVAL_PROBLEMS_RESERVED // 2
    if split not in EVAL_SPLITS:
        raise ValueError(f"split={split!r} is unknown; use one of {EVAL_SPLITS}.")
    if not 0 <= n <= half:
        raise ValueError(f"between 0 and {half} held-out questions are reserved per split; got {n}.")
    pool = _eval_pool(tuple(difficulties))
    return pool[:n] if split == "test" else pool[half : half + n]


def _eval_pool(difficulties: tuple[int, ...] = DEFAULT_DIFFICULTIES) -> list[task.Problem]:
    # Balanced over difficulties; the first n of the pool are still balanced because difficulties cycle. The default
    # mix's pool is the original one (seed 12345); another mix (e.g. the study's harder 3-4 operations) has its own
    # pool, drawn from its own seed and disjoint from the default pool.
    difficulties = tuple(difficulties)
    if difficulties == DEFAULT_DIFFICULTIES:
        return task.make_problems(NUM_EVAL_PROBLEMS_RESERVED, 12345)
    seed = 12345 + int("".join(str(d) for d in difficulties))
    default = {p.expression for p in _eval_pool()}
    return task.make_problems(NUM_EVAL_PROBLEMS_RESERVED, seed, difficulties=difficulties, exclude=default)


def train_problems(n: int, seed: int, difficulties: tuple[int, ...] = DEFAULT_DIFFICULTIES,
                   held_out_difficulties: tuple[int, ...] = DEFAULT_DIFFICULTIES,
                   distinct: bool = False) -> list[task.Problem]:
    """Training questions (repeats allowed unless `distinct`: there are only 243 one-operation questions), disjoint
    from the default held-out pool and from the pool of `held_out_difficulties` (the mix the run is evaluated on)."""
    exclude = {p.expression for p in _eval_pool()}
    exclude |= {p.expression for p in _eval_pool(tuple(held_out_difficulties))}
    return task.make_problems(n, seed, difficulties=difficulties, exclude=exclude, distinct=distinct)


# ----------------------------------------------------------------------------------------------- tokenizer
def build_task_tokenizer(texts: list[str], vocab_size: int = 320) -> PreTrainedTokenizerFast:
    """Byte-level BPE trained on `texts`, with every digit its own token; same conventions as `disco_trl.toy`
    (ChatML template, left padding, `<|endoftext|>` as EOS and PAD)."""
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=toy.SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=toy.EOS_TOKEN,
        pad_token=toy.EOS_TOKEN,
        padding_side="left",
        additional_special_tokens=[toy.IM_START, toy.IM_END],
    )
    fast.chat_template = toy.CHAT_TEMPLATE
    return fast


def prompt_string(tokenizer, problem: task.Problem) -> str:
    """The prompt exactly as the trainers see it: the chat template with the generation prompt."""
    template = getattr(tokenizer, "_disco_prompt_template", None)
    if template is None or template[0] != tokenizer.chat_template:
        # Render the (jinja) template once around a marker; then each prompt is a string substitution.
        marker = "\x00DISCO-CONTENT\x00"
        rendered = tokenizer.apply_chat_template(
            [{"role": "user", "content": marker}], tokenize=False, add_generation_prompt=True
        )
        template = (tokenizer.chat_template, *rendered.split(marker))
        tokenizer._disco_prompt_template = template
    return template[1] + problem.prompt_text + template[2]


# ----------------------------------------------------------------------------------------------- SFT
def _encode_sft(tokenizer, problem: task.Problem, solution: str) -> tuple[list[int], list[int]]:
    prompt_ids = tokenizer(prompt_string(tokenizer, problem), add_special_tokens=False)["input_ids"]
    completion_ids = tokenizer(solution, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return prompt_ids, completion_ids


def demonstrations(problems: list[task.Problem], cfg: WarmStartConfig) -> list[str]:
    """The SFT targets: one worked solution per problem from a teacher that slips at `cfg.slip_rate` per step."""
    rng = random.Random(cfg.seed + 2)
    return [task.slipped_solution(p, rng, cfg.slip_rate) for p in problems]


def supervised_warm_start(model, tokenizer, problems: list[task.Problem], cfg: WarmStartConfig,
                          log=print) -> list[float]:
    """Next-token cross-entropy on the (slipping teacher's) worked solutions only (prompt tokens masked), AdamW,
    linear warm-up then cosine decay to 10%. Returns the loss of every step."""
    data = [_encode_sft(tokenizer, p, s) for p, s in zip(problems, demonstrations(problems, cfg))]
    generator = random.Random(cfg.seed)
    order: list[int] = []
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.sft_learning_rate, weight_decay=0.0, betas=(0.9, 0.98))

    def lr_at(step: int) -> float:
        if step < cfg.sft_warmup_steps:
            return cfg.sft_learning_rate * (step + 1) / cfg.sft_warmup_steps
        progress = (step - cfg.sft_warmup_steps) / max(1, cfg.sft_steps - cfg.sft_warmup_steps)
        return cfg.sft_learning_rate * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))

    model.train()
    losses: list[float] = []
    start = time.time()
    pad = tokenizer.pad_token_id
    for step in range(cfg.sft_steps):
        if len(order) < cfg.sft_batch_size:
            fresh = list(range(len(data)))
            generator.shuffle(fresh)
            order.extend(fresh)
        batch = [data[i] for i in order[: cfg.sft_batch_size]]
        del order[: cfg.sft_batch_size]
        length = max(len(a) + len(b) for a, b in batch)
        input_ids = torch.full((len(batch), length), pad, dtype=torch.long)
        labels = torch.full((len(batch), length), -100, dtype=torch.long)
        attention = torch.zeros((len(batch), length), dtype=torch.long)
        for i, (a, b) in enumerate(batch):  # right padding for training
            ids = a + b
            input_ids[i, : len(ids)] = torch.tensor(ids)
            attention[i, : len(ids)] = 1
            labels[i, len(a) : len(ids)] = torch.tensor(b)
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step)
        loss = model(input_ids=input_ids, attention_mask=attention, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if log and (step + 1) % max(1, cfg.sft_steps // 6) == 0:
            log(f"[warm-start] SFT step {step + 1}/{cfg.sft_steps}  loss {loss.item():.3f}  "
                f"({time.time() - start:.0f}s)")
    model.eval()
    return losses


# ----------------------------------------------------------------------------------------------- build
def build_warm_started(cfg: WarmStartConfig, log=print):
    """Tokenizer + model + SFT from scratch. Returns (model, tokenizer, info); `shipped.write_start` saves them."""
    cfg.validate()
    start = time.time()
    torch.manual_seed(cfg.seed)
    sft_set = train_problems(max(256, cfg.sft_steps * cfg.sft_batch_size // 4), seed=cfg.seed + 1)
    chat_turns = ["user\n", "assistant\n"] * 100  # the chat template's role names
    tokenizer_texts = task.corpus(sft_set) + chat_turns
    tokenizer = build_task_tokenizer(tokenizer_texts, vocab_size=cfg.vocab_size)
    model = toy.build_tiny_qwen2(
        tokenizer,
        hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_key_value_heads,
        intermediate_size=cfg.intermediate_size,
        max_position_embeddings=256,
        seed=cfg.seed,
    )
    n_params = sum(p.numel() for p in model.parameters())
    if log:
        log(f"[warm-start] built a Qwen2-style model with {n_params / 1e6:.2f}M parameters, vocabulary "
            f"{len(tokenizer)}; "
            f"supervised warm start: {cfg.sft_steps} steps x {cfg.sft_batch_size} worked solutions")
    losses = supervised_warm_start(model, tokenizer, sft_set, cfg, log=log)
    info = {
        "config": asdict(cfg),
        "num_parameters": n_params,
        "vocab_size": len(tokenizer),
        "sft_final_loss": sum(losses[-10:]) / max(1, len(losses[-10:])),
        "seconds": round(time.time() - start, 1),
    }
    return model, tokenizer, info
