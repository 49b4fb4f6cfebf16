"""A/B in one process: the float32 4-D HardSwish derivative (depthwise Conv + Clip, NCHWc)
against the previous Where / Less / Greater form, on the paddle-style model of
tools/real_exports.py; CPU time of one thread, fastest of 20 runs in alternating blocks.

    python tools/ab_hardswish_rule.py --cache /tmp/nm_bench
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_gradient as bench

from neuromask_onnx.graph import Emitter
from neuromask_onnx.vjp_rules import elementwise as ew


def _where_form(op: Emitter, x: str, c: int) -> str:
    """The derivative as it was before: two Where over Greater / Less masks."""
    mid = op.Add(op.Mul(x, op.const(1.0 / 3.0, like=x)), op.const(0.5, like=x))
    above = op.Greater(x, op.const(3.0, like=x))
    below = op.Less(x, op.const(-3.0, like=x))
    return op.Where(below, op.const(0.0, like=x), op.Where(above, op.const(1.0, like=x), mid))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", type=Path, required=True)
    args = ap.parse_args()
    bench.CLOCK = time.thread_time
    path, shape, layout = bench.case("paddle", args.cache)
    new = bench._instrument(path)
    nchwc = ew._d_hard_swish_nchwc
    ew._d_hard_swish_nchwc = _where_form  # type: ignore[assignment]
    try:
        old = bench._instrument(path)
    finally:
        ew._d_hard_swish_nchwc = nchwc
    sessions = [bench._session(str(path), 1)] + [
        bench._session(m.SerializeToString(), 1) for m in (new, old)]
    feeds = bench._feeds(sessions[0].get_inputs()[0].name, shape, layout)
    fwd_feeds = {k: v for k, v in feeds.items() if k == sessions[0].get_inputs()[0].name}
    times: list[list[float]] = [[], [], []]
    for _ in range(5):
        for s, t, f in zip(sessions, times, (fwd_feeds, feeds, feeds), strict=True):
            t += bench._block(s, f, 4)
    gn, go = sessions[1].run(None, feeds)[1], sessions[2].run(None, feeds)[1]
    ops = [sum(n.op_type == "Where" for n in m.graph.node) for m in (new, old)]
    f = min(times[0])
    print(f"forward {1e3 * f:.1f} ms; NCHWc form {min(times[1]) / f:.2f} forwards "
          f"({ops[0]} Where), Where form {min(times[2]) / f:.2f} ({ops[1]} Where); "
          f"max |gradient difference| / max |gradient| "
          f"{float(np.abs(gn - go).max() / np.abs(go).max()):.1e}")


if __name__ == "__main__":
    main()
