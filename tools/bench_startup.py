"""Time how long `neuromask --version` and `neuromask --help` take to start (a fresh process
each run, like a user typing the command), and what `python -c pass` costs on the same machine.

    python tools/bench_startup.py [--runs 10]

Prints the fastest and the median wall time of each command. Not a test: the numbers move
with the machine's load; the README quotes one run.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COMMANDS = {
    "python -c pass": [sys.executable, "-c", "pass"],
    "neuromask --version": [sys.executable, "-m", "neuromask_onnx", "--version"],
    "neuromask --help": [sys.executable, "-m", "neuromask_onnx", "--help"],
}


def time_command(argv: list[str], runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(argv, cwd=ROOT, capture_output=True, check=True)
        out.append(time.perf_counter() - t0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=10)
    args = ap.parse_args()
    print(f"{'command':<24}{'fastest s':>10}{'median s':>10}")
    for name, argv in COMMANDS.items():
        ts = time_command(argv, args.runs)
        print(f"{name:<24}{min(ts):>10.3f}{statistics.median(ts):>10.3f}")


if __name__ == "__main__":
    main()
