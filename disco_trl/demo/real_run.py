"""One run of the real-model demo in its own process: SmolLM2-135M-Instruct, LoRA, vLLM colocate, one method, one seed.

    python -m disco_trl.demo.real_run SPEC.json RESULT.json     # started by `disco-trl demo --model smollm2`

`disco-trl demo --model smollm2` (demo/real.py) starts one such process per method and seed, so that each run's vLLM
engine and memory go back when it ends and each run's peak memory is its own. A run:

1. builds the method's trainer (`DiscoTrainer`, or TRL's `GRPOTrainer` for the GRPO family; `methods.py`) on the
   cached model folder (`smollm2.smollm2_dir`) with a LoRA adapter and `use_vllm=True, vllm_mode="colocate"`: TRL
   starts a vLLM engine inside this process, and `vllm_support.adapt_to_vllm_platform` makes its weight push work on
   vLLM's CPU backend (the adapter merged for each push);
2. measures held-out greedy Pass@1 with that engine (`evaluate.vllm_greedy_pass_at_1`; or takes it from SPEC: the
   starting model is the same for every run);
3. trains (`word_problems` questions, `last_number_reward`), timing vLLM generation and weight pushes;
4. pushes the final weights to vLLM and measures held-out greedy Pass@1 again;
5. writes RESULT.json: Pass@1 before and after, the trainer's log history, wall and CPU seconds per phase, and the
   process's memory (resident set) after each phase and at its peak.

The parent sets `VLLM_CPU_KVCACHE_SPACE` (vLLM's CPU KV cache, GiB; its default takes a fraction of all memory) and
`TORCH_COMPILE_DISABLE=1` (vLLM then runs eagerly: TRL's colocate mode has no `enforce_eager`, and compiling
SmolLM2's 30 layers took 10 minutes here) unless they are set already.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field

from .experiment import RunSettings


LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")
START_EVALUATION = "held-out evaluation before training (once, shared by the runs)"
RUN_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1", "TORCH_COMPILE_DISABLE": "1", "TOKENIZERS_PARALLELISM": "false"}


@dataclass
class RealSettings:
    """One real-model run: `run` holds the method, seed, steps, learning rate, geometry and sampling (its evaluation
    fields are the toy demo's and unused here); the rest is the real model's."""

    run: RunSettings = field(default_factory=RunSettings)
    eval_questions: int = 200  # held-out questions (word_problems.held_out), greedy Pass@1
    lora_r: int = 16
    lora_alpha: int = 32
    max_model_length: int = 128  # vLLM's context (prompts are about 50 tokens)

    def validate(self) -> None:
        from . import word_problems  # noqa: PLC0415

        self.run.validate()
        if not 1 <= self.eval_questions <= word_problems.HELD_OUT:
            raise ValueError(f"--eval-questions must be between 1 and {word_problems.HELD_OUT}, got "
                             f"{self.eval_questions}.")
        if self.lora_r < 1 or self.lora_alpha < 1:
            raise ValueError(f"LoRA rank and alpha must be >= 1, got {self.lora_r} and {self.lora_alpha}.")
        if self.run.max_completion_length + 64 > self.max_model_length:
            raise ValueError(f"--max-completion-length {self.run.max_completion_length} leaves no room for the "
                             f"prompt in vLLM's context of {self.max_model_length} tokens.")

    def to_json(self) -> dict:
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_json(cls, data: dict) -> RealSettings:
        run = RunSettings(**{k: tuple(v) if isinstance(v, list) else v for k, v in data["run"].items()})
        return cls(run=run, **{k: v for k, v in data.items() if k != "run"})


# ------------------------------------------------------------------------------------------------- what a run costs
def rss_gib() -> float:
    """This process's resident memory now."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**30


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # kB on Linux


class PhaseClock:
    """Wall and CPU seconds (all threads of the process) spent in each phase, and the memory after each."""

    def __init__(self):
        self.wall, self.cpu, self.memory = defaultdict(float), defaultdict(float), {}

    def wrap(self, obj, name: str, phase: str) -> None:
        """Count every call of `obj.name` (a bound method, replaced on the instance) as `phase`."""
        inner = getattr(obj, name)

        def timed(*args, **kwargs):
            wall, cpu = time.perf_counter(), time.process_time()
            try:
                return inner(*args, **kwargs)
            finally:
                self.wall[phase] += time.perf_counter() - wall
                self.cpu[phase] += time.process_time() - cpu

        setattr(obj, name, timed)

    def run(self, phase: str, fn, *args, **kwargs):
        wall, cpu = time.perf_counter(), time.process_time()
        result = fn(*args, **kwargs)
        self.wall[phase] += time.perf_counter() - wall
        self.cpu[phase] += time.process_time() - cpu
        self.memory[f"after {phase}"] = round(rss_gib(), 2)
        return result

    def report(self) -> dict:
        return {"wall_seconds": {k: round(v, 1) for k, v in self.wall.items()},
                "cpu_seconds": {k: round(v, 1) for k, v in self.cpu.items()},
                "memory_gib": {**self.memory, "peak": round(peak_rss_gib(), 2)}}


# ------------------------------------------------------------------------------------------------------------ the run
def build_trainer(settings: RealSettings, model_path: str, output_dir: str, group_history: list):
    """The method's trainer on SmolLM2 with LoRA and vLLM colocated (vLLM in float32 where bf16 is slow)."""
    import torch  # noqa: PLC0415
    from datasets import Dataset  # noqa: PLC0415
    from peft import LoraConfig  # noqa: PLC0415
    from transformers import AutoTokenizer  # noqa: PLC0415
    from transformers.trainer_callback import ProgressCallback  # noqa: PLC0415

    from .. import vllm_support  # noqa: PLC0415
    from ..rewards import last_number_reward  # noqa: PLC0415
    from . import word_problems  # noqa: PLC0415
    from .experiment import LiveMetricsProgress, build_args, recording_reward, training_questions  # noqa: PLC0415
    from .methods import trainer_class  # noqa: PLC0415

    run, tokenizer = settings.run, AutoTokenizer.from_pretrained(model_path)
    questions = word_problems.training(training_questions(run), run.seed)
    dataset = Dataset.from_list(word_problems.to_rl_rows(tokenizer, questions))
    args = build_args(run, output_dir, use_vllm=True, vllm_mode="colocate", vllm_enable_sleep_mode=False,
                      vllm_max_model_length=settings.max_model_length, vllm_gpu_memory_utilization=0.1)
    lora = LoraConfig(r=settings.lora_r, lora_alpha=settings.lora_alpha, lora_dropout=0.0,
                      target_modules=list(LORA_TARGETS), task_type="CAUSAL_LM")
    reward = recording_reward(last_number_reward, run.num_generations, run.updates_per_generation, group_history)
    torch.manual_seed(run.seed)
    with vllm_support.vllm_cpu_dtype(vllm_support.float32_where_bf16_is_slow()):
        trainer = trainer_class(run.method)(model=model_path, reward_funcs=reward, args=args, train_dataset=dataset,
                                            processing_class=tokenizer, peft_config=lora)
    vllm_support.adapt_to_vllm_platform(trainer)  # DiscoTrainer does it itself; TRL's GRPOTrainer needs it on CPU
    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(LiveMetricsProgress())
    return trainer


def run_real(settings: RealSettings, model_path: str, output_dir: str, start: dict | None = None, log=print) -> dict:
    """Train one method on SmolLM2 (see the module doc); returns the run's JSON-able result."""
    from ..rewards import last_number_reward  # noqa: PLC0415
    from . import word_problems  # noqa: PLC0415
    from .evaluate import vllm_greedy_pass_at_1  # noqa: PLC0415
    from .experiment import quiet_libraries  # noqa: PLC0415
    from .methods import METHODS  # noqa: PLC0415

    quiet_libraries()
    run, clock, group_history = settings.run, PhaseClock(), []
    clock.memory["at start"] = round(rss_gib(), 2)
    trainer = clock.run("building the trainer and vLLM engine", build_trainer, settings, model_path, output_dir,
                        group_history)
    engine, tokenizer = trainer.vllm_generation.llm, trainer.processing_class
    problems = word_problems.held_out(settings.eval_questions)

    def evaluate():
        return vllm_greedy_pass_at_1(engine, tokenizer, problems, last_number_reward,
                                     max_new_tokens=run.max_completion_length)

    before = start if start is not None else clock.run(START_EVALUATION, evaluate)
    log(f"[{run.method} seed {run.seed}] held-out greedy Pass@1 before training: {before['pass@1']:.3f}")
    clock.wrap(trainer.vllm_generation, "generate", "training: vLLM generation")
    clock.wrap(trainer.vllm_generation, "sync_weights", "training: weight push to vLLM")
    clock.run("training", trainer.train)
    clock.run("weight push to vLLM", trainer.vllm_generation.sync_weights)  # the last optimizer step's weights
    after = clock.run("held-out evaluation after training", evaluate)
    log(f"[{run.method} seed {run.seed}] held-out greedy Pass@1 after {run.max_steps} steps: {after['pass@1']:.3f}")
    return {"method": run.method, "label": METHODS[run.method].label, "settings": settings.to_json(),
            "model_path": model_path, "pass@1_before": before["pass@1"], "pass@1_after": after["pass@1"],
            "before": before, "after": after,
            "eval_history": [{"step": 0, "pass@1": before["pass@1"]},
                             {"step": run.max_steps, "pass@1": after["pass@1"]}],
            "group_history": group_history, "log_history": trainer.state.log_history, **clock.report()}


def main(argv: list[str] | None = None) -> int:
    spec_path, result_path = argv if argv is not None else sys.argv[1:]
    with open(spec_path) as f:
        spec = json.load(f)
    settings = RealSettings.from_json(spec["settings"])
    result = run_real(settings, spec["model_path"], spec["output_dir"], spec.get("start"))
    with open(result_path + ".tmp", "w") as f:
        json.dump(result, f, indent=1, default=str)
    os.replace(result_path + ".tmp", result_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
