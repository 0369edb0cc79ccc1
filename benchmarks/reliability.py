"""Reliability run of the registry (issue 13): fuzzing, bad inputs by kind, concurrent publishers, kill -9.

Run (SQLite and PostgreSQL; ~10 min on a quiet 2-core machine):
    .venv/bin/python benchmarks/reliability.py
Tiny variant (a minute; checks the pipeline, RELIABILITY.md untouched):
    .venv/bin/python benchmarks/reliability.py --fuzz-examples 2 --publishers 4 --per-publisher 2 --kills 2 --no-write

What it does, on each database (PostgreSQL: ``--pg-url``, a fresh schema per part; skipped if unreachable):
  fuzz        tests/registry/test_fuzz.py and tests/serving/test_fuzz.py with ``--fuzz-examples`` examples per
              operation and phase (coverage + fuzzing + stateful), counting every answer by status
  bad-input   a battery of hostile requests by kind (non-JSON numbers, NUL, lone surrogates, deep nesting,
              oversize fields, out-of-range integers, hostile tars, bad names, scope abuse) through the API;
              each must be a 4xx, and the listing must still answer 200 for everyone afterwards
  publishers  a live server (uvicorn); P threads publish K distinct versions each of one expert at once;
              every publish must be 201 and the versions exactly 1..P*K
  kill -9     the server is SIGKILLed N times during an upload (half mid-body, half at a random moment after
              the body), restarted each time; afterwards: versions visible, spools left, unreferenced blobs
Writes benchmarks/results/reliability.json and RELIABILITY.md.
"""
from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import platform
import random
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
PY = sys.executable
MANUAL_MARKER = "<!-- reliability: hand-run sections below are kept -->"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
       "PYTHONPATH": str(ROOT)}


# --- fuzz -------------------------------------------------------------------------------------------------------

def run_fuzz(examples: int, out_dir: Path) -> list[dict]:
    report = out_dir / "fuzz.jsonl"
    report.unlink(missing_ok=True)
    env = {**ENV, "EXPERTMESH_FUZZ_EXAMPLES": str(examples), "EXPERTMESH_FUZZ_REPORT": str(report)}
    cmd = [PY, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/registry/test_fuzz.py::test_registry_fuzz",
           "tests/serving/test_fuzz.py::test_serving_fuzz"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    rows = [json.loads(line) for line in report.read_text().splitlines()] if report.exists() else []
    for r in rows:
        r["pytest_rc"] = proc.returncode
    if proc.returncode != 0:
        print(proc.stdout[-3000:], proc.stderr[-2000:], file=sys.stderr)
    return rows


# --- bad inputs -----------------------------------------------------------------------------------------------

def _battery(api, tmp: Path) -> list[tuple[str, object]]:  # noqa: ANN001
    """(kind, response) for each hostile request; built from the same helpers as the tests."""
    from tests.registry.conftest import make_expert_package, pack, raw_tar
    from tests.registry.test_hardening import gnu_sparse_tar, manifest_text, replace_file

    h = api.owner("alice")
    reader = api.owner("alice", ("read",))
    mallory = api.owner("mallory")
    n = iter(range(10_000))

    def pkg(**fields):  # noqa: ANN003, ANN202
        p = make_expert_package(tmp / f"p{next(n)}", "law-expert")
        return manifest_text(p, lambda t: json.dumps({**json.loads(t), **fields})) if fields else p

    def publish_text(transform):  # noqa: ANN001, ANN202
        p = manifest_text(make_expert_package(tmp / f"p{next(n)}", "law-expert"), transform)
        return api.publish(p, h, name="law-expert")

    raw = {**api.admin, "Content-Type": "application/json"}
    deep = "[" * 100_000 + "]" * 100_000
    out: list[tuple[str, object]] = []
    for token in ("NaN", "Infinity", "-Infinity", "1e999"):
        out.append(("non-JSON number in manifest", publish_text(lambda t: t.replace('"training": {}', '"training": {"x": %s}' % token))))
        out.append(("non-JSON number in body", api.client.post("/v1/owners", content=b'{"name":"b","display_name":%s}' % token.encode(), headers=raw)))
    for s in ("\\u0000", "a\\u0000b"):
        out.append(("NUL in manifest string", publish_text(lambda t: t.replace('"Apache-2.0"', '"%s"' % s))))
        out.append(("NUL in body string", api.client.post("/v1/owners/alice/tokens", content=b'{"scopes":["read"],"label":"%s"}' % s.encode(), headers=raw)))
    for q in ({"q": "a\x00"}, {"subject": "a\x00"}, {"domain": "a\x00"}):
        out.append(("NUL in query", api.client.get("/v1/audit" if "subject" in q else "/v1/experts", params=q, headers=h)))
    for s in ("\\ud800", "\\udfff", "a\\udc00b"):
        out.append(("lone surrogate in manifest", publish_text(lambda t: t.replace('"Apache-2.0"', '"%s"' % s))))
        out.append(("lone surrogate in body", api.client.post("/v1/owners", content=b'{"name":"b","display_name":"%s"}' % s.encode(), headers=raw)))
    out.append(("deep nesting in manifest", publish_text(lambda t: t.replace('"training": {}', '"training": {"x": %s}' % deep))))
    out.append(("deep nesting in adapter_config.json", api.publish(replace_file(pkg(), "adapter_config.json", ('{"x": %s}' % deep).encode()), h)))
    header = ('{"pilots": %s}' % deep).encode()
    out.append(("deep nesting in safetensors header", api.publish(replace_file(pkg(), "signature.safetensors", len(header).to_bytes(8, "little") + header), h)))
    out.append(("deep nesting in body", api.client.post("/v1/experts/x/withdraw", content=deep.encode(), headers={**h, "Content-Type": "application/json"})))
    out.append(("oversize field", api.publish(pkg(description="x" * 5000), h)))
    out.append(("oversize field", api.publish(pkg(domain_tags=[f"t{i}" for i in range(40)]), h)))
    out.append(("oversize field", api.publish(pkg(base_fingerprint="a" * 200), h)))
    out.append(("oversize field", api.client.post("/v1/owners", json={"name": "b", "display_name": "x" * 300}, headers=api.admin)))
    out.append(("malformed field", api.publish(pkg(files=["README.md"]), h)))
    out.append(("malformed field", api.publish(replace_file(pkg(), "signature.safetensors", (16).to_bytes(8, "little") + b'{"pilots": [1]} '), h)))
    for big in (2**31, 2**63, 2**64):
        for path, params in (("/v1/experts", {"offset": big}), ("/v1/changes", {"since": max(big, 2**63)}),
                             ("/v1/audit", {"before": big}), (f"/v1/experts/law-expert/versions/{big}", {})):
            out.append(("out-of-range integer", api.client.get(path, params=params, headers=h)))
        out.append(("out-of-range integer", api.client.delete(f"/v1/tokens/{big}", headers=api.admin)))
        out.append(("out-of-range integer", api.client.post("/v1/experts/law-expert/withdraw", json={"reason": "x", "version": big}, headers=h)))
    _, files = (lambda p: (p, {f.name: f.read_bytes() for f in p.iterdir()}))(make_expert_package(tmp / "files", "law-expert"))
    for member in ("../evil", "/etc/passwd", "a/b", ".hidden"):
        out.append(("hostile tar member", api.upload("/v1/experts/law-expert/versions", raw_tar({**files, member: b"x"}), h)))
    out.append(("hostile tar member", api.upload("/v1/experts/law-expert/versions", raw_tar(files, symlink=("README.md", "/etc/passwd")), h)))
    out.append(("hostile tar member", api.upload("/v1/experts/law-expert/versions", gnu_sparse_tar("README.md", 100 * 1024), h)))
    out.append(("hostile tar member", api.upload("/v1/experts/law-expert/versions", raw_tar({f"f{i}": b"" for i in range(50)}), h)))
    out.append(("hostile tar member", api.upload("/v1/experts/law-expert/versions", raw_tar({**files, "model.pkl": b"\x80\x04."}), h)))
    out.append(("hostile tar member", api.upload("/v1/experts/law-expert/versions", b"\x1f\x8b" + os.urandom(2000), h)))
    for name in ("mal%0A", "Law", "a..b", "-x", "x" * 65, "%00", "sp%20ace"):
        out.append(("malformed name", api.upload(f"/v1/experts/{name}/versions", b"x", h)))
        out.append(("malformed name", api.client.get(f"/v1/experts/{name}", headers=h)))
    out.append(("malformed name", api.client.post("/v1/owners", json={"name": "mal\n"}, headers=api.admin)))
    ok = api.publish(make_expert_package(tmp / "ok", "law-expert"), h)
    assert ok.status_code == 201, ok.text
    tokens = api.client.get("/v1/owners/alice/tokens", headers=h).json()
    out.append(("scope abuse", api.client.delete(f"/v1/tokens/{tokens[0]['id']}", headers=reader)))
    out.append(("scope abuse", api.publish(make_expert_package(tmp / "m", "law-expert", owner="mallory", seed=5), mallory)))
    out.append(("scope abuse", api.client.post("/v1/experts/law-expert/withdraw", json={"reason": "x"}, headers=mallory)))
    out.append(("scope abuse", api.publish(make_expert_package(tmp / "r", "other", seed=6), reader)))
    out.append(("scope abuse", api.client.post("/v1/owners", json={"name": "eve"}, headers=h)))
    body, _ = pack(make_expert_package(tmp / "sha", "law-expert", seed=7))
    out.append(("integrity", api.upload("/v1/experts/law-expert/versions", body, h, sha="0" * 64)))
    out.append(("integrity", api.upload("/v1/experts/law-expert/versions", body[: len(body) // 2], h,
                                        sha=hashlib.sha256(body).hexdigest())))
    return out


def run_bad_inputs(db_url: str, tmp: Path) -> dict:
    from fastapi.testclient import TestClient

    from registry.app import create_app
    from registry.settings import RegistrySettings
    from tests.registry.conftest import ADMIN_TOKEN, BASE_FP, Api

    settings = RegistrySettings(data_dir=tmp / "data", database_url=db_url, base_fingerprint=BASE_FP,
                                admin_token=ADMIN_TOKEN, max_upload_bytes=2 * 1024 * 1024, db_pool_size=4)
    app = create_app(settings)
    with TestClient(app, raise_server_exceptions=False) as client:
        api = Api(client, app)
        battery = _battery(api, tmp)
        h = api.owner("reader-check", ("read",))
        listing = [client.get("/v1/experts", params={"status": s}, headers=h).status_code
                   for s in ("active", "withdrawn", "all")]
    kinds: dict[str, Counter] = {}
    for kind, r in battery:
        kinds.setdefault(kind, Counter())[str(r.status_code)] += 1
    server_errors = [f"{k}: {r.status_code} {r.text[:200]}" for k, r in battery if r.status_code >= 500]
    return {"tried": len(battery), "by_kind": {k: dict(v) for k, v in kinds.items()},
            "4xx": sum(1 for _, r in battery if 400 <= r.status_code < 500), "5xx": len(server_errors),
            "server_errors": server_errors, "listing_after": listing}


# --- live server helpers ----------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``expertmesh registry serve`` as a child process (so it can be SIGKILLed)."""

    def __init__(self, db_url: str, data_dir: Path, admin: str):
        self.db_url, self.data_dir, self.admin = db_url, data_dir, admin
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 120.0) -> "Server":
        from expertmesh.procwait import wait_until_ready

        env = {**ENV, "EXPERTMESH_REGISTRY_ADMIN_TOKEN": self.admin,
               "EXPERTMESH_REGISTRY_BASE_FINGERPRINT": "f" * 16 + "0123456789abcdef" * 3}
        cmd = [PY, "-m", "cli.main", "registry", "serve", "--db", self.db_url, "--data-dir",
               str(self.data_dir), "--port", str(self.port), "--log-level", "warning"]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until_ready(self.proc, self.url + "/healthz", timeout=timeout, interval=0.1, name="registry")
        return self

    def kill9(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(30)


def _setup_owner(url: str, admin: str) -> str:
    import httpx

    a = {"Authorization": f"Bearer {admin}"}
    httpx.post(url + "/v1/owners", json={"name": "alice"}, headers=a)
    r = httpx.post(url + "/v1/owners/alice/tokens", json={"scopes": ["publish"]}, headers=a)
    r.raise_for_status()
    return r.json()["token"]


# --- concurrent publishers --------------------------------------------------------------------------------------

def run_publishers(db_url: str, tmp: Path, publishers: int, per: int) -> dict:
    import httpx

    from tests.registry.conftest import ADMIN_TOKEN, make_expert_package, pack

    bodies = [[pack(make_expert_package(tmp / f"pkg-{p}-{k}", "law-expert", seed=p * 1000 + k,
                                        description=f"publisher {p} version {k}")) for k in range(per)]
              for p in range(publishers)]
    server = Server(db_url, tmp / "data", ADMIN_TOKEN).start()
    try:
        token = _setup_owner(server.url, ADMIN_TOKEN)
        statuses: Counter = Counter()
        barrier = threading.Barrier(publishers)
        lock = threading.Lock()

        def publisher(i: int) -> None:
            with httpx.Client(base_url=server.url, timeout=300) as c:
                barrier.wait()
                for body, sha in bodies[i]:
                    r = c.post("/v1/experts/law-expert/versions", content=body, headers={
                        "Authorization": f"Bearer {token}", "X-Content-SHA256": sha,
                        "Content-Type": "application/x-tar"})
                    with lock:
                        statuses[str(r.status_code)] += 1

        t0 = time.monotonic()
        threads = [threading.Thread(target=publisher, args=(i,)) for i in range(publishers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.monotonic() - t0
        shown = httpx.get(server.url + "/v1/experts/law-expert", headers={"Authorization": f"Bearer {token}"},
                          timeout=60).json()
    finally:
        server.stop()
    versions = sorted(v["version"] for v in shown["versions"])
    identities = [v["identity"] for v in shown["versions"]]
    total = publishers * per
    return {"publishers": publishers, "per_publisher": per, "statuses": dict(statuses), "elapsed_s": round(elapsed, 1),
            "versions": len(versions), "contiguous": versions == list(range(1, total + 1)),
            "duplicate_identities": len(identities) - len(set(identities)),
            "lost": total - len(versions)}


# --- kill -9 during upload --------------------------------------------------------------------------------------

def _send_partial(url: str, token: str, body: bytes, sha: str, fraction: float) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    s = socket.create_connection((host, int(port)))
    head = (f"POST /v1/experts/law-expert/versions HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n"
            f"X-Content-SHA256: {sha}\r\nContent-Type: application/x-tar\r\nContent-Length: {len(body)}\r\n\r\n")
    s.sendall(head.encode() + body[: int(len(body) * fraction)])
    return s


def _wait_for(pred, timeout: float = 30.0) -> bool:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.01)
    return False


def run_kills(db_url: str, tmp: Path, tries: int) -> dict:
    import httpx

    from registry.context import Registry
    from registry.gc import collect
    from registry.settings import RegistrySettings
    from tests.registry.conftest import ADMIN_TOKEN, make_expert_package, pack

    rng = random.Random(13)
    server = Server(db_url, tmp / "data", ADMIN_TOKEN).start()
    token = _setup_owner(server.url, ADMIN_TOKEN)
    scratch = tmp / "data" / "tmp"
    results = []
    try:
        for i in range(tries):
            body, sha = pack(make_expert_package(tmp / f"k{i}", "law-expert", seed=500 + i,
                                                 description=f"kill try {i}"))
            mid_body = i % 2 == 0
            sock = _send_partial(server.url, token, body, sha, 0.5 if mid_body else 1.0)
            if mid_body:          # the spool exists: the server is inside the upload
                _wait_for(lambda: any(p.name.endswith(".upload") for p in scratch.glob("*")))
            else:
                time.sleep(rng.uniform(0.0, 0.3))
            server.kill9()
            sock.close()
            left_before_restart = len(list(scratch.glob("*")))
            server.start()
            h = {"Authorization": f"Bearer {token}"}
            listed = httpx.get(server.url + "/v1/experts", params={"status": "all"}, headers=h, timeout=30).json()
            versions = []
            if listed["items"]:
                versions = httpx.get(server.url + "/v1/experts/law-expert", headers=h, timeout=30).json()["versions"]
            archives_ok = all(httpx.get(server.url + f"/v1/experts/law-expert/versions/{v['version']}/archive",
                                        headers=h, timeout=60).status_code == 200 for v in versions)
            results.append({"try": i, "phase": "mid-body" if mid_body else "after-body",
                            "spools_before_restart": left_before_restart,
                            "spools_after_restart": len(list(scratch.glob("*"))),
                            "versions_visible": len(versions), "archives_ok": archives_ok})
    finally:
        server.stop()
    reg = Registry.build(RegistrySettings(data_dir=tmp / "data", database_url=db_url))
    try:
        gc = collect(reg, dry_run=True, grace_s=0).as_dict()
    finally:
        reg.close()
    return {"tries": tries, "results": results, "gc_dry_run_after": gc,
            "spools_left_after_restart": sum(r["spools_after_restart"] for r in results),
            "all_archives_ok": all(r["archives_ok"] for r in results)}


# --- PostgreSQL schemas -----------------------------------------------------------------------------------------

def pg_schema(pg_url: str):  # noqa: ANN201
    from tests.registry.conftest import pg_schema_url

    os.environ["EXPERTMESH_TEST_PG_URL"] = pg_url
    return pg_schema_url()


def databases(pg_url: str | None):  # noqa: ANN201
    """(label, context manager yielding a URL) per database; PostgreSQL only where it answers."""
    import contextlib

    @contextlib.contextmanager
    def sqlite(tmp: Path):  # noqa: ANN202
        yield f"sqlite:///{tmp / 'registry.db'}"

    out = [("sqlite", sqlite)]
    if pg_url:
        try:
            import psycopg

            with psycopg.connect(pg_url.replace("postgresql+psycopg", "postgresql"), connect_timeout=3):
                pass
            out.append(("postgresql", lambda _tmp: pg_schema(pg_url)))
        except Exception as e:  # noqa: BLE001
            print(f"PostgreSQL skipped: {e}", file=sys.stderr)
    return out


# --- report -----------------------------------------------------------------------------------------------------

def write_markdown(results: dict, path: Path) -> None:
    cmd = results["command"]
    lines = ["# Reliability", "",
             "What an attacker's inputs and crashes do to the registry and the inference server (issue 13). "
             f"One run on {results['when']}, {results['machine']} (load average at start "
             f"{results['load_start']}, at end {results['load_end']}); {results['wall_s']:.0f} s in all.", "",
             "Command:", "", "```", cmd, "```", "",
             "Raw figures: `benchmarks/results/reliability.json`. The default test suite runs the same fuzz tests "
             "with 2 examples (`tests/registry/test_fuzz.py`, `tests/serving/test_fuzz.py`); `-m slow` runs 50.", "",
             "## Fuzzing (schemathesis: coverage + fuzzing + stateful phases, in-process ASGI)", "",
             "| app / database | examples per operation | requests | 5xx | check failures | answers by status |",
             "|---|---|---|---|---|---|"]
    for r in results["fuzz"]:
        lines.append(f"| {r['label']} | {r['examples_per_operation']} | {r['requests']} | {r['5xx']} | "
                     f"{len(r['check_failures'])} | {', '.join(f'{k}: {v}' for k, v in r['by_status'].items())} |")
    lines += ["", "Checks: no 5xx, documented status codes, documented content types, response bodies matching "
              "the schema.", "", "## Bad inputs, by kind", ""]
    for db, r in results["bad_input"].items():
        lines += [f"**{db}**: {r['tried']} tried, {r['4xx']} answered 4xx, {r['5xx']} answered 5xx; listing "
                  f"afterwards (active / withdrawn / all): {r['listing_after']}.", "",
                  "| kind | tried | answers |", "|---|---|---|"]
        for kind, statuses in r["by_kind"].items():
            lines.append(f"| {kind} | {sum(statuses.values())} | "
                         f"{', '.join(f'{k}: {v}' for k, v in sorted(statuses.items()))} |")
        lines.append("")
    lines += ["## Concurrent publishers (live server, one expert name)", "",
              "| database | publishers x versions | answers | versions stored | 1..N contiguous | duplicates | lost | s |",
              "|---|---|---|---|---|---|---|---|"]
    for db, r in results["publishers"].items():
        lines.append(f"| {db} | {r['publishers']} x {r['per_publisher']} | {r['statuses']} | {r['versions']} | "
                     f"{r['contiguous']} | {r['duplicate_identities']} | {r['lost']} | {r['elapsed_s']} |")
    lines += ["", "## kill -9 during an upload (server SIGKILLed, then restarted)", "",
              "| database | tries | spools left after restart | versions visible after the last try | every visible "
              "archive downloads | after-body kills whose version committed | unreferenced blobs (gc --dry-run) |",
              "|---|---|---|---|---|---|---|"]
    for db, r in results["kills"].items():
        seen, committed = 0, 0
        for t in r["results"]:
            committed += t["phase"] == "after-body" and t["versions_visible"] > seen
            seen = t["versions_visible"]
        after = sum(t["phase"] == "after-body" for t in r["results"])
        lines.append(f"| {db} | {r['tries']} | {r['spools_left_after_restart']} | {r['results'][-1]['versions_visible']} "
                     f"| {r['all_archives_ok']} | {committed} of {after} | {r['gc_dry_run_after']['unreferenced_blobs']} |")
    lines += ["", "Half the kills land mid-body (the spool exists), half at a random moment up to 0.3 s after the "
              "whole body was sent (unpack, store or commit). A version is either absent or complete; the spool "
              "of the killed upload is removed by the restart (its writer's pid is dead), and an unreferenced "
              "blob a kill can leave between storing and committing is what `expertmesh registry gc` removes.", ""]
    # A hand-run comparison (e.g. the same fuzzing against the code before the fixes) may follow the marker;
    # it is kept when the measured part above is rewritten.
    kept = path.read_text().split(MANUAL_MARKER, 1)[1] if path.exists() and MANUAL_MARKER in path.read_text() else ""
    path.write_text("\n".join(lines) + (MANUAL_MARKER + kept if kept else ""))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--fuzz-examples", type=int, default=25)
    ap.add_argument("--publishers", type=int, default=16)
    ap.add_argument("--per-publisher", type=int, default=10)
    ap.add_argument("--kills", type=int, default=10)
    ap.add_argument("--pg-url", default=os.environ.get("EXPERTMESH_TEST_PG_URL",
                                                       "postgresql+psycopg://postgres@127.0.0.1:5432/test"))
    ap.add_argument("--only", default="fuzz,bad_input,publishers,kills",
                    help="comma-separated parts to run (fuzz, bad_input, publishers, kills)")
    ap.add_argument("--json-out", default=None, help="write the JSON here and leave RELIABILITY.md alone "
                                                     "(e.g. a run against an older checkout for comparison)")
    ap.add_argument("--markdown-from", default=None, help="only rebuild RELIABILITY.md from this JSON")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    if args.markdown_from:
        write_markdown(json.loads(Path(args.markdown_from).read_text()), ROOT / "RELIABILITY.md")
        return
    parts = set(args.only.split(","))
    t0 = time.monotonic()
    results: dict = {"command": " ".join(shlex.quote(a) for a in [".venv/bin/python", "benchmarks/reliability.py",
                                                                   *sys.argv[1:]]),
                     "when": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                     "machine": f"{platform.machine()}, {os.cpu_count()} cores",
                     "load_start": " ".join(f"{x:.1f}" for x in os.getloadavg()),
                     "bad_input": {}, "publishers": {}, "kills": {}}
    out_dir = ROOT / "benchmarks" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    os.environ["EXPERTMESH_TEST_PG_URL"] = args.pg_url
    results["fuzz"] = run_fuzz(args.fuzz_examples, out_dir) if "fuzz" in parts else []
    print("fuzz:", [(r["label"], r["requests"], r["5xx"]) for r in results["fuzz"]], flush=True)
    for label, make_url in databases(args.pg_url):
        for part, fn in (("bad_input", lambda u, d: run_bad_inputs(u, d)),
                         ("publishers", lambda u, d: run_publishers(u, d, args.publishers, args.per_publisher)),
                         ("kills", lambda u, d: run_kills(u, d, args.kills))):
            if part not in parts:
                continue
            with tempfile.TemporaryDirectory() as d, make_url(Path(d)) as url:
                results[part][label] = fn(url, Path(d))
            print(part, label, json.dumps(results[part][label])[:300], flush=True)
    results["wall_s"] = time.monotonic() - t0
    results["load_end"] = " ".join(f"{x:.1f}" for x in os.getloadavg())
    if args.no_write:
        print(json.dumps(results, indent=2)[:3000])
        return
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(results, indent=2) + "\n")
        return
    (out_dir / "reliability.json").write_text(json.dumps(results, indent=2) + "\n")
    write_markdown(results, ROOT / "RELIABILITY.md")
    print("wrote RELIABILITY.md and benchmarks/results/reliability.json")


if __name__ == "__main__":
    main()
