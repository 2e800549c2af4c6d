"""models.word2vec.WordVectors: cosine queries against a brute force, analogy semantics,
evaluate_pairs against scipy's spearmanr, the atomic pickle-free save/load, and the errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from safetensors.numpy import load_file
from scipy.stats import spearmanr

import flowgraph.models.word2vec.vectors as vectors_module
from flowgraph.models.word2vec import WordNotInVocabularyError, WordVectors


def make(num_words: int = 6, dim: int = 4, seed: int = 0) -> WordVectors:
    rng = np.random.default_rng(seed)
    words = [f"w{i}" for i in range(num_words)]
    return WordVectors(words, rng.standard_normal((num_words, dim)), counts=range(num_words, 0, -1))


def brute_cosines(wv: WordVectors, query_d: np.ndarray) -> np.ndarray:
    v = wv.vectors.astype(np.float64)
    return v @ query_d / (np.linalg.norm(v, axis=1) * np.linalg.norm(query_d))


@given(
    vectors=arrays(np.float32, (8, 3), elements=st.floats(-4, 4, width=32)).filter(
        lambda a: bool(np.all(np.linalg.norm(a, axis=1) > 0.1))
    ),
    query=st.integers(0, 7),
    k=st.integers(1, 9),
)
@settings(max_examples=60, deadline=None)
def test_most_similar_is_the_brute_force_top_k(vectors: np.ndarray, query: int, k: int) -> None:
    wv = WordVectors([f"w{i}" for i in range(8)], vectors)
    got = wv.most_similar(f"w{query}", k=k)
    cos = brute_cosines(wv, vectors[query].astype(np.float64))
    assert len(got) == min(k, 7)  # k respected; the query itself excluded
    assert f"w{query}" not in [w for w, _ in got]
    for word, score in got:
        assert score == pytest.approx(cos[int(word[1:])], abs=1e-5)
    scores = [s for _, s in got]
    assert scores == sorted(scores, reverse=True)
    others = sorted((c for i, c in enumerate(cos) if i != query), reverse=True)
    np.testing.assert_allclose(scores, others[: len(got)], atol=1e-5)


def test_analogy_excludes_the_query_words_and_follows_3cosadd() -> None:
    words = ["man", "king", "woman", "queen", "apple"]
    vectors = np.array(
        [[1, 0, 0], [1, 1, 0], [0, 0, 1], [0, 1, 1], [1, 0.1, 0.2]], dtype=np.float32
    )
    wv = WordVectors(words, vectors)
    best = wv.analogy("man", "king", "woman", k=2)
    assert [w for w, _ in best] == ["queen", "apple"]
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    target = unit[1] - unit[0] + unit[2]
    assert best[0][1] == pytest.approx(float(unit[3] @ target / np.linalg.norm(target)), abs=1e-6)
    assert len(wv.analogy("man", "king", "woman", k=10)) == 2  # only two words are left


def test_lookup_and_similarity() -> None:
    wv = make()
    assert "w0" in wv and "nope" not in wv and 3 not in wv and len(wv) == 6
    np.testing.assert_array_equal(wv["w2"], wv.vectors[2])
    a, b = wv.vectors[0].astype(np.float64), wv.vectors[1].astype(np.float64)
    expected = a @ b / np.linalg.norm(a) / np.linalg.norm(b)
    assert wv.similarity("w0", "w1") == pytest.approx(expected, abs=1e-6)
    assert wv.similarity("w3", "w3") == pytest.approx(1.0, abs=1e-6)
    assert repr(wv) == "WordVectors(V=6, d=4)"


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda wv: wv["king"], "word: 'king' is not in the vocabulary (6 words)"),
        (lambda wv: wv.most_similar("king"), "word: 'king' is not in the vocabulary"),
        (lambda wv: wv.similarity("w0", "king"), "b: 'king' is not in the vocabulary"),
        (lambda wv: wv.analogy("man", "w1", "w2"), "a: 'man' is not in the vocabulary"),
    ],
)
def test_unknown_words_are_named(call, message: str) -> None:
    with pytest.raises(WordNotInVocabularyError) as info:
        call(make())
    assert str(info.value).startswith(message)
    assert isinstance(info.value, KeyError) and isinstance(info.value, ValueError)


@pytest.mark.parametrize("k", [0, -1, 1.5, True])
def test_bad_k(k) -> None:
    with pytest.raises(ValueError, match=f"k: expected an integer ≥ 1, got {k!r}"):
        make().most_similar("w0", k=k)


def test_bad_construction() -> None:
    with pytest.raises(ValueError, match=r"vectors: expected shape \(2, d\), got \(3, 4\)"):
        WordVectors(["a", "b"], np.zeros((3, 4)))
    with pytest.raises(ValueError, match="words: expected distinct words"):
        WordVectors(["a", "a"], np.zeros((2, 4)))
    with pytest.raises(ValueError, match=r"counts: expected shape \(2,\), got \(3,\)"):
        WordVectors(["a", "b"], np.zeros((2, 4)), counts=[1, 2, 3])


# --- evaluate_pairs -----------------------------------------------------------------------------
def test_evaluate_pairs_is_spearmanr_over_known_pairs(tmp_path: Path) -> None:
    wv = make(num_words=6)
    rng = np.random.default_rng(1)
    lines = ["# Word 1\tWord 2\tHuman (mean)"]
    pairs = [(f"w{i}", f"w{j}") for i in range(6) for j in range(i + 1, 6)]
    human = rng.uniform(0, 10, len(pairs)).round(2)
    for (a, b), h in zip(pairs, human, strict=True):
        lines.append(f"{a.upper() if a == 'w1' else a}\t{b}\t{h}")  # case folded by default
    lines += ["w0\tmissing\t5.0", "", "absent\tw1\t1.0"]
    path = tmp_path / "pairs.tsv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    result = wv.evaluate_pairs(path)
    expected = spearmanr([wv.similarity(a, b) for a, b in pairs], human)
    assert result["spearman"] == pytest.approx(expected.statistic, abs=1e-12)
    assert result["pvalue"] == pytest.approx(expected.pvalue, rel=1e-9)
    assert result["pairs"] == len(pairs) and result["oov_pairs"] == 2
    assert result["oov_ratio"] == pytest.approx(2 / (len(pairs) + 2))
    exact = wv.evaluate_pairs(path, case_insensitive=False)
    assert exact["pairs"] == len(pairs) - 4 and exact["oov_pairs"] == 6  # W1 no longer matches


def test_case_folding_prefers_the_most_frequent_spelling(tmp_path: Path) -> None:
    wv = WordVectors(["Apple", "apple", "pie"], np.array([[1, 0], [0, 1], [1, 0.1]]))
    path = tmp_path / "p.tsv"
    path.write_text("APPLE\tpie\t9\napple\tpie\t1\nAPPLE\tApple\t5\n", encoding="utf-8")
    assert wv.evaluate_pairs(path)["spearman"] == pytest.approx(
        spearmanr([wv.similarity("Apple", "pie")] * 2 + [1.0], [9, 1, 5]).statistic
    )


def test_evaluate_pairs_errors(tmp_path: Path) -> None:
    wv = make()
    with pytest.raises(ValueError, match="path: no such file"):
        wv.evaluate_pairs(tmp_path / "none.tsv")
    bad = tmp_path / "bad.tsv"
    bad.write_text("w0\tw1\tnot-a-number\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"path: line 1 of .* is not 'word1<TAB>word2<TAB>score'"):
        wv.evaluate_pairs(bad)
    few = tmp_path / "few.tsv"
    few.write_text("w0\tw1\t3\nx\ty\t2\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"fewer than 2 pairs .* \(1 in, 1 out\)"):
        wv.evaluate_pairs(few)


# --- files --------------------------------------------------------------------------------------
def test_save_load_round_trip_without_pickle(tmp_path: Path) -> None:
    wv = WordVectors(
        ["é", "b", "c"], np.arange(6, dtype=np.float32).reshape(3, 2), counts=[5, 3, 1]
    )
    out = wv.save(tmp_path / "vectors" / "run")
    assert sorted(p.name for p in out.iterdir()) == ["vectors.safetensors", "vocab.json"]
    vocab = json.loads((out / "vocab.json").read_text(encoding="utf-8"))
    assert vocab == {"format": 1, "words": ["é", "b", "c"], "counts": [5, 3, 1]}
    np.testing.assert_array_equal(
        load_file(str(out / "vectors.safetensors"))["vectors"], wv.vectors
    )
    back = WordVectors.load(out)
    assert back.words == wv.words and back.counts.tolist() == [5, 3, 1]
    np.testing.assert_array_equal(back.vectors, wv.vectors)
    assert back.vectors.dtype == np.float32
    assert not any(p.name.startswith(".") for p in out.parent.iterdir())  # no temporaries left


def test_save_replaces_a_previous_save_whole(tmp_path: Path) -> None:
    make(num_words=6).save(tmp_path / "v")
    make(num_words=3, seed=1).save(tmp_path / "v")
    assert len(WordVectors.load(tmp_path / "v")) == 3
    assert [p.name for p in tmp_path.iterdir()] == ["v"]


def test_a_failed_save_leaves_the_previous_one(tmp_path: Path, monkeypatch) -> None:
    make(num_words=6).save(tmp_path / "v")

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(vectors_module, "save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        make(num_words=3).save(tmp_path / "v")
    assert len(WordVectors.load(tmp_path / "v")) == 6
    assert [p.name for p in tmp_path.iterdir()] == ["v"]


def test_load_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"has no vectors\.safetensors"):
        WordVectors.load(tmp_path)
    out = make().save(tmp_path / "v")
    (out / "vocab.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(ValueError, match="cannot read word vectors"):
        WordVectors.load(out)
    (out / "vocab.json").write_text('{"format": 99}', encoding="utf-8")
    with pytest.raises(ValueError, match="is not format 1"):
        WordVectors.load(out)
    (out / "vocab.json").write_text('{"format": 1, "words": ["a"], "counts": null}', "utf-8")
    with pytest.raises(ValueError, match=r"vectors: expected shape \(1, d\)"):
        WordVectors.load(out)
    (tmp_path / "file").write_text("x", encoding="utf-8")
    with pytest.raises(ValueError, match="exists and is not a directory"):
        make().save(tmp_path / "file")
