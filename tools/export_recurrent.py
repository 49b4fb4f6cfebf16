"""Export small recurrent classifiers (LSTM, GRU, RNN) with torch.onnx, for the gradient tests.

Each net reads a sequence [N, T, C] (batch first, as the NTC default layout expects), runs a
1- or 2-layer recurrent block (optionally bidirectional; `batch_first=False` nets transpose
inside), and classifies its last time step with a Linear head. The TorchScript exporter writes
opset-17 LSTM / GRU / RNN nodes (torch.onnx's own gate reordering, initial states as
constants); tests/test_recurrent_models.py checks d loss / d mask against torch autograd.

    python tools/export_recurrent.py OUT_DIR     # writes every ARCHS entry as OUT_DIR/<name>.onnx
"""

from __future__ import annotations

import contextlib
import io
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

SEQ, FEATURES, HIDDEN, CLASSES = 6, 4, 5, 3


@dataclass(frozen=True)
class Arch:
    cell: str  # "LSTM", "GRU" or "RNN"
    layers: int = 1
    bidirectional: bool = False
    batch_first: bool = True
    nonlinearity: str = "tanh"  # RNN only


ARCHS = {
    "lstm": Arch("LSTM"),
    "lstm_2layer_bidir": Arch("LSTM", layers=2, bidirectional=True),
    "lstm_seq_first": Arch("LSTM", batch_first=False),
    "gru": Arch("GRU"),
    "gru_2layer_bidir_seq_first": Arch("GRU", layers=2, bidirectional=True, batch_first=False),
    "rnn_tanh_bidir": Arch("RNN", bidirectional=True),
    "rnn_relu_2layer": Arch("RNN", layers=2, nonlinearity="relu"),
}


class SequenceClassifier(nn.Module):
    def __init__(self, arch: Arch) -> None:
        super().__init__()
        self.batch_first = arch.batch_first
        kw = {"nonlinearity": arch.nonlinearity} if arch.cell == "RNN" else {}
        cls = {"LSTM": nn.LSTM, "GRU": nn.GRU, "RNN": nn.RNN}[arch.cell]
        self.rnn = cls(FEATURES, HIDDEN, num_layers=arch.layers, bidirectional=arch.bidirectional,
                       batch_first=arch.batch_first, **kw)
        self.head = nn.Linear(HIDDEN * (2 if arch.bidirectional else 1), CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.batch_first:
            x = x.transpose(0, 1)
        y, _ = self.rnn(x)
        last = y[:, -1] if self.batch_first else y[-1]
        return self.head(last)


def build(name: str, seed: int = 0) -> SequenceClassifier:
    torch.manual_seed(seed)
    return SequenceClassifier(ARCHS[name]).eval()


def export(name: str, out_dir: str | Path, net: nn.Module | None = None, batch: int = 2) -> Path:
    """Export `name` (TorchScript exporter, opset 17) into `out_dir`; return the file."""
    out = Path(out_dir) / f"{name}.onnx"
    out.parent.mkdir(parents=True, exist_ok=True)
    net = net if net is not None else build(name)
    x = torch.randn(batch, SEQ, FEATURES)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (x,), str(out), dynamo=False, opset_version=17,
                          input_names=["input"], output_names=["logits"])
    return out


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "recurrent_models")
    for arch in ARCHS:
        print(export(arch, target))
