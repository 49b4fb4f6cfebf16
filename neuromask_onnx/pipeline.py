"""What `neuromask explain` does, as one library call (`compare` and `evaluate`: `comparing`).

Every check that can fail runs before the first optimisation step: flags, the model and its
inputs, the targets, whether the output directory can be written. Files are rendered in memory
and written together at the end (`outputs.write_all`), so an error or a Ctrl-C during the work
leaves no file behind. `progress(done, total, what)` is called with a total known before the
work starts (explain: optimisation steps; compare: methods x inputs; evaluate: its stages).
Library code never prints: the CLI turns `progress` into a bar.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from . import outputs
from .contract import InputSpec, check_gradient, describe_input
from .errors import ConvergenceWarning, InputError, ModelContractError
from .explain import Explanation, NeuroMask
from .explain import Progress as StepProgress
from .graph import graph_inputs, load_model
from .optimize import NeuroMaskConfig
from .preprocess import (
    MAX_PIXELS,
    LoadedInput,
    load_inputs,
    model_labels,
    resolve_preprocessing,
)

Progress = Callable[[int, int, str], None]
"""progress(done, total, what): `total` is the same from the first call to the last."""

def noop(done: int, total: int, what: str) -> None:
    return None


def parse_targets(texts: Sequence[str] | None) -> list[int | str] | None:
    """`--target` values: class indices (digits) or labels; negative indices are refused."""
    if not texts:
        return None
    out: list[int | str] = []
    for t in texts:
        if re.fullmatch(r"[+-]?\d+", t.strip()):
            if int(t) < 0:
                msg = f"--target {t} is negative; class indices start at 0 (or give a label)"
                raise InputError(msg)
            out.append(int(t))
        else:
            out.append(t)
    return out


def explained_input(model: onnx.ModelProto, input_name: str | None,
                    layout: str | None) -> InputSpec:
    """The input to explain; every other model input would need values we do not have."""
    spec = describe_input(model, input_name, layout)
    others = [v.name for v in graph_inputs(model) if v.name != spec.name]
    if others:
        msg = (f"the model has other inputs {others} besides {spec.name!r}; explaining needs "
               "a model with one input (fix the others to constants, e.g. with onnx-graphsurgeon)")
        raise ModelContractError(msg)
    return spec


def read_labels(path: Path | None) -> list[str] | None:
    if path is None:
        return None
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        msg = f"cannot read labels file {str(path)!r} ({type(exc).__name__}); one label a line"
        raise InputError(msg) from None
    return [ln.strip() for ln in lines if ln.strip()]


# --------------------------------------------------------------------------- explain


@dataclass
class ExplainRun:
    items: list[tuple[LoadedInput, Explanation]]
    stems: list[str]
    written: list[Path]
    warnings: list[str] = field(default_factory=list)
    """ConvergenceWarnings of the optimisation."""
    label_checks: list[str] = field(default_factory=list)
    """Where a model's label output disagrees with its top-1 probability (always shown)."""
    notes: list[str] = field(default_factory=list)
    """Informational lines (how the gradient is computed), shown unless --quiet."""
    layout: str = ""
    feature_names: list[str] | None = None


def _tabular(config: NeuroMaskConfig, spec: InputSpec, layout: str | None,
             set_fields: Collection[str]) -> NeuroMaskConfig:
    """A tabular input [N, F] gets no feature grouping and no Laplacian, unless the user set
    those fields."""
    if len(spec.dims) != 2 or layout is not None:
        return config
    changes: dict[str, Any] = {}
    if "mask_scale" not in set_fields:
        changes.update(mask_scale=1, mask_cells=0)
    if "smooth_weight" not in set_fields:
        changes["smooth_weight"] = 0.0
    return config.replace(**changes)


def step_total(nm: Any, loaded: Sequence[LoadedInput], per_input: Sequence[Sequence[int]],
               config: NeuroMaskConfig) -> int:
    """Optimisation steps `nm.explain_many` will report, known before it starts: per input
    shape, its chunks of jobs times the steps."""
    jobs: dict[tuple[int, ...], int] = {}
    for inp, ts in zip(loaded, per_input, strict=True):
        shape = tuple(inp.tensor.shape)
        jobs[shape] = jobs.get(shape, 0) + len(ts) * config.restarts
    total = 0
    for n in jobs.values():
        size = nm.fixed_batch or min(nm.batch_size, n)
        total += -(-n // max(size, 1)) * config.steps
    return total


def explain_files(model: Path, inputs: Sequence[Path] | None, out: Path, *,
                  config: NeuroMaskConfig, set_fields: Collection[str] = (),
                  preprocess: str | None = None, prep_changes: Mapping[str, Any] | None = None,
                  labels: Path | None = None, targets: Sequence[int | str] | None = None,
                  top_k: int | None = None, input_name: str | None = None,
                  output_name: str | None = None, output_kind: str = "auto",
                  layout: str | None = None, provider: str = "auto", batch_size: int = 8,
                  threads: int | None = None, force: bool = False,
                  max_pixels: int = MAX_PIXELS, score: bool = False, gradient: str = "auto",
                  feature_names: Path | None = None, server: str | None = None,
                  served_model: str | None = None, server_timeout: float = 30.0,
                  progress: Progress = noop) -> ExplainRun:
    """Learn a mask per input and target; write mask, PNGs and JSON into `out`.

    `set_fields`: the config fields the user gave (a tabular input otherwise gets
    mask_scale 1 and no smoothness). With `server`, the model runs on that KServe-V2 server
    and `model` is the first input.
    """
    from . import onnxml
    from .estimate import record as gradient_record

    check_gradient(gradient, "--gradient")
    if top_k is not None and top_k < 1:
        msg = f"--top-k must be at least 1, got {top_k}"
        raise InputError(msg)
    outputs.check_writable(out)
    proto: onnx.ModelProto | None = None
    if server is None:
        if not inputs:
            msg = "missing argument INPUT...: give the images or tensors to explain"
            raise InputError(msg)
        proto = load_model(model)
        base, names, spec = (resolve_preprocessing(preprocess, proto), model_labels(proto),
                             explained_input(proto, input_name, layout))
    else:  # the model runs on the server; MODEL is the first input
        from .remote import remote_model

        served = remote_model(server, served_model, server_timeout)
        inputs = [model, *(inputs or [])]
        base, names, spec = (served.preprocessing(preprocess), served.labels(),
                             served.spec(layout))
    prep = base.replace(**(prep_changes or {}))
    names = read_labels(labels) or names or (onnxml.class_labels(proto) if proto is not None
                                              else None)
    loaded = load_inputs(inputs, spec, prep, max_pixels)
    config = _tabular(config, spec, layout, set_fields)
    notes: list[str] = []
    fnames = None
    nm: Any
    if proto is not None:
        nm = NeuroMask(proto, config, input_name=spec.name, output_name=output_name,
                       output_kind=output_kind, layout=layout, provider=provider,  # type: ignore[arg-type]
                       batch_size=batch_size, labels=names, threads=threads,
                       input_shape=loaded[0].tensor.shape if loaded else None,
                       gradient=gradient)
        if nm.gradient_note:
            notes.append(nm.gradient_note)
        fnames = read_labels(feature_names) if feature_names else onnxml.feature_names(proto)
        if fnames is not None and nm.layout == "NF" and len(fnames) != spec.dims[-1]:
            msg = (f"{len(fnames)} feature names for {spec.dims[-1]} features; give one "
                   "name a line in --feature-names")
            raise InputError(msg)
    else:
        from .remote import RemoteNeuroMask

        nm = RemoteNeuroMask(served, config, batch_size=batch_size, labels=names)
    wanted = [nm.class_index(t) for t in targets] if targets else None
    top1_notes: list[str] = []
    labelled = proto is not None and onnxml.label_output(proto) is not None
    if wanted is None or labelled:
        tensors = [x.tensor for x in loaded]
        probs = nm.predict(tensors)  # shapes may differ (dynamic dims)
        if proto is not None and labelled and len({t.shape for t in tensors}) == 1:
            top1_notes = onnxml.top1_disagreements(proto, spec.name, np.stack(tensors), probs)
    if wanted is None:
        order = np.argsort(-probs, axis=1, kind="stable")[:, : top_k or 1]
        per_input = [[int(c) for c in row] for row in order]
    else:
        per_input = [list(dict.fromkeys(wanted)) for _ in loaded]
    items = [(inp, t, len(ts) > 1) for inp, ts in zip(loaded, per_input, strict=True)
             for t in ts]
    planned = outputs.plan(out, items, len(nm.mask_axes), force, layout=nm.layout)
    total = step_total(nm, loaded, per_input, config)
    progress(0, total, "explaining")
    base_done, prev = 0, (0, 0, 0)

    def show(p: StepProgress) -> None:
        nonlocal base_done, prev
        key = (p.chunk, p.step, p.chunks)
        if (p.chunk, p.step) < prev[:2]:  # the next input shape: its chunks start again
            base_done += prev[2] * p.steps
        prev = key
        done = min(base_done + (p.chunk - 1) * p.steps + p.step, total)
        progress(done, total, f"batch {p.chunk}/{p.chunks}")

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        results = nm.explain_many([x.tensor for x in loaded], per_input, callback=show)
    flat = [(inp, ex) for inp, row in zip(loaded, results, strict=True) for ex in row]
    if score:
        flat = scored(nm, flat)
    progress(total, total, "writing")
    written = outputs.write(out, planned, flat, model if server is None else None, force,
                            feature_names=fnames,
                            gradient=gradient_record(list(nm._runners.values()),
                                                     getattr(nm, "gradient", "exact")))
    converge = [str(w.message) for w in caught if issubclass(w.category, ConvergenceWarning)]
    return ExplainRun(flat, [p.stem for p in planned], written, converge, top1_notes, notes,
                      nm.layout, fnames)


def scored(nm: Any, flat: list[tuple[LoadedInput, Explanation]],
           ) -> list[tuple[LoadedInput, Explanation]]:
    """`explain --score`: each map's own deletion / insertion AUCs (metrics.self_check) on
    the same model, put into its Explanation (and so into the JSON and the table)."""
    import dataclasses

    from .baselines import Classifier
    from .metrics import self_check

    clf = Classifier(nm.model, input_name=nm.input_name, layout=nm.layout,
                     mask_axes=list(nm.mask_axes), provider="cpu", batch_size=16,
                     threads=nm.threads)
    return [(inp, dataclasses.replace(ex, scores=self_check(clf, inp.tensor, ex.target,
                                                            ex.mask)))
            for inp, ex in flat]
