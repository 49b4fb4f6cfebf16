"""Vector-Jacobian rules: one function per ONNX op, emitting standard ONNX ops only.

The registry and its conventions are in `registry`; the rules live in one module per op
family (`elementwise`, `arith`, `linalg`, `shape`, `resize`, `pooling`, `nn`, `recurrent`,
`control`, `deform`, `spectral` for DFT, `quant` for quantized models, `contrib` for onnxruntime's
com.microsoft ops, `ml` for ONNX-ML), imported here so that importing this package registers
every rule.
"""

from __future__ import annotations

from . import (  # noqa: F401  (registers the rules)
    arith,
    contrib,
    control,
    deform,
    elementwise,
    indexing,
    linalg,
    loop,
    ml,
    nn,
    pooling,
    powers,
    quant,
    recurrent,
    resize,
    sampling,
    shape,
    spectral,
)
from .linalg import conv_pads, transpose_fit
from .pooling import pool_divisor
from .registry import (
    FUSED_RULES,
    INTEGER_GRAD_OPS,
    NONDIFF_OPERANDS,
    VJP_RULES,
    ZERO_GRAD_OPS,
    Grads,
    Needs,
    VjpRule,
    describe,
    elementwise_rule,
    rule_for,
    rule_key,
    supported_ops,
    vjp_rule,
)
from .shape import pad_source_index

__all__ = [
    "FUSED_RULES",
    "INTEGER_GRAD_OPS",
    "NONDIFF_OPERANDS",
    "VJP_RULES",
    "ZERO_GRAD_OPS",
    "Grads",
    "Needs",
    "VjpRule",
    "conv_pads",
    "describe",
    "elementwise_rule",
    "pad_source_index",
    "pool_divisor",
    "rule_for",
    "rule_key",
    "supported_ops",
    "transpose_fit",
    "vjp_rule",
]
