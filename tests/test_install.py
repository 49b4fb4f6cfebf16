"""The README's install commands, run in fresh virtual environments (slow: pip downloads).

- The first command block (venv, `pip install -e .`, `neuromask demo`) on a copy of the
  tracked files: no torch gets installed, and the demo writes its files.
- The GPU command: afterwards onnxruntime lists CUDAExecutionProvider (listed without a GPU:
  it is compiled into the wheel; only creating a CUDA session needs the device).

Both need pip to reach a package index; without one they skip and say so.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _blocks() -> list[str]:
    return re.findall(r"```sh\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.DOTALL)


def _index_reachable(tmp: Path) -> bool:
    done = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d",
                           str(tmp / "probe"), "typer"],
                          capture_output=True, text=True, check=False, timeout=120)
    return done.returncode == 0


def _copy_tracked(dest: Path) -> Path:
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True,
                           check=True).stdout.decode().split("\0")
    for f in filter(None, files):
        if (ROOT / f).is_file():
            (dest / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, dest / f)
    return dest


def _bash(script: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=cwd,
                          capture_output=True, text=True, check=False, timeout=1800)


@pytest.mark.slow
def test_readme_first_block_runs_the_demo_without_torch(tmp_path: Path) -> None:
    if not _index_reachable(tmp_path):
        pytest.skip("pip cannot reach a package index")
    first = _blocks()[0]
    assert "neuromask demo" in first
    assert "pip install -e ." in first
    repo = _copy_tracked(tmp_path / "repo")
    done = _bash(first + "\npython -c 'import importlib.util as u; "
                 "print(\"torch\", u.find_spec(\"torch\") is not None)'\n", repo)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "torch False" in done.stdout
    names = sorted(p.name for p in (repo / "neuromask-demo").iterdir())
    assert names == ["chelsea.json", "chelsea.mask.npy", "chelsea.mask.png",
                     "chelsea.overlay.png", "compare.csv", "compare.json", "report.html"]
    assert "tiger cat" in done.stdout


@pytest.mark.slow
def test_gpu_install_lists_the_cuda_provider(tmp_path: Path) -> None:
    if not _index_reachable(tmp_path):
        pytest.skip("pip cannot reach a package index")
    gpu = [ln for b in _blocks() for ln in b.splitlines() if "onnxruntime-gpu" in ln]
    assert len(gpu) == 1, gpu
    cmd = gpu[0].replace("-e .", f"-e {ROOT}").replace('-e ".', f'-e "{ROOT}')
    script = (f"python3 -m venv {tmp_path}/venv && . {tmp_path}/venv/bin/activate\n{cmd}\n"
              "python -c 'import onnxruntime as o; print(o.get_available_providers())'\n"
              "pip check\n")
    done = _bash(script, tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "CUDAExecutionProvider" in done.stdout


def _release(v: str) -> tuple[int, ...]:
    parts = [int(p) for p in v.split(".")]
    return tuple(parts + [0] * (3 - len(parts)))


def test_lowest_job_pins_the_floors() -> None:
    """.ci/lowest installs exactly pyproject's floors (each dependency's `>=` at `==`), and the
    GPU wheel's floors (the extra, the README's command) are onnxruntime's."""
    text = (ROOT / "pyproject.toml").read_text()
    deps = re.search(r"^dependencies = \[(.*?)^\]", text, flags=re.DOTALL | re.MULTILINE)
    assert deps is not None
    floors = dict(re.findall(r'"([a-z0-9-]+)>=([0-9.]+)"', deps.group(1)))
    assert len(floors) == deps.group(1).count('"') // 2, "every dependency has a floor"
    pins = dict(re.findall(r'"([a-z0-9-]+)==([0-9.]+)"', (ROOT / ".ci/lowest").read_text()))
    assert {k: _release(v) for k, v in floors.items()} == {
        k: _release(pins[k]) for k in floors if k in pins}
    assert set(floors) <= set(pins), f"not pinned by .ci/lowest: {set(floors) - set(pins)}"
    ort = floors["onnxruntime"]
    assert f'"onnxruntime-gpu>={ort}"' in text
    assert f'"onnxruntime-gpu>={ort}"' in (ROOT / "README.md").read_text()
