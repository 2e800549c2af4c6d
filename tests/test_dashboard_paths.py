"""The dashboard's roots: a path from the browser cannot escape --runs / --checkpoint /
--vectors (``..``, absolute paths, symlinks), and the listings show what is inside only."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from flowgraph.app.dashboard.limits import MAX_PATH_CHARS
from flowgraph.app.dashboard.paths import find_checkpoints, find_vectors, make_roots, resolve_inside
from flowgraph.app.dashboard.state import DashboardState, LRUCache


def _run(folder: Path) -> Path:
    """A folder that looks like a training run (the listing reads only file names)."""
    (folder / "checkpoint").mkdir(parents=True)
    (folder / "checkpoint" / "config.json").write_text("{}")
    (folder / "checkpoint" / "model.safetensors").write_bytes(b"")
    return folder


@pytest.fixture
def tree(tmp_path: Path) -> dict[str, Path]:
    runs = tmp_path / "runs"
    inside = _run(runs / "a")
    _run(runs / "group" / "b")
    outside = _run(tmp_path / "secret")
    (tmp_path / "secret.txt").write_text("no")
    (runs / "nano").mkdir()
    (runs / "nano" / "ckpt.pt").write_bytes(b"")
    return {"root": tmp_path, "runs": runs, "inside": inside, "outside": outside}


def test_relative_and_absolute_paths_inside_resolve(tree):
    roots = make_roots("--runs", [tree["runs"]])
    assert resolve_inside("a", roots) == tree["inside"].resolve()
    assert resolve_inside(str(tree["inside"]), roots) == tree["inside"].resolve()
    assert resolve_inside("group/b/../../a", roots) == tree["inside"].resolve()


@pytest.mark.parametrize(
    "text",
    ["../secret", "../secret.txt", "a/../../secret", "./../runs/../secret", "..", "../../etc"],
)
def test_dot_dot_cannot_leave_the_root(tree, text):
    roots = make_roots("--runs", [tree["runs"]])
    with pytest.raises(ValueError, match=r"outside the dashboard's roots|not found"):
        resolve_inside(text, roots)


def test_absolute_paths_outside_are_refused(tree):
    roots = make_roots("--runs", [tree["runs"]])
    for text in (str(tree["outside"]), "/etc/passwd", "/", str(tree["root"])):
        with pytest.raises(ValueError, match="outside the dashboard's roots"):
            resolve_inside(text, roots)


def test_symlinks_are_followed_before_the_check(tree):
    runs = tree["runs"]
    os.symlink(tree["outside"], runs / "escape")
    os.symlink(tree["inside"], runs / "alias")
    roots = make_roots("--runs", [runs])
    with pytest.raises(ValueError, match="outside the dashboard's roots"):
        resolve_inside("escape", roots)
    with pytest.raises(ValueError, match="outside the dashboard's roots"):
        resolve_inside("escape/checkpoint/config.json", roots)
    assert resolve_inside("alias", roots) == tree["inside"].resolve()
    listed = {path for _, path in find_checkpoints(roots)}
    assert tree["outside"].resolve() not in listed


def test_a_checkpoint_root_admits_only_itself(tree):
    file_root = make_roots("--checkpoint", [tree["runs"] / "nano" / "ckpt.pt"])
    assert resolve_inside(str(tree["runs"] / "nano" / "ckpt.pt"), file_root).name == "ckpt.pt"
    with pytest.raises(ValueError, match="outside"):
        resolve_inside(str(tree["inside"]), file_root)
    dir_root = make_roots("--checkpoint", [tree["inside"]])
    assert resolve_inside(str(tree["inside"] / "checkpoint"), dir_root).name == "checkpoint"
    with pytest.raises(ValueError, match="outside"):
        resolve_inside(str(tree["runs"] / "group" / "b"), dir_root)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("a\x00b", "NUL"),
        ("x" * (MAX_PATH_CHARS + 1), "limit"),
        ("missing", "not found"),
    ],
)
def test_bad_text_is_refused_with_a_message(tree, text, match):
    roots = make_roots("--runs", [tree["runs"]])
    with pytest.raises(ValueError, match=match):
        resolve_inside(text, roots)


def test_no_roots_means_nothing_opens(tree):
    with pytest.raises(ValueError, match="without roots"):
        resolve_inside(str(tree["inside"]), [])


def test_missing_root_names_its_flag(tmp_path):
    with pytest.raises(ValueError, match="--runs: no such file or folder"):
        make_roots("--runs", [tmp_path / "nope"])
    with pytest.raises(ValueError, match="--vectors"):
        DashboardState(None, [], tmp_path / "nope")


def test_listing_finds_runs_once_and_nanogpt_files(tree):
    roots = make_roots("--runs", [tree["runs"]])
    labels = [label for label, _ in find_checkpoints(roots)]
    assert labels == ["runs/a", "runs/group/b", "runs/nano/ckpt.pt"]


def test_every_path_as_listed_opens(tree):
    """The list shows ``runs/a``; typed into "open by path" it was refused (it was tried only
    under the root, as runs/runs/a). The listing is the oracle: each label opens its path, and
    the root's name does not become a way out of the root."""
    roots = make_roots("--runs", [tree["runs"]])
    listed = find_checkpoints(roots)
    assert len(listed) == 3
    for label, real in listed:
        assert resolve_inside(label, roots) == real, label
    for text in ("runs/../secret", "runs/../runs/../secret.txt"):
        with pytest.raises(ValueError, match="outside the dashboard's roots"):
            resolve_inside(text, roots)


def test_vectors_listing(tmp_path):
    vec = tmp_path / "vectors" / "w2v"
    vec.mkdir(parents=True)
    (vec / "vectors.safetensors").write_bytes(b"")
    (vec / "vocab.json").write_text("{}")
    (tmp_path / "vectors" / "half").mkdir()
    (tmp_path / "vectors" / "half" / "vocab.json").write_text("{}")
    roots = make_roots("--vectors", [tmp_path / "vectors"])
    assert find_vectors(roots) == [("vectors/w2v", vec.resolve())]
    assert resolve_inside("vectors/w2v", roots) == vec.resolve()  # as listed


def test_lru_cache_keeps_the_most_recent():
    cache = LRUCache(2)
    calls = []

    def make(key):
        return lambda: calls.append(key) or key * 10

    assert cache.get(1, make(1)) == 10
    assert cache.get(2, make(2)) == 20
    assert cache.get(1, make(1)) == 10  # a hit: 1 becomes the most recent
    assert cache.get(3, make(3)) == 30  # evicts 2
    assert cache.get(2, make(2)) == 20
    assert calls == [1, 2, 3, 2]
    assert (cache.hits, cache.misses, len(cache)) == (1, 4, 2)
    with pytest.raises(ValueError, match="maxsize"):
        LRUCache(0)


def test_lru_cache_computes_a_key_once_for_threads_asking_together():
    cache = LRUCache(4)
    started, release = threading.Event(), threading.Event()
    calls: list[str] = []

    def slow() -> str:
        calls.append("slow")
        started.set()
        release.wait()
        return "value"

    results: list[str] = []
    first = threading.Thread(target=lambda: results.append(cache.get("k", slow)))
    first.start()
    started.wait()
    second = threading.Thread(target=lambda: results.append(cache.get("k", slow)))
    second.start()
    while not cache._pending["k"]._cond._waiters:  # the second thread waits on the first
        time.sleep(0.001)
    release.set()
    first.join()
    second.join()
    assert results == ["value", "value"] and calls == ["slow"]
    assert (cache.hits, cache.misses) == (1, 1)


def test_lru_cache_after_a_failed_computation_the_next_caller_computes():
    cache = LRUCache(4)

    def fail() -> int:
        raise ValueError("bad input")

    with pytest.raises(ValueError, match="bad input"):
        cache.get("k", fail)
    assert cache.get("k", lambda: 7) == 7
    assert not cache._pending


def _run_threads(count: int, target) -> list[threading.Thread]:
    threads = [threading.Thread(target=target, daemon=True) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)  # a hang, not a speed limit
    assert not any(t.is_alive() for t in threads), "a thread still waits on the cache"
    return threads


def test_lru_cache_under_concurrency_computes_once_and_never_hangs():
    # many threads released together onto one key, a failing key and a slow key: one
    # computation per stored key, every waiter of a failing one retries and fails itself
    cache = LRUCache(4)
    barrier = threading.Barrier(16)
    calls = {"ok": 0, "bad": 0}
    lock = threading.Lock()
    results: list[object] = []

    def ok() -> str:
        with lock:
            calls["ok"] += 1
        time.sleep(0.05)  # long enough for the others to queue behind it
        return "value"

    def bad() -> str:
        with lock:
            calls["bad"] += 1
        time.sleep(0.01)
        raise ValueError("bad input")

    def worker() -> None:
        barrier.wait()
        for key, compute in (("ok", ok), ("bad", bad)):
            try:
                results.append(cache.get(key, compute))
            except ValueError as exc:
                results.append(str(exc))

    _run_threads(16, worker)
    assert calls["ok"] == 1 and results.count("value") == 16
    assert results.count("bad input") == 16 and calls["bad"] == 16  # failures are not cached
    assert not cache._pending and not cache._owners


def test_lru_cache_refuses_a_computation_that_needs_itself():
    # waiting for its own key, a thread waited forever: now a RuntimeError, and the key frees
    cache = LRUCache(4)

    def loop() -> int:
        return cache.get("k", loop)

    def via_other() -> int:
        return cache.get("other", lambda: cache.get("k2", via_other))

    with pytest.raises(RuntimeError, match="'k' was asked for while this thread computes it"):
        cache.get("k", loop)
    with pytest.raises(RuntimeError, match="'k2' was asked for"):
        cache.get("k2", via_other)
    assert not cache._pending and cache.get("k", lambda: 3) == 3
