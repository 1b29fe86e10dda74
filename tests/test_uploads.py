"""The dashboard's upload store: a private folder, atomic 0600 files, hash-checked reuse, a size cap."""

import hashlib
import io
import os
import stat
import threading
import time
from pathlib import Path

import pytest
import torch

from lrviz import sources, uploads
from lrviz.errors import LrvizError
from lrviz.storage import private_dir

SD = sources.STATE_DICT_SUFFIXES


def mode(path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def blob(i: int, size: int = 30) -> bytes:
    """``size`` bytes that differ for every ``i``."""
    return (f"upload-{i:04d}-".encode() * size)[:size]


@pytest.fixture
def cache(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setenv("LRVIZ_CACHE_DIR", str(root))
    monkeypatch.delenv(uploads.UPLOAD_CAP_ENV, raising=False)
    return root


def stored(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir() if uploads._STORED_NAME.match(p.name)}


# ---- permissions ---------------------------------------------------------------------------------


def test_upload_folder_and_files_are_private_even_with_an_open_umask(cache):
    old = os.umask(0)
    try:
        path, sha = uploads.store_upload(b"weights", "w.pt", SD)
    finally:
        os.umask(old)
    folder = cache / "uploads"
    assert path.parent == folder and uploads.upload_dir() == folder
    assert mode(folder) == 0o700 and mode(path) == 0o600
    assert path.name == f"{sha}.pt" and sha == hashlib.sha256(b"weights").hexdigest() and path.read_bytes() == b"weights"
    assert [p.name for p in folder.iterdir() if p.name.endswith(".tmp")] == []  # no temporary file left behind


def test_an_existing_folder_open_to_others_is_made_private(cache):
    folder = cache / "uploads"
    folder.mkdir(parents=True)
    os.chmod(folder, 0o777)
    assert uploads.upload_dir() == folder and mode(folder) == 0o700


def test_a_folder_chosen_by_the_caller_is_refused_not_changed_when_open_to_others(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o755)
    with pytest.raises(LrvizError, match=r"mode 755.*chmod 700"):
        uploads.store_upload(b"weights", "w.pt", SD, directory=shared)
    assert mode(shared) == 0o755 and list(shared.iterdir()) == []
    path, _ = uploads.store_upload(b"weights", "w.pt", SD, directory=tmp_path / "new")  # created private
    assert mode(path.parent) == 0o700 and mode(path) == 0o600


def test_symlinked_upload_folder_is_refused(cache, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    cache.mkdir()
    (cache / "uploads").symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(LrvizError, match="symbolic link.*LRVIZ_CACHE_DIR"):
        uploads.store_upload(b"weights", "w.pt", SD)
    with pytest.raises(LrvizError, match="symbolic link"):
        uploads.store_upload(b"weights", "w.pt", SD, directory=cache / "uploads")
    assert list(elsewhere.iterdir()) == []


def test_folder_of_another_user_is_refused(cache, monkeypatch):
    folder = private_dir(cache / "uploads")
    monkeypatch.setattr(os, "getuid", lambda: os.stat(folder).st_uid + 1)
    with pytest.raises(LrvizError, match="belongs to user id"):
        uploads.store_upload(b"weights", "w.pt", SD)


def test_a_file_where_the_folder_should_be_is_refused(cache):
    cache.mkdir()
    (cache / "uploads").write_bytes(b"x")
    with pytest.raises(LrvizError, match="not a folder"):
        uploads.upload_dir()


# ---- reuse only on a matching hash ---------------------------------------------------------------


def test_reuse_on_hash_match_keeps_the_file_and_refreshes_its_time(cache):
    path, sha = uploads.store_upload(blob(1), "a.pt", SD)
    past = time.time() - 1000
    os.utime(path, (past, past))
    ino = os.stat(path).st_ino
    path2, sha2 = uploads.store_upload(blob(1), "renamed.pth", (".pth",) + SD)
    assert (path2, sha2) == (path.with_suffix(".pth"), sha)  # another suffix is another file
    path3, _ = uploads.store_upload(blob(1), "again.pt", SD)
    assert path3 == path and os.stat(path).st_ino == ino  # not rewritten
    assert os.stat(path).st_mtime > past + 900  # touched: most recently used


@pytest.mark.parametrize("damage", ["same size", "truncated", "longer"])
def test_a_tampered_stored_file_is_rewritten(cache, damage):
    data = blob(2, 64)
    path, sha = uploads.store_upload(data, "w.pt", SD)
    bad = {"same size": bytes(reversed(data)), "truncated": data[:10], "longer": data + b"!"}[damage]
    assert bad != data
    path.write_bytes(bad)
    path2, sha2 = uploads.store_upload(data, "w.pt", SD)
    assert (path2, sha2) == (path, sha) and path.read_bytes() == data and mode(path) == 0o600


def test_a_symlink_at_the_stored_name_is_replaced_not_followed(cache, tmp_path):
    data = blob(3)
    folder = uploads.upload_dir()
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"do not touch")
    link = folder / f"{hashlib.sha256(data).hexdigest()}.pt"
    link.symlink_to(victim)
    path, _ = uploads.store_upload(data, "w.pt", SD)
    assert path == link and not path.is_symlink() and path.read_bytes() == data
    assert victim.read_bytes() == b"do not touch"


def test_concurrent_stores_of_the_same_upload_agree(cache):
    data = os.urandom(1 << 20)
    results, errors = [], []

    def worker():
        try:
            for _ in range(5):
                results.append(uploads.store_upload(data, "w.pt", SD))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 20 and len(set(results)) == 1
    path = results[0][0]
    assert path.read_bytes() == data and stored(path.parent) == {path.name}


# ---- size cap, least recently used first ---------------------------------------------------------


def test_cleanup_removes_the_least_recently_used_first(cache):
    t0 = time.time() - 10_000
    paths = []
    for i in range(3):  # 3 × 30 bytes under a 100-byte cap
        p, _ = uploads.store_upload(blob(i), "w.pt", SD, cap=100)
        os.utime(p, (t0 + 10 * i, t0 + 10 * i))
        paths.append(p)
    folder = paths[0].parent
    assert stored(folder) == {p.name for p in paths}
    uploads.store_upload(blob(0), "w.pt", SD, cap=100)  # reuse: #0 becomes the most recently used
    p3, _ = uploads.store_upload(blob(3), "w.pt", SD, cap=100)  # 120 bytes > 100: the oldest (#1) goes
    assert stored(folder) == {paths[0].name, paths[2].name, p3.name}
    os.utime(p3, (t0 + 30, t0 + 30))
    p4, _ = uploads.store_upload(blob(4, 60), "w.pt", SD, cap=100)  # 150 > 100: #2 (t0+20), then #3 (t0+30) go
    assert stored(folder) == {paths[0].name, p4.name}
    assert sum(p.stat().st_size for p in folder.iterdir() if uploads._STORED_NAME.match(p.name)) == 90


def test_cap_is_respected_over_many_uploads(cache, monkeypatch):
    monkeypatch.setenv(uploads.UPLOAD_CAP_ENV, "1000")
    assert uploads.upload_cap() == 1000
    rng = torch.Generator().manual_seed(0)
    order = []
    t0 = time.time() - 10_000
    for i in range(40):
        size = int(torch.randint(50, 400, (1,), generator=rng))
        p, _ = uploads.store_upload(blob(i, size), "w.pt", SD)
        os.utime(p, (t0 + i, t0 + i))
        order.append((p.name, size))
        sizes = {q.name: q.stat().st_size for q in p.parent.iterdir() if uploads._STORED_NAME.match(q.name)}
        assert sum(sizes.values()) <= 1000 and p.name in sizes
        # what survives is the newest uploads that fit (the newest one always)
        expect, total = set(), 0
        for name, s in reversed(order):
            if total + s > 1000:
                break
            expect.add(name)
            total += s
        assert set(sizes) == expect, (i, sorted(sizes), sorted(expect))


def test_an_upload_larger_than_the_cap_is_refused_and_a_bad_cap_explained(cache, monkeypatch):
    with pytest.raises(LrvizError, match="LRVIZ_UPLOAD_CAP_BYTES"):
        uploads.store_upload(blob(1, 200), "w.pt", SD, cap=100)
    monkeypatch.setenv(uploads.UPLOAD_CAP_ENV, "lots")
    with pytest.raises(LrvizError, match="'lots' is not a positive number of bytes"):
        uploads.store_upload(blob(1), "w.pt", SD)


def test_only_stored_uploads_and_stale_temporaries_are_removed(cache):
    folder = uploads.upload_dir()
    mine = folder / "notes.txt"
    mine.write_bytes(b"x" * 500)
    stale = folder / ".abc.pt.123.tmp"
    fresh = folder / ".def.pt.456.tmp"
    stale.write_bytes(b"partial")
    fresh.write_bytes(b"partial")
    old = time.time() - 2 * uploads.STALE_TEMP_SECONDS
    os.utime(stale, (old, old))
    uploads.store_upload(blob(1), "w.pt", SD, cap=40)
    assert mine.exists() and fresh.exists() and not stale.exists()


# ---- the dashboard stores an upload once per session ---------------------------------------------


def test_dashboard_stores_an_uploaded_state_dict_once(cache, monkeypatch):
    pytest.importorskip("streamlit")
    from streamlit.testing.v1 import AppTest

    from lrviz.models import load_model

    buf = io.BytesIO()
    torch.save(load_model("demo").module.state_dict(), buf)
    calls = []
    real = sources.store_upload  # what state_dict_source stores an upload with
    monkeypatch.setattr(sources, "store_upload", lambda *a, **k: calls.append(a[1]) or real(*a, **k))
    app = Path(__file__).resolve().parents[1] / "app.py"
    at = AppTest.from_file(str(app), default_timeout=120).run()
    at.radio(key="builtin_weights").set_value("upload").run()
    at.file_uploader(key="sd_upload_builtin").set_value(("mine.pt", buf.getvalue(), "application/octet-stream")).run()
    assert not at.exception, [e.value for e in at.exception]
    ctx = at.session_state["_lrviz_ctx"]
    path = sources.upload_path(ctx.source)
    assert ctx.source.key.startswith("state_dict:demo:") and path.parent == cache / "uploads" and mode(path) == 0o600
    at.select_slider(key="quick_n").set_value(100).run()
    at.run()
    assert not at.exception and calls == ["mine.pt"]
    path.unlink()  # pruned meanwhile (size cap): the next rerun stores it again
    at.run()
    assert not at.exception and calls == ["mine.pt", "mine.pt"] and path.is_file()
