"""Wait for a child server to come up: poll its health URL until it answers 200, the process dies, or time runs out.

    proc = subprocess.Popen([...])
    wait_until_ready(proc, "http://127.0.0.1:8000/readyz", timeout=600, interval=1.0, name="serve", log=log_path)

Used by the vLLM worker wrapper (serving/), the benchmarks and the tests, so it lives in the core and uses only the
standard library and the error tree. The probe matches what ``httpx.get(url).status_code == 200`` did in each copy
it replaces: any other status, a redirect (not followed) or a connection error means "not yet". It never goes
through an HTTP proxy: the URL is a process on this machine.
"""
from __future__ import annotations

import http.client
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from expertmesh.errors import UnavailableError


class ProcessNotReadyError(UnavailableError):
    """The process exited before it was ready (``returncode`` set) or was not ready within the timeout (None).

    In the one error tree (not a bare RuntimeError, and not expertmesh.serving.errors.NotReadyError, a running
    engine's 503), so a CLI or benchmark that runs the child prints it as one ``error:`` line."""

    code = "process_not_ready"

    def __init__(self, message: str, *, returncode: int | None = None, detail: dict | None = None):
        # ``detail``: the tree's signature, which error_from_body rebuilds every class with
        super().__init__(message, detail={"returncode": returncode, **(detail or {})})
        self.returncode = returncode


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None                                   # a 3xx is "not ready", as httpx (no redirects) saw it


_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect())


def answers_200(url: str, timeout: float = 2.0) -> bool:
    """True when a GET of ``url`` answers 200 within ``timeout`` seconds."""
    try:
        with _OPENER.open(url, timeout=timeout) as r:
            return r.status == 200
    except (OSError, http.client.HTTPException):       # URLError/HTTPError and socket timeouts are OSErrors
        return False


def _seconds(t: float) -> str:
    """``t`` seconds for a message: whole seconds from 10 s up, else three significant digits (0.3 s, not 0 s)."""
    return f"{t:.0f}" if t >= 10 else f"{t:.3g}"


def wait_until_ready(proc: subprocess.Popen, url: str, *, timeout: float, interval: float = 0.5,
                     probe_timeout: float = 2.0, name: str = "server", log: str | Path | None = None) -> None:
    """Return once ``url`` answers 200; raise ProcessNotReadyError as soon as ``proc`` has exited, or after
    ``timeout`` seconds (the process is left running: the caller owns it). ``log`` is named in the message."""
    see = f"; see {log}" if log is not None else ""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise ProcessNotReadyError(f"{name} exited with {proc.returncode} before it was ready{see}",
                                returncode=proc.returncode)
        if answers_200(url, probe_timeout):
            return
        if time.monotonic() >= deadline:
            raise ProcessNotReadyError(f"{name} was not ready within {_seconds(timeout)} s{see}")
        time.sleep(interval)
