"""Registry benchmark: list / get / download / revision-poll throughput and p50/p99 latency, 16 concurrent clients.

Run (1,000 experts, 16 clients, 1,600 requests per operation; ~2 min on 2 cores):
    .venv/bin/python benchmarks/registry_bench.py
Tiny variant (seconds; checks the pipeline, figures not meaningful, BENCHMARKS.md untouched):
    .venv/bin/python benchmarks/registry_bench.py --experts 40 --requests 160 --no-write
Against PostgreSQL instead of SQLite:
    .venv/bin/python benchmarks/registry_bench.py --db postgresql+psycopg://postgres@127.0.0.1:5432/bench

What it does: starts the registry (uvicorn, one process, SQLite file in a temp dir) on 127.0.0.1, creates an
owner, publishes N synthetic but valid expert packages over HTTP (4 publishing threads), then runs each
operation as its own phase with 16 client threads (one httpx client each, keep-alive), each doing
requests/16 requests:
    list      GET /v1/experts?limit=100&offset=<random page>        (100 summaries per answer)
    get       GET /v1/experts/<random name>                          (expert, versions, manifest)
    download  GET /v1/experts/<random name>/versions/1/archive       (whole tar read)
    poll      GET /v1/revision with If-None-Match                    (304, the change-feed poll)
Server and load generator share the machine's cores, so the figures are a floor for the server alone.
Writes its section of BENCHMARKS.md between <!-- registry-bench:start --> and <!-- registry-bench:end -->.
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import datetime as dt
import json
import os
import platform
import random
import shlex
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SECTION = "registry-bench"
ADMIN = "bench-admin-token-0123456789abcdef"
FP = "b" * 64


def make_package(dest: Path, name: str, seed: int, hidden: int, layers: int, r: int) -> Path:
    """A valid expert package with random tiny tensors (same format as `expertmesh expert train` writes)."""
    import torch
    from safetensors.torch import save_file

    from expertmesh.expert.manifest import ExpertManifest, LoraSpec, SignatureSpec
    from expertmesh.expert.package import finalize_manifest, save_signature

    dest.mkdir(parents=True)
    g = torch.Generator().manual_seed(seed)
    (dest / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": r, "lora_alpha": 2 * r,
                                                         "target_modules": ["q_proj", "v_proj"]}))
    w = {}
    for i in range(layers):
        for m in ("q_proj", "v_proj"):
            w[f"base_model.model.model.layers.{i}.self_attn.{m}.lora_A.weight"] = torch.randn(r, hidden, generator=g)
            w[f"base_model.model.model.layers.{i}.self_attn.{m}.lora_B.weight"] = torch.randn(hidden, r, generator=g)
    save_file(w, str(dest / "adapter_model.safetensors"))
    save_signature(dest, torch.randn(layers, hidden, generator=g), torch.randn(layers, hidden, generator=g),
                   torch.randn(8, 32, generator=g))
    domain = ("law", "medicine", "code", "literature", "computing", "systems")[seed % 6]
    finalize_manifest(dest, ExpertManifest(
        name=name, owner="bench", base_fingerprint=FP,
        lora=LoraSpec(r=r, alpha=float(2 * r), dropout=0.0, target_modules=["q_proj", "v_proj"]),
        signature=SignatureSpec(num_layers=layers, hidden_size=hidden, num_pilots=8, embed_dim=32,
                                embedder="bench"),
        domain_tags=[domain], licence="Apache-2.0", description=f"synthetic {domain} expert {seed}"))
    return dest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(work: Path, db: str | None) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "EXPERTMESH_REGISTRY_DATA_DIR": str(work / "data"), "EXPERTMESH_REGISTRY_ADMIN_TOKEN": ADMIN,
           "EXPERTMESH_REGISTRY_BASE_FINGERPRINT": FP, "PYTHONPATH": str(ROOT)}
    if db:
        env["EXPERTMESH_REGISTRY_DB"] = db
    proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "--factory", "registry.app:app_from_env",
                             "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning",
                             "--no-access-log"], env=env, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    from expertmesh.procwait import ProcessNotReadyError, wait_until_ready

    try:
        wait_until_ready(proc, url + "/healthz", timeout=60, interval=0.2, probe_timeout=1.0, name="registry")
    except ProcessNotReadyError as e:
        if proc.poll() is None:
            proc.terminate()
        raise SystemExit(str(e)) from None
    return proc, url


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    k = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[k]


def run_phase(url: str, token: str, op: str, names: list[str], clients: int, requests: int,
              revision_etag: str) -> dict:
    import httpx

    per_client = max(1, requests // clients)
    pages = max(1, -(-len(names) // 100))
    latencies: list[float] = []
    nbytes = [0]
    errors = [0]
    lock = threading.Lock()
    barrier = threading.Barrier(clients)

    def worker(i: int) -> None:
        rnd = random.Random(i)
        local, got, bad = [], 0, 0
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=60) as c:
            c.get("/healthz")   # open the keep-alive connection outside the timed loop
            barrier.wait()
            for _ in range(per_client):
                t0 = time.perf_counter()
                if op == "list":
                    r = c.get("/v1/experts", params={"limit": 100, "offset": 100 * rnd.randrange(pages)})
                    ok = r.status_code == 200 and len(r.json()["items"]) > 0
                elif op == "get":
                    r = c.get(f"/v1/experts/{rnd.choice(names)}")
                    ok = r.status_code == 200 and r.json()["versions"]
                elif op == "download":
                    r = c.get(f"/v1/experts/{rnd.choice(names)}/versions/1/archive")
                    ok = r.status_code == 200 and len(r.content) == int(r.headers["content-length"])
                else:
                    r = c.get("/v1/revision", headers={"If-None-Match": revision_etag})
                    ok = r.status_code == 304
                local.append(time.perf_counter() - t0)
                got += len(r.content)
                bad += 0 if ok else 1
        with lock:
            latencies.extend(local)
            nbytes[0] += got
            errors[0] += bad

    t0 = time.perf_counter()
    with cf.ThreadPoolExecutor(clients) as pool:
        list(pool.map(worker, range(clients)))
    wall = time.perf_counter() - t0
    latencies.sort()
    n = len(latencies)
    return {"op": op, "requests": n, "errors": errors[0], "wall_s": wall, "rps": n / wall,
            "p50_ms": 1000 * percentile(latencies, 0.50), "p99_ms": 1000 * percentile(latencies, 0.99),
            "mb_s": nbytes[0] / wall / 1e6}


def machine() -> dict:
    mem = "?"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    except OSError:
        pass
    cpu = platform.processor() or "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return {"nproc": os.cpu_count(), "ram": mem, "cpu": cpu, "python": platform.python_version(),
            "os": platform.platform(), "load_1min_at_start": round(load, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--experts", type=int, default=1000)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--requests", type=int, default=1600, help="requests per operation, split over the clients")
    ap.add_argument("--publishers", type=int, default=4, help="threads registering the experts")
    ap.add_argument("--hidden", type=int, default=64, help="hidden size of the synthetic adapters")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--db", default=None, help="SQLAlchemy URL (default: SQLite file in the temp dir)")
    ap.add_argument("--no-write", action="store_true", help="print only, leave BENCHMARKS.md alone")
    ap.add_argument("--markdown", default=str(ROOT / "BENCHMARKS.md"))
    args = ap.parse_args()

    from clients.registry_client import RegistryClient

    host = machine()
    with tempfile.TemporaryDirectory(prefix="registry-bench-") as tmp:
        work = Path(tmp)
        t0 = time.perf_counter()
        pkgs = [make_package(work / "pkgs" / f"e{i:05d}", f"bench-expert-{i:05d}", i, args.hidden, args.layers,
                             args.rank) for i in range(args.experts)]
        build_s = time.perf_counter() - t0
        pkg_bytes = sum(p.stat().st_size for p in pkgs[0].iterdir())
        proc, url = start_server(work, args.db)
        try:
            with RegistryClient(url, ADMIN) as admin:
                admin.create_owner("bench")
                token = admin.create_token("bench", ["publish"]).token
            t0 = time.perf_counter()

            def publish(chunk: list[Path]) -> int:
                with RegistryClient(url, token) as c:
                    return sum(c.publish(p).created for p in chunk)

            chunks = [pkgs[i::args.publishers] for i in range(args.publishers)]
            with cf.ThreadPoolExecutor(args.publishers) as pool:
                created = sum(pool.map(publish, chunks))
            publish_s = time.perf_counter() - t0
            assert created == args.experts, f"published {created} of {args.experts}"
            with RegistryClient(url, token) as c:
                _, etag = c.revision()
                total = c.list_experts(limit=1).total
            assert total == args.experts
            names = [f"bench-expert-{i:05d}" for i in range(args.experts)]
            results = [run_phase(url, token, op, names, args.clients, args.requests, etag)
                       for op in ("list", "get", "download", "poll")]
        finally:
            proc.terminate()
            proc.wait(timeout=30)

    info = {"experts": args.experts, "clients": args.clients, "package_bytes": pkg_bytes, "build_s": build_s,
            "publish_s": publish_s, "publish_rate": args.experts / publish_s, "db": "postgresql" if args.db else "sqlite",
            "machine": host, "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "results": results}
    print(json.dumps(info, indent=2))
    cmd = "python benchmarks/registry_bench.py" + ("" if len(sys.argv) == 1 else " " + shlex.join(sys.argv[1:]))
    lines = [
        "## Registry: list / get / download at 16 concurrent clients",
        "",
        f"Command: `{cmd}`  ",
        f"Date: {info['date']}; machine: {info['machine']['nproc']} cores ({info['machine']['cpu']}), "
        f"{info['machine']['ram']} RAM, Python {info['machine']['python']}; database: {info['db']}, one uvicorn "
        "process on 127.0.0.1; server and the 16 client threads share the same cores (1-min load average "
        f"{info['machine']['load_1min_at_start']} when the run started: the machine is shared).",
        "",
        f"Registered {args.experts:,} experts ({pkg_bytes / 1024:.1f} KiB packages: LoRA r={args.rank} on q,v of "
        f"{args.layers} layers, hidden {args.hidden}) over HTTP with {args.publishers} publishing threads in "
        f"{publish_s:.1f} s = {info['publish_rate']:.1f} publishes/s (each: spool, sha256, safe unpack, "
        "verify_package, content-addressed store, one transaction).",
        "",
        "| operation | requests | errors | throughput (req/s) | p50 (ms) | p99 (ms) | MB/s |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    labels = {"list": "list (100 per page)", "get": "get (show expert)", "download": "download (tar)",
              "poll": "revision poll (304)"}
    for r in results:
        lines.append(f"| {labels[r['op']]} | {r['requests']} | {r['errors']} | {r['rps']:.0f} | {r['p50_ms']:.1f} | "
                     f"{r['p99_ms']:.1f} | {r['mb_s']:.2f} |")
    lines += ["", "Real experts are larger (SmolLM2-135M, r=16 on q,k,v,o: ~7 MiB fp32), so download figures per "
              "request fall with size; list/get/poll do not depend on package size."]
    print("\n".join(lines))
    if not args.no_write:
        from benchmarks.mesh.markdown import replace_section

        replace_section(Path(args.markdown), SECTION, "\n".join(lines))
        print(f"wrote the {SECTION} section of {args.markdown}")


if __name__ == "__main__":
    main()
