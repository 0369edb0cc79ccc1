"""The import rules of docs/ARCHITECTURE.md, read from the source of every module (nothing is imported).

- The core library ``expertmesh/`` imports no web framework, SQL, Flower or app package, at module level or inside
  a function (a lazy import still runs app code from the core).
- ``clients/`` imports no ``registry``: the typed client must not depend on the server package. The services and
  trainers (registry, serving, router_training) import the core and clients, never each other or an app above.
- No import cycle among the project's modules, counting the imports that run when a module is loaded (module and
  class level; not those inside functions, not those under ``if TYPE_CHECKING``); none under ``TYPE_CHECKING``;
  and none inside the core counting function-local imports too (a package lazily loading its own submodules aside).
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("expertmesh", "registry", "clients", "router_training", "serving", "cli", "benchmarks")
APPS = {"cli", "benchmarks"}
FORBIDDEN = {   # top-level package -> what it may not import
    "expertmesh": {"fastapi", "starlette", "sqlalchemy", "alembic", "flwr", "uvicorn", "pydantic", "registry",
                   "clients", "router_training", "serving"} | APPS,
    "clients": {"registry", "serving", "router_training"} | APPS,
    "registry": {"clients", "serving", "router_training"} | APPS,
    "serving": {"registry", "router_training"} | APPS,
    "router_training": {"registry", "serving"} | APPS,
}


def module_files(root: Path, packages=PACKAGES) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file below the given top-level packages."""
    out = {}
    for pkg in packages:
        for f in sorted((root / pkg).rglob("*.py")):
            parts = f.relative_to(root).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = f
    return out


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def imports_of(module: str, path: Path, *, type_checking: bool = False) -> list[tuple[str, bool]]:
    """(imported module name, runs at load time) for every import statement of ``module``; imports under
    ``if TYPE_CHECKING`` are skipped unless ``type_checking`` (then they count as load time)."""
    is_pkg = path.name == "__init__.py"
    found: list[tuple[str, bool]] = []

    def visit(node: ast.AST, at_load: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child) and not type_checking:
                continue
            if isinstance(child, ast.Import):
                found.extend((a.name, at_load) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = _absolute(module, is_pkg, child.module, child.level)
                found.append((base, at_load))
                found.extend((f"{base}.{a.name}", at_load) for a in child.names if a.name != "*")
            visit(child, at_load and not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    visit(ast.parse(path.read_text(encoding="utf-8"), str(path)), True)
    return found


def _absolute(module: str, is_pkg: bool, name: str | None, level: int) -> str:
    if level == 0:
        return name or ""
    parts = module.split(".") if is_pkg else module.split(".")[:-1]
    parts = parts[:len(parts) - (level - 1)]
    return ".".join(parts + ([name] if name else []))


def layering_violations(root: Path) -> list[str]:
    bad = []
    for module, path in module_files(root).items():
        forbidden = FORBIDDEN.get(module.split(".")[0], set())
        for name, _ in imports_of(module, path):
            if name.split(".")[0] in forbidden:
                bad.append(f"{path.relative_to(root)} imports {name}")
    return sorted(set(bad))


def load_time_graph(root: Path, *, type_checking: bool = False, lazy: bool = False,
                    packages=PACKAGES) -> dict[str, set[str]]:
    """Module -> the project modules it imports at load time (an imported name that is a module counts as it);
    with ``lazy`` also those imported inside a function, except a package's own submodules (a plugin registry
    loading its built-ins on first use, as compose.routers does: the child's import of the parent has finished
    by the time the parent's function runs, and the parent is always loaded before the child anyway)."""
    modules = module_files(root, packages)
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for module, path in modules.items():
        for name, at_load in imports_of(module, path, type_checking=type_checking):
            if not at_load and (not lazy or name.startswith(module + ".")):
                continue
            if name in modules and name != module:
                graph[module].add(name)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    m = stack.pop()
                    on_stack.discard(m)
                    comp.append(m)
                    if m == node:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def test_every_module_is_read():
    modules = module_files(ROOT)
    core = [m for m in modules if m.split(".")[0] == "expertmesh"]
    # every subpackage of the core is walked, not a hand-kept list
    assert {"expertmesh.compose.routers.mot.model", "expertmesh.serving.engine", "expertmesh.expert.package",
            "expertmesh.corpora.sources"} <= set(core)
    assert len(core) == len(list((ROOT / "expertmesh").rglob("*.py")))


def test_every_layer_follows_the_import_rules():
    assert layering_violations(ROOT) == []


def test_no_import_cycles():
    assert cycles(load_time_graph(ROOT)) == []


def test_no_cycles_through_lazy_imports_in_the_core():
    # a function-local import hides a loop from the load-time check but still ties two modules of the core
    # together (expert.audit <-> expert.train through bf16_supported and data_digest was one): what both need
    # belongs in a module both import
    assert cycles(load_time_graph(ROOT, lazy=True, packages=("expertmesh",))) == []


def test_no_cycles_hidden_under_type_checking():
    # a TYPE_CHECKING import does not run, but it still ties two modules together (auth <-> events was one):
    # a shared type belongs in a module both import
    assert cycles(load_time_graph(ROOT, type_checking=True)) == []


def _write(root: Path, rel: str, text: str) -> None:
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)


@pytest.fixture
def bad_tree(tmp_path):
    _write(tmp_path, "expertmesh/__init__.py", "")
    _write(tmp_path, "expertmesh/a.py", "from expertmesh import b\n\ndef f():\n    import fastapi\n")
    _write(tmp_path, "expertmesh/b.py", "from . import a\nfrom typing import TYPE_CHECKING\n"
                                         "if TYPE_CHECKING:\n    import sqlalchemy\n")
    _write(tmp_path, "expertmesh/c.py", "def g():\n    from router_training.task import tune_router\n")
    _write(tmp_path, "clients/__init__.py", "")
    _write(tmp_path, "clients/x.py", "from registry.archive import safe_extract\n")
    _write(tmp_path, "serving/__init__.py", "def h():\n    import router_training.kinds\n")
    return tmp_path


def test_the_checker_finds_what_it_forbids(bad_tree):
    assert layering_violations(bad_tree) == [
        "clients/x.py imports registry.archive", "clients/x.py imports registry.archive.safe_extract",
        "expertmesh/a.py imports fastapi",
        "expertmesh/c.py imports router_training.task", "expertmesh/c.py imports router_training.task.tune_router",
        "serving/__init__.py imports router_training.kinds",
    ]
    assert cycles(load_time_graph(bad_tree)) == [["expertmesh.a", "expertmesh.b"]]


def test_the_checker_sees_a_lazy_cycle_but_not_a_plugin_registry(tmp_path):
    _write(tmp_path, "expertmesh/__init__.py", "")
    _write(tmp_path, "expertmesh/x.py", "from expertmesh.y import g\n\ndef f():\n    return g()\n")
    _write(tmp_path, "expertmesh/y.py", "def g():\n    from expertmesh.x import f\n")
    _write(tmp_path, "expertmesh/plugins/__init__.py", "def load():\n    from expertmesh.plugins import one\n")
    _write(tmp_path, "expertmesh/plugins/one.py", "from expertmesh.plugins import load\n")
    assert cycles(load_time_graph(tmp_path)) == []
    assert cycles(load_time_graph(tmp_path, lazy=True, packages=("expertmesh",))) == [["expertmesh.x", "expertmesh.y"]]


def test_the_checker_sees_a_type_checking_cycle(tmp_path):
    _write(tmp_path, "registry/__init__.py", "")
    _write(tmp_path, "registry/x.py", "from registry import y\n")
    _write(tmp_path, "registry/y.py", "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from registry.x import T\n")
    assert cycles(load_time_graph(tmp_path)) == []
    assert cycles(load_time_graph(tmp_path, type_checking=True)) == [["registry.x", "registry.y"]]


_NO_ML = """
import importlib.abc, sys

class NoML(importlib.abc.MetaPathFinder):   # torch, numpy, safetensors, transformers are absent from this process
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "numpy", "safetensors", "transformers", "peft", "faiss", "flwr"):
            raise ImportError(f"{name} is not installed in a registry-only deployment")

sys.meta_path.insert(0, NoML())
"""


def test_the_registry_publishes_and_serves_without_torch(tmp_path):
    """What ``pip install .[registry]`` must run: the app, an upload verified, a download, with no ML stack."""
    import subprocess
    import sys

    from tests.registry.conftest import ADMIN_TOKEN, make_expert_package, pack

    body, sha = pack(make_expert_package(tmp_path / "pkg", "law-expert"))
    (tmp_path / "pkg.tar").write_bytes(body)
    code = _NO_ML + f"""
from fastapi.testclient import TestClient
from registry.app import create_app
from registry.settings import RegistrySettings
import cli.main

admin = {{"Authorization": "Bearer {ADMIN_TOKEN}"}}
with TestClient(create_app(RegistrySettings(data_dir={str(tmp_path / "data")!r}, admin_token={ADMIN_TOKEN!r}))) as c:
    assert c.post("/v1/owners", json={{"name": "alice"}}, headers=admin).status_code == 201
    tok = c.post("/v1/owners/alice/tokens", json={{"scopes": ["publish", "read"]}}, headers=admin).json()["token"]
    h = {{"Authorization": "Bearer " + tok, "Content-Type": "application/x-tar", "X-Content-SHA256": {sha!r}}}
    r = c.post("/v1/experts/law-expert/versions", content=open({str(tmp_path / "pkg.tar")!r}, "rb").read(),
               headers=h)
    assert r.status_code == 201, r.text
    got = c.get("/v1/experts/law-expert/versions/1/archive", headers=h)
    assert got.status_code == 200 and len(got.content) > 0
assert not [m for m in sys.modules if m.split(".")[0] in ("torch", "numpy", "safetensors")]
print("ok")
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stdout + r.stderr
