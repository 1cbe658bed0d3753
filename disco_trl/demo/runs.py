"""Run files: one JSON file per finished run, reused when a command asks for a run with the same settings.

`compare` and `study` keep their runs in a folder (`--runs-dir`); a run is found again by its file name (tag, method,
learning rate, seed), its settings and its start's fingerprint (`shipped.model_key`), so an interrupted command
resumes where it stopped, and several processes running the same command on one folder split the work: a run's
`.lock` file says which process is on it.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import tempfile
import time
from dataclasses import asdict

import torch

from .experiment import RunSettings, run_method, start_evaluation, start_key
from .shipped import model_key


# The per-step metrics a run file keeps (what the tables and plots read).
KEEP_KEYS = ("step", "reward", "reward_std", "entropy", "disco/kl", "kl", "disco/hinge_active", "disco/objective",
             "disco/kl_penalty", "disco/neg_weight_ess", "disco/neg_weight_max", "disco/neg_weight_groups",
             "disco/score_pos", "disco/score_neg", "demo/kl_exact", "demo/kl_log_ratio", "demo/kl_k3",
             "disco/frac_mixed_questions", "disco/neg_per_pos_mixed", "disco/frac_more_neg_than_pos",
             "frac_reward_zero_std", "completions/mean_length", "clip_ratio/region_mean", "clip_ratio/high_mean",
             "clip_ratio/low_mean", "loss", "grad_norm", "step_time", "disco/skipped_update", "disco/fill/rounds",
             "disco/fill/out_of_rounds", "disco/fill/informative_fraction", "disco/fill/completions_per_kept_question",
             "disco/fill/data_passes")


def run_file(runs_dir: str, tag: str, settings: RunSettings) -> str:
    return os.path.join(runs_dir, f"{tag}-{settings.method}-lr{settings.learning_rate:g}-seed{settings.seed}.json")


def settings_dict(settings: RunSettings) -> dict:
    """The settings as a run file stores them (JSON types: tuples become lists)."""
    return json.loads(json.dumps(asdict(settings)))


def slim(result: dict) -> dict:
    """What a run file keeps: the summary and the per-step metrics used by the table and the plot."""
    return {
        "method": result["method"],
        "settings": result["settings"],
        "pass@1_before": result["pass@1_before"],
        "pass@1_after": result["pass@1_after"],
        "pass@1_by_ops_before": {str(k): v for k, v in result["before"]["pass@1_by_ops"].items()},
        "pass@1_by_ops_after": {str(k): v for k, v in result["after"]["pass@1_by_ops"].items()},
        "eval_history": result["eval_history"],
        "group_history": result.get("group_history", []),
        "also_eval": None if not result.get("also_eval") else {
            "split": result["also_eval"]["split"],
            "pass@1_before": result["also_eval"]["before"]["pass@1"],
            "pass@1_after": result["also_eval"]["after"]["pass@1"],
        },
        "log_history": [{k: e[k] for k in KEEP_KEYS if k in e} for e in result["log_history"]
                        if "train_runtime" not in e],
        "train_seconds": result["train_seconds"],
        "total_seconds": result["total_seconds"],
        "cpu_seconds": result.get("cpu_seconds"),
    }


def same_settings(cached: dict | None, wanted: dict) -> bool:
    """Whether a run file's settings are `wanted`. A field added to RunSettings after the file was written counts
    as equal when `wanted` has its default (so older runs stay reusable)."""
    if not isinstance(cached, dict):
        return False
    defaults = settings_dict(RunSettings())
    return all(cached.get(k, defaults[k]) == v for k, v in wanted.items()) and set(cached) <= set(wanted)


def load_finished(path: str, wanted: dict, model_path: str) -> dict | None:
    """The run file at `path` when it holds a run of these settings from this warm start, else None."""
    if os.path.isfile(path):
        with open(path) as f:
            cached = json.load(f)
        same_model = cached.get("model_path_key") == model_key(model_path)
        if same_model and same_settings(cached.get("settings"), wanted):
            return cached
    return None


def claim(lock: str) -> bool:
    """Take the run's lock file (another process running the same command does the run otherwise). A lock whose
    process is gone is stale and taken over."""
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                with open(lock) as f:
                    os.kill(int(f.read().strip() or 0), 0)
                return False  # alive: someone else is on it
            except (ProcessLookupError, ValueError, FileNotFoundError):
                try:
                    os.remove(lock)  # stale
                except FileNotFoundError:
                    pass
                continue
            except PermissionError:
                return False
        with os.fdopen(fd, "w") as f:
            f.write(str(os.getpid()))
        return True
    return False


def start_file(settings: RunSettings, model_path: str, runs_dir: str, split: str) -> str:
    """Where `cached_start` keeps the start's evaluation for `settings` (named by what it depends on)."""
    key = start_key(model_path, settings, split)
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:10]
    return os.path.join(runs_dir, "starts", f"start-{split}-seed{settings.seed}-{digest}.json")


def start_record(settings: RunSettings, model_path: str, runs_dir: str, split: str = "test") -> dict | None:
    """The finished start evaluation `cached_start` wrote for `settings` (with its CPU seconds), or None."""
    path = start_file(settings, model_path, runs_dir, split)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        record = json.load(f)
    return record if record.get("key") == start_key(model_path, settings, split) else None


def cached_start(settings: RunSettings, model_path: str, runs_dir: str, split: str) -> dict:
    """The warm start's held-out evaluation for `settings` (its questions, samples and sampling seed), kept in
    `runs_dir/starts/` as one `start-*.json` file, so that every run, process and command on the folder computes it
    once. The file records what it depends on (`experiment.start_key`) and the CPU seconds it took."""
    key, path = start_key(model_path, settings, split), start_file(settings, model_path, runs_dir, split)
    os.makedirs(os.path.join(runs_dir, "starts"), exist_ok=True)
    while True:
        if os.path.isfile(path):
            with open(path) as f:
                cached = json.load(f)
            if cached.get("key") == key:
                return cached["evaluation"]
        if claim(path + ".lock"):
            break
        time.sleep(2)
    try:
        cpu = time.process_time()
        evaluation = start_evaluation(settings, model_path, split)
        record = {"key": key, "evaluation": evaluation, "cpu_seconds": round(time.process_time() - cpu, 1)}
        with open(path + f".tmp{os.getpid()}", "w") as f:
            json.dump(record, f)
        os.replace(path + f".tmp{os.getpid()}", path)
    finally:
        os.remove(path + ".lock")
    return evaluation


def _train_and_save(settings: RunSettings, model_path: str, path: str) -> dict:
    start = functools.partial(cached_start, settings, model_path, os.path.dirname(path))
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="disco-compare-") as trainer_dir:  # the trainer's output_dir (unused)
        result = slim(run_method(settings, model_path, trainer_dir, log=lambda *a: None, save_model=False,
                                 start_eval=start))
    # when and how it ran: wall-clock span (its start evaluation included), process, torch threads, machine load
    result.update(started_at=round(started, 1), finished_at=round(time.time(), 1), process=os.getpid(),
                  torch_threads=torch.get_num_threads(), load_average=round(os.getloadavg()[0], 2))
    result["settings"] = settings_dict(settings)
    result["model_path_key"] = model_key(model_path)  # the start's fingerprint: the same model on any path
    with open(path + f".tmp{os.getpid()}", "w") as f:
        json.dump(result, f)
    os.replace(path + f".tmp{os.getpid()}", path)
    return result


def run_cached(settings: RunSettings, model_path: str, runs_dir: str, tag: str, log=print,
               wait: bool = True) -> dict | None:
    """Run one (method, lr, seed), or load it from `runs_dir` when a run with identical settings is there.

    A run another live process has claimed (its `.lock` file) is waited for, or, with `wait=False`, skipped (returns
    None) to be collected later."""
    path = run_file(runs_dir, tag, settings)
    name, wanted = os.path.basename(path), settings_dict(settings)
    while True:
        cached = load_finished(path, wanted, model_path)
        if cached is not None:
            log(f"[compare] {name}: reusing the finished run")
            return cached
        if claim(path + ".lock"):
            break
        if not wait:
            return None
        time.sleep(5)
    try:
        cached = load_finished(path, wanted, model_path)  # finished between the check and the claim
        if cached is not None:
            return cached
        t0 = time.time()
        result = _train_and_save(settings, model_path, path)
    finally:
        os.remove(path + ".lock")
    log(f"[compare] {tag} {settings.method:<13} lr {settings.learning_rate:<8g} seed {settings.seed}: Pass@1 "
        f"{result['pass@1_before']:.3f} -> {result['pass@1_after']:.3f}  ({time.time() - t0:.0f}s)")
    return result
