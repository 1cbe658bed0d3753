"""test.sh's set-up and its two runs: the main suite on pytest-xdist workers, then the vLLM tests in the vLLM
environment (`$DISCO_VLLM_VENV`, else .venv-vllm), one at a time, with DISCO_REQUIRE_VLLM=1; its exit status.
Stand-in venvs print what they are asked to run (as in tests/test_entry_scripts.py), so nothing is installed or tested
for real."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

from test_entry_scripts import _scratch_repo


STANDIN = (
    '#!/usr/bin/env bash\necho "$0 $* REQUIRE=${DISCO_REQUIRE_VLLM:-} OMP=${OMP_NUM_THREADS:-}"\n'
    'exit ${EXIT:-0}\n')


def _venv(path: Path, exit_code: int = 0) -> Path:
    (path / "bin").mkdir(parents=True, exist_ok=True)
    python = path / "bin" / "python"
    python.write_text(STANDIN.replace("${EXIT:-0}", str(exit_code)))
    python.chmod(python.stat().st_mode | stat.S_IEXEC)
    return path


def _test_sh(repo: Path, **env) -> subprocess.CompletedProcess:
    unset = ("DISCO_VENV", "DISCO_VLLM_VENV", "DISCO_REQUIRE_VLLM", "DISCO_TEST_WORKERS", "OMP_NUM_THREADS")
    full = {k: v for k, v in os.environ.items() if k not in unset}
    return subprocess.run(["bash", str(repo / "test.sh"), "-q"], env=full | env, capture_output=True, text=True,
                          timeout=30)


def test_vllm_tests_run_second_in_the_vllm_venv_and_must_not_skip(tmp_path):
    repo = _scratch_repo(tmp_path, "test.sh", ".venv")
    _venv(repo / ".venv")
    _venv(repo / ".venv-vllm")
    other = _venv(tmp_path / "vllm-env")
    for venv, env in ((repo / ".venv-vllm", {}), (other, {"DISCO_VLLM_VENV": str(other)})):
        result = _test_sh(repo, **env)
        assert result.returncode == 0, result.stderr
        ruff, main, vllm, last = result.stdout.splitlines()
        assert ruff == f"{repo / '.venv' / 'bin' / 'ruff'} check --no-cache ."  # the lint comes first
        # the main suite first, on 2 workers, without DISCO_REQUIRE_VLLM (the vLLM tests skip there), then the vLLM
        # tests; both with one thread a process
        python = repo / ".venv" / "bin" / "python"
        assert main == f"{python} -m pytest tests -n 2 --dist loadfile -q REQUIRE= OMP=1"
        vllm_args = "-m vllm -o python_files=test_vllm_*.py -n 2 --dist loadfile -q"
        assert vllm == f"{venv / 'bin' / 'python'} -m pytest tests {vllm_args} REQUIRE=1 OMP=1"
        assert last == "[test] exit status 0 (main suite 0, vLLM tests 0)"  # the last line: the exit status


def test_vllm_run_status_counts_and_no_selection_is_fine(tmp_path):
    repo = _scratch_repo(tmp_path, "test.sh", ".venv")
    _venv(repo / ".venv")
    for main_exit, vllm_exit, expected in ((0, 1, 1), (1, 0, 1), (0, 5, 0), (2, 5, 2)):
        _venv(repo / ".venv", main_exit)
        _venv(repo / ".venv-vllm", vllm_exit)
        result = _test_sh(repo)
        assert result.returncode == expected, (main_exit, vllm_exit, result.stdout, result.stderr)
        lines = result.stdout.splitlines()
        assert len(lines) == 4  # ruff, the main suite, then the vLLM run happens even when the main suite failed
        vllm_reported = 0 if vllm_exit == 5 else vllm_exit  # no vLLM test among the selection is no failure
        assert lines[-1] == f"[test] exit status {expected} (main suite {main_exit}, vLLM tests {vllm_reported})"


def test_the_settings_reach_both_runs(tmp_path):
    """DISCO_TEST_WORKERS sets the main suite's workers; an OMP_NUM_THREADS of the caller is kept."""
    repo = _scratch_repo(tmp_path, "test.sh", ".venv")
    _venv(repo / ".venv")
    _venv(repo / ".venv-vllm")
    lines = _test_sh(repo, DISCO_TEST_WORKERS="3", OMP_NUM_THREADS="2").stdout.splitlines()
    assert lines[1].endswith("-m pytest tests -n 3 --dist loadfile -q REQUIRE= OMP=2")
    assert lines[2].endswith("-q REQUIRE=1 OMP=2")


def test_vllm_setup_follows_the_main_setup_runs_beside_the_main_suite_and_its_failure_is_the_exit_status(tmp_path):
    """.venv is set up first (.venv-vllm is layered on it); .venv-vllm's set-up then runs in the background while the
    main suite runs; its lines print after the main suite, and a failed set-up ends test.sh with its status, naming
    it, before any vLLM test."""
    repo = _scratch_repo(tmp_path, "test.sh", ".venv")
    _venv(repo / ".venv")
    _venv(repo / ".venv-vllm")
    main_setup, main_suite = tmp_path / "main-setup-done", tmp_path / "main-suite-started"
    (repo / "scripts" / "setup_env.sh").write_text(f"#!/usr/bin/env bash\necho '[setup] main'\ntouch {main_setup}\n")
    python = repo / ".venv" / "bin" / "python"  # the main suite: records that it started, then waits a little
    python.write_text(f'#!/usr/bin/env bash\necho "$0 $*"\ntouch {main_suite}\nsleep 1\n')
    # the vLLM set-up checks that .venv's came first, then waits until the main suite has started: both run at once
    # (else the run would hang: timeout)
    (repo / "scripts" / "setup_vllm.sh").write_text(
        f"#!/usr/bin/env bash\n[ -f {main_setup} ] || exit 9\nuntil [ -f {main_suite} ]; do sleep 0.1; done\n"
        "echo '[setup-vllm] failed here' >&2\nexit 3\n")
    result = _test_sh(repo)
    assert result.returncode == 3, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "[setup] main" and lines[2].endswith("-m pytest tests -n 2 --dist loadfile -q")
    assert lines[3] == "[setup-vllm] failed here"
    assert lines[-1] == "[test] exit status 3 (main suite 0, vLLM set-up failed: see above)"
    assert not any("-m vllm" in line for line in lines)  # no vLLM test ran


def test_a_failed_main_setup_ends_the_run_before_any_test(tmp_path):
    repo = _scratch_repo(tmp_path, "test.sh", ".venv")
    _venv(repo / ".venv")
    _venv(repo / ".venv-vllm")
    (repo / "scripts" / "setup_env.sh").write_text("#!/usr/bin/env bash\nexit 4\n")
    result = _test_sh(repo)
    assert result.returncode == 4 and "pytest" not in result.stdout, result.stdout
