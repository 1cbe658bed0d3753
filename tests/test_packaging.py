"""The release: `python -m build` gives a wheel and an sdist that `twine check` accepts, and the wheel installed into a
fresh environment gives the import paths and the `disco-trl` command users rely on.

The fresh environment is a new virtualenv holding only the wheel (installed with --no-deps); the dependencies it
imports come from this test environment through a path file, so the test needs no network and takes seconds.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import pytest


ROOT = Path(__file__).resolve().parents[1]
USER_IMPORTS = """
import disco_trl, pathlib, sys
from disco_trl import DiscoConfig, DiscoTrainer
from disco_trl.data import load_math_dataset
from disco_trl.rewards import boxed_math_reward
from disco_trl.eval import evaluate
from disco_trl.demo.shipped import shipped_start
assert pathlib.Path(disco_trl.__file__).is_relative_to(pathlib.Path(sys.prefix)), disco_trl.__file__
start, record = shipped_start()  # the demo's start model ships in the wheel, its files verified
assert pathlib.Path(start).is_relative_to(pathlib.Path(sys.prefix)) and record["fingerprint"], start
print(boxed_math_reward([r"\\boxed{\\frac{2}{4}}", r"\\boxed{3}"], [r"0.5", "4"]))
# the `evaluate` metric, from the installed package, offline: every name lookup or connection is recorded and fails
import socket, evaluate
from disco_trl.eval import metric_path
tried = []
def refuse(*args):
    tried.append(args)
    raise OSError("no network here")
socket.getaddrinfo = socket.socket.connect = socket.socket.connect_ex = refuse
assert pathlib.Path(metric_path()).is_relative_to(pathlib.Path(sys.prefix)), metric_path()
metric = evaluate.load(metric_path())
print("metric:", metric.compute(predictions=[[r"\\boxed{4}", r"\\boxed{5}"]], references=["4"]), tried)
from disco_trl.cli import SUBCOMMANDS, main
for name in SUBCOMMANDS:  # every subcommand's module loads and parses its options
    try:
        main([name, "--help"])
    except SystemExit as done:
        assert done.code == 0, name
"""


def run(*cmd, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=300, **kwargs)
    assert result.returncode == 0, f"{cmd}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def dist(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    run(sys.executable, "-m", "build", "--no-isolation", "--outdir", out, ROOT, cwd=ROOT)
    return next(out.glob("*.whl")), next(out.glob("*.tar.gz"))


def test_wheel_and_sdist_pass_twine_check_and_carry_the_license(dist):
    wheel, sdist = dist
    run(Path(sys.executable).with_name("twine"), "check", "--strict", wheel, sdist)
    names = zipfile.ZipFile(wheel).namelist()
    assert any(n.endswith("licenses/LICENSE") for n in names)
    assert "disco_trl/rewards/grader_worker.py" in names  # started as a script by the grader pool
    assert "disco_trl/eval/math_pass_at_k.py" in names  # loaded as a file by evaluate.load(metric_path())
    start = ("model.safetensors", "tokenizer.json", "config.json", "start.json")
    assert all(f"disco_trl/demo/shipped_start/{name}" in names for name in start)  # the demo's start model
    assert not any(n.startswith("tests/") for n in names)
    members = tarfile.open(sdist).getnames()
    for expected in ("LICENSE", "tests/conftest.py", "tests/disco_testing.py", "recipes/paper/qwen7b_logl.yaml",
                     *(f"disco_trl/demo/shipped_start/{name}" for name in start)):
        assert any(m.endswith(expected) for m in members), expected


def test_the_wheel_installed_in_a_fresh_environment_works(dist, tmp_path):
    wheel, _ = dist
    env_dir = tmp_path / "fresh"
    run(sys._base_executable, "-m", "venv", env_dir)
    python = env_dir / "bin" / "python"
    site = Path(run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").stdout.strip())
    # the dependencies, without this checkout's editable disco_trl (its finder is not in a path file's directory)
    (site / "test_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    # without PYTHONPATH: a checkout on it holds the build's disco_trl.egg-info, which pip takes for an installed
    # disco-trl 0.1.0 (and then installs nothing)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    run(python, "-m", "pip", "install", "--no-deps", "--no-index", "-q", wheel, env=env)
    env.update(HF_HUB_OFFLINE="1", HF_EVALUATE_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))  # evaluate's caches too
    imported = run(python, "-c", USER_IMPORTS, cwd=tmp_path, env=env).stdout
    assert imported.startswith("[1.0, 0.0]\nmetric: {'num_problems': 1, 'samples_per_problem': 2, 'num_correct': "
                               "[1], 'pass@1': 0.5, 'pass@2': 1.0} []\n"), imported[:500]
    assert (tmp_path / "hf" / "modules" / "evaluate_modules" / "metrics" / "math_pass_at_k").is_dir()
    for name in ("train", "eval", "demo", "compare", "study"):
        assert f"usage: disco-trl {name}" in imported
    usage = run(env_dir / "bin" / "disco-trl", "--help", cwd=tmp_path, env=env).stdout  # the console script
    assert all(f"  {name} " in usage for name in ("train", "eval", "demo", "compare", "study"))
