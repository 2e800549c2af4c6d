"""``train_word2vec``: skip-gram with negative sampling (Mikolov et al. 2013), word2vec.c's
algorithm — ``min_count``, frequent-word subsampling, a reduced (dynamic) window, negatives
∝ count^0.75, a centre table initialised uniform in ±0.5/d and a context table of zeros, and a
learning rate decaying linearly from ``alpha`` to ``alpha · 1e-4`` over all epochs.

On the CPU a compiled loop (numba) trains one pair at a time on ``workers`` threads,
deterministically for a seed and a worker count (see ``models.word2vec._cpu``). On CUDA (or with
``backend="torch"``) large batches of pairs go through torch gathers, ``einsum`` and
``index_add_`` (see ``models.word2vec._torch``); on the CPU that path is deterministic too.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from flowgraph import _validate
from flowgraph.models.word2vec.corpus import as_corpus, encode_chunks
from flowgraph.models.word2vec.vectors import WordVectors
from flowgraph.models.word2vec.vocab import Vocab, build_vocab, check_sample

__all__ = ["train_word2vec"]

BACKENDS = ("auto", "numba", "torch")
# Workers see each other's updates once per chunk, and every chunk pays a merge of the rows it
# touched: with negatives that is most of the context table, so the cost per word grows with
# V / chunk. Each worker's share is therefore V words, clipped to [10k, 25k]: on head500 with
# WordSim353 (docs/word2vec.md) 10k–25k each gave Spearman 0.40–0.44 (mean of 3 seeds;
# gensim 0.38), 30k–50k each 0.35–0.40 and 100k each 0.22–0.24.
CHUNK_WORDS_PER_WORKER = (10_000, 25_000)  # (least, most) corpus words per worker per chunk
HOGWILD_CHUNK_WORDS_PER_WORKER = 50_000  # no merge: the chunk only bounds the threads' barrier
DEFAULT_TORCH_BATCH = {"cpu": 4096, "cuda": 16384}  # pairs per step; see docs/word2vec.md


def _available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on every platform
        return os.cpu_count() or 1


def _check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name}: expected an integer ≥ {minimum}, got {value!r}")
    return int(value)


def _resolve_backend(backend: str, device: torch.device) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend: expected one of {BACKENDS}, got {backend!r}")
    if backend == "numba" and device.type != "cpu":
        raise ValueError(f"backend: 'numba' runs on the CPU only, got device={str(device)!r}")
    if backend != "auto":
        return backend
    if device.type != "cpu":
        return "torch"
    try:
        import numba  # noqa: F401  (the compiled CPU loop)
    except ImportError:
        return "torch"
    return "numba"


def _check_sizes(
    vocab_size: int, vector_size: int, total: int, backend: str, workers: int, deterministic: bool
) -> None:
    """Refuse, before the tables are allocated, a run whose tables do not fit in memory or whose
    word count overflows the compiled loop's int64."""
    if total >= 2**63:
        raise ValueError(
            f"epochs: epochs × corpus words = {total:,} overflows int64; use fewer epochs"
        )
    # the float64 draw, the two float32 tables, per numba worker a copy of both and two flag
    # bytes a word (hogwild: the flags only)
    table = vocab_size * vector_size * 4
    threads = workers if backend == "numba" and workers > 1 else 0
    per_worker = 2 * table + 2 * vocab_size if deterministic else 2 * vocab_size
    _validate.memory(
        f"word2vec (V={vocab_size:,}, vector_size={vector_size:,}, workers={workers})",
        4 * table + threads * per_worker,
        _validate.MEMORY_LIMIT_BYTES,
        fix="use a smaller vector_size or fewer workers",
    )


def default_chunk_words(backend: str, workers: int, deterministic: bool, vocab_size: int) -> int:
    """Corpus words per chunk when ``chunk_words`` is not given (see the constants above)."""
    if backend != "numba":
        return 100_000
    if not deterministic:
        return HOGWILD_CHUNK_WORDS_PER_WORKER * workers
    least, most = CHUNK_WORDS_PER_WORKER
    return min(max(vocab_size, least), most) * workers


def train_word2vec(
    sentences: Iterable[Sequence[str]] | str | os.PathLike[str],
    vector_size: int = 100,
    window: int = 5,
    negative: int = 5,
    min_count: int = 5,
    sample: float = 1e-3,
    epochs: int = 5,
    alpha: float = 0.025,
    batch_size: int | None = None,
    seed: int = 0,
    device: str | torch.device | None = None,
    *,
    workers: int | None = None,
    deterministic: bool = True,
    backend: str = "auto",
    chunk_words: int | None = None,
    progress: bool = True,
) -> WordVectors:
    """Train skip-gram word vectors with negative sampling and return the centre vectors.

    Parameters:
        sentences: a re-iterable of token lists (e.g. a list of lists of str), or the path of
            a text file with one sentence per line (streamed: it may exceed memory). A
            one-shot iterator is refused: the corpus is read ``epochs + 1`` times.
        vector_size, window, negative, min_count, sample, epochs, alpha: word2vec's options
            (``window`` is the largest reduced window; ``sample = 0`` disables subsampling).
        batch_size: pairs per step of the torch path (default 4096 on the CPU, 16384 on CUDA);
            the numba loop updates after every pair and ignores it.
        seed: seeds the initial vectors and every random draw.
        device: ``None`` or ``"cpu"``, or a CUDA device.
        workers: CPU threads (default: the cores available). The numba result depends on the
            seed and on ``workers``, never on thread timing.
        deterministic: numba workers train private copies merged after each chunk (the
            result depends on the seed and ``workers`` only). ``False``: hogwild, as gensim
            and word2vec.c — shared tables, no copies or merges (faster with a large
            vocabulary), results vary from run to run when ``workers > 1``.
        backend: ``"auto"`` (numba on the CPU, torch on CUDA), ``"numba"`` or ``"torch"``.
        chunk_words: corpus tokens per chunk (default per numba worker: the vocabulary size
            clipped to 10,000–25,000, or 50,000 with ``deterministic=False``; 100,000 for
            torch); numba workers merge their updates after each chunk.
        progress: show a tqdm bar counting corpus words per second.

    Returns:
        :class:`WordVectors` over the vocabulary (most frequent word first).

    Raises:
        ValueError: a bad option, an empty corpus, or a vocabulary empty after ``min_count``.
        TypeError: ``sentences`` is a one-shot iterator or not a corpus of str tokens.
    """
    vector_size = _check_int("vector_size", vector_size, 1)
    window = _check_int("window", window, 1)
    negative = _check_int("negative", negative, 1)
    epochs = _check_int("epochs", epochs, 1)
    seed = _check_int("seed", seed, 0)
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha < math.inf:
        raise ValueError(f"alpha: expected a number > 0, got {alpha!r}")
    check_sample(sample)
    for name, flag in (("deterministic", deterministic), ("progress", progress)):
        if not isinstance(flag, bool):
            raise TypeError(f"{name}: expected a bool, got {flag!r}")
    if batch_size is not None:
        batch_size = _check_int("batch_size", batch_size, 1)
    workers = _available_cores() if workers is None else _check_int("workers", workers, 1)
    try:
        dev = torch.device("cpu" if device is None else device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"device: expected 'cpu', 'cuda' or 'cuda:N', got {device!r}") from exc
    if dev.type not in ("cpu", "cuda"):  # meta holds no values; others have no generator here
        raise ValueError(f"device: expected 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    backend = _resolve_backend(backend, dev)
    if chunk_words is not None:
        chunk_words = _check_int("chunk_words", chunk_words, 1)
    corpus = as_corpus(sentences)
    vocab = build_vocab(corpus, min_count=min_count)
    if chunk_words is None:
        chunk_words = default_chunk_words(backend, workers, deterministic, len(vocab))
    _check_sizes(len(vocab), vector_size, epochs * vocab.total_words, backend, workers,
                 deterministic)  # fmt: skip
    keep_v = vocab.keep_probabilities(sample)

    rng = np.random.default_rng(seed)
    # word2vec.c: centre vectors uniform in [-0.5/d, 0.5/d), context vectors zero
    v_vd = ((rng.random((len(vocab), vector_size)) - 0.5) / vector_size).astype(np.float32)
    u_vd = np.zeros_like(v_vd)
    total = epochs * vocab.total_words
    bar = tqdm(
        total=epochs * vocab.raw_words, unit="word", unit_scale=True, disable=not progress,
        desc=f"word2vec ({backend}, {dev.type})",
    )  # fmt: skip
    opts = dict(
        window=window, negative=negative, alpha=float(alpha), epochs=epochs, total=total,
        chunk_words=chunk_words,
    )  # fmt: skip
    with bar:
        if backend == "numba":
            _train_numba(
                v_vd, u_vd, corpus, vocab, keep_v, rng, bar, workers=workers,
                deterministic=deterministic, **opts,
            )  # fmt: skip
            vectors = v_vd
        else:
            vectors = _train_torch(
                v_vd, u_vd, corpus, vocab, keep_v, dev, bar, seed=seed, batch_size=batch_size,
                **opts,
            )  # fmt: skip
    return WordVectors(vocab.words, vectors, counts=vocab.counts)


def _train_numba(
    v_vd: np.ndarray, u_vd: np.ndarray, corpus, vocab: Vocab, keep_v: np.ndarray,
    rng: np.random.Generator, bar, *, window: int, negative: int, alpha: float, epochs: int,
    total: int, chunk_words: int, workers: int, deterministic: bool,
) -> None:  # fmt: skip
    import numba

    from flowgraph.models.word2vec import _cpu  # numba compiles (or loads its cache) on first use

    numba.set_num_threads(min(workers, numba.config.NUMBA_NUM_THREADS))
    copies = scratch = None
    if workers > 1 and not deterministic:
        scratch = np.zeros((workers, len(v_vd), 2), dtype=np.uint8)
    elif workers > 1:
        copies = (
            np.repeat(v_vd[None], workers, 0),
            np.repeat(u_vd[None], workers, 0),
            np.zeros((workers, len(v_vd), 2), dtype=np.uint8),
        )
    alias_prob_v, alias_v = _cpu.alias_table(vocab.noise_probabilities())
    consts = dict(
        keep_v=keep_v.astype(np.float32), alias_prob_v=alias_prob_v, alias_v=alias_v,
        sig_e=_cpu.sigmoid_table(), window=window, negative=negative, alpha=float(alpha),
        total_words=total,
    )  # fmt: skip
    words_before = 0
    for _ in range(epochs):
        for ids_n, bounds_s1, raw in encode_chunks(corpus, vocab.index, chunk_words):
            seeds_t = rng.integers(1, 2**63, size=workers, dtype=np.uint64)
            _cpu.train_block(
                v_vd, u_vd, copies, ids_n, bounds_s1, words_before=words_before,
                seeds_t=seeds_t, hogwild_scratch_tv2=scratch, **consts,
            )  # fmt: skip
            words_before += len(ids_n)
            bar.update(raw)


def _train_torch(
    v_vd: np.ndarray, u_vd: np.ndarray, corpus, vocab: Vocab, keep_v: np.ndarray,
    device: torch.device, bar, *, window: int, negative: int, alpha: float, epochs: int,
    total: int, chunk_words: int, seed: int, batch_size: int | None,
) -> np.ndarray:  # fmt: skip
    from flowgraph.models.word2vec import _torch

    if batch_size is None:
        batch_size = DEFAULT_TORCH_BATCH["cuda" if device.type == "cuda" else "cpu"]
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    state = _torch.TorchState(
        v_vd=torch.from_numpy(v_vd).to(device),
        u_vd=torch.from_numpy(u_vd).to(device),
        keep_v=torch.from_numpy(keep_v.astype(np.float32)).to(device),
        table_n=_torch.noise_table(vocab.noise_cum_table(), device),
        generator=generator,
    )
    words_before = 0
    for _ in range(epochs):
        for ids_n, bounds_s1, raw in encode_chunks(corpus, vocab.index, chunk_words):
            _torch.train_chunk(
                state, ids_n, bounds_s1, window=window, negative=negative, alpha=float(alpha),
                words_before=words_before, total_words=total, batch_size=batch_size,
            )  # fmt: skip
            words_before += len(ids_n)
            bar.update(raw)
    return state.v_vd.cpu().numpy()
