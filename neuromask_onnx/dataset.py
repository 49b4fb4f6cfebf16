"""NeuroMask over a whole dataset on Ray Data: `neuromask explain-dataset MODEL SOURCE -o OUT`.

SOURCE is a directory (its image and .npy files), a text file list (one path a line, relative
to the list's directory) or a Parquet/CSV manifest (column `input`, optional `target`).
The driver plans one row per input (its output stem, unique within OUT), skips the rows whose
outputs are complete (resumable: `<stem>.json` exists and every file it lists), and sends the
rest through `Dataset.map_batches(Explainer, compute=ActorPoolStrategy(size=N))`: each actor
holds one `NeuroMask` (one onnxruntime session per batch shape, one intra-op thread) and
writes the same per-input files as `neuromask explain` (`outputs.write`, atomic). A bad input
becomes a row with status `error: ...`, never a failed job. The driver counts rows as they
come back (progress) and writes `summary.parquet` and `summary.csv` last: input, stem,
status, target, label, prob_before, prob_after, top5 (JSON), the final losses, steps, seconds.

Without `address` a local Ray starts and stops: `num_cpus` workers, an explicit object store
size (Ray's default, 30 % of RAM on /dev/shm, fails where /dev/shm is small), node address
127.0.0.1, no dashboard. With `address` the job joins that cluster; the model goes to the
actors as bytes, but inputs and OUT must be on a filesystem every node sees.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError, NeuromaskError
from .files import atomic_write
from .preprocess import IMAGE_SUFFIXES, TENSOR_SUFFIXES, Preprocessing

COLUMNS = ["input", "stem", "status", "target", "label", "prob_before", "prob_after", "top5",
           "loss_total", "loss_pred", "loss_sparse", "loss_smooth", "steps", "seconds"]


def read_source(source: str | Path) -> list[tuple[str, str | None]]:
    """(input path, target or None) per row of a directory, a file list or a manifest."""
    src = Path(source)
    if src.is_dir():
        files = sorted(f for f in src.rglob("*") if f.is_file() and not f.name.startswith(".")
                       and f.suffix.lower() in IMAGE_SUFFIXES | TENSOR_SUFFIXES)
        if not files:
            msg = f"directory {str(src)!r} has no image or .npy files"
            raise InputError(msg)
        return [(str(f), None) for f in files]
    if not src.is_file():
        msg = f"source {str(src)!r} does not exist; give a directory, a file list or a manifest"
        raise InputError(msg)
    suffix = src.suffix.lower()
    if suffix in (".parquet", ".csv"):
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            table = pq.read_table(src).to_pylist()
        else:
            with src.open(newline="", encoding="utf-8") as f:
                table = list(csv.DictReader(f))
        if not table or "input" not in table[0]:
            msg = f"manifest {str(src)!r} needs an 'input' column (and optionally 'target')"
            raise InputError(msg)
        rows = [(str(r["input"]), None if r.get("target") in (None, "") else str(r["target"]))
                for r in table]
    else:
        lines = src.read_text(encoding="utf-8").splitlines()
        rows = [(ln.strip(), None) for ln in lines if ln.strip() and not ln.startswith("#")]
    return [(p if Path(p).is_absolute() else str(src.parent / p), t) for p, t in rows]


def plan_rows(rows: Sequence[tuple[str, str | None]]) -> list[dict[str, Any]]:
    """One row per input with a unique output stem (name-1, name-2 for repeated names)."""
    seen: dict[str, int] = {}
    out = []
    for path, target in rows:
        stem = Path(path).stem
        if stem in seen:
            seen[stem] += 1
            stem = f"{stem}-{seen[stem]}"
        else:
            seen[stem] = 0
        out.append({"input": path, "stem": stem, "target": target or ""})
    return out


def finished(out: Path, stem: str) -> dict[str, Any] | None:
    """The summary row of a complete earlier output, or None (missing or partial)."""
    path = out / f"{stem}.json"
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not all((out / name).exists() for name in doc.get("files", {}).values()):
        return None
    return {"status": "ok (earlier run)", **_summary(doc)}


def _summary(doc: dict[str, Any]) -> dict[str, Any]:
    losses = doc.get("final_losses", {})
    return {"target": str(doc["target"]["index"]), "label": doc["target"]["label"] or "",
            "prob_before": doc["prob_before"], "prob_after": doc["prob_after"],
            "top5": json.dumps(doc["top5"]), "steps": doc["steps"],
            "seconds": float(doc["seconds"].get("optimize", 0.0)),
            **{f"loss_{k}": float(losses.get(k, np.nan))
               for k in ("total", "pred", "sparse", "smooth")}}


class Explainer:
    """A Ray Data actor: one NeuroMask, explaining a batch of rows into OUT."""

    def __init__(self, model: bytes, out: str, config: dict[str, Any],
                 preprocessing: dict[str, Any], labels: list[str] | None,
                 batch_size: int, threads: int = 1) -> None:
        import onnx

        from .contract import describe_input
        from .explain import NeuroMask
        from .optimize import NeuroMaskConfig

        proto = onnx.load_from_string(model)
        self.nm = NeuroMask(proto, NeuroMaskConfig(**config), provider="cpu",
                            batch_size=batch_size, labels=labels, threads=threads)
        for key in ("size", "mean", "std"):
            if preprocessing.get(key) is not None:
                preprocessing[key] = tuple(preprocessing[key])
        self.prep = Preprocessing(**preprocessing)
        self.spec = describe_input(proto, self.nm.input_name)
        self.out = Path(out)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import warnings

        from . import outputs
        from .errors import ConvergenceWarning
        from .preprocess import load_inputs

        rows = [{k: str(batch[k][i]) for k in ("input", "stem", "target")}
                for i in range(len(batch["input"]))]
        results: list[dict[str, Any]] = [{} for _ in rows]
        good, loaded, targets = [], [], []
        for i, row in enumerate(rows):
            try:
                (inp,) = load_inputs([row["input"]], self.spec, self.prep)
                t = self.nm.class_index(row["target"]) if row["target"] else None
            except (NeuromaskError, OSError, ValueError) as exc:
                results[i] = {"status": f"error: {exc}"}
                continue
            good.append(i)
            loaded.append(inp)
            targets.append(t)
        shapes = {x.tensor.shape for x in loaded}
        groups = [[j for j, x in enumerate(loaded) if x.tensor.shape == s] for s in shapes]
        for group in groups:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", ConvergenceWarning)
                    exs = self.nm.explain_many([loaded[j].tensor for j in group],
                                               [targets[j] for j in group])
                for j, (ex,) in zip(group, exs, strict=True):
                    i, inp = good[j], loaded[j]
                    named = type(inp)(inp.path, rows[i]["stem"], inp.tensor, inp.image,
                                      inp.geometry, inp.record)
                    planned = outputs.plan(self.out, [(named, ex.target, False)],
                                           len(self.nm.mask_axes), force=True)
                    outputs.write(self.out, planned, [(named, ex)], None, force=True)
                    doc = json.loads(planned[0].paths["json"].read_text())
                    results[i] = {"status": "ok", **_summary(doc)}
            except NeuromaskError as exc:
                for j in group:
                    results[good[j]] = {"status": f"error: {exc}"}
        return _columns([{**row, **res} for row, res in zip(rows, results, strict=True)])


def _columns(rows: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    floats = ("prob_before", "prob_after", "loss_total", "loss_pred", "loss_sparse",
              "loss_smooth", "seconds")
    cols: dict[str, np.ndarray] = {}
    for c in COLUMNS:
        if c in floats:
            cols[c] = np.array([float(r.get(c, np.nan)) for r in rows], np.float64)
        elif c == "steps":
            cols[c] = np.array([int(r.get(c, 0)) for r in rows], np.int64)
        else:
            cols[c] = np.array([str(r.get(c, "")) for r in rows], object)
    return cols


def write_summary(out: Path, rows: list[dict[str, Any]]) -> tuple[Path, Path]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    cols = _columns(rows)
    table = pa.table({c: pa.array(list(v)) for c, v in cols.items()})
    buf = pa.BufferOutputStream()
    pq.write_table(table, buf)
    pq_path, csv_path = out / "summary.parquet", out / "summary.csv"
    atomic_write(pq_path, buf.getvalue().to_pybytes())
    text = io.StringIO()
    w = csv.DictWriter(text, fieldnames=COLUMNS, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({c: r.get(c, "") for c in COLUMNS})
    atomic_write(csv_path, text.getvalue().encode())
    return pq_path, csv_path


def explain_dataset(model: str | Path, source: str | Path, out: str | Path, *,
                    config: Any = None, preprocessing: Preprocessing | None = None,
                    labels: Sequence[str] | None = None, address: str | None = None,
                    num_cpus: int = 2, actors: int | None = None, batch_size: int = 8,
                    object_store_mb: int = 256,
                    progress: Callable[[int, int], None] | None = None,
                    ) -> list[dict[str, Any]]:
    """Explain every input of SOURCE into OUT on Ray; returns the summary rows."""
    from .contract import describe_input
    from .graph import load_model
    from .optimize import NeuroMaskConfig
    from .preprocess import model_labels, resolve_preprocessing

    try:
        import ray
        import ray.data
    except ImportError:
        msg = "explain-dataset runs on Ray; pip install 'neuromask-onnx[ray]'"
        raise InputError(msg) from None
    out = Path(out)
    if out.exists() and not out.is_dir():
        msg = f"output {str(out)!r} exists and is not a directory; pick another with -o"
        raise InputError(msg)
    proto = load_model(model)
    describe_input(proto)  # the model's input errors surface before Ray starts
    prep = preprocessing or resolve_preprocessing(None, proto)
    names = list(labels) if labels is not None else model_labels(proto)
    cfg = config or NeuroMaskConfig()
    rows = plan_rows(read_source(source))
    out.mkdir(parents=True, exist_ok=True)
    done: dict[int, dict[str, Any]] = {}
    for i, row in enumerate(rows):
        prev = finished(out, row["stem"])
        if prev is not None:
            done[i] = {**row, **prev}
    todo = [r for i, r in enumerate(rows) if i not in done]
    if progress is not None:
        progress(len(done), len(rows))
    results: dict[str, dict[str, Any]] = {}
    if todo:
        started = False
        if not ray.is_initialized():
            if address is None:
                ray.init(num_cpus=num_cpus, object_store_memory=object_store_mb << 20,
                         include_dashboard=False, _node_ip_address="127.0.0.1",
                         log_to_driver=False, configure_logging=False)
            else:
                ray.init(address=address, log_to_driver=False)
            started = True
        try:
            ctx = ray.data.DataContext.get_current()
            ctx.enable_progress_bars = False
            size = actors or max(1, min(num_cpus, len(todo)))
            ds = ray.data.from_items(todo).map_batches(
                Explainer, batch_size=batch_size, batch_format="numpy", num_cpus=1,
                compute=ray.data.ActorPoolStrategy(size=size),
                fn_constructor_kwargs={
                    "model": proto.SerializeToString(), "out": str(out.resolve()),
                    "config": cfg.to_dict(), "preprocessing": asdict(prep),
                    "labels": names, "batch_size": batch_size})
            for r in ds.iter_rows():
                results[str(r["stem"])] = dict(r)
                if progress is not None:
                    progress(len(done) + len(results), len(rows))
        finally:
            if started:
                ray.shutdown()
    summary = [done[i] if i in done else {**row, **results.get(row["stem"], {
        "status": "error: no result came back"})} for i, row in enumerate(rows)]
    write_summary(out, summary)
    return summary

