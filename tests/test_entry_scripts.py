"""run.sh and test.sh run the virtual environment that scripts/setup_env.sh made: `$DISCO_VENV`, else `.venv`.

Each script is copied into a scratch folder next to a stand-in setup_env.sh (which does nothing) and a stand-in
venv whose `python` and `disco-trl` print what they were asked to run, so nothing is installed or trained.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest


ROOT = Path(__file__).resolve().parents[1]
ECHO = '#!/usr/bin/env bash\necho "$0 $*"\n'


def _scratch_repo(tmp_path: Path, script: str, venv: str) -> Path:
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    shutil.copy(ROOT / script, repo / script)
    (repo / "scripts" / "setup_env.sh").write_text("#!/usr/bin/env bash\nexit 0\n")
    (repo / "scripts" / "setup_vllm.sh").write_text("#!/usr/bin/env bash\nexit 0\n")  # test.sh's vLLM part
    for bin_dir in ((repo / venv if not os.path.isabs(venv) else Path(venv)) / "bin", repo / ".venv-vllm" / "bin"):
        bin_dir.mkdir(parents=True, exist_ok=True)
        for name in ("python", "disco-trl", "ruff"):
            (bin_dir / name).write_text(ECHO)
            (bin_dir / name).chmod((bin_dir / name).stat().st_mode | stat.S_IEXEC)
    return repo


def _run(repo: Path, script: str, env_venv: str | None, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("DISCO_VENV", "DISCO_TEST_WORKERS")}
    if env_venv is not None:
        env["DISCO_VENV"] = env_venv
    return subprocess.run(["bash", str(repo / script), *args], env=env, capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize(("script", "program", "expected_args"), [
    ("run.sh", "disco-trl", "demo --quick"), ("test.sh", "python", "-m pytest tests -n 2 --dist loadfile --quick")])
@pytest.mark.parametrize("venv", ["my-venv", "ABSOLUTE", None])
def test_entry_scripts_use_the_venv_from_disco_venv(tmp_path, script, program, expected_args, venv):
    if venv == "ABSOLUTE":
        venv = str(tmp_path / "elsewhere" / "venv")
    repo = _scratch_repo(tmp_path, script, venv or ".venv")
    result = _run(repo, script, venv, "--quick")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    expected = Path(venv) if venv and os.path.isabs(venv) else repo / (venv or ".venv")
    main = lines[1] if script == "test.sh" else lines[0]  # test.sh: ruff, the main suite, then the vLLM run
    assert Path(main.split()[0]) == expected / "bin" / program, result.stdout
    assert main.endswith(expected_args)
    if script == "test.sh":  # the lint runs first, from the same environment (run from the repository's root)
        ruff, command = lines[0].split()[:2]
        assert (repo / ruff).resolve() == (expected / "bin" / "ruff").resolve() and command == "check", result.stdout
        assert Path(lines[2].split()[0]) == repo / ".venv-vllm" / "bin" / "python" and "-m vllm" in lines[2]
        assert lines[3:] == ["[test] exit status 0 (main suite 0, vLLM tests 0)"]  # the last line: nothing after it


@pytest.mark.parametrize("script", ["run.sh", "test.sh"])
def test_entry_scripts_parse(script):
    assert subprocess.run(["bash", "-n", str(ROOT / script)], capture_output=True).returncode == 0
