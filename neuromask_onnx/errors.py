"""Every error a user can cause derives from `NeuromaskError`.

The CLI catches this one base class and prints its message as a single line; any other
exception escaping is a bug in neuromask-onnx and keeps its traceback. Messages say what
failed, where, and how to fix it.
"""

from __future__ import annotations


class NeuromaskError(Exception):
    """Base class of the errors caused by the user's model, input or flags."""


class UnsupportedOpError(NeuromaskError):
    """A value that depends on the mask reaches an op that has no VJP rule."""

    def __init__(self, op_type: str, node_name: str, domain: str = "", detail: str = "",
                 path: str = "") -> None:
        self.op_type = op_type
        self.node_name = node_name
        self.path = path  # where a node inside a subgraph sits: "If 'x' / then_branch"
        where = f"{domain}::{op_type}" if domain and domain != "ai.onnx" else op_type
        what = f"has an unsupported form ({detail})" if detail else "has no gradient rule"
        at = f"at {path} / {op_type} {node_name!r}" if path else f"node {node_name!r}"
        msg = (
            f"op {where} ({at}) is on the path from the input to the output "
            f"but {what}; run `neuromask ops MODEL.onnx` to list the model's supported and "
            "unsupported ops"
        )
        super().__init__(msg)


class ModelContractError(NeuromaskError):
    """The model is not something we can explain as asked (inputs, outputs, layout...)."""


class InputError(NeuromaskError):
    """A user-supplied file, array or flag is wrong."""


class ConvergenceWarning(UserWarning):
    """The mask optimisation finished but its result should not be trusted."""


class Interrupted(BaseException):
    """Ctrl-C (SIGINT), raised by the CLI's signal handler. A BaseException, so no
    `except Exception` on the way swallows it; writers add the complete files they had
    already put in place to `written`, and the CLI says which remain."""

    def __init__(self) -> None:
        super().__init__("interrupted")
        self.written: list[str] = []
