"""Subgraph bodies: finding them, the names they read from outside, copying them renamed.

The bottom of the control-flow modules (`control_flow` inlines and inspects, `unroll` unrolls
and rewrites Scans, the If and Loop rules copy bodies into the backward pass). A copy gets
fresh names (`nm_cf_...`, from a `Namer` over the graph's used names); its reads of outer-scope
values keep pointing at them, and nested subgraphs are renamed too.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .graphtypes import PREFIX

GRAPH_ATTRS = (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)


def subgraphs(node: onnx.NodeProto) -> list[tuple[str, onnx.GraphProto]]:
    """(attribute name, graph) for every subgraph attribute of `node`."""
    out = []
    for a in node.attribute:
        if a.type == onnx.AttributeProto.GRAPH:
            out.append((a.name, a.g))
        elif a.type == onnx.AttributeProto.GRAPHS:
            out.extend((f"{a.name}[{i}]", g) for i, g in enumerate(a.graphs))
    return out


def defined_names(graph: onnx.GraphProto) -> set[str]:
    names = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    names |= {t.name for t in graph.sparse_initializer if t.values.name}
    names |= {o for n in graph.node for o in n.output if o}
    return names


def free_reads(graph: onnx.GraphProto) -> list[str]:
    """Names `graph` (and its nested subgraphs) read from enclosing scopes, in order."""
    local = defined_names(graph)
    reads: list[str] = []
    for n in graph.node:
        reads.extend(i for i in n.input if i)
        for _, sub in subgraphs(n):
            reads.extend(free_reads(sub))
    reads.extend(o.name for o in graph.output)
    return [r for r in dict.fromkeys(reads) if r not in local]


class Namer:
    def __init__(self, used: set[str]) -> None:
        self.used = used
        self.next_suffix: dict[str, int] = {}  # per hint: unrolling stays linear in its size

    def fresh(self, hint: str) -> str:
        base = "".join(c if c.isalnum() or c in "_./:-" else "_" for c in f"{PREFIX}cf_{hint}")
        k = self.next_suffix.get(base, 0)
        name = f"{base}_{k}" if k else base
        while name in self.used:
            k += 1
            name = f"{base}_{k}"
        self.next_suffix[base] = k + 1
        self.used.add(name)
        return name


def rename_nested(graph: onnx.GraphProto, mapping: dict[str, str]) -> None:
    """Point a nested subgraph's outer-scope reads at the renamed values (in place)."""
    local = defined_names(graph)
    for n in graph.node:
        for k, i in enumerate(n.input):
            if i in mapping and i not in local:
                n.input[k] = mapping[i]
        for a in n.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                rename_nested(a.g, {k: v for k, v in mapping.items() if k not in local})
            elif a.type == onnx.AttributeProto.GRAPHS:
                for sub in a.graphs:
                    rename_nested(sub, {k: v for k, v in mapping.items() if k not in local})
    for o in graph.output:  # subgraph outputs bind to the parent's outputs by position
        if o.name in mapping and o.name not in local:
            o.name = mapping[o.name]


def copy_body(body: onnx.GraphProto, bound: dict[str, str], namer: Namer,
               consts: dict[str, np.ndarray], tag: str) -> tuple[list[onnx.NodeProto], list[str]]:
    """The body's nodes with fresh local names; `bound` maps its inputs to outer values.

    Returns the nodes and, per body output, the outer name holding its value.
    """
    mapping = dict(bound)
    for t in body.initializer:
        name = namer.fresh(f"{tag}_{t.name}")
        consts[name] = numpy_helper.to_array(t)
        mapping[t.name] = name
    out: list[onnx.NodeProto] = []
    for n in body.node:
        copy = onnx.NodeProto()
        copy.CopyFrom(n)
        for k, i in enumerate(copy.input):
            if i in mapping:
                copy.input[k] = mapping[i]
        for a in copy.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                rename_nested(a.g, mapping)
            elif a.type == onnx.AttributeProto.GRAPHS:
                for sub in a.graphs:
                    rename_nested(sub, mapping)
        for k, o in enumerate(copy.output):
            if o:
                mapping[o] = namer.fresh(f"{tag}_{o}")
                copy.output[k] = mapping[o]
        copy.name = namer.fresh(f"{tag}_{n.name or n.op_type}")
        out.append(copy)
    return out, [mapping.get(o.name, o.name) for o in body.output]


def const(consts: dict[str, np.ndarray], namer: Namer, value: Any, hint: str) -> str:
    name = namer.fresh(hint)
    consts[name] = np.asarray(value)
    return name


def identity(src: str, dst: str, namer: Namer) -> onnx.NodeProto:
    return helper.make_node("Identity", [src], [dst], name=namer.fresh("identity"))
