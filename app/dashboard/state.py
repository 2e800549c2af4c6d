"""The dashboard's server-side state: its roots and its caches, one object per app.

The state lives in the Flask app's config (``server.config[STATE_KEY]``), not in a module
global, so two apps in one process (the tests make several) never share roots or caches.
Callbacks and page layouts find it with :func:`current_state` while Dash serves a request.

Loaded checkpoints, saved vectors and computed metrics are kept in small LRU caches: switching
layer or head on a loaded model recomputes a k×k or c×c form, never a file read.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from flowgraph.app.dashboard.paths import find_checkpoints, find_vectors, make_roots, resolve_inside

__all__ = ["STATE_KEY", "DashboardState", "LRUCache", "Prefetcher", "current_state"]

STATE_KEY = "FLOWGRAPH_DASHBOARD"
T = TypeVar("T")
log = logging.getLogger("flowgraph.dashboard")


class LRUCache:
    """A thread-safe least-recently-used cache of computed values (Flask serves requests on
    several threads). A value is computed outside the lock, so other keys are never blocked;
    threads asking for a key that is being computed wait for that computation instead of
    repeating it (the Heads page's two halves, or a prefetch, may ask for one checkpoint at once).
    A computation that raises wakes its waiters, and the next of them computes the key again. A
    computation that asks for its own key (directly or through another cached value) raises
    RuntimeError instead of waiting for itself forever.
    """

    def __init__(self, maxsize: int) -> None:
        if maxsize < 1:
            raise ValueError(f"maxsize must be ≥ 1, got maxsize={maxsize}")
        self.maxsize = maxsize
        self.hits = self.misses = 0
        self._data: OrderedDict[Hashable, Any] = OrderedDict()
        self._pending: dict[Hashable, threading.Event] = {}
        self._owners: dict[Hashable, int] = {}  # the thread computing each pending key
        self._lock = threading.Lock()

    def get(self, key: Hashable, compute: Callable[[], T]) -> T:
        while True:
            with self._lock:
                if key in self._data:
                    self._data.move_to_end(key)
                    self.hits += 1
                    return self._data[key]
                running = self._pending.get(key)
                if running is None:
                    self._pending[key] = done = threading.Event()
                    self._owners[key] = threading.get_ident()
                    self.misses += 1
                    break
                if self._owners[key] == threading.get_ident():
                    raise RuntimeError(
                        f"cache key {key!r} was asked for while this thread computes it "
                        "(a computation that needs its own result never finishes)"
                    )
            running.wait()  # then look again: stored, or it failed and this thread computes
        try:
            value = compute()
            with self._lock:
                self._data[key] = value
                self._data.move_to_end(key)
                while len(self._data) > self.maxsize:
                    self._data.popitem(last=False)
        finally:
            with self._lock:
                del self._pending[key], self._owners[key]
            done.set()
        return value

    def __len__(self) -> int:
        return len(self._data)


class Prefetcher:
    """One daemon thread that computes queued jobs in order, each key at most once: the Heads
    page queues a checkpoint's other heads after showing one, so a later switch is a cache hit.
    A failing job is logged and dropped (the page reports the error if the user asks for it).

    Bounded: at most ``max_jobs`` wait (a new job pushes out the oldest — the user has moved
    on from those settings) and ``max_seen`` keys are remembered. Unbounded, every distinct
    input typed queued a checkpoint's heads again, so a burst of requests left minutes of work
    queued and a set of keys that only grew."""

    def __init__(self, max_jobs: int = 256, max_seen: int = 4096) -> None:
        if max_jobs < 1 or max_seen < max_jobs:
            raise ValueError(
                f"expected 1 ≤ max_jobs ≤ max_seen, got max_jobs={max_jobs}, max_seen={max_seen}"
            )
        self.max_jobs, self.max_seen = max_jobs, max_seen
        self._jobs: deque[tuple[Hashable, Callable[[], object]]] = deque()
        self._seen: OrderedDict[Hashable, None] = OrderedDict()
        self._ready = threading.Condition()
        self._thread: threading.Thread | None = None
        self.done = self.dropped = 0

    def submit(self, key: Hashable, job: Callable[[], object]) -> bool:
        """Queue ``job`` unless ``key`` was queued before; True when queued."""
        with self._ready:
            if key in self._seen:
                return False
            self._seen[key] = None
            if len(self._jobs) == self.max_jobs:
                old, _ = self._jobs.popleft()
                self._seen.pop(old, None)  # never computed: it may be queued again
                self.dropped += 1
            while len(self._seen) > self.max_seen:
                self._seen.popitem(last=False)
            self._jobs.append((key, job))
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._work, name="flowgraph-prefetch", daemon=True
                )
                self._thread.start()
            self._ready.notify()
        return True

    def _work(self) -> None:
        while True:
            with self._ready:
                while not self._jobs:
                    self._ready.wait()
                key, job = self._jobs.popleft()
            try:
                job()
            except Exception:
                log.debug("prefetch %r failed", key, exc_info=True)
            with self._ready:
                self.done += 1

    def idle(self) -> bool:
        """True when no job is waiting (the running one may still be finishing)."""
        with self._ready:
            return not self._jobs

    def __len__(self) -> int:
        """The jobs waiting."""
        with self._ready:
            return len(self._jobs)


class DashboardState:
    """Roots and caches of one dashboard app.

    Parameters
    ----------
    runs : a folder of training runs (``--runs``), or None.
    checkpoints : single checkpoints (``--checkpoint``): run folders, Hugging Face folders,
        nanoGPT ``.pt`` files.
    vectors : a folder of saved word2vec vectors (``--vectors``), or None.
    """

    def __init__(
        self, runs: Path | None, checkpoints: Sequence[Path], vectors: Path | None
    ) -> None:
        self.checkpoint_roots = make_roots(
            "--runs", [runs] if runs is not None else [], folders=True
        )
        self.checkpoint_roots += make_roots("--checkpoint", list(checkpoints))
        self.vector_roots = make_roots(
            "--vectors", [vectors] if vectors is not None else [], folders=True
        )
        self.checkpoints = LRUCache(8)
        self.vectors = LRUCache(4)
        self.uploads = LRUCache(8)  # uploaded .npz bytes by sha256 (≤ 4 MB each)
        self.results = LRUCache(512)  # patterns, reports, metrics and figures, keyed by inputs
        self.prefetch = Prefetcher()

    # --- listings -----------------------------------------------------------------------------
    def checkpoint_options(self) -> list[dict[str, str]]:
        """Dropdown options ``{"label", "value"}`` of every checkpoint under the roots."""
        return [{"label": label, "value": str(path)} for label, path in self.list_checkpoints()]

    def list_checkpoints(self) -> list[tuple[str, Path]]:
        return find_checkpoints(self.checkpoint_roots)

    def list_vectors(self) -> list[tuple[str, Path]]:
        return find_vectors(self.vector_roots)

    # --- opening ------------------------------------------------------------------------------
    def resolve_checkpoint(self, text: object) -> Path:
        """The real path of a checkpoint named in the UI; refuses anything outside the roots."""
        return resolve_inside(text, self.checkpoint_roots, "checkpoint")

    def resolve_vectors(self, text: object) -> Path:
        return resolve_inside(text, self.vector_roots, "vectors")

    def checkpoint(self, text: object) -> Any:
        """The loaded ``models.heads.Checkpoint`` named by ``text`` (cached)."""
        real = self.resolve_checkpoint(text)

        def load() -> Any:
            from flowgraph.models.heads import (
                load_checkpoint,  # torch is imported on first use only
            )

            return load_checkpoint(real)

        return self.checkpoints.get(str(real), load)

    def word_vectors(self, text: object) -> Any:
        """The loaded ``models.word2vec.WordVectors`` named by ``text`` (cached)."""
        real = self.resolve_vectors(text)

        def load() -> Any:
            from flowgraph.models.word2vec import WordVectors

            return WordVectors.load(real)

        return self.vectors.get(str(real), load)

    def cached(self, key: Hashable, compute: Callable[[], T]) -> T:
        """A computed result, memoised under ``key`` (which must name every input)."""
        return self.results.get(key, compute)

    def warm(self, limit: int = 4) -> list[str]:
        """Load up to ``limit`` listed checkpoints now (start-up), so the first visit to the
        Heads page does not pay for importing torch and reading files; returns their labels.
        A checkpoint that fails to load is skipped here and reported when it is chosen."""
        done = []
        for label, path in self.list_checkpoints()[:limit]:
            try:
                self.checkpoint(str(path))
            except Exception:  # reported in the page when the user picks it
                continue
            done.append(label)
        return done


def current_state() -> DashboardState:
    """The state of the app serving the current request (for callbacks and page layouts)."""
    import flask

    state = flask.current_app.config.get(STATE_KEY)
    if not isinstance(state, DashboardState):
        raise RuntimeError("no dashboard state: the app was not made by create_app")
    return state
