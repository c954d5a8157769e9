"""The codepercept-rl command as a user runs it: real subprocesses, exit codes, one-line errors."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from codepercept_rl.cli import SUBCOMMANDS


def run_cli(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "codepercept_rl.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=120,
    )


def test_help_lists_every_subcommand_and_each_imports():
    proc = run_cli("--help")
    assert proc.returncode == 0
    for name in SUBCOMMANDS:
        assert name in proc.stdout
    # Every listed subcommand must exist for real: its module imports and its main answers --help.
    for name in SUBCOMMANDS:
        sub = run_cli(name, "--help")
        assert sub.returncode == 0, f"{name} --help failed: {sub.stderr[-2000:]}"
        assert "usage:" in sub.stdout


def test_console_script_installed():
    exe = shutil.which("codepercept-rl", path=os.path.dirname(sys.executable))
    assert exe is not None, "the codepercept-rl console script is not installed next to this python"
    proc = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "commands:" in proc.stdout


def test_unknown_command():
    proc = run_cli("trian")
    assert proc.returncode == 2
    assert "unknown command 'trian'" in proc.stderr


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["config", "missing.yaml"], "config file not found: missing.yaml"),
        (["config", "rollout.n=many"], "wrong type for 'rollout.n'"),
        (["config", "trainer.lr=1e-6"], "did you mean 'actor.optim.lr'"),
        (["config", "rollout.n=2", "rollout"], "expected key=value"),
    ],
)
def test_user_errors_are_one_line_without_traceback(args, fragment):
    proc = run_cli(*args)
    assert proc.returncode == 2
    assert fragment in proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_config_prints_resolved_yaml(tmp_path):
    recipe = tmp_path / "x.yaml"
    recipe.write_text("rollout:\n  n: 4\n")
    proc = run_cli("config", str(recipe), "actor.optim.lr=3e-6", "reward.name=ssim")
    assert proc.returncode == 0, proc.stderr
    assert "n: 4" in proc.stdout and "lr: 3.0e-06" in proc.stdout and "name: ssim" in proc.stdout
