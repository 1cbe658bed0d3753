"""DisCO over two machines, proven on one host: two `accelerate launch` processes of
recipes/accelerate/zero3_multinode.yaml with machine_rank 0 and 1 on 127.0.0.1, one process per machine, DeepSpeed
ZeRO-3 on the CPU accelerator (gloo), with the overrides of tests/test_deepspeed.py.

* The updates of a two-machine run equal the single-process reference gradient (split groups, two updates per
  generation, a live hinge), and a checkpoint saved there resumes bit-for-bit (tests/ds_worker.py's cases).
* A machine that stops answering makes the other exit after ddp_timeout, with one line that says so (the training
  script, examples/train_disco.py).
* recipes/slurm/disco_zero3.sbatch, under stand-ins for srun and scontrol that run its node tasks on this host
  (tests/fake_slurm), starts one launch per node with the right rank; they train as one run, and when one node
  dies the other exits within seconds with the same kind of line. Its dry run puts vLLM on a node of its own.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch


pytest.importorskip(
    "deepspeed", reason="DeepSpeed is not installed: `pip install -e '.[deepspeed]'` (scripts/setup_env.sh does)"
)
import psutil  # noqa: E402  (a DeepSpeed dependency)
from disco_testing import free_port  # noqa: E402
from test_deepspeed import (  # noqa: E402
    ROOT,
    TESTS_DIR,
    ZERO3_CASES,
    accelerate_command,
    check_exact,
    check_resume,
    launch_env,  # noqa: E402
)

from disco_trl.scripts.train import check_batch_geometry  # noqa: E402


CONFIG = "zero3_multinode.yaml"
SBATCH = ROOT / "recipes" / "slurm" / "disco_zero3.sbatch"
FAKE_SLURM = TESTS_DIR / "fake_slurm"
CASES = [c for c in ZERO3_CASES if c["name"] in ("split_groups_off_policy", "resume")]
SECONDS: dict[str, float] = {}
LOST = "lost contact with another process of this run ("


class Launched:
    """A command started in a session of its own, its output in a log file. Every process it starts is remembered,
    since torchrun runs its workers in sessions of their own (a process-group kill would miss them)."""

    def __init__(self, cmd: list[str], env: dict[str, str], cwd: Path, log: Path):
        self.log = log
        with log.open("w") as out:
            self.proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        self.seen: dict[int, psutil.Process] = {}

    def processes(self, root: psutil.Process | None = None) -> list[psutil.Process]:
        """The live processes of this launch (or of the part of it under `root`)."""
        try:
            top = root or psutil.Process(self.proc.pid)
            found = [top, *top.children(recursive=True)]
            self.seen.update((p.pid, p) for p in found if p.pid not in self.seen)
        except psutil.NoSuchProcess:
            found = []
        return [p for p in (found if root else self.seen.values()) if p.is_running()]

    def signal(self, sig: int, root: psutil.Process | None = None) -> None:
        for p in self.processes(root):
            with contextlib.suppress(psutil.NoSuchProcess):
                p.send_signal(sig)

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def machine(rank: int, port: int, args: list[str], out: Path, env: dict[str, str]) -> Launched:
    """One `accelerate launch` of the multi-node config with its own machine_rank, on 127.0.0.1."""
    cmd = accelerate_command(CONFIG, "--num_machines", "2", "--machine_rank", str(rank), "--main_process_ip",
                             "127.0.0.1", "--main_process_port", str(port), *args)
    return Launched(cmd, env, out, out / f"machine{rank}.log")


@contextlib.contextmanager
def killed_on_exit(launched: list[Launched]):
    """On leaving (normally or not), every process that any of `launched` started is killed."""
    try:
        yield launched
    finally:
        for m in launched:
            m.signal(signal.SIGKILL)
        for m in launched:
            with contextlib.suppress(subprocess.TimeoutExpired):
                m.proc.wait(timeout=30)


def two_machines(args: list[str], out: Path):
    """Machines 0 and 1 of one run at a free port, killed on leaving the `with` block."""
    port = free_port()
    return killed_on_exit([machine(rank, port, args, out, launch_env()) for rank in (0, 1)])


def logs(launched) -> str:
    return "".join(f"\n--- {m.log.name} (exit {m.proc.poll()}):\n{m.output()[-4000:]}" for m in launched)


def wait_until(condition, timeout: float, what: str, machines) -> float:
    """Poll `condition` (also noting new processes) until it holds; the seconds it took."""
    start = time.perf_counter()
    while not condition():
        for m in machines:
            m.processes()
        assert time.perf_counter() - start < timeout, f"{what} within {timeout} s" + logs(machines)
        time.sleep(0.2)
    return time.perf_counter() - start


# ------------------------------------------------------------------------------------------- exactness and resume
@pytest.fixture(scope="module")
def two_machine_records(tmp_path_factory):
    out = tmp_path_factory.mktemp("two_machines")
    (out / "cases.json").write_text(json.dumps(CASES))
    start = time.perf_counter()
    with two_machines([str(TESTS_DIR / "ds_worker.py"), str(out), str(out / "cases.json")], out) as machines:
        wait_until(lambda: all(m.proc.poll() is not None for m in machines), 500, "both machines finish", machines)
        assert [m.proc.returncode for m in machines] == [0, 0], logs(machines)
    SECONDS["exactness and resume launch"] = time.perf_counter() - start
    return {c["name"]: [torch.load(out / f"{c['name']}.rank{r}.pt", weights_only=False) for r in (0, 1)]
            for c in CASES}


def assert_one_process_per_machine(records):
    """Rank r ran on machine r (torchrun's node rank), as the only process of its launch, in a world of 2."""
    launches = [r["launch"] for r in records]
    assert launches == [dict(GROUP_RANK=str(r), LOCAL_RANK="0", RANK=str(r), WORLD_SIZE="2") for r in (0, 1)]


@pytest.mark.slow
def test_two_machines_update_equals_the_single_process_reference(two_machine_records):
    """Two SGD updates on one generation, groups split over micro-steps, the second update off-policy with a live KL
    hinge: each equals the from-scratch reference gradient, as on one machine (tests/test_deepspeed.py)."""
    records = two_machine_records["split_groups_off_policy"]
    assert_one_process_per_machine(records)
    assert records[0]["zero_stage"] == 3
    check_exact(records, next(c for c in CASES if c["name"] == "split_groups_off_policy"))


@pytest.mark.slow
def test_two_machines_checkpoint_resumes_exactly(two_machine_records):
    records = two_machine_records["resume"]
    assert_one_process_per_machine(records)
    check_resume(records)


# ------------------------------------------------------------------------------------------------ bounded failure
def script_flags(model_dir: Path, dataset: Path, out: Path, *extra: str) -> list[str]:
    """The training script's options on the tiny model, for as long as it is let run (stopped by the test)."""
    return [
        "--model_name_or_path", str(model_dir), "--dataset_name", str(dataset), "--output_dir", str(out / "run"),
        "--num_generations", "4", "--per_device_train_batch_size", "4", "--gradient_accumulation_steps", "1",
        "--max_completion_length", "8", "--max_steps", "100000", "--logging_steps", "1", "--save_strategy", "no",
        "--report_to", "none", "--dtype", "float32", "--seed", "0", "--use_cpu", "true",
        "--reward_funcs", "boxed_math_reward", "test_scripts.hash_reward", *extra,
    ]


def interrupt_mid_run(launched: list[Launched], logs_updates: Launched, stop, survivor: Launched, bound: float):
    """Once training runs (`logs_updates` has logged an update), call `stop()` (it signals one machine's processes)
    and wait for `survivor` to exit. Returns the seconds from the signal to its exit."""
    wait_until(lambda: "'step_time'" in logs_updates.output(), 300, "an update is logged", launched)
    assert survivor.proc.poll() is None, logs(launched)
    stop()
    return wait_until(lambda: survivor.proc.poll() is not None, bound, "the other machine exits", launched)


def lost_contact_line(output: str, rank: int) -> str:
    lines = [x for x in output.splitlines() if LOST in x]
    assert lines, output[-6000:]
    assert lines[0].startswith(f"train_disco.py: error: process {rank} of 2 {LOST}"), lines[0]
    assert "--resume_from_checkpoint last" in lines[0]
    return lines[0]


@pytest.mark.slow
def test_a_machine_that_stops_answering_is_waited_for_ddp_timeout(tiny_model_dir, math_jsonl, tmp_path):
    """SIGSTOP to every process of machine 0, the main one (a hung node, a network cut: no connection is closed).
    Without DisCO's CollectiveTimeout this CPU run waits 30 minutes (transformers gives ddp_timeout to no process
    group under use_cpu, and torch gives DeepSpeed's copy of the world group 30 min for gloo)."""
    timeout = 10
    args = [str(ROOT / "examples" / "train_disco.py"),
            *script_flags(tiny_model_dir, math_jsonl, tmp_path, "--ddp_timeout", str(timeout))]
    with two_machines(args, tmp_path) as machines:
        stop = lambda: machines[0].signal(signal.SIGSTOP)  # noqa: E731
        elapsed = interrupt_mid_run(machines, machines[0], stop, machines[1], bound=timeout + 60)
        SECONDS[f"stopped machine (ddp_timeout {timeout} s): the other exits after"] = elapsed
    output = machines[1].output()
    assert machines[1].proc.returncode != 0
    assert elapsed >= timeout - 3, f"exited after {elapsed:.1f} s: not the ddp_timeout of {timeout} s"
    line = lost_contact_line(output, rank=1)
    assert f"Timed out waiting {timeout * 1000}ms" in line and f"ddp_timeout={timeout} s" in line, line


def test_ddp_timeout_goes_to_every_process_group(tmp_path):
    """A one-process gloo world with a second group made as DeepSpeed makes its copy of the world group (new_group,
    torch's default timeout): CollectiveTimeout gives both ddp_timeout; outside a distributed run it does nothing."""
    from datetime import timedelta

    from disco_trl.distributed import CollectiveTimeout, bound_collective_waits, lost_peer_message, process_groups

    dist = torch.distributed
    assert bound_collective_waits(5) == (0, [])
    assert lost_peer_message(RuntimeError("Connection reset by peer"), 5) is None
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        copy = dist.new_group(ranks=[0])

        def timeouts():
            return [g._get_backend(torch.device("cpu")).options._timeout for g in process_groups()]

        assert len(process_groups()) == 2 and timeouts() == [timedelta(minutes=30)] * 2  # torch's gloo default
        CollectiveTimeout().on_train_begin(SimpleNamespace(ddp_timeout=42), None, None)
        assert timeouts() == [timedelta(seconds=42)] * 2
        assert process_groups()[1] is copy
        # a world of one process has no other process to lose
        assert lost_peer_message(RuntimeError("Connection reset by peer"), 42) is None
    finally:
        dist.destroy_process_group()
    assert process_groups() == []


# ---------------------------------------------------------------------------------------- the SLURM batch script
def slurm_env(**extra: str) -> dict[str, str]:
    """The batch script's environment under tests/fake_slurm (srun and scontrol for one host): 2 nodes named
    127.0.0.1, one process each, the CPU overrides. The environment's bin/ comes last, for `accelerate` only: the
    `ninja` there hashes build commands otherwise than the system's, and DeepSpeed's CPU op would be rebuilt (a
    minute or more) whenever the launches of the suite alternate between the two."""
    path = os.pathsep.join([str(FAKE_SLURM), os.environ.get("PATH", ""), str(Path(sys.executable).parent)])
    return {**launch_env(), "PATH": path, "SLURM_SUBMIT_DIR": str(ROOT), "SLURM_JOB_NODELIST": "127.0.0.1,127.0.0.1",
            "SLURM_JOB_ID": "1", "GPUS_PER_NODE": "1", "LAUNCH_ARGS": "--mixed_precision no", **extra}


def node_launches(job: Launched) -> dict[int, psutil.Process]:
    """The `accelerate launch` process of each node task of the batch job, by the machine_rank it was given."""
    found = {}
    for p in job.processes():
        with contextlib.suppress(psutil.NoSuchProcess):
            words = p.cmdline()
            if "launch" in words and "--machine_rank" in words and "torch.distributed.run" not in words:
                found[int(words[words.index("--machine_rank") + 1])] = p
    return found


@pytest.mark.slow
def test_under_slurm_two_nodes_train_and_a_dead_node_makes_the_other_exit(tiny_model_dir, math_jsonl, tmp_path):
    """recipes/slurm/disco_zero3.sbatch starts one `accelerate launch` per node with the task's SLURM_PROCID as
    machine_rank; the two form one run of 2 processes and train. Then SIGKILL to every process of node 1 (a crash,
    the OOM killer): node 0 exits within seconds with one line, and so does the batch job."""
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("learning_rate: 1.0e-3\n")
    port = free_port()
    job = Launched(["bash", str(SBATCH), *script_flags(tiny_model_dir, math_jsonl, tmp_path)],
                   slurm_env(RECIPE=str(recipe), MAIN_PORT=str(port)), tmp_path, tmp_path / "job.log")
    with killed_on_exit([job]):
        wait_until(lambda: len(node_launches(job)) == 2, 120, "both node tasks start", [job])
        nodes = node_launches(job)
        for rank, p in nodes.items():
            assert p.environ()["SLURM_PROCID"] == str(rank)
            assert " ".join(p.cmdline()).count(f"--num_machines 2 --num_processes 2 --machine_rank {rank} "
                                               f"--main_process_ip 127.0.0.1 --main_process_port {port}") == 1
        kill = lambda: job.signal(signal.SIGKILL, root=nodes[1])  # noqa: E731
        elapsed = interrupt_mid_run([job], job, kill, job, bound=60)
        SECONDS["dead node under SLURM: the batch job exits after"] = elapsed
    output = job.output()
    assert job.proc.returncode != 0
    assert f"2 training nodes (127.0.0.1 127.0.0.1) x 1 processes, main 127.0.0.1:{port}" in output
    assert "2 questions per optimizer update (2 processes x 4 sequences per micro-batch" in output  # one run of 2
    line = lost_contact_line(output, rank=0)
    assert "Connection reset by peer" in line or "Connection closed by peer" in line, line
    assert "ddp_timeout=1800 s (--ddp_timeout SECONDS)" in line


def test_slurm_dry_run_puts_vllm_on_its_own_node():
    env = slurm_env(DRY_RUN="1", VLLM_NODE="1", SLURM_JOB_NODELIST="n1,n2,n3", SLURM_JOB_ID="7", GPUS_PER_NODE="8")
    del env["LAUNCH_ARGS"]
    proc = subprocess.run(["bash", str(SBATCH), "--gradient_accumulation_steps", "4"], env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.splitlines()
    assert out[0].startswith("'srun' '--nodes=1' '--ntasks=1' '--nodelist=n3' 'env' 'VLLM_SERVER_DEV_MODE=1' 'vllm' "
                             "'serve' 'deepseek-ai/DeepSeek-R1-Distill-Qwen-7B'") and out[0].endswith(" &")
    assert "'--tensor-parallel-size' '4'" in out[0]
    assert "'--weight-transfer-config' '{\"backend\": \"nccl\"}'" in out[0]
    recipe = "recipes/vllm/qwen7b_logl_server.yaml"
    for rank, node in enumerate(["n1", "n2"]):
        assert f"task {rank} on {node}: accelerate launch --config_file recipes/accelerate/zero3_multinode.yaml " \
               f"--num_machines 2 --num_processes 16 --machine_rank {rank} --main_process_ip n1 --main_process_port " \
               f"20007 examples/train_disco.py --config {recipe} --gradient_accumulation_steps 4 --use_vllm true " \
               "--vllm_mode server --vllm_server_host n3 --vllm_server_port 8000" in out
    assert out[-1].startswith("'srun' '--nodes=2' '--ntasks=2' '--ntasks-per-node=1' '--kill-on-bad-exit=1' "
                              "'--exclude=n3' 'bash' '-c' 'exec accelerate launch")
    # the documented command fits the recipe's geometry on 2 x 8 training GPUs (the script would stop otherwise)
    from test_scripts import parse

    script_args, args, _ = parse(["--config", str(ROOT / recipe), "--bf16", "false", "--output_dir", "/tmp/unused",
                                  "--gradient_accumulation_steps", "4"])
    check_batch_geometry(script_args, args, 16)


def test_slurm_script_outside_slurm_says_what_is_missing(tmp_path):
    env = {k: v for k, v in slurm_env().items() if k != "SLURM_JOB_NODELIST"}
    proc = subprocess.run(["bash", str(SBATCH)], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("disco_zero3.sbatch: error: SLURM_JOB_NODELIST is not set: submit with sbatch (or "
                                   "set it for DRY_RUN=1)")
    proc = subprocess.run(["bash", str(SBATCH)], env=dict(slurm_env(), SLURM_SUBMIT_DIR=str(tmp_path)),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and f"no examples/train_disco.py in {tmp_path}: submit from the repository root" \
        in proc.stderr


def teardown_module(module):
    if SECONDS:
        print("\nTwo-machine runs (s): " + ", ".join(f"{k}: {v:.1f}" for k, v in SECONDS.items()))
