"""models.word2vec training: the vocabulary, subsampling and noise formulas against hand
computations, determinism, planted co-occurrence structure learned by both backends, corpus
streaming (text files, one-shot iterators) and the bad-input errors."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flowgraph.models.word2vec import WordVectors, train_word2vec
from flowgraph.models.word2vec.corpus import as_corpus, encode_chunks
from flowgraph.models.word2vec.vocab import build_vocab

pytestmark = pytest.mark.usefixtures("one_torch_thread")

GROUPS = [[f"{g}{i}" for i in range(5)] for g in "abcd"]  # 4 topics × 5 words


def planted_corpus(sentences: int = 400, length: int = 8, seed: int = 0) -> list[list[str]]:
    """Each sentence draws its words from one group: words of a group co-occur, words of
    different groups never do."""
    rng = np.random.default_rng(seed)
    out = []
    for n in range(sentences):
        group = GROUPS[n % len(GROUPS)]
        out.append([group[i] for i in rng.integers(0, len(group), length)])
    return out


SMALL = dict(vector_size=16, window=3, negative=3, min_count=1, sample=0.0, epochs=3)


# --- vocabulary ---------------------------------------------------------------------------------
def test_vocab_counts_min_count_and_order() -> None:
    sentences = [["b", "a", "c"], ["a", "b", "d"], ["a", "e", "b"], ["c"]]
    vocab = build_vocab(sentences, min_count=2)
    assert vocab.words == ["b", "a", "c"]  # b and a tie at 3: b appeared first
    assert vocab.counts.tolist() == [3, 3, 2]
    assert vocab.raw_words == 10 and vocab.total_words == 8
    assert vocab.index == {"b": 0, "a": 1, "c": 2}


def test_vocab_ties_keep_first_appearance() -> None:
    vocab = build_vocab([["y", "x", "x", "y", "z"]], min_count=1)
    assert vocab.words == ["y", "x", "z"]


@given(
    counts=st.lists(st.integers(1, 10_000), min_size=1, max_size=30),
    sample=st.sampled_from([0.0, 1e-5, 1e-3, 0.1, 0.5]),
)
@settings(max_examples=40, deadline=None)
def test_keep_probabilities_match_word2vec_formula(counts: list[int], sample: float) -> None:
    sentences = [[f"w{i}"] * c for i, c in enumerate(counts)]
    vocab = build_vocab(sentences, min_count=1)
    keep = vocab.keep_probabilities(sample)
    total = sum(counts)
    for word, p in zip(vocab.words, keep, strict=True):
        c = counts[int(word[1:])]
        if sample == 0:
            expected = 1.0
        else:
            t = sample * total  # word2vec.c: (sqrt(cn / (sample·train_words)) + 1) · … / cn
            expected = min(1.0, (math.sqrt(c / t) + 1) * t / c)
        assert p == pytest.approx(expected, rel=1e-12)


@given(counts=st.lists(st.integers(1, 100_000), min_size=1, max_size=50))
@settings(max_examples=40, deadline=None)
def test_noise_distribution_is_count_to_the_three_quarters(counts: list[int]) -> None:
    vocab = build_vocab([[f"w{i}"] * c for i, c in enumerate(counts)], min_count=1)
    weights = np.array([counts[int(w[1:])] ** 0.75 for w in vocab.words])
    np.testing.assert_allclose(vocab.noise_probabilities(), weights / weights.sum(), rtol=1e-12)
    # the integer cumulative table (the torch table is built from it): widths are the probabilities
    table = vocab.noise_cum_table()
    widths = np.diff(np.concatenate([[0], table])) / table[-1]
    np.testing.assert_allclose(widths, weights / weights.sum(), atol=2 / table[-1])


def test_torch_noise_table_draws_count_to_the_three_quarters() -> None:
    import torch

    from flowgraph.models.word2vec import _torch

    vocab = build_vocab([["a"] * 1000, ["b"] * 100, ["c"] * 10, ["d"]], min_count=1)
    table = _torch.noise_table(vocab.noise_cum_table(), torch.device("cpu"))
    freq = np.bincount(table.numpy(), minlength=4) / table.numel()
    np.testing.assert_allclose(freq, vocab.noise_probabilities(), atol=2 / table.numel())


@given(counts=st.lists(st.integers(1, 100_000), min_size=1, max_size=60))
@settings(max_examples=40, deadline=None)
def test_alias_table_is_the_noise_distribution(counts: list[int]) -> None:
    """The numba loop draws negatives with Walker's alias method: i uniform, kept with
    prob_v[i], else alias_v[i]. Summing those masses back gives the distribution exactly."""
    from flowgraph.models.word2vec import _cpu

    vocab = build_vocab([[f"w{i}"] * c for i, c in enumerate(counts)], min_count=1)
    p_v = vocab.noise_probabilities()
    prob_v, alias_v = _cpu.alias_table(p_v)
    assert prob_v.min() >= 0 and prob_v.max() <= 1 and alias_v.min() >= 0
    mass_v = prob_v.astype(np.float64).copy()
    np.add.at(mass_v, alias_v, 1.0 - prob_v.astype(np.float64))
    np.testing.assert_allclose(mass_v / len(p_v), p_v, atol=1e-6)


def test_alias_draws_follow_the_noise_distribution() -> None:
    from flowgraph.models.word2vec import _cpu

    vocab = build_vocab([["a"] * 1000, ["b"] * 100, ["c"] * 10, ["d"]], min_count=1)
    prob_v, alias_v = _cpu.alias_table(vocab.noise_probabilities())
    rng = np.random.default_rng(0)
    i = rng.integers(0, 4, 200_000)
    drawn = np.where(rng.random(i.size) < prob_v[i], i, alias_v[i])
    freq = np.bincount(drawn, minlength=4) / i.size
    np.testing.assert_allclose(freq, vocab.noise_probabilities(), atol=0.005)


def test_encode_chunks_drops_unknown_words_and_keeps_sentence_bounds() -> None:
    index = {"a": 0, "b": 1}
    chunks = list(encode_chunks([["a", "x", "b"], ["y"], ["b", "b"]], index, chunk_words=4))
    assert len(chunks) == 2  # 3 + 1 tokens reach 4, then the last sentence
    (ids0, bounds0, raw0), (ids1, bounds1, raw1) = chunks
    assert ids0.tolist() == [0, 1] and bounds0.tolist() == [0, 2, 2] and raw0 == 4
    assert ids1.tolist() == [1, 1] and bounds1.tolist() == [0, 2] and raw1 == 2


# --- training -----------------------------------------------------------------------------------
def _within_minus_across(wv: WordVectors) -> float:
    within, across = [], []
    words = [w for g in GROUPS for w in g]
    for i, a in enumerate(words):
        for b in words[i + 1 :]:
            (within if a[0] == b[0] else across).append(wv.similarity(a, b))
    return float(np.mean(within) - np.mean(across))


@pytest.mark.parametrize(
    ("backend", "workers", "deterministic"),
    [("numba", 1, True), ("numba", 2, True), ("numba", 2, False), ("torch", 1, True)],
)
def test_words_that_co_occur_end_up_closer(backend: str, workers: int, deterministic) -> None:
    wv = train_word2vec(
        planted_corpus(), **SMALL, backend=backend, workers=workers, batch_size=256,
        deterministic=deterministic, progress=False,
    )  # fmt: skip
    assert sorted(wv.words) == sorted(w for g in GROUPS for w in g)
    assert wv.vectors.shape == (20, 16) and wv.vectors.dtype == np.float32
    assert _within_minus_across(wv) > 0.3
    for group in GROUPS:  # every word's nearest neighbours are its own group
        neighbours = {w for w, _ in wv.most_similar(group[0], k=4)}
        assert neighbours == set(group[1:]), (group[0], wv.most_similar(group[0], k=4))


def test_untrained_vectors_show_no_structure() -> None:
    """The check above can fail: word2vec's initial vectors (epochs are needed to learn)
    have no group structure."""
    wv = train_word2vec(planted_corpus(), **{**SMALL, "epochs": 1}, alpha=1e-12, progress=False)
    assert abs(_within_minus_across(wv)) < 0.2


@pytest.mark.parametrize(("backend", "workers"), [("numba", 1), ("numba", 2), ("torch", 1)])
def test_deterministic_for_a_seed(backend: str, workers: int) -> None:
    corpus = planted_corpus(100)
    opts = dict(SMALL, backend=backend, workers=workers, batch_size=64, progress=False)
    a = train_word2vec(corpus, seed=3, **opts)
    b = train_word2vec(corpus, seed=3, **opts)
    c = train_word2vec(corpus, seed=4, **opts)
    assert a.words == b.words and np.array_equal(a.vectors, b.vectors)
    assert not np.array_equal(a.vectors, c.vectors)


def test_deterministic_across_many_merges() -> None:
    """Chunks of a few sentences: three workers' copies are merged dozens of times per epoch,
    and the result still depends only on the seed."""
    corpus = planted_corpus()  # 3,200 words: 16 merges per epoch
    opts = dict(SMALL, workers=3, chunk_words=200, progress=False)
    a = train_word2vec(corpus, seed=5, **opts)
    b = train_word2vec(corpus, seed=5, **opts)
    assert np.array_equal(a.vectors, b.vectors)
    assert _within_minus_across(a) > 0.3  # merged often, it still learns the groups


@given(workers=st.integers(2, 4), seed=st.integers(0, 2**32 - 1))
@settings(max_examples=15, deadline=None)
def test_merge_adds_every_workers_delta(workers: int, seed: int) -> None:
    """Oracle for the deterministic merge: each worker trains its share of the chunk alone on
    a copy of the tables (same split, same random state); the merged tables are the start
    plus the sum of their deltas, and every copy is handed the result with its flags
    cleared."""
    from flowgraph.models.word2vec import _cpu

    rng = np.random.default_rng(seed)
    num_rows, d = 12, 8
    lengths = rng.integers(1, 9, 30)
    bounds_s1 = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    ids_n = rng.integers(0, num_rows, bounds_s1[-1]).astype(np.int32)
    v_vd = (rng.standard_normal((num_rows, d)) * 0.1).astype(np.float32)
    u_vd = (rng.standard_normal((num_rows, d)) * 0.1).astype(np.float32)
    keep_v = rng.uniform(0.3, 1.0, num_rows).astype(np.float32)
    noise_v = rng.integers(1, 50, num_rows) ** 0.75
    prob_v, alias_v = _cpu.alias_table(noise_v / noise_v.sum())
    seeds_t = rng.integers(1, 2**63, workers, dtype=np.uint64)
    sig_e = _cpu.sigmoid_table()
    consts = dict(
        keep_v=keep_v, alias_prob_v=prob_v, alias_v=alias_v, sig_e=sig_e, window=3, negative=2,
        alpha=0.05, words_before=0, total_words=1000,
    )  # fmt: skip
    copies = (
        np.repeat(v_vd[None], workers, 0),
        np.repeat(u_vd[None], workers, 0),
        np.zeros((workers, num_rows, 2), dtype=np.uint8),
    )
    got_v, got_u = v_vd.copy(), u_vd.copy()
    _cpu.train_block(got_v, got_u, copies, ids_n, bounds_s1, seeds_t=seeds_t, **consts)

    want_v, want_u = v_vd.astype(np.float64), u_vd.astype(np.float64)
    split_t1 = _cpu.split_by_words(bounds_s1, workers)
    for t in range(workers):
        alone_v, alone_u = v_vd.copy(), u_vd.copy()
        _cpu._train_sentences(
            alone_v, alone_u, ids_n, bounds_s1, split_t1[t], split_t1[t + 1], keep_v, prob_v,
            alias_v, sig_e, 3, 2, 0.05, 0, workers, 1000, seeds_t[t],
            np.zeros((num_rows, 2), dtype=np.uint8),
        )  # fmt: skip
        want_v += alone_v - v_vd
        want_u += alone_u - u_vd
    np.testing.assert_allclose(got_v, want_v, atol=1e-5)
    np.testing.assert_allclose(got_u, want_u, atol=1e-5)
    assert not np.allclose(got_u, u_vd)  # the chunk did train
    for t in range(workers):
        assert np.array_equal(copies[0][t], got_v) and np.array_equal(copies[1][t], got_u)
    assert not copies[2].any()


def test_default_chunk_follows_the_vocabulary() -> None:
    from flowgraph.models.word2vec.train import default_chunk_words

    assert default_chunk_words("numba", 2, True, 5_000) == 20_000  # at least 10k per worker
    assert default_chunk_words("numba", 2, True, 18_000) == 36_000
    assert default_chunk_words("numba", 3, True, 100_000) == 75_000  # at most 25k per worker
    assert default_chunk_words("numba", 2, False, 100_000) == 100_000  # hogwild: no merges
    assert default_chunk_words("torch", 8, True, 100_000) == 100_000


@pytest.mark.parametrize("backend", ["numba", "torch"])
def test_progress_bar_counts_corpus_words_per_second(backend: str, capsys) -> None:
    corpus = planted_corpus(50)  # 400 tokens per epoch
    train_word2vec(corpus, **{**SMALL, "epochs": 2}, backend=backend, workers=1, batch_size=64)
    err = capsys.readouterr().err
    assert f"word2vec ({backend}, cpu)" in err and "800/800" in err and "word/s" in err
    train_word2vec(corpus, **SMALL, backend=backend, workers=1, progress=False)
    assert capsys.readouterr().err == ""


def test_subsampling_and_the_learning_rate_move_the_vectors() -> None:
    corpus = planted_corpus(100)
    base = train_word2vec(corpus, **SMALL, workers=1, progress=False)
    sub = train_word2vec(corpus, **{**SMALL, "sample": 1e-2}, workers=1, progress=False)
    slow = train_word2vec(corpus, **SMALL, alpha=0.001, workers=1, progress=False)
    assert not np.array_equal(base.vectors, sub.vectors)
    # a smaller learning rate moves the vectors less far from word2vec's tiny initial ones
    assert np.linalg.norm(slow.vectors) < np.linalg.norm(base.vectors)


def test_counts_and_vocabulary_come_back_with_the_vectors() -> None:
    corpus = [["a", "b", "a"], ["c", "a", "b"], ["d"]]
    wv = train_word2vec(corpus, min_count=2, vector_size=4, epochs=1, workers=1, progress=False)
    assert wv.words == ["a", "b"] and wv.counts.tolist() == [3, 2]


# --- corpora ------------------------------------------------------------------------------------
def test_text_file_streams_and_matches_the_list(tmp_path: Path) -> None:
    corpus = planted_corpus(60)
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join("  ".join(s) + " " for s in corpus) + "\n", encoding="utf-8")
    from_list = train_word2vec(corpus, **SMALL, workers=1, progress=False)
    from_str = train_word2vec(str(path), **SMALL, workers=1, progress=False)
    from_path = train_word2vec(path, **SMALL, workers=1, progress=False)
    assert from_list.words == from_str.words == from_path.words
    assert np.array_equal(from_list.vectors, from_str.vectors)
    assert np.array_equal(from_list.vectors, from_path.vectors)


def _expected_sentences(text: str, cap: int) -> list[list[str]]:
    out = []
    for line in text.split("\n"):
        tokens = line.split()
        out += [tokens[i : i + cap] for i in range(0, len(tokens), cap)]
    return out


@given(
    text=st.text(alphabet="ab \n\t\r", max_size=80),
    block=st.integers(1, 12),
    cap=st.integers(1, 5),
)
@settings(max_examples=150, deadline=None)
def test_text_file_blocks_and_long_lines_match_a_whole_read(text: str, block: int, cap: int):
    """Reading in blocks of any size, splitting long lines into sentences of at most ``cap``
    tokens, gives what reading the whole file and splitting it gives."""
    import tempfile

    from flowgraph.models.word2vec import corpus as corpus_module

    with tempfile.TemporaryDirectory() as tmp, pytest.MonkeyPatch.context() as mp:
        mp.setattr(corpus_module, "MAX_SENTENCE_WORDS", cap)
        path = Path(tmp) / "c.txt"
        path.write_text(text, encoding="utf-8", newline="")
        whole = path.read_text(encoding="utf-8")  # universal newlines, as TextFile reads
        got = list(corpus_module.TextFile(path, block_chars=block))
        assert got == _expected_sentences(whole, cap)


def test_a_one_line_corpus_streams_in_sentences_of_10000(tmp_path: Path) -> None:
    from flowgraph.models.word2vec.corpus import TextFile

    path = tmp_path / "one_line.txt"
    words = [f"w{i % 97}" for i in range(25_000)]
    path.write_text(" ".join(words), encoding="utf-8")  # no newline at all, like text8
    got = list(TextFile(path, block_chars=4096))
    assert [len(s) for s in got] == [10_000, 10_000, 5_000]
    assert [w for s in got for w in s] == words


class Reiterable:
    """A corpus object whose ``__iter__`` starts over (as gensim's LineSentence)."""

    def __init__(self, sentences: list[list[str]]) -> None:
        self.sentences = sentences
        self.passes = 0

    def __iter__(self):
        self.passes += 1
        yield from self.sentences


def test_a_reiterable_object_is_read_epochs_plus_one_times() -> None:
    corpus = Reiterable(planted_corpus(40))
    train_word2vec(corpus, **{**SMALL, "epochs": 3}, workers=1, progress=False)
    assert corpus.passes == 4


def test_one_shot_iterators_are_refused(tmp_path: Path) -> None:
    corpus = planted_corpus(10)
    with pytest.raises(TypeError, match=r"sentences: got a one-shot iterator \(generator\)"):
        train_word2vec((s for s in corpus), **SMALL, progress=False)
    with pytest.raises(TypeError, match="one-shot iterator"):
        train_word2vec(iter(corpus), **SMALL, progress=False)
    path = tmp_path / "c.txt"
    path.write_text("a b\n", encoding="utf-8")
    with path.open() as f, pytest.raises(TypeError, match="pass a list, a text file path"):
        train_word2vec(f, **SMALL, progress=False)


def test_an_iterable_that_runs_dry_is_caught() -> None:
    class Once:
        def __init__(self) -> None:
            self.done = False

        def __iter__(self):
            if not self.done:
                self.done = True
                yield ["a", "b", "a"]

    with pytest.raises(ValueError, match="pass 2 over the corpus read no words"):
        train_word2vec(Once(), **SMALL, progress=False)


# --- errors -------------------------------------------------------------------------------------
@pytest.mark.parametrize("corpus", [[], [[]], [[], []]])
def test_empty_corpus(corpus) -> None:
    with pytest.raises(ValueError, match="sentences: the corpus is empty"):
        train_word2vec(corpus, progress=False)


def test_empty_text_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.txt"
    path.write_text("\n  \n", encoding="utf-8")
    with pytest.raises(ValueError, match="sentences: the corpus is empty"):
        train_word2vec(path, progress=False)


def test_vocabulary_empty_after_min_count() -> None:
    with pytest.raises(ValueError, match=r"min_count: no word occurs at least 5 times.*'a'.*2"):
        train_word2vec([["a", "b", "a"]], min_count=5, progress=False)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(sentences=42), "sentences: expected an iterable of token lists"),
        (dict(sentences=["a b c", "d e"]), "sentences: sentence 0 is a str"),
        (dict(sentences=[[1, 2]]), "sentences: sentence 0 holds int tokens"),
        (dict(sentences="/no/such/file.txt"), "sentences: no such file"),
    ],
)
def test_bad_corpora(kwargs: dict, message: str) -> None:
    with pytest.raises((TypeError, ValueError), match=message):
        train_word2vec(**kwargs, progress=False)


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("vector_size", 0, "vector_size: expected an integer ≥ 1, got 0"),
        ("window", 0, "window: expected an integer ≥ 1, got 0"),
        ("negative", 0, "negative: expected an integer ≥ 1, got 0"),
        ("min_count", 0, "min_count: expected an integer ≥ 1, got 0"),
        ("epochs", 1.5, "epochs: expected an integer ≥ 1, got 1.5"),
        ("sample", 1.0, "sample: expected a number in \\[0, 1\\), got 1.0"),
        ("alpha", 0.0, "alpha: expected a number > 0, got 0.0"),
        ("batch_size", 0, "batch_size: expected an integer ≥ 1, got 0"),
        ("seed", -1, "seed: expected an integer ≥ 0, got -1"),
        ("workers", 0, "workers: expected an integer ≥ 1, got 0"),
        ("deterministic", "yes", "deterministic: expected a bool, got 'yes'"),
        ("backend", "jax", "backend: expected one of"),
        ("device", "tpu9", "device: expected 'cpu', 'cuda' or 'cuda:N', got 'tpu9'"),
        ("chunk_words", 0, "chunk_words: expected an integer ≥ 1, got 0"),
        ("alpha", True, "alpha: expected a number > 0, got True"),
    ],
)
def test_bad_options(option: str, value: object, message: str) -> None:
    with pytest.raises((ValueError, TypeError), match=message):
        train_word2vec([["a", "b"]], **{option: value}, progress=False)


def test_numba_backend_refuses_cuda() -> None:
    with pytest.raises(ValueError, match="backend: 'numba' runs on the CPU only"):
        train_word2vec([["a"]], backend="numba", device="cuda", progress=False)


def test_corpus_helper_counts_passes() -> None:
    corpus = as_corpus([["a"]])
    assert Counter(w for s in corpus for w in s) == {"a": 1} and corpus.passes == 1


def test_docs_example_runs(tmp_path: Path, monkeypatch, capsys) -> None:
    """The example of docs/word2vec.md runs as printed (it saves under ./vectors/)."""
    page = Path(__file__).resolve().parents[1] / "docs" / "word2vec.md"
    code = page.read_text(encoding="utf-8").split("```python\n", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(tmp_path)
    exec(compile(code, str(page), "exec"), {})
    assert capsys.readouterr().out.startswith("WordVectors(V=8, d=16)\n")
    assert sorted(p.name for p in (tmp_path / "vectors" / "toy").iterdir()) == [
        "vectors.safetensors",
        "vocab.json",
    ]
