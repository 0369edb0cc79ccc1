"""expertmesh.procwait against real child processes: a server that comes up, one that dies, one that never
answers 200 (and one that only redirects, which is not "ready")."""
from __future__ import annotations

import subprocess
import sys

import pytest

from expertmesh.errors import UnavailableError
from expertmesh.procwait import ProcessNotReadyError, answers_200, wait_until_ready
from tests.live_server import free_port

# A child HTTP server: /health answers with the status given on the command line (302 goes to /ok, a 200).
SERVER = """
import http.server, sys
status = int(sys.argv[2])
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        code = 200 if self.path == "/ok" else status
        self.send_response(code)
        if code == 302:
            self.send_header("Location", "/ok")
        self.end_headers()
    def log_message(self, *a):
        pass
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"""


@pytest.fixture
def child():
    procs = []

    def start(status: int):
        port = free_port()
        procs.append(subprocess.Popen([sys.executable, "-c", SERVER, str(port), str(status)]))
        return procs[-1], f"http://127.0.0.1:{port}"
    yield start
    for p in procs:
        p.terminate()
        p.wait(30)


def test_returns_once_the_health_url_answers_200(child):
    proc, url = child(200)
    wait_until_ready(proc, f"{url}/health", timeout=120, interval=0.05)       # generous: a busy machine
    assert proc.poll() is None and answers_200(f"{url}/health")


def test_a_process_that_dies_is_reported_with_its_exit_code(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", "import sys; sys.exit(3)"])
    with pytest.raises(ProcessNotReadyError) as e:
        wait_until_ready(proc, f"http://127.0.0.1:{free_port()}/health", timeout=120, interval=0.05, name="worker",
                         log=tmp_path / "w.log")
    assert e.value.returncode == 3 and e.value.detail == {"returncode": 3}
    assert isinstance(e.value, UnavailableError) and e.value.code == "process_not_ready"   # the one error tree
    assert str(e.value) == f"worker exited with 3 before it was ready; see {tmp_path / 'w.log'}"


@pytest.mark.parametrize("status", [503, 302])
def test_other_answers_are_not_ready_and_time_out(child, status):
    proc, url = child(status)
    wait_until_ready(proc, f"{url}/ok", timeout=120, interval=0.05)          # the child is up and answering
    with pytest.raises(ProcessNotReadyError) as e:
        wait_until_ready(proc, f"{url}/health", timeout=0.3, interval=0.05, name="worker")
    assert e.value.returncode is None and str(e.value) == "worker was not ready within 0.3 s"
    assert proc.poll() is None                                               # left running for its owner


@pytest.mark.parametrize(("timeout", "shown"), [(0.5, "0.5"), (2.25, "2.25"), (5, "5"), (600, "600"), (12.7, "13")])
def test_the_timeout_is_shown_as_given(timeout, shown):
    from expertmesh.procwait import _seconds

    assert _seconds(timeout) == shown


def test_the_vllm_wrapper_waits_through_it(tmp_path):
    # Prepare: the wrapper with this interpreter and a stand-in server for vLLM's OpenAI server on its port
    from serving.gateway.vllm_worker import VLLMProcess

    worker = VLLMProcess(tmp_path, python=sys.executable, log_path=tmp_path / "vllm.log")
    worker.cmd = [sys.executable, "-c", SERVER.replace('self.path == "/ok"', 'self.path == "/health"'),
                  str(worker.port), "503"]
    # Execute / Assert: ready once /health answers 200; stopped afterwards; never started is an error
    with worker:
        assert worker.alive
    assert not worker.alive
    with pytest.raises(RuntimeError, match="never started"):
        VLLMProcess(tmp_path, python=sys.executable).wait_ready(1)
