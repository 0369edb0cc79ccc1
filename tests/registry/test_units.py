"""Pieces of the registry on their own: the tar format, the store, settings, migrations vs models, imports."""
from __future__ import annotations

import io
import subprocess
import sys
import tarfile

import pytest
from tests.registry.conftest import make_expert_package, pack, raw_tar

from expertmesh.errors import ConfigError, IntegrityError, PackageError, PayloadTooLargeError
from expertmesh.archive import iter_tar, safe_extract, tar_size
from registry.publishing import identity_of
from registry.settings import RegistrySettings
from registry.store import LocalArtifactStore

ALLOWED = {"a.txt", "b.bin", "README.md"}


def test_pack_is_deterministic_and_standard(tmp_path):
    pkg = make_expert_package(tmp_path / "p", "law-expert")
    body1, sha1 = pack(pkg)
    for p in pkg.iterdir():   # mtimes and modes must not matter
        p.chmod(0o600)
    body2, sha2 = pack(pkg)

    with tarfile.open(fileobj=io.BytesIO(body1)) as tf:
        members = tf.getmembers()
    assert sha1 == sha2 and body1 == body2
    assert [m.name for m in members] == sorted(p.name for p in pkg.iterdir())
    assert all(m.isreg() and m.mtime == 0 and m.mode == 0o644 for m in members)
    assert len(body1) == tar_size(p.stat().st_size for p in pkg.iterdir())


def test_pack_refuses_links_and_subdirectories(tmp_path):
    from expertmesh.archive import pack_directory

    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "sub").mkdir()
    with pytest.raises(PackageError):
        pack_directory(tmp_path / "d", io.BytesIO())
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "link").symlink_to("/etc/hostname")
    with pytest.raises(PackageError):
        pack_directory(tmp_path / "e", io.BytesIO())


def test_iter_tar_notices_a_blob_of_the_wrong_size():
    entries = [("a.txt", 10, lambda: io.BytesIO(b"short"))]
    with pytest.raises(IntegrityError):
        b"".join(iter_tar(entries))


@pytest.mark.parametrize("members,error", [
    ({"../a.txt": b"x"}, "path traversal"),
    ({"/etc/a.txt": b"x"}, "path traversal"),
    ({".hidden": b"x"}, "path traversal"),
    ({"c.exe": b"x"}, "not allowed"),
])
def test_safe_extract_refuses(tmp_path, members, error):
    (tmp_path / "t.tar").write_bytes(raw_tar(members))
    (tmp_path / "out").mkdir()
    with pytest.raises(PackageError, match=error):
        safe_extract(tmp_path / "t.tar", tmp_path / "out", allowed=ALLOWED, max_bytes=1 << 20)
    assert list((tmp_path / "out").iterdir()) == []


def test_safe_extract_caps_size_and_duplicates(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (tmp_path / "big.tar").write_bytes(raw_tar({"a.txt": b"x" * 2000}))
    with pytest.raises(PayloadTooLargeError):
        safe_extract(tmp_path / "big.tar", out, allowed=ALLOWED, max_bytes=1000)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for _ in range(2):
            info = tarfile.TarInfo("b.bin")
            info.size = 1
            tf.addfile(info, io.BytesIO(b"y"))
    (tmp_path / "dup.tar").write_bytes(buf.getvalue())
    out2 = tmp_path / "out2"
    out2.mkdir()
    with pytest.raises(PackageError, match="twice"):
        safe_extract(tmp_path / "dup.tar", out2, allowed=ALLOWED, max_bytes=1 << 20)


def test_store_is_content_addressed_and_verifies(tmp_path):
    store = LocalArtifactStore(tmp_path / "s")
    src = tmp_path / "f"
    src.write_bytes(b"hello")
    import hashlib
    sha = hashlib.sha256(b"hello").hexdigest()

    assert store.put_file(src, sha) is True and store.put_file(src, sha) is False
    with store.open(sha) as f:
        assert f.read() == b"hello"
    with pytest.raises(IntegrityError):
        store.put_file(src, "0" * 64)
    assert list(store.iter_blobs()) == [sha] and store.leftovers() == []
    store.delete(sha)
    assert not store.exists(sha)


def test_identity_ignores_version_only():
    doc = {"name": "x", "files": {"a": "1"}, "version": 3}
    assert identity_of(doc) == identity_of({**doc, "version": 9}) == identity_of({"files": {"a": "1"}, "name": "x"})
    assert identity_of(doc) != identity_of({**doc, "files": {"a": "2"}})


def test_settings_validate_and_read_env(tmp_path):
    with pytest.raises(ConfigError, match="database_url"):
        RegistrySettings(data_dir=tmp_path, database_url="registry.db")
    with pytest.raises(ConfigError, match="admin_token"):
        RegistrySettings(data_dir=tmp_path, admin_token="short")
    with pytest.raises(ConfigError, match="MAX_UPLOAD_MB"):
        RegistrySettings.from_env({"EXPERTMESH_REGISTRY_MAX_UPLOAD_MB": "lots"})
    s = RegistrySettings.from_env({"EXPERTMESH_REGISTRY_DATA_DIR": str(tmp_path), "EXPERTMESH_REGISTRY_MAX_UPLOAD_MB":
                                   "2", "EXPERTMESH_REGISTRY_ADMIN_TOKEN": "x" * 20})
    assert s.max_upload_bytes == 2 * 1024 * 1024 and s.resolved_database_url == f"sqlite:///{tmp_path}/registry.db"
    assert s.describe()["admin_token"] == "set" and "x" * 20 not in str(s.describe())


def test_migrations_match_the_models(db_url):
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from registry.db import make_engine, migrate
    from registry.models import Base

    engine = make_engine(db_url)
    migrate(engine)
    migrate(engine)   # idempotent
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    engine.dispose()
    assert diff == []


def test_core_library_imports_no_web_or_sql():
    code = ("import sys, expertmesh, expertmesh.errors, expertmesh.validate, expertmesh.fileio, "
            "expertmesh.expert.manifest, cli.main, expertmesh.archive; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('fastapi', 'sqlalchemy', 'starlette', 'uvicorn', "
            "'alembic')]; print(bad); sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_startup_clears_only_old_scratch_leftovers(tmp_path):
    import os
    import time

    from registry.publishing import clear_scratch

    (tmp_path / "old.upload").write_bytes(b"x")
    (tmp_path / "unpack-old").mkdir()
    (tmp_path / "young.upload").write_bytes(b"y")
    past = time.time() - 7200
    for p in ("old.upload", "unpack-old"):
        os.utime(tmp_path / p, (past, past))

    assert clear_scratch(tmp_path) == 2
    assert [p.name for p in tmp_path.iterdir()] == ["young.upload"]
