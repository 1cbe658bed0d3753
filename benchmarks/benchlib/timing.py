"""The timing protocol: memory meter, interleaving baton, step timer, loss-only timing, one repetition.

Methods alternate at the finest grain the Trainer allows: in each repetition every method's trainer runs its own
``train()`` in a thread, and a baton lets one run at a time, handing over after every optimizer step; the loss-only
calls alternate the same way. Peak memory is measured in dedicated untimed passes, so probes never run while timing.
"""

from __future__ import annotations

import contextlib
import gc
import statistics
import threading
import time
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile
from transformers import TrainerCallback

from .methods import Workload, build_trainer


# ---------------------------------------------------------------------------------------------------------- memory
class MemoryMeter:
    """Peak memory of a pass, as bytes of tensors (not process RSS, which the CPU allocator's caching makes noisy).

    * CUDA: ``torch.cuda.max_memory_allocated()`` during the pass minus ``memory_allocated()`` at its start.
    * CPU: the allocator events recorded by ``torch.profiler`` with ``profile_memory=True``; the peak of their running
      sum (bytes allocated minus bytes freed during the pass). Frees of blocks allocated before the pass are not
      reported by the profiler, so this is the peak of the memory the pass allocates, never below the true peak.

    Memory is measured in dedicated untimed passes, so the profiler never runs while steps are timed.
    """

    def __init__(self, device: str):
        self.device = device
        state = ("; the step adds the bytes of the training state alive at its start (policy and reference-model "
                 "parameters and buffers, optimizer state)")
        if device == "cuda":
            self.method = "torch.cuda.max_memory_allocated during the pass minus memory_allocated at its start" + state
        else:
            self.method = ("tensor bytes from the torch.profiler allocator events (profile_memory=True): peak of the "
                           "running sum of bytes allocated minus freed during the pass" + state)

    def sync(self) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()

    def settle(self) -> None:
        gc.collect()
        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.empty_cache()

    @contextlib.contextmanager
    def measuring(self):
        """Yields a dict that receives 'start_bytes', 'peak_bytes' (absolute) and 'extra_bytes' (peak - start)."""
        out: dict[str, int] = {}
        self.settle()
        if self.device == "cuda":
            out["start_bytes"] = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            try:
                yield out
            finally:
                torch.cuda.synchronize()
                out["peak_bytes"] = torch.cuda.max_memory_allocated()
                out["extra_bytes"] = out["peak_bytes"] - out["start_bytes"]
            return
        prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
        prof.start()
        try:
            yield out
        finally:
            prof.stop()
            events = sorted(
                (e.start_ns(), e.nbytes())
                for e in prof.profiler.kineto_results.events()
                if e.name() == "[memory]" and str(e.device_type()).endswith("CPU")
            )
            running = peak = 0
            for _, nbytes in events:
                running += nbytes
                peak = max(peak, running)
            out["start_bytes"] = 0
            out["peak_bytes"] = out["extra_bytes"] = peak


def training_state_bytes(trainer) -> int:
    """Bytes of the tensors a trainer keeps between steps: parameters and buffers (policy, reference model) and
    optimizer state, each storage counted once."""
    seen: dict[int, int] = {}

    def add(t):
        if isinstance(t, torch.Tensor):
            storage = t.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()

    for model in (trainer.model, getattr(trainer, "ref_model", None)):
        if model is not None:
            for t in list(model.parameters()) + list(model.buffers()):
                add(t)
    if trainer.optimizer is not None:
        for state in trainer.optimizer.state.values():
            for t in state.values():
                add(t)
    return sum(seen.values())


class Baton:
    """Lets exactly one trainer thread run at a time, handing over at optimizer-step boundaries in a fixed order.

    Every trainer of a repetition runs its own ``trainer.train()`` in a thread, but only the baton holder runs: the
    others wait inside their ``on_step_end`` callback (or before ``train()``). So the methods' steps interleave one
    optimizer step at a time, and a slow phase of a shared machine hits all methods alike instead of one run.
    """

    def __init__(self, order: list[int], timeout: float = 1800.0):
        self.order = order
        self.holder = order[0] if order else None
        self.done: set[int] = set()
        self.timeout = timeout
        self._cond = threading.Condition()

    def wait_turn(self, i: int) -> None:
        with self._cond:
            if not self._cond.wait_for(lambda: self.holder == i, timeout=self.timeout):
                raise RuntimeError(f"benchmark thread {i} waited {self.timeout:.0f} s for its turn")

    def pass_on(self, i: int, finished: bool = False) -> None:
        with self._cond:
            if finished:
                self.done.add(i)
            k = self.order.index(i)
            rotation = self.order[k + 1:] + self.order[: k + 1]  # ends with i itself
            self.holder = next((j for j in rotation if j not in self.done), None)
            self._cond.notify_all()


def make_step_timer(meter: MemoryMeter, warmup: int, timed: int, baton: Baton | None = None, slot: int = 0):
    """Steps [0, warmup): untimed; [warmup, warmup + timed): timed; the step after them: untimed memory step.

    Set `.trainer` before training: the memory step records the trainer's persistent state at its start. With a
    baton, the callback hands over to the next trainer after each step and waits for its next turn."""

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.trainer = None
            self.times: list[float] = []
            self.cpu_times: list[float] = []
            self.memory: dict[str, int] | None = None
            self.state_bytes: int | None = None
            self._index = 0
            self._t0 = self._c0 = 0.0
            self._measuring = None

        def on_step_begin(self, args, state, control, **kwargs):
            if self._index == warmup + timed:
                self.state_bytes = training_state_bytes(self.trainer)
                self._measuring = meter.measuring()
                self.memory = self._measuring.__enter__()
            meter.sync()
            self._t0, self._c0 = time.perf_counter(), time.thread_time()

        def on_step_end(self, args, state, control, **kwargs):
            meter.sync()
            elapsed, cpu = time.perf_counter() - self._t0, time.thread_time() - self._c0
            if warmup <= self._index < warmup + timed:
                self.times.append(elapsed)
                self.cpu_times.append(cpu)
            elif self._index == warmup + timed:
                self._measuring.__exit__(None, None, None)
            self._index += 1
            if baton is not None:
                baton.pass_on(slot)
                baton.wait_turn(slot)

    return StepTimer()


def prepared_microbatch(trainer):
    """One training micro-batch, prepared by the trainer itself (fixed generation, rewards, advantages/groups)."""
    trainer.model.train()
    trainer._buffered_inputs = None
    trainer._step = 0
    trainer.current_gradient_accumulation_steps = trainer.args.gradient_accumulation_steps
    generation_batch = next(iter(trainer.get_train_dataloader()))
    return trainer._prepare_inputs(generation_batch)


def loss_and_backward(trainer, inputs) -> None:
    """One `compute_loss` and its backward, as the trainer's training step does them."""
    with trainer.compute_loss_context_manager():
        loss = trainer.compute_loss(trainer.model, inputs)
    trainer.accelerator.backward(loss)


def time_loss_only(trainer, inputs, reps: int, meter: MemoryMeter) -> tuple[list[float], list[float], int]:
    """compute_loss + backward on fixed inputs: `reps` timed calls after one warm-up call, then one memory call.

    Returns (wall times, process CPU times, peak extra bytes)."""
    model = trainer.model
    times, cpu_times = [], []
    for i in range(reps + 1):
        model.zero_grad(set_to_none=True)
        meter.sync()
        t0, c0 = time.perf_counter(), time.process_time()
        loss_and_backward(trainer, inputs)
        meter.sync()
        if i >= 1:
            times.append(time.perf_counter() - t0)
            cpu_times.append(time.process_time() - c0)
    model.zero_grad(set_to_none=True)
    with meter.measuring() as mem:
        loss_and_backward(trainer, inputs)
    model.zero_grad(set_to_none=True)
    return times, cpu_times, mem["extra_bytes"]


def microbatch_digest(inputs) -> dict[str, Any]:
    return {
        "rows": int(inputs["completion_ids"].size(0)),
        "completion_tokens": int(inputs["completion_mask"].sum().item()),
        "prompt_tokens": int(inputs["prompt_mask"].sum().item()),
    }


def run_repetition(order: list[str], geometry: Workload, model_path: str, tokenizer, dataset, args, workdir: Path,
                   meter: MemoryMeter, *, steps: int, warmup: int, loss_reps: int) -> list[dict[str, Any]]:
    """One repetition: a trainer per method, training with steps interleaved (see `Baton`), then the loss-only calls
    interleaved too (one call per method in turn)."""
    meter.settle()
    baton = Baton(list(range(len(order))))
    timers, trainers, build_s = [], [], []
    for slot, method in enumerate(order):
        timer = make_step_timer(meter, warmup, steps, baton, slot)
        t_build = time.perf_counter()
        trainer = build_trainer(method, geometry, model_path, tokenizer, dataset, args, warmup + steps + 1, workdir,
                                [timer])
        build_s.append(time.perf_counter() - t_build)
        timer.trainer = trainer
        timers.append(timer)
        trainers.append(trainer)

    errors: dict[int, BaseException] = {}

    def work(slot: int) -> None:
        try:
            baton.wait_turn(slot)
            trainers[slot].train()
            trainers[slot].bench_checksum_in_training = trainers[slot].bench_checksum
            trainers[slot].bench_completions_in_training = trainers[slot].bench_completions
        except BaseException as exc:  # reported below, in the main thread
            errors[slot] = exc
        finally:
            baton.pass_on(slot, finished=True)

    run_in_threads(order, work, errors)
    for method, timer in zip(order, timers):
        if len(timer.times) != steps or timer.memory is None:
            raise RuntimeError(f"{method}: expected {steps} timed steps and a memory step, got {len(timer.times)}.")

    # Loss-only: fixed inputs prepared by each trainer, one warm-up call each, then calls interleaved across methods.
    inputs = [prepared_microbatch(trainer) for trainer in trainers]
    loss_times: list[list[float]] = [[] for _ in order]
    loss_cpu: list[list[float]] = [[] for _ in order]
    for call in range(loss_reps + 1):
        for slot, trainer in enumerate(trainers):
            trainer.model.zero_grad(set_to_none=True)
            meter.sync()
            t0, c0 = time.perf_counter(), time.thread_time()
            loss_and_backward(trainer, inputs[slot])
            meter.sync()
            if call >= 1:
                loss_times[slot].append(time.perf_counter() - t0)
                loss_cpu[slot].append(time.thread_time() - c0)
            trainer.model.zero_grad(set_to_none=True)
    results = []
    for slot, (method, trainer, timer) in enumerate(zip(order, trainers, timers)):
        with meter.measuring() as mem:
            loss_and_backward(trainer, inputs[slot])
        trainer.model.zero_grad(set_to_none=True)
        results.append({
            "method": method,
            "position": slot,
            "state_bytes_at_memory_step": timer.state_bytes,
            "build_s": build_s[slot],
            "step_s": timer.times,
            "step_median_s": statistics.median(timer.times),
            "step_cpu_s": timer.cpu_times,
            "step_cpu_median_s": statistics.median(timer.cpu_times),
            # the state kept between steps + the most the step allocates on top of it
            "step_peak_bytes": timer.state_bytes + timer.memory["extra_bytes"],
            "loss_s": loss_times[slot],
            "loss_median_s": statistics.median(loss_times[slot]),
            "loss_cpu_s": loss_cpu[slot],
            "loss_cpu_median_s": statistics.median(loss_cpu[slot]),
            "loss_peak_bytes": mem["extra_bytes"],
            "completions_served": trainer.bench_completions_in_training,
            "completion_checksum": trainer.bench_checksum_in_training,
            "microbatch": microbatch_digest(inputs[slot]),
        })
    for held in (trainers, inputs, timers):  # free the trainers before the next repetition builds its own
        held.clear()
    meter.settle()
    return results


def run_in_threads(order: list[str], work, errors: dict) -> None:
    """Run `work(slot)` for every method of `order` in its own thread; re-raise the first error `work` recorded."""
    threads = [threading.Thread(target=work, args=(slot,), name=f"bench-{m}") for slot, m in enumerate(order)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        slot, exc = next(iter(errors.items()))
        raise RuntimeError(f"training {order[slot]} failed: {exc!r}") from exc
