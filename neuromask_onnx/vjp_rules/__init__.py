"""Vector-Jacobian rules: one function per ONNX op, emitting standard ONNX ops only.

The registry and its conventions are in `registry`; the rules live in one module per op
family (`elementwise`, `linalg`, `shape`, `pooling`, `nn`, `recurrent`, `control`), imported
here so that importing this package registers every rule.
"""

from __future__ import annotations

from . import control, elementwise, linalg, nn, pooling, recurrent, shape  # noqa: F401
from .linalg import conv_pads, transpose_fit
from .pooling import pool_divisor
from .registry import (
    FUSED_RULES,
    VJP_RULES,
    ZERO_GRAD_OPS,
    Grads,
    VjpRule,
    describe,
    elementwise_rule,
    supported_ops,
    vjp_rule,
)
from .shape import pad_source_index

__all__ = [
    "FUSED_RULES",
    "VJP_RULES",
    "ZERO_GRAD_OPS",
    "Grads",
    "VjpRule",
    "conv_pads",
    "describe",
    "elementwise_rule",
    "pad_source_index",
    "pool_divisor",
    "supported_ops",
    "transpose_fit",
    "vjp_rule",
]
