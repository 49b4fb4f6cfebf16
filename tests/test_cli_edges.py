"""The CLI's edges: one table of bad inputs (each one line, exit code 1, nothing written),
finite floats, limits checked before the work, generated config flags, progress totals,
and Ctrl-C (a real SIGINT to a subprocess)."""

from __future__ import annotations

import dataclasses
import os
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path
from typing import Literal

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from PIL import Image
from typer.testing import CliRunner

from neuromask_onnx import comparing, optimize, outputs, pipeline
from neuromask_onnx.cli import app
from neuromask_onnx.errors import Interrupted

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "models" / "region_cnn.onnx"
FAST = ["--quiet", "--preset", "reference-cifar", "--steps", "3", "--preprocess", "raw",
        "--scale", "0.00392"]
CFAST = ["--quiet", "--nm-steps", "2", "--curve-steps", "4", "--preprocess", "raw",
         "--methods", "saliency"]
runner = CliRunner()


def _png_header_only(path: Path, w: int, h: int) -> Path:
    """A PNG that claims w x h pixels (a decompression bomb's header) and holds no data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(
            ">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
                     + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))
    return path


def _two_inputs(path: Path) -> Path:
    a = helper.make_tensor_value_info("a", TensorProto.FLOAT, [1, 3, 32, 32])
    b = helper.make_tensor_value_info("b", TensorProto.FLOAT, [1, 3, 32, 32])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 3])
    nodes = [helper.make_node("Add", ["a", "b"], ["s"]),
             helper.make_node("ReduceMean", ["s"], ["logits"], axes=[2, 3], keepdims=0)]
    m = helper.make_model(helper.make_graph(nodes, "two", [a, b], [y]),
                          opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(m, str(path))
    return path


def _setup(tmp: Path) -> dict[str, Path]:
    rng = np.random.default_rng(0)
    photo = tmp / "photo.png"
    Image.fromarray((rng.uniform(0.5, 1.0, (40, 60, 3)) * 255).astype(np.uint8)).save(photo)
    nan = tmp / "nan.npy"
    bad = np.ones((3, 32, 32), np.float32)
    bad[0, 1, 2] = np.nan
    np.save(nan, bad)
    np.save(tmp / "nanmap.npy", np.full((32, 32), np.nan, np.float32))
    (tmp / "modeldir").mkdir()
    (tmp / "afile").write_text("x")
    return {"photo": photo, "nan": nan, "nanmap": tmp / "nanmap.npy",
            "bomb": _png_header_only(tmp / "bomb.png", 12000, 12000),
            "two": _two_inputs(tmp / "two.onnx"), "modeldir": tmp / "modeldir",
            "afile": tmp / "afile"}


# (command line with {placeholders}, text the one error line must contain)
BAD = [
    ("explain {model} {tmp}/nope.png", "does not exist"),
    ("explain {modeldir} {photo}", "is a directory"),
    ("explain {two} {photo} --input a", "other inputs ['b']"),
    ("explain {two} {photo}", "name the one to explain with --input"),
    ("explain {model} {nan}", "nan.npy' holds NaN"),
    ("explain {model} {photo} --target -1", "--target -1 is negative"),
    ("explain {model} {photo} --lr inf", "'inf' is not a finite number"),
    ("explain {model} {photo} --learning-rate nan", "'nan' is not a finite number"),
    ("explain {model} {photo} --temperature -inf", "not a finite number"),
    ("explain {model} {photo} --scale nan", "not a finite number"),
    ("explain {model} {photo} --mean 1,nan", "--mean takes comma-separated finite numbers"),
    ("explain {model} {bomb}", "12000 x 12000 = 144.0 megapixels"),
    ("explain {model} {photo} --max-pixels 100", "raise --max-pixels"),
    ("explain {model} {photo} -o {afile}/out", "is a file"),
    ("explain {model} {photo} -o /proc/self/nm-out", "not writable"),
    ("explain {model} {photo} --steps abc", "Invalid value for '--steps'"),
    ("explain {model} {photo} --steps 0", "steps must be at least 1"),
    ("explain {model} {photo} --top-k 0", "'--top-k'"),
    ("explain {model} {photo} --batch-size 0", "'--batch-size'"),
    ("explain {model} {photo} --provider tpu", "'--provider'"),
    ("explain {model} {photo} --baseline purple", "'--baseline'"),
    ("explain {model} {photo} --preset nope", "unknown preset"),
    ("explain {model} {photo} --resize squash", "'--resize'"),
    ("explain {model} {photo} --areas 0.1,nan", "'nan' is not a finite number"),
    ("explain {model} {photo} --areas 0.1,1.5", "areas must be a non-empty list"),
    ("explain {model} {photo} --substrates blur,purple", "'purple' is not one of"),
    ("explain {model} {photo} --gradient guess", "'--gradient'"),
    ("explain {model} {photo} --server-timeout inf", "not a finite number"),
    ("explain {model} {photo} --server grpc://127.0.0.1:1", "--server needs --served-model"),
    ("explain {model} {photo} --size 3", "--size takes H,W"),
    ("compare {model} {photo} --nm-learning-rate inf", "not a finite number"),
    ("compare {model} {photo} --nm-areas 0.1,inf", "not a finite number"),
    ("compare {model} {photo} --size 3", "--size takes H,W"),
    ("compare {model} {photo} --methods saliency,gradcam", "unknown method 'gradcam'"),
    ("compare {model} {photo} --target -1", "'--target'"),
    ("compare {model} {photo} --curve-steps 0", "'--curve-steps'"),
    ("compare {model} {bomb}", "megapixels"),
    ("compare {two} {photo} --input a", "other inputs ['b']"),
    ("compare {model} {photo} -o /proc/self/nm-out", "not writable"),
    ("evaluate {model} {photo} {nanmap}", "nanmap.npy' holds NaN"),
    ("evaluate {modeldir} {photo} {nanmap}", "is a directory"),
    ("instrument {modeldir} -o {out}/m.onnx", "is a directory"),
    ("instrument {model} -o /proc/self/m.onnx", "not writable"),
    ("instrument {model} --triton /proc/self/repo", "not writable"),
]


@pytest.mark.parametrize(("line", "text"), BAD, ids=[b[0].split(" {")[0] + ": " + b[1]
                                                     for b in BAD])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path: Path, line: str, text: str) -> None:
    paths = _setup(tmp_path)
    out = tmp_path / "out"
    if line.startswith("instrument"):
        out.mkdir()
    before = sorted(p.name for p in tmp_path.iterdir())
    fast = FAST if line.startswith("explain") else CFAST if line.startswith("compare") else []
    argv = [a.format(model=MODEL, tmp=tmp_path, out=out, **paths) for a in line.split()]
    if "-o" not in argv and "--triton" not in argv:
        argv += ["-o", str(out)]
    if argv[0] == "evaluate":
        argv = [*argv[:-2], "--curve-steps", "4"]
    res = runner.invoke(app, [argv[0], *fast, *argv[1:]])  # the case's flags win
    assert res.exit_code == 1, res.output
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("error: ")
    assert text in lines[0]
    assert "Traceback" not in res.output
    assert not out.exists() or not any(out.iterdir())
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_an_oserror_while_writing_is_one_line(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    photo = _setup(tmp_path)["photo"]
    real = outputs.atomic_write
    calls: list[Path] = []

    def full_disk(path: Path, data: bytes) -> None:
        calls.append(path)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        real(path, data)

    monkeypatch.setattr(outputs, "atomic_write", full_disk)
    out = tmp_path / "out"
    res = runner.invoke(app, ["explain", str(MODEL), str(photo), "-o", str(out), *FAST])
    assert res.exit_code == 1
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, res.stderr
    assert "No space left on device" in lines[0]
    assert "1 complete file(s) were written before it" in lines[0]
    assert not list(out.glob(".*tmp"))


def test_an_interrupt_while_writing_names_the_complete_files(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    from neuromask_onnx import entry

    photo = _setup(tmp_path)["photo"]
    real = outputs.atomic_write
    calls: list[Path] = []

    def interrupted(path: Path, data: bytes) -> None:
        calls.append(path)
        if len(calls) == 3:
            raise Interrupted
        real(path, data)

    monkeypatch.setattr(outputs, "atomic_write", interrupted)
    monkeypatch.setattr(sys, "argv", ["neuromask", "explain", str(MODEL), str(photo), "-o",
                                      str(tmp_path / "out"), *FAST])
    with pytest.raises(SystemExit) as done:
        entry.run()
    signal.signal(signal.SIGINT, signal.default_int_handler)
    assert done.value.code == 130
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1, err
    assert err[0].startswith("interrupted; these complete files remain: ")
    assert str(calls[0]) in err[0]
    assert str(calls[1]) in err[0]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        p.name for p in calls[:2])


def _loaded(pid: int, lib: str) -> bool:
    try:
        return lib in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/PID/maps")
@pytest.mark.parametrize("when", ["start-up", "work"])
def test_ctrl_c_is_one_line_exit_130_and_no_files(tmp_path: Path, when: str) -> None:
    """A real SIGINT: during the imports (numpy's extension is mapped, onnxruntime's is not
    yet), or while the optimisation runs (onnxruntime loaded, a long run)."""
    photo = _setup(tmp_path)["photo"]
    out = tmp_path / "out"
    argv = [sys.executable, "-m", "neuromask_onnx", "explain", str(MODEL), str(photo), "-o",
            str(out), *FAST, "--steps", "100000"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(argv, cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    lib = "_multiarray_umath" if when == "start-up" else "onnxruntime_pybind11_state"
    deadline = time.monotonic() + 60
    while not _loaded(proc.pid, lib) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    if when == "work":
        time.sleep(2.0)  # instrumenting the model, then optimisation steps
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert lines == ["interrupted; no files written"], stderr
    assert not out.exists() or not any(out.iterdir())
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["photo.png", "nan.npy", "nanmap.npy", "bomb.png", "two.onnx", "modeldir", "afile"]
        + (["out"] if out.exists() else []))


# --------------------------------------------------------------------------- generated flags


@dataclasses.dataclass(frozen=True)
class _WithKnob(optimize.NeuroMaskConfig):
    knob_width: float = 1.5
    """A field added only in this test."""
    knob_mode: Literal["soft", "hard"] = "soft"
    """Another one, a choice."""
    knob_on: bool = False
    """A switch."""
    knob_cap: float | None = None
    """An optional number."""


def test_a_new_config_field_is_a_new_flag(tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Add fields to NeuroMaskConfig (here: a subclass put in its place); with no other edit
    they are `explain` flags with their docstrings as help, and their values reach the config."""
    import typer.main

    monkeypatch.setattr(optimize, "NeuroMaskConfig", _WithKnob)
    monkeypatch.setitem(optimize.PRESETS, "default", _WithKnob(steps=7))
    cmd = typer.main.get_command(app).commands["explain"]  # type: ignore[attr-defined]
    opts = {o for p in cmd.params for o in p.opts}
    assert {"--knob-width", "--knob-mode", "--knob-on", "--knob-cap", "--steps", "--lr"} <= opts
    helptext = runner.invoke(app, ["explain", "--help"]).stdout
    assert "A field added only in this test." in helptext
    assert "soft|hard" in helptext

    seen: list[optimize.NeuroMaskConfig] = []

    def fake(*args: object, config: optimize.NeuroMaskConfig, **kwargs: object) -> object:
        seen.append(config)
        return pipeline.ExplainRun([], [], [])

    monkeypatch.setattr(pipeline, "explain_files", fake)
    photo = _setup(tmp_path)["photo"]
    res = runner.invoke(app, ["explain", str(MODEL), str(photo), "--quiet", "--knob-width",
                              "2.5", "--knob-mode", "hard", "--lr", "0.5", "--knob-on",
                              "--knob-cap", "3"])
    assert res.exit_code == 0, res.output
    assert seen[0] == _WithKnob(steps=7, knob_width=2.5, knob_mode="hard", learning_rate=0.5,
                                knob_on=True, knob_cap=3.0)
    res = runner.invoke(app, ["explain", str(MODEL), str(photo), "--knob-width", "inf"])
    assert res.exit_code == 1
    assert "not a finite number" in res.stderr
    cmp = typer.main.get_command(app).commands["compare"]  # type: ignore[attr-defined]
    assert "--nm-knob-width" in {o for p in cmp.params for o in p.opts}


def test_no_flags_is_the_default_config_and_tuple_fields_take_lists(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`explain` with no config flags runs `NeuroMaskConfig()`; the tuple fields (areas,
    substrates) are comma-separated flags on explain and, prefixed, on compare."""
    seen: list[tuple[optimize.NeuroMaskConfig, object]] = []

    def fake(*args: object, config: optimize.NeuroMaskConfig, **kwargs: object) -> object:
        seen.append((config, kwargs.get("set_fields")))
        return pipeline.ExplainRun([], [], [])

    monkeypatch.setattr(pipeline, "explain_files", fake)
    photo = _setup(tmp_path)["photo"]
    res = runner.invoke(app, ["explain", str(MODEL), str(photo), "--quiet"])
    assert res.exit_code == 0, res.output
    assert seen[-1] == (optimize.NeuroMaskConfig(), set())
    res = runner.invoke(app, ["explain", str(MODEL), str(photo), "--quiet", "--areas",
                              "0.1, 0.3", "--substrates", "mean", "--mask-cells", "7"])
    assert res.exit_code == 0, res.output
    assert seen[-1] == (optimize.NeuroMaskConfig(areas=(0.1, 0.3), substrates=("mean",),
                                                 mask_cells=7),
                        {"areas", "substrates", "mask_cells"})

    def fake_compare(*args: object, config: optimize.NeuroMaskConfig, **kw: object) -> object:
        seen.append((config, None))
        msg = "stop here"
        raise comparing.InputError(msg)

    monkeypatch.setattr(comparing, "compare_files", fake_compare)
    res = runner.invoke(app, ["compare", str(MODEL), str(photo), "--quiet", "--nm-areas",
                              "0.2", "--nm-steps", "3"])
    assert res.exit_code == 1
    assert seen[-1][0] == optimize.NeuroMaskConfig(areas=(0.2,), steps=3)


# --------------------------------------------------------------------------- progress


def test_progress_totals_are_known_from_the_first_call(tmp_path: Path) -> None:
    photo = _setup(tmp_path)["photo"]
    npy = tmp_path / "t.npy"
    np.save(npy, np.random.default_rng(1).uniform(0.5, 1, (3, 32, 32)).astype(np.float32))
    calls: list[tuple[int, int, str]] = []
    cfg = optimize.preset("reference-cifar").replace(steps=4)
    pipeline.explain_files(MODEL, [photo, npy], tmp_path / "e", config=cfg, preprocess="raw",
                           batch_size=1, progress=lambda d, t, w: calls.append((d, t, w)))
    assert calls[0][:2] == (0, 8)  # two inputs, batch 1: two chunks of 4 steps
    assert {t for _, t, _ in calls} == {8}
    assert calls[-1][0] == 8
    calls.clear()
    comparing.compare_files(MODEL, [photo, npy], tmp_path / "c", methods=["saliency", "occlusion"],
                           config=cfg, curve_steps=4, preprocess="raw",
                           progress=lambda d, t, w: calls.append((d, t, w)))
    assert calls[0][:2] == (0, 4)
    assert {t for _, t, _ in calls} == {4}
    assert [d for d, _, _ in calls] == sorted(d for d, _, _ in calls)
    assert calls[-1][0] == 4


def test_the_cli_pixel_limit_is_the_library_one() -> None:
    from neuromask_onnx import cli, preprocess

    assert cli._MAX_PIXELS == preprocess.MAX_PIXELS


def test_fast_version_path_says_what_the_cli_says() -> None:
    """`neuromask --version` answers before typer is imported; the text is the same."""
    done = subprocess.run([sys.executable, "-m", "neuromask_onnx", "--version"], cwd=ROOT,
                          capture_output=True, text=True, check=True)
    assert done.stdout == runner.invoke(app, ["--version"]).stdout


def test_an_interrupted_extension_import_is_an_interrupt(monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str],
                                                         ) -> None:
    """pybind11 modules (scipy's) turn an exception raised during their initialisation into
    ImportError("initialization failed") caused by it: a Ctrl-C there is still one line, 130."""
    from neuromask_onnx import cli, entry

    def interrupted_import() -> None:
        try:
            raise Interrupted
        except Interrupted as exc:
            msg = "initialization failed"
            raise ImportError(msg) from exc

    monkeypatch.setattr(signal, "signal", lambda *_: None)  # keep pytest's own handler
    monkeypatch.setattr(cli, "app", interrupted_import)
    monkeypatch.setattr(sys, "argv", ["neuromask", "explain"])
    with pytest.raises(SystemExit) as stop:
        entry.run()
    assert stop.value.code == 130
    assert capsys.readouterr().err == "interrupted; no files written\n"

    def broken_import() -> None:
        msg = "a real import error"
        raise ImportError(msg)

    monkeypatch.setattr(cli, "app", broken_import)
    with pytest.raises(ImportError, match="a real import error"):
        entry.run()


def test_demo_refuses_before_any_work(tmp_path: Path) -> None:
    """The demo's assets ship in models/demo; a missing one, or an output it would overwrite,
    is one line before the model is loaded (its full run is tests/test_install.py's)."""
    from neuromask_onnx import demo

    assert [p.name for p in demo.assets()] == ["efficientnet_lite0.onnx", "chelsea.png"]
    with pytest.raises(pipeline.InputError, match="ship in the source tree"):
        demo.run_demo(tmp_path / "o", root=tmp_path / "nowhere")
    out = tmp_path / "out"
    out.mkdir()
    (out / "report.html").write_text("mine")
    res = runner.invoke(app, ["demo", "-o", str(out), "--quiet"])
    assert res.exit_code == 1, res.output
    want = f"error: {str(out / 'report.html')!r} already exists; pass --force to overwrite"
    assert res.stderr.splitlines() == [want]
    assert sorted(p.name for p in out.iterdir()) == ["report.html"]
    assert (out / "report.html").read_text() == "mine"
