"""Export a torch.jit.script classifier with data-dependent control flow (If and Loop).

The net runs a tanh recurrence for `features // 2` steps (a Loop whose trip count comes from
the input's shape: known once the shape is pinned) and picks its head by the sign of the
hidden state's sum (an If on data); the else-branch also reads the input from the outer
scope. tests/test_control_flow.py checks d loss / d mask against torch autograd on both
branches.

    python tools/export_scripted.py OUT.onnx
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import torch
from torch import nn

FEATURES, HIDDEN, CLASSES = 6, 5, 3


class Branchy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(FEATURES, HIDDEN)
        self.rec = nn.Linear(HIDDEN, HIDDEN)
        self.pos = nn.Linear(HIDDEN, CLASSES)
        self.neg = nn.Linear(HIDDEN, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = self.inp(x)
        h = torch.tanh(u)
        for _ in range(x.size(1) // 2):
            h = torch.tanh(self.rec(h) + u)
        if bool(h.sum() > 0):
            return self.pos(h)
        return self.neg(torch.sigmoid(h)) + x[:, :3]  # CLASSES (script needs a literal)


def build(seed: int = 0) -> torch.jit.ScriptModule:
    torch.manual_seed(seed)
    with warnings.catch_warnings():  # torch.jit.script is deprecated; its export still works
        warnings.simplefilter("ignore", FutureWarning)
        return torch.jit.script(Branchy().eval())


def export(path: str | Path, net: torch.jit.ScriptModule | None = None, batch: int = 2) -> Path:
    path = Path(path)
    net = net if net is not None else build()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.randn(batch, FEATURES),), str(path), dynamo=False,
                          opset_version=17, input_names=["input"], output_names=["logits"])
    return path


if __name__ == "__main__":
    print(export(sys.argv[1] if len(sys.argv) > 1 else "scripted_control_flow.onnx"))
