"""Every command the README shows must work on a fresh machine: run them.

Blocks fenced as ```sh are read line by line (`pip install` lines are what CI itself does and
`python -m pytest` would recurse, so those two are skipped); blocks fenced as ```python run
whole. Everything runs in one scratch directory, in README order, so later steps can use the
files earlier ones wrote.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SKIP = ("pip ", "python3 -m venv", "python -m pytest")


def readme_steps() -> list[tuple[str, str]]:
    """("sh", command) for each shell line and ("python", code) for each Python block."""
    text = (ROOT / "README.md").read_text()
    steps: list[tuple[str, str]] = []
    for lang, block in re.findall(r"```(sh|python)\n(.*?)```", text, flags=re.DOTALL):
        if lang == "python":
            steps.append(("python", block))
            continue
        for line in block.splitlines():
            cmd = line.split("  #")[0].strip()
            if cmd and not cmd.startswith(SKIP) and not cmd.startswith("#"):
                steps.append(("sh", cmd))
    return steps


def readme_commands() -> list[str]:
    return [cmd for kind, cmd in readme_steps() if kind == "sh"]


def _scratch_ready(cwd: Path) -> None:
    """README examples name `model.onnx`; give them the small fixture CNN under that name."""
    fixture = ROOT / "models" / "cnn_nchw.onnx"
    if fixture.exists() and not (cwd / "model.onnx").exists():
        (cwd / "model.onnx").write_bytes(fixture.read_bytes())


@pytest.mark.slow
@pytest.mark.torch
def test_readme_commands_run(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    _scratch_ready(tmp_path)
    bindir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}"}
    for kind, cmd in readme_steps():
        if kind == "python":
            argv = [sys.executable, "-c", cmd]
        else:
            argv = shlex.split(cmd)
            if argv[0] == "python":
                argv[0] = sys.executable
            if len(argv) > 1 and argv[1].startswith("tools/"):
                argv[1] = str(ROOT / argv[1])
        done = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=900, check=False)
        assert done.returncode == 0, f"{cmd}\n{done.stdout}\n{done.stderr}"


def test_readme_has_the_commands_it_promises() -> None:
    cmds = readme_commands()
    assert any(c.startswith("neuromask instrument") for c in cmds)
    assert any(c.startswith("neuromask ops") for c in cmds)
