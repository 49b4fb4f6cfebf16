"""`neuromask ops`: which of a model's ops have rules, and which of them lie on the gradient path.

`op_report` counts every op type (inside subgraphs too) and traces the input-to-output path the
way `instrument` would (after constant Ifs are inlined and static Loops and Scans unrolled), so
a model's unsupported ops are listed before anything is built. `rewrite` re-exports it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import onnx

from .contract import pick_input, pick_output, resolve_shape
from .control_flow import nested_path_nodes, walk_subgraphs
from .errors import InputError, ModelContractError
from .graph import input_dims, load_model, prepare
from .lower import LOWERED
from .reverse import marked_values, path_nodes, unsupported_paths
from .vjp_rules import VJP_RULES, ZERO_GRAD_OPS
from .vjp_rules.registry import NO_GRADIENT_OPS

ESTIMATED = "no gradient exists; the mask gradient will be estimated"
EXPANDED = "its ONNX function body (the body's ops have rules)"


@dataclass(frozen=True)
class OpStatus:
    """One op type of a model: how many nodes, how many on the input-to-output path."""

    op_type: str
    count: int  # nodes of this type, inside subgraphs too
    on_path: int | None  # None when the path could not be traced (dynamic shapes)
    status: str  # "rule", "no gradient", "unsupported"
    where: tuple[str, ...] = ()  # unsupported nodes on the path: "If 'x' / then_branch / Op 'y'"


def _op_key(n: onnx.NodeProto) -> str:
    return n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}::{n.op_type}"


def op_report(model: onnx.ModelProto | str | Path, *, input_name: str | None = None,
              output_name: str | None = None,
              input_shape: Sequence[int] | None = None) -> list[OpStatus]:
    """Which of the model's ops have rules, and which of them lie on the gradient path.

    Nodes inside subgraphs (If branches, Loop and Scan bodies) count as well; the path is
    traced after constant Ifs are inlined and static Loops and Scans unrolled, and through
    the subgraphs of the control-flow nodes that remain.
    """
    m = load_model(model)
    full = Counter(_op_key(n) for n in m.graph.node)
    full.update(_op_key(n) for _, n in walk_subgraphs(m.graph.node))
    path: Counter[str] | None = None
    where: dict[str, list[str]] = {}
    expanded: set[str] = set()
    try:
        x = pick_input(m, input_name).name
        out = pick_output(m, output_name)
        dims = input_dims(m, x)
        batch = dims[0] if dims and isinstance(dims[0], int) and dims[0] > 0 else 1
        g = prepare(m, {x: resolve_shape(dims, batch, input_shape, x)})
        expanded = g.expanded
        on_path = path_nodes(g.nodes, [x], [out], g)
        marked = marked_values(g.nodes, [x], g)
        path = Counter(_op_key(n) for n in on_path)
        for node in on_path:
            path.update(_op_key(n) for _, n in nested_path_nodes(node, marked, ZERO_GRAD_OPS))
        for k in path:  # opset conversion may rename ops (Upsample -> Resize)
            full.setdefault(k, path[k])
        for w, n in unsupported_paths(on_path, marked):
            where.setdefault(_op_key(n), []).append(
                f"{w} / {n.op_type} {n.name!r}" if w else f"{n.op_type} {n.name!r}")
    except (ModelContractError, InputError):
        path = None
    rows = []
    for op_type, count in sorted(full.items()):
        status = ("rule" if op_type in VJP_RULES else
                  "no gradient" if op_type in ZERO_GRAD_OPS else
                  ESTIMATED if op_type in NO_GRADIENT_OPS else
                  EXPANDED if op_type in expanded else
                  "output only (the probabilities it maps are explained)"
                  if op_type == "ai.onnx.ml::ZipMap" else LOWERED.get(op_type, "unsupported"))
        rows.append(OpStatus(op_type, count, None if path is None else path.get(op_type, 0),
                             status, tuple(where.get(op_type, ()))))
    return rows
