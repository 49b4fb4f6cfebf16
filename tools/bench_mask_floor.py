"""How cheap can the ReLU6 (Clip) masks get? The rule against other forms and two cost bounds.

For each model: the forward; the instrumented model as the rules build it (the band mask
[lo < y < hi] as two HardSigmoid steps applied by two Muls); the same model with the band
written two other exact ways (compare-and-cast; two passes with a depthwise Conv, not kept:
slower, README "Real exports"); with each Clip's gradient as ONE elementwise pass, gy * y (a
wrong gradient on purpose: the cost of the cheapest conceivable exact mask, one read of y
and of gy and one write, as a fused kernel would do it); and with no mask at all (gx = gy: the Clip costs nothing in the backward
pass). CPU time of one thread, fastest run of `--reps` in alternating blocks, as ratios to the
forward. If the one-pass row is above a target, no formulation of the ReLU6 masks in
elementwise ONNX ops reaches it on this machine; only the convolutions and reorders left in
the no-mask row could.

    python tools/bench_mask_floor.py --cache /tmp/h6 [--reps 40] [efficientnet_lite0 ...]
    python tools/bench_mask_floor.py --forms    # the band mask's forms on one tensor

`--forms` times each way of writing gx = gy [0 < y < 6] in standard ops on one
1 x 96 x 112 x 112 tensor (Lite0's largest activation) in a session of its own, plain layout:
what each costs before onnxruntime's NCHWc layout decides which of them can stay blocked.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_gradient as bench

from neuromask_onnx.vjp_rules.registry import VJP_RULES

Form = Callable[[Any, onnx.NodeProto, Sequence[str | None]], str]


def _compare_and_cast(op: Any, node: onnx.NodeProto, gys: Sequence[str | None]) -> str:
    """The exact band [lo < y < hi] as Greater, Less, And, Cast, applied by one Mul."""
    y = node.output[0]
    lo, hi = (float(op.g.const(b)) for b in node.input[1:3])
    band = op.And(op.Greater(y, op.const(lo, like=y)), op.Less(y, op.const(hi, like=y)))
    return op.Mul(gys[0], op.mask_of(band, y))


def _two_pass(op: Any, node: onnx.NodeProto, gys: Sequence[str | None]) -> str:
    """The exact band in two passes: s = [y > lo] as one HardSigmoid step, then
    [Conv(s; -B, B) + y < hi], a depthwise 1x1 Conv that onnxruntime fuses with the Add and
    the step in its NCHWc layout; one Mul applies it. B is a power of two with
    B + lo >= hi + 1: s = 1 gives -B + B = 0 exactly (the sum is y, the step exact), s = 0
    (y = lo) gives B + lo, which the step maps to 0. 4-D inputs only."""
    y = node.output[0]
    lo, hi = (float(op.g.const(b)) for b in node.input[1:3])
    c = op.g.shapes[y][1]
    big = 2.0 ** int(np.ceil(np.log2(abs(hi) + abs(lo) + 2.0)))
    t = op.Conv(op.step(y, lo, above=True), op.const(np.full((c, 1, 1, 1), -big), like=y),
                op.const(np.full(c, big), like=y), group=c)
    return op.Mul(gys[0], op.step(op.Add(t, y), hi, above=False))


FORMS: dict[str, Form] = {
    "compare and cast (exact)": _compare_and_cast,
    "two passes, depthwise Conv (exact)": _two_pass,
    "one pass (gy * y)": lambda op, node, gys: op.Mul(gys[0], node.output[0]),
    "no mask (gy)": lambda _op, _node, gys: str(gys[0]),
}


def _instrument_with(path: Path, form: Form) -> onnx.ModelProto:
    """The model instrumented with every float Clip's input gradient replaced by `form`."""
    orig = VJP_RULES["Clip"]

    def rule(op: Any, node: onnx.NodeProto, gys: Sequence[str | None], needs: Any) -> Any:
        bounds = list(node.input[1:3])
        y = node.output[0]
        if (gys[0] is None or op.g.dtypes.get(y) != onnx.TensorProto.FLOAT
                or len(op.g.shapes.get(y, ())) != 4
                or len(bounds) != 2 or any(not b or op.g.const(b) is None for b in bounds)
                or float(op.g.const(bounds[0])) >= float(op.g.const(bounds[1]))):
            return orig(op, node, gys, needs)  # only the 4-D constant-bound ReLU6 form
        return [form(op, node, gys), *[None] * (len(node.input) - 1)]

    VJP_RULES["Clip"] = rule
    try:
        return bench._instrument(path)
    finally:
        VJP_RULES["Clip"] = orig


def _node(op: str, ins: list[str], out: str, **attrs: Any) -> onnx.NodeProto:
    return helper.make_node(op, ins, [out], **attrs)


A = 2.0**122  # Emitter.step's slope for the bound 6: every float32 difference saturates
BAND_FORMS: dict[str, list[onnx.NodeProto]] = {
    "two HardSigmoid steps, two Muls (the rule)": [
        _node("HardSigmoid", ["y"], "lo", alpha=2.0**127, beta=0.0),
        _node("HardSigmoid", ["y"], "hi", alpha=-A, beta=6 * A),
        _node("Mul", ["g", "lo"], "t"), _node("Mul", ["t", "hi"], "gx")],
    "Greater, Less, And, Cast, Mul": [
        _node("Greater", ["y", "zero"], "a"), _node("Less", ["y", "six"], "b"),
        _node("And", ["a", "b"], "m"), _node("Cast", ["m"], "mf", to=TensorProto.FLOAT),
        _node("Mul", ["g", "mf"], "gx")],
    "Greater, Less, And, Where": [
        _node("Greater", ["y", "zero"], "a"), _node("Less", ["y", "six"], "b"),
        _node("And", ["a", "b"], "m"), _node("Where", ["m", "g", "zero"], "gx")],
    "one Mul (gy * y, the one-pass floor; wrong)": [_node("Mul", ["g", "y"], "gx")],
}


def forms(reps: int) -> None:
    shape = [1, 96, 112, 112]
    rng = np.random.default_rng(0)
    feeds = {"g": rng.standard_normal(shape).astype(np.float32),
             "y": np.clip(rng.uniform(-2, 8, shape), 0, 6).astype(np.float32)}
    consts = [helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0]),
              helper.make_tensor("six", TensorProto.FLOAT, [], [6.0])]
    want = feeds["g"] * ((feeds["y"] > 0) & (feeds["y"] < 6))
    print("| form | ms (CPU, one thread, fastest) | exact |\n|---|---|---|")
    for name, nodes in BAND_FORMS.items():
        used = {i for n in nodes for i in n.input}
        graph = helper.make_graph(
            nodes, "band", [helper.make_tensor_value_info(k, TensorProto.FLOAT, shape)
                            for k in feeds],
            [helper.make_tensor_value_info("gx", TensorProto.FLOAT, shape)],
            [c for c in consts if c.name in used])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        sess = bench._session(model.SerializeToString(), 1)
        times = bench._block(sess, feeds, reps)
        exact = bool(np.array_equal(sess.run(None, feeds)[0], want))
        print(f"| {name} | {1e3 * min(times):.3f} | {'yes' if exact else 'no'} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*", default=["efficientnet_lite0", "tf2onnx_nhwc"])
    ap.add_argument("--cache", type=Path)
    ap.add_argument("--reps", type=int, default=40)
    ap.add_argument("--forms", action="store_true", help="time the band mask's forms alone")
    args = ap.parse_args()
    bench.CLOCK = time.thread_time
    if args.forms:
        forms(args.reps)
        return
    if args.cache is None:
        ap.error("pass --cache DIR (where the benchmark models are built), or --forms")
    cols = ["the rule (two steps, two Muls)", *FORMS]
    print("| model | forward ms | " + " | ".join(cols) + " | median, rule / forward |\n"
          "|---|---|" + "---|" * len(cols) + "---|")
    for name in args.names:
        path, shape, layout = bench.case(name, args.cache)
        models = [bench._instrument(path), *(_instrument_with(path, f) for f in FORMS.values())]
        sessions = [bench._session(str(path), 1)] + [
            bench._session(m.SerializeToString(), 1) for m in models]
        x_name = sessions[0].get_inputs()[0].name
        feeds = bench._feeds(x_name, shape, layout)
        all_feeds = [{x_name: feeds[x_name]}] + [feeds] * len(models)
        times: list[list[float]] = [[] for _ in sessions]
        for _ in range(max(1, args.reps // 4)):
            for s, t, f in zip(sessions, times, all_feeds, strict=True):
                t += bench._block(s, f, 4)
        f = min(times[0])
        ratios = " | ".join(f"{min(t) / f:.2f}" for t in times[1:])
        med = statistics.median(times[1]) / statistics.median(times[0])
        print(f"| {name} | {1e3 * f:.1f} | {ratios} | {med:.2f} |", flush=True)


if __name__ == "__main__":
    main()
