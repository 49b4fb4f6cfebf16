"""localserver: `stop` ends a process (SIGKILL when SIGTERM is ignored), and `serving` waits
for the readiness answer, fails with the log's tail when the server exits or is late, and
always stops the child. Small Python children stand in for `neuromask serve` (the real one is
started in test_serve.py and test_triton.py)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from neuromask_onnx.localserver import ServerStartError, free_port, serving, stop

PY = [sys.executable, "-c"]

# answers GET /v1/models/<name> like KServe, on the port given as `--port N`
READY_SERVER = """
import http.server, json, sys
port = int(sys.argv[sys.argv.index("--port") + 1])
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"name": "m", "ready": self.path == "/v1/models/m"}).encode()
        self.send_response(200)
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
print("listening", flush=True)
http.server.HTTPServer(("127.0.0.1", port), H).serve_forever()
"""


def test_stop_terminates_a_sleeping_process() -> None:
    proc = subprocess.Popen(["sleep", "30"])
    t0 = time.monotonic()
    stop(proc, 5)
    assert proc.returncode == -signal.SIGTERM
    assert time.monotonic() - t0 < 3


def test_stop_kills_a_process_that_ignores_sigterm() -> None:
    code = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            "print('ignoring', flush=True); time.sleep(30)")
    proc = subprocess.Popen([*PY, code], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    assert proc.stdout.readline() == b"ignoring\n"  # the handler is in place
    stop(proc, 0.3)
    assert proc.returncode == -signal.SIGKILL
    proc.stdout.close()


def test_serving_fails_with_the_log_tail_when_the_server_exits(tmp_path: Path) -> None:
    code = "import sys; print('no such model: x.onnx'); sys.exit(3)"
    with pytest.raises(ServerStartError, match=r"exited with 3 .*no such model: x\.onnx"), \
            serving(["x.onnx"], "x", log=tmp_path / "s.log", command=[*PY, code]):
        pytest.fail("yielded although the server exited")


def test_serving_fails_at_the_deadline_and_stops_the_child(tmp_path: Path) -> None:
    code = "import os, time; print(os.getpid(), flush=True); time.sleep(30)"
    log = tmp_path / "s.log"
    t0 = time.monotonic()
    with pytest.raises(ServerStartError, match=r"was not ready after 0\.5 s"), \
            serving([], "m", log=log, timeout=0.5, grace=2, command=[*PY, code]):
        pytest.fail("yielded although the server never answered")
    assert time.monotonic() - t0 < 3
    pid = int(log.read_text().split()[0])
    assert not Path(f"/proc/{pid}").exists()  # stopped and reaped


def test_serving_yields_once_ready_and_stops_after(tmp_path: Path) -> None:
    with serving([], "m", log=tmp_path / "s.log", timeout=20,
                 command=[*PY, READY_SERVER]) as served:
        assert served.process.poll() is None
        assert served.model_url == f"http://127.0.0.1:{served.port}/v1/models/m"
        import urllib.request

        with urllib.request.urlopen(served.model_url, timeout=5) as r:
            assert json.loads(r.read())["ready"] is True
        assert "listening" in served.log_text()
    assert served.process.returncode == -signal.SIGTERM
    with pytest.raises(ServerStartError, match="was not ready"), \
            serving([], "other", timeout=1.0, command=[*PY, READY_SERVER]):
        pytest.fail("yielded although the model is not ready")


def test_free_port_can_be_bound() -> None:
    import socket

    port = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
