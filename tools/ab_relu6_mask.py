"""A/B in one process: the float32 4-D Clip (ReLU6) band mask [lo < y < hi] in two passes
against the rule's two steps applied by two Muls, on the real-export cases of
tools/real_exports.py (or any benchmark name); CPU time of one thread, fastest run of
`--reps` in alternating blocks, and the largest gradient difference between the two.

The two-pass form (not kept: measured slower, README "Real exports"): s = [y > lo] as one
HardSigmoid step, then [Conv(s; -B, B) + y < hi], a depthwise 1x1 Conv that onnxruntime fuses
with the Add and the HardSigmoid step in its NCHWc layout; one Mul applies it. B is a power
of two with B + lo >= hi + 1: s = 1 gives -B + B = 0 exactly (the sum is y, the step exact),
s = 0 (y = lo) gives B + lo, which the step maps to 0. It replaces the Clip rule for the
duration of one build (`registry.VJP_RULES`, rule signature (op, node, gys)).

    python tools/ab_relu6_mask.py --cache /tmp/nm_bench [--reps 40] [efficientnet_lite0 ...]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_gradient as bench

from neuromask_onnx.vjp_rules.registry import VJP_RULES


def _two_pass(orig: Any) -> Any:
    def rule(op: Any, node: onnx.NodeProto, gys: Sequence[str | None], needs: Any) -> Any:
        y, gy = node.output[0], gys[0]
        bounds = [op.g.const(b) if b else None for b in [*node.input[1:3], "", ""][:2]]
        shape = op.g.shapes.get(y)
        if (gy is None or any(b is None for b in bounds) or shape is None or len(shape) != 4
                or op.g.dtypes.get(y) != onnx.TensorProto.FLOAT):
            return orig(op, node, gys, needs)
        lo, hi = (float(b) for b in bounds)
        if lo >= hi:
            return orig(op, node, gys, needs)
        c = shape[1]
        s = op.step(y, lo, above=True)
        big = 2.0 ** int(np.ceil(np.log2(abs(hi) + abs(lo) + 2.0)))
        t = op.Conv(s, op.const(np.full((c, 1, 1, 1), -big), like=y),
                    op.const(np.full(c, big), like=y), group=c)
        band = op.step(op.Add(t, y), hi, above=False)
        return [op.Mul(gy, band), *[None] * (len(node.input) - 1)]
    return rule


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*", default=["efficientnet_lite0", "tf2onnx_nhwc", "keras3"])
    ap.add_argument("--cache", type=Path, required=True)
    ap.add_argument("--reps", type=int, default=40)
    args = ap.parse_args()
    bench.CLOCK = time.thread_time
    print("| model | forward ms | two-pass band mask | two steps, two Muls (the rule) | "
          "median time, two-pass / rule | max gradient difference / max gradient |\n"
          "|---|---|---|---|---|---|")
    for name in args.names:
        path, shape, layout = bench.case(name, args.cache)
        orig = VJP_RULES["Clip"]
        VJP_RULES["Clip"] = _two_pass(orig)
        try:
            new = bench._instrument(path)
        finally:
            VJP_RULES["Clip"] = orig
        old = bench._instrument(path)
        sessions = [bench._session(str(path), 1)] + [
            bench._session(m.SerializeToString(), 1) for m in (new, old)]
        x_name = sessions[0].get_inputs()[0].name
        feeds = bench._feeds(x_name, shape, layout)
        all_feeds = ({x_name: feeds[x_name]}, feeds, feeds)
        times: list[list[float]] = [[], [], []]
        for _ in range(max(1, args.reps // 4)):
            for s, t, f in zip(sessions, times, all_feeds, strict=True):
                t += bench._block(s, f, 4)
        gn, go = sessions[1].run(None, feeds)[1], sessions[2].run(None, feeds)[1]
        f = min(times[0])
        med = statistics.median(times[1]) / statistics.median(times[2])
        print(f"| {name} | {1e3 * f:.1f} | {min(times[1]) / f:.2f} | {min(times[2]) / f:.2f} | "
              f"{med:.3f} | {float(np.abs(gn - go).max() / np.abs(go).max()):.1e} |", flush=True)


if __name__ == "__main__":
    main()
