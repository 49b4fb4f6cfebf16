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
masked input, forward pass; `graph.pruned`). Its ratio to the plain forward shows what the
instrumentation costs before the backward pass starts: the masked input, and any forward
fusion onnxruntime loses because the backward pass reads an intermediate value.

`--cpu-time` times one thread's CPU time (`time.thread_time`) instead of wall time, with
intra_op_num_threads=1 so that onnxruntime runs every kernel on the calling thread. A shared
virtual machine's stolen time drops out (cache and memory-bandwidth contention do not): two
runs of the same command gave mobilenet_v2 3.01 and 3.05, resnet18 2.34 and 2.31, but
squeezenet1_1 3.93 and 4.36; two wall-clock runs of two threads gave mobilenet_v2 3.10 and
3.64. It measures the work a run does, not how well that work spreads over cores.

`--real` benchmarks the real-export cases of tools/real_exports.py instead (the pretrained
EfficientNet-Lite0, and MobileNet-sized models in the tf2onnx NHWC, Keras 3 and paddle2onnx
styles); names from both sets can also be given. Models are instrumented with the graph
simplifications of `neuromask_onnx.simplify` (`--no-simplify` to leave them out); `--ab`
times a second instrumented model in the same blocks, built with the other setting, or with
the passes named by `--ab-skip` left out, so each pass is measured in one process
(`--all-passes` also runs the passes that are off by default, `simplify.DEFAULT_SKIP`).
`--profile DIR` writes onnxruntime profiles of the forward and instrumented sessions and
prints the kernel time per op type of both, then per part: the original model's nodes, the
nodes the instrumentation added (`nm_*`) and onnxruntime's layout reorders (`part_profile`).

`--rows 1,2,4,8` instead times instrumented models at those batch sizes, every row the same
image with its own mask (a batch of masks for one image), against the forward at batch 1,
and prints milliseconds per run and per row.

    python tools/bench_gradient.py --cache /tmp/nm_bench [--reps 15] [--threads 2]
        [--cpu-time] [--profile DIR] [--free-factors] [--forward-part] [--real]
        [--no-simplify] [--all-passes] [--ab [--ab-skip PASS]...] [--rows 1,2,4,8]
        [resnet18 mobilenet_v2 efficientnet_lite0 ...]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parent))

import export_torchvision as exp
import real_exports

from neuromask_onnx import instrument, simplify
from neuromask_onnx.graph import pruned
from neuromask_onnx.io_names import LOSS, PROBS, TARGET


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


def _node_events(path: str) -> tuple[list[tuple[str, str, float]], int]:
    """(node name, op type, microseconds) of every kernel in an onnxruntime profile file, and
    the number of runs it covers."""
    import json

    events = json.loads(Path(path).read_text())
    runs = max(1, sum(e.get("name") == "model_run" for e in events))
    return [(str(e["name"])[:-len("_kernel_time")], e.get("args", {}).get("op_name", "?"),
             float(e["dur"]))
            for e in events
            if e.get("cat") == "Node" and str(e.get("name", "")).endswith("_kernel_time")], runs


def op_profile(path: str) -> dict[str, float]:
    """Milliseconds per run spent in each op type, from an onnxruntime profile file."""
    nodes, runs = _node_events(path)
    total: dict[str, float] = {}
    for _, op, dur in nodes:
        total[op] = total.get(op, 0.0) + dur / 1e3 / runs
    return dict(sorted(total.items(), key=lambda kv: -kv[1]))


def part_profile(path: str) -> dict[str, float]:
    """Milliseconds per run in three parts: "forward" (the original model's nodes, under
    their names or the names onnxruntime derives from them when it fuses or expands one),
    "gradient" (every node the instrumentation added: their names start with `nm_`) and
    "reorder" (the layout reorders onnxruntime inserts around its NCHWc kernels). In the
    instrumented session "forward" is what the forward pass costs there: fusions lost because
    the backward pass reads an intermediate value, and activations kept alive for the backward
    pass, written to cold memory (the pruned `--forward-part` model regains both)."""
    nodes, runs = _node_events(path)
    parts = dict.fromkeys(("forward", "gradient", "reorder"), 0.0)
    for name, op, dur in nodes:
        key = ("reorder" if op in ("ReorderInput", "ReorderOutput")
               else "gradient" if name.startswith("nm_") else "forward")
        parts[key] += dur / 1e3 / runs
    return parts


def print_profiles(name: str, fwd: str, ins: str, top: int = 12) -> None:
    f, i = op_profile(fwd), op_profile(ins)
    print(f"\n{name}: ms per run by op type (onnxruntime profile, kernel time)\n")
    print("| op | forward | instrumented |\n|---|---|---|")
    for op in list(dict.fromkeys([*i, *f]))[:top]:
        print(f"| {op} | {f.get(op, 0.0):.2f} | {i.get(op, 0.0):.2f} |")
    print(f"| all | {sum(f.values()):.2f} | {sum(i.values()):.2f} |\n", flush=True)
    pf, pi = part_profile(fwd), part_profile(ins)
    print("| part | forward | instrumented |\n|---|---|---|")
    for part in pf:
        print(f"| {part} | {pf[part]:.2f} | {pi[part]:.2f} |")
    print(flush=True)


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


def case(name: str, cache: Path) -> tuple[Path, tuple[int, ...], str]:
    """(model path, input shape at batch 1, layout) for a torchvision arch or a real export."""
    if name in real_exports.CASES:
        return real_exports.build(name, cache / "real")
    arch = exp.ARCHS[name]
    path = exp.export(name, "torchscript", cache, size=arch.bench_size)
    return path, exp.input_shape(name, arch.bench_size), arch.layout


def _instrument(path: Path, batch: int = 1, simplified: bool = True,
                skip: Iterable[str] = simplify.DEFAULT_SKIP) -> onnx.ModelProto:
    with simplify.switched(simplified, skip):
        return instrument(str(path), batch_size=batch)


def _feeds(in_name: str, shape: tuple[int, ...], layout: str, rows: int = 1
           ) -> dict[str, np.ndarray]:
    """One image repeated `rows` times, one random mask per row (a batch of masks for one
    image), one target per row."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(np.float32)
    mshape = (rows, *shape[1:3], 1) if layout == "NHWC" else (rows, 1, *shape[2:])
    return {in_name: np.repeat(x, rows, axis=0),
            "nm_mask": rng.uniform(0.5, 1.0, mshape).astype(np.float32),
            "nm_target": np.full(rows, 5, dtype=np.int64)}


def bench_one(name: str, cache: Path, reps: int, threads: int,
              profile_dir: Path | None = None, free: bool = False,
              forward_part: bool = False, ab: bool = False,
              simplified: bool = True, ab_skip: tuple[str, ...] = (),
              skip: Iterable[str] = simplify.DEFAULT_SKIP) -> dict[str, Any]:
    path, shape, layout = case(name, cache)
    t0 = time.perf_counter()
    model = _instrument(path, simplified=simplified, skip=skip)
    build_s = time.perf_counter() - t0
    prof = str(profile_dir / f"{name}_instrumented") if profile_dir else None
    fprof = str(profile_dir / f"{name}_forward") if profile_dir else None
    fwd = _session(str(path), threads, fprof)
    ins = _session(model.SerializeToString(), threads, prof)
    in_name = fwd.get_inputs()[0].name
    feeds_i = _feeds(in_name, shape, layout)
    feeds_f = {in_name: feeds_i[in_name]}
    tf: list[float] = []
    ti: list[float] = []
    tz: list[float] = []
    tp: list[float] = []
    ta: list[float] = []
    bypassed = 0
    if free:
        ablated, bypassed = free_factors(model)
        abl = _session(ablated.SerializeToString(), threads)
    if forward_part:
        part = _session(pruned(model, [PROBS]).SerializeToString(), threads)
    if ab:  # the same model with the other simplification setting, or minus passes ab_skip
        alt = (_instrument(path, simplified=True, skip={*skip, *ab_skip}) if ab_skip
               else _instrument(path, simplified=not simplified, skip=skip))
        other = _session(alt.SerializeToString(), threads)
    rounds = 5
    per_block = max(1, -(-reps // rounds))
    for _ in range(rounds):
        tf += _block(fwd, feeds_f, per_block)
        ti += _block(ins, feeds_i, per_block)
        if free:
            tz += _block(abl, feeds_i, per_block)
        if forward_part:
            tp += _block(part, feeds_i, per_block)
        if ab:
            ta += _block(other, feeds_i, per_block)
    if prof:
        profiles = (fwd.end_profiling(), ins.end_profiling())
    f_ms, i_ms = 1e3 * min(tf), 1e3 * min(ti)
    extra = {"free_ratio": 1e3 * min(tz) / f_ms, "bypassed": float(bypassed)} if free else {}
    if forward_part:
        extra["forward_part_ratio"] = 1e3 * min(tp) / f_ms
    if ab:
        extra["ab_ratio"] = 1e3 * min(ta) / f_ms
    return {**extra, "forward_ms": f_ms, "instrumented_ms": i_ms, "ratio": i_ms / f_ms,
            "forward_median_ms": 1e3 * statistics.median(tf),
            "instrumented_median_ms": 1e3 * statistics.median(ti),
            "build_s": build_s, "nodes": float(len(model.graph.node)), "size": shape[2],
            **({"profiles": profiles} if prof else {})}


def bench_rows(name: str, cache: Path, reps: int, threads: int, rows: list[int],
               simplified: bool = True) -> None:
    """Instrumented models at batch sizes `rows` (masks for one image), against the plain
    forward at batch 1, in alternating blocks; prints seconds per run and per row."""
    path, shape, layout = case(name, cache)
    fwd = _session(str(path), threads)
    in_name = fwd.get_inputs()[0].name
    sess = {r: _session(_instrument(path, r, simplified).SerializeToString(), threads)
            for r in rows}
    feeds = {r: _feeds(in_name, shape, layout, r) for r in rows}
    times: dict[int, list[float]] = {r: [] for r in [0, *rows]}
    rounds = 5
    per_block = max(1, -(-reps // rounds))
    for _ in range(rounds):
        times[0] += _block(fwd, {in_name: feeds[rows[0]][in_name][:1]}, per_block)
        for r in rows:
            times[r] += _block(sess[r], feeds[r], per_block)
    f = min(times[0])
    one = min(times[rows[0]]) / rows[0]
    print(f"{name}: forward (batch 1) {1e3 * f:.1f} ms (median {1e3 * statistics.median(times[0]):.1f})\n")
    print("| rows | ms per run | ms per row | per row / forward | per row / per row at "
          f"{rows[0]} | median ms per row |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        t = min(times[r])
        print(f"| {r} | {1e3 * t:.1f} | {1e3 * t / r:.1f} | {t / r / f:.2f} | "
              f"{t / r / one:.2f} | {1e3 * statistics.median(times[r]) / r:.1f} |", flush=True)


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
    p.add_argument("--real", action="store_true",
                   help=f"benchmark the real-export cases {list(real_exports.CASES)} "
                        "(tools/real_exports.py) instead of the default architectures")
    p.add_argument("--no-simplify", action="store_true",
                   help="instrument without the graph simplifications (neuromask_onnx.simplify)")
    p.add_argument("--ab", action="store_true",
                   help="also time the model instrumented with the other simplification "
                        "setting, in the same alternating blocks")
    p.add_argument("--all-passes", action="store_true",
                   help="simplify with every pass, also those off by default "
                        f"({sorted(simplify.DEFAULT_SKIP)})")
    p.add_argument("--ab-skip", action="append", default=[], choices=list(simplify.PASSES),
                   help="with --ab: the other model is simplified without this pass (repeatable)")
    p.add_argument("--rows", type=lambda v: [int(r) for r in v.split(",")], default=None,
                   help="instead: time instrumented models at these batch sizes, e.g. 1,2,4,8 "
                        "(a batch of masks for one image), per run and per row")
    args = p.parse_args(argv)
    names = args.names or (list(real_exports.CASES) if args.real else exp.BENCH_ARCHS)
    bad = [n for n in names if n not in exp.ARCHS and n not in real_exports.CASES]
    if bad:
        print(f"unknown architecture(s) {bad}; choose from "
              f"{list(exp.ARCHS) + list(real_exports.CASES)}", file=sys.stderr)
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
    simplified = not args.no_simplify
    if args.rows:
        for name in names:
            bench_rows(name, Path(args.cache), args.reps, args.threads, args.rows, simplified)
        return 0
    free, part, ab = args.free_factors, args.forward_part, args.ab
    other = "on" if args.no_simplify else "off"
    if args.ab_skip:
        other = "without " + "+".join(args.ab_skip)
    extra = " ratio, factors free (Muls removed) |" * free + " ratio, forward part |" * part
    extra += f" ratio, simplification {other} |" * ab
    passes = "every pass" if args.all_passes else f"without {sorted(simplify.DEFAULT_SKIP)}"
    print(f"simplification {'off' if args.no_simplify else 'on, ' + passes}\n")
    print("| model | size | forward ms | instrumented ms | ratio | median ratio | build s |"
          + extra)
    print("|---|---|---|---|---|---|---|" + "---|" * (free + part + ab))
    ratios = {}
    profiled: list[tuple[str, str, str]] = []
    for name in names:
        r = bench_one(name, Path(args.cache), args.reps, args.threads, prof, free, part, ab,
                      simplified, tuple(args.ab_skip),
                      () if args.all_passes else simplify.DEFAULT_SKIP)
        ratios[name] = r["ratio"]
        cell = f" {r['free_ratio']:.2f} ({r['bypassed']:.0f}) |" if free else ""
        cell += f" {r['forward_part_ratio']:.2f} |" if part else ""
        cell += f" {r['ab_ratio']:.2f} |" if ab else ""
        print(f"| {name} | {r['size']:.0f} | {r['forward_ms']:.1f} "
              f"({r['forward_median_ms']:.1f}) | {r['instrumented_ms']:.1f} "
              f"({r['instrumented_median_ms']:.1f}) | {r['ratio']:.2f} | "
              f"{r['instrumented_median_ms'] / r['forward_median_ms']:.2f} | "
              f"{r['build_s']:.1f} |{cell}", flush=True)
        if prof:
            profiled.append((name, *r["profiles"]))
    for name, f, i in profiled:
        print_profiles(name, f, i)
    print(f"\nmedian ratio over {len(ratios)} models: {statistics.median(ratios.values()):.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
