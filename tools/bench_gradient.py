"""Time one instrumented run (loss + mask gradient) against one plain forward, onnxruntime CPU.

For each architecture (TorchScript export, 224 px, batch 1; inception_v3 at 299) both models
run in the same process with the same session options. Each session is timed in blocks of
consecutive runs after a warm-up, and the blocks alternate (forward, instrumented, forward,
...) so that drift hits both alike; the medians over all blocks are compared. Blocks, not
single interleaved runs: onnxruntime's worker threads keep spinning for a while after a run,
so a run that follows another session's run shares the cores with that session's spinning
threads (measured: resnet18's forward at 59 ms interleaved, 27 ms in blocks), which inflates
the forward time and flatters the ratio. The ratio is taken between the two sessions' fastest
runs: load from other tenants on a shared machine only ever adds time (measured: the same
mobilenet_v2 forward block at 5.7 ms and 15.3 ms a few seconds apart), so the minimum is the
stable estimate of what a session costs; medians are printed beside it. Prints a markdown
table and the median ratio over the models.

`--free-factors` adds a third session, timed in the same alternating blocks: the instrumented
model with every elementwise factor of the gradient chain removed (`free_factors`), which
computes a wrong gradient on purpose. Its ratio bounds what any reformulation of the
activation masks and derivatives (ReLU6, SiLU, sigmoid gates) can reach with the same
convolutions, reorders and pooling gradients.

`--forward-part` adds another: the instrumented model pruned to its probabilities (mask,
masked input, forward pass; `rewrite.pruned`). Its ratio to the plain forward shows what the
instrumentation costs before the backward pass starts: the masked input, and any forward
fusion onnxruntime loses because the backward pass reads an intermediate value.

`--cpu-time` times one thread's CPU time (`time.thread_time`) instead of wall time, with
intra_op_num_threads=1 so that onnxruntime runs every kernel on the calling thread. A shared
virtual machine's stolen time drops out (cache and memory-bandwidth contention do not): two
runs of the same command gave mobilenet_v2 3.01 and 3.05, resnet18 2.34 and 2.31, but
squeezenet1_1 3.93 and 4.36; two wall-clock runs of two threads gave mobilenet_v2 3.10 and
3.64. It measures the work a run does, not how well that work spreads over cores.

    python tools/bench_gradient.py --cache /tmp/nm_bench [--reps 15] [--threads 2]
        [--cpu-time] [--profile DIR] [--free-factors] [--forward-part]
        [resnet18 mobilenet_v2 ...]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parent))

import export_torchvision as exp

from neuromask_onnx import instrument
from neuromask_onnx.rewrite import LOSS, PROBS, TARGET, pruned


def _session(model: bytes | str, threads: int, profile: str | None = None
             ) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    if profile:
        opts.enable_profiling = True
        opts.profile_file_prefix = profile
    return ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])


CLOCK = time.perf_counter


def _block(sess: ort.InferenceSession, feeds: dict[str, np.ndarray], n: int) -> list[float]:
    """n timed runs after two untimed ones (allocation, kernel choice, the other session's
    threads going idle)."""
    for _ in range(2):
        sess.run(None, feeds)
    times = []
    for _ in range(n):
        t = CLOCK()
        sess.run(None, feeds)
        times.append(CLOCK() - t)
    return times


def free_factors(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """A copy where every elementwise `Mul` on the gradient chain (downstream of the target)
    whose other operand is off the chain passes its chain operand through unchanged, when
    that operand already has the product's shape; the masks and derivatives feeding only
    those `Mul`s are pruned. The gradient is wrong: this is a cost bound, not a model."""
    m = onnx.shape_inference.infer_shapes(model)
    shapes = {vi.name: [d.dim_value for d in vi.type.tensor_type.shape.dim]
              for vi in [*m.graph.input, *m.graph.value_info, *m.graph.output]}
    chain = {TARGET}
    for n in m.graph.node:
        if chain.intersection(n.input):
            chain.update(n.output)
    forward = {LOSS, PROBS}  # what the loss and probabilities read stays as it is
    for n in reversed(m.graph.node):
        if forward.intersection(n.output):
            forward.update(n.input)
    alias: dict[str, str] = {}
    kept = []
    for n in m.graph.node:
        ins = [alias.get(i, i) for i in n.input]
        del n.input[:]
        n.input.extend(ins)
        on = [i for i in ins if i in chain]
        if (n.op_type == "Mul" and len(on) == 1 and len(ins) == 2 and n.output[0] not in forward
                and shapes.get(on[0]) == shapes.get(n.output[0]) and shapes.get(on[0])):
            alias[n.output[0]] = on[0]
            continue
        kept.append(n)
    outs = [o.name for o in m.graph.output]
    tail = [onnx.helper.make_node("Identity", [alias[o]], [o]) for o in outs if o in alias]
    del m.graph.node[:]
    m.graph.node.extend(kept + tail)
    del m.graph.value_info[:]
    return pruned(m, outs), len(alias)


def bench_one(name: str, cache: Path, reps: int, threads: int,
              profile_dir: Path | None = None, free: bool = False,
              forward_part: bool = False) -> dict[str, float]:
    arch = exp.ARCHS[name]
    path = exp.export(name, "torchscript", cache, size=arch.bench_size)
    shape = exp.input_shape(name, arch.bench_size)
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(np.float32)
    mshape = (1, *shape[1:3], 1) if arch.layout == "NHWC" else (1, 1, *shape[2:])
    mask = rng.uniform(0.5, 1.0, mshape).astype(np.float32)
    t0 = time.perf_counter()
    model = instrument(str(path))
    build_s = time.perf_counter() - t0
    fwd = _session(str(path), threads)
    prof = str(profile_dir / f"{name}_instrumented") if profile_dir else None
    ins = _session(model.SerializeToString(), threads, prof)
    in_name = fwd.get_inputs()[0].name
    target = np.array([5], dtype=np.int64)
    feeds_f = {in_name: x}
    feeds_i = {in_name: x, "nm_mask": mask, "nm_target": target}
    tf: list[float] = []
    ti: list[float] = []
    tz: list[float] = []
    tp: list[float] = []
    bypassed = 0
    if free:
        ablated, bypassed = free_factors(model)
        abl = _session(ablated.SerializeToString(), threads)
    if forward_part:
        part = _session(pruned(model, [PROBS]).SerializeToString(), threads)
    rounds = 5
    per_block = max(1, -(-reps // rounds))
    for _ in range(rounds):
        tf += _block(fwd, feeds_f, per_block)
        ti += _block(ins, feeds_i, per_block)
        if free:
            tz += _block(abl, feeds_i, per_block)
        if forward_part:
            tp += _block(part, feeds_i, per_block)
    if prof:
        ins.end_profiling()
    f_ms, i_ms = 1e3 * min(tf), 1e3 * min(ti)
    extra = {"free_ratio": 1e3 * min(tz) / f_ms, "bypassed": float(bypassed)} if free else {}
    if forward_part:
        extra["forward_part_ratio"] = 1e3 * min(tp) / f_ms
    return {**extra, "forward_ms": f_ms, "instrumented_ms": i_ms, "ratio": i_ms / f_ms,
            "forward_median_ms": 1e3 * statistics.median(tf),
            "instrumented_median_ms": 1e3 * statistics.median(ti),
            "build_s": build_s, "nodes": float(len(model.graph.node))}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("names", nargs="*", help=f"architectures (default: {exp.BENCH_ARCHS})")
    p.add_argument("--cache", required=True, help="directory for the exported models")
    p.add_argument("--reps", type=int, default=15)
    p.add_argument("--threads", type=int, default=2, help="intra_op_num_threads")
    p.add_argument("--cpu-time", action="store_true",
                   help="time the calling thread's CPU time on one thread (stable on a noisy "
                        "shared machine) instead of wall time")
    p.add_argument("--profile", default=None, help="write onnxruntime profiles here")
    p.add_argument("--free-factors", action="store_true",
                   help="also time the model with the gradient's elementwise factors removed "
                        "(a wrong gradient: a bound on what mask reformulations can reach)")
    p.add_argument("--forward-part", action="store_true",
                   help="also time the instrumented model's forward part alone (pruned to the "
                        "probabilities)")
    args = p.parse_args(argv)
    names = args.names or exp.BENCH_ARCHS
    bad = [n for n in names if n not in exp.ARCHS]
    if bad:
        print(f"unknown architecture(s) {bad}; choose from {list(exp.ARCHS)}", file=sys.stderr)
        return 1
    prof = Path(args.profile) if args.profile else None
    if prof:
        prof.mkdir(parents=True, exist_ok=True)
    global CLOCK
    if args.cpu_time:
        CLOCK, args.threads = time.thread_time, 1
    clock = "CPU time of the calling thread" if args.cpu_time else "wall time"
    print(f"onnxruntime {ort.__version__} CPU, intra_op_num_threads={args.threads}, {clock}, "
          f"{args.reps} runs each in alternating blocks; fastest run (median)\n")
    free, part = args.free_factors, args.forward_part
    extra = " ratio, factors free (Muls removed) |" * free + " ratio, forward part |" * part
    print("| model | size | forward ms | instrumented ms | ratio | median ratio | build s |"
          + extra)
    print("|---|---|---|---|---|---|---|" + "---|" * (free + part))
    ratios = {}
    for name in names:
        r = bench_one(name, Path(args.cache), args.reps, args.threads, prof, free, part)
        ratios[name] = r["ratio"]
        cell = f" {r['free_ratio']:.2f} ({r['bypassed']:.0f}) |" if free else ""
        cell += f" {r['forward_part_ratio']:.2f} |" if part else ""
        print(f"| {name} | {exp.ARCHS[name].bench_size} | {r['forward_ms']:.1f} "
              f"({r['forward_median_ms']:.1f}) | {r['instrumented_ms']:.1f} "
              f"({r['instrumented_median_ms']:.1f}) | {r['ratio']:.2f} | "
              f"{r['instrumented_median_ms'] / r['forward_median_ms']:.2f} | "
              f"{r['build_s']:.1f} |{cell}", flush=True)
    print(f"\nmedian ratio over {len(ratios)} models: {statistics.median(ratios.values()):.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
