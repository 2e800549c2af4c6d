"""``WordVectors``: trained word vectors, their queries (cosine neighbours, analogies, pair
similarity against human judgements), and their on-disk form.

A saved directory holds ``vectors.safetensors`` (one float32 tensor ``vectors`` of shape (V, d))
and ``vocab.json`` (``{"format": 1, "words": [...], "counts": [...]}``, row i of the tensor is
``words[i]``). It is written into a temporary directory beside the target and renamed into
place, so a reader never sees half of it; nothing is pickled.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

from flowgraph.models._atomic import fsync_path

__all__ = ["WordNotInVocabularyError", "WordVectors"]

FORMAT = 1
VECTORS_FILE, VOCAB_FILE = "vectors.safetensors", "vocab.json"


class WordNotInVocabularyError(KeyError, ValueError):
    """A query word that is not in the vocabulary: a ``KeyError`` for ``wv[word]`` as a mapping,
    and a ``ValueError`` (bad input) for the command line and the dashboard."""

    def __str__(self) -> str:  # KeyError would show the message in quotes
        return str(self.args[0])


def _as_vectors(vectors: object) -> np.ndarray:
    """Real, finite vectors as contiguous float32: a complex or text array, or a value that is
    NaN, inf or too large for float32, is refused instead of cast."""
    arr = np.asarray(vectors)
    if arr.dtype == np.bool_ or not (
        np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)
    ):
        raise TypeError(f"vectors: expected real numbers, got dtype {arr.dtype}")
    with np.errstate(over="ignore"):  # a value past float32's range is reported just below
        out = np.ascontiguousarray(arr, dtype=np.float32)
    bad = ~np.isfinite(out)
    if bad.any():
        row, col = (int(i) for i in np.argwhere(bad)[0])
        raise ValueError(
            f"vectors: expected finite float32 values, got {float(arr[row, col])} at row {row}, "
            f"column {col} ({int(bad.sum())} values in all)"
        )
    return out


def _as_counts(counts: object) -> np.ndarray:
    """Corpus counts as int64: whole numbers ≥ 0 (1.7 is refused, not truncated)."""
    arr = np.asarray(counts)
    if arr.size and (arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.integer)):
        raise TypeError(f"counts: expected integers, got dtype {arr.dtype}")
    arr = arr.astype(np.int64)
    if arr.size and arr.min() < 0:
        raise ValueError(f"counts: expected counts ≥ 0, got {int(arr.min())}")
    return arr


class WordVectors:
    """Word vectors ``vectors`` (V, d) float32, row ``i`` for ``words[i]``, with ``counts`` (V,)
    the corpus counts (or ``None``).

    >>> wv = WordVectors(["a", "b", "c"], np.array([[1.0, 0.0], [1.0, 1.0], [-1.0, 0.0]]))
    >>> [w for w, _ in wv.most_similar("a", k=2)]
    ['b', 'c']
    """

    def __init__(
        self,
        words: Sequence[str],
        vectors: np.ndarray,
        counts: Sequence[int] | np.ndarray | None = None,
    ) -> None:
        if isinstance(words, (str, bytes)):  # list("ab") would be two one-letter words
            raise TypeError(f"words: expected a list of str, got a {type(words).__name__}")
        self.words: list[str] = list(words)
        self.vectors: np.ndarray = _as_vectors(vectors)
        if self.vectors.ndim != 2 or self.vectors.shape[0] != len(self.words):
            raise ValueError(
                f"vectors: expected shape ({len(self.words)}, d), got {self.vectors.shape}"
            )
        if not all(isinstance(w, str) for w in self.words):
            raise TypeError("words: expected a list of str")
        self.index: dict[str, int] = {w: i for i, w in enumerate(self.words)}
        if len(self.index) != len(self.words):
            raise ValueError("words: expected distinct words, got duplicates")
        self.counts = None if counts is None else _as_counts(counts)
        if self.counts is not None and self.counts.shape != (len(self.words),):
            raise ValueError(
                f"counts: expected shape ({len(self.words)},), got {self.counts.shape}"
            )
        norms_v = np.linalg.norm(self.vectors, axis=1, keepdims=True)
        self._unit_vd = self.vectors / np.maximum(norms_v, 1e-12)

    # --- lookup ------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.words)

    def __contains__(self, word: object) -> bool:
        return word in self.index

    def __getitem__(self, word: str) -> np.ndarray:
        return self.vectors[self._id(word)]

    def __repr__(self) -> str:
        return f"WordVectors(V={len(self.words)}, d={self.vector_size})"

    @property
    def vector_size(self) -> int:
        return self.vectors.shape[1]

    def _id(self, word: str, argument: str = "word") -> int:
        try:
            return self.index[word]
        except (KeyError, TypeError):
            raise WordNotInVocabularyError(
                f"{argument}: {word!r} is not in the vocabulary ({len(self.words)} words)"
            ) from None

    # --- queries -----------------------------------------------------------------------------
    def similarity(self, a: str, b: str) -> float:
        """The cosine similarity of two words' vectors."""
        return float(self._unit_vd[self._id(a, "a")] @ self._unit_vd[self._id(b, "b")])

    def most_similar(self, word: str, k: int = 10) -> list[tuple[str, float]]:
        """The ``k`` words of highest cosine similarity to ``word``, best first, ``word``
        itself excluded."""
        return self._nearest(self._unit_vd[self._id(word)], {self._id(word)}, k)

    def analogy(self, a: str, b: str, c: str, k: int = 1) -> list[tuple[str, float]]:
        """``a`` is to ``b`` as ``c`` is to …? The ``k`` words nearest (cosine) to
        ``b − a + c`` over unit vectors (3CosAdd), the three query words excluded."""
        ids = [self._id(a, "a"), self._id(b, "b"), self._id(c, "c")]
        query_d = self._unit_vd[ids[1]] - self._unit_vd[ids[0]] + self._unit_vd[ids[2]]
        return self._nearest(query_d / max(float(np.linalg.norm(query_d)), 1e-12), set(ids), k)

    def _nearest(self, unit_d: np.ndarray, exclude: set[int], k: int) -> list[tuple[str, float]]:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k: expected an integer ≥ 1, got {k!r}")
        cos_v = self._unit_vd @ unit_d
        cos_v[list(exclude)] = -np.inf
        k = min(int(k), len(self.words) - len(exclude))
        if k <= 0:
            return []
        top = np.argpartition(-cos_v, k - 1)[:k]
        top = top[np.lexsort((top, -cos_v[top]))]  # best first; ties by vocabulary order
        return [(self.words[i], float(cos_v[i])) for i in top]

    def evaluate_pairs(
        self, path: str | os.PathLike[str], *, case_insensitive: bool = True
    ) -> dict[str, float]:
        """Spearman correlation between cosine similarities and human scores on a word-pair
        file (WordSim353 format: ``word1<TAB>word2<TAB>score`` per line, ``#`` comments).

        As gensim's ``evaluate_word_pairs``: pairs with a word out of the vocabulary are
        skipped, and with ``case_insensitive`` a word matches the most frequent vocabulary word
        equal to it up to case. Returns ``{"spearman", "pvalue", "pairs", "oov_pairs",
        "oov_ratio"}``.
        """
        from scipy.stats import spearmanr

        if case_insensitive:  # reversed: the most frequent spelling (lowest id) wins
            index = {w.lower(): i for i, w in reversed(list(enumerate(self.words)))}
        else:
            index = self.index
        fold = str.lower if case_insensitive else str
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"path: no such file: {str(path)!r}")
        model, human, oov = [], [], 0
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise ValueError(f"path: {str(path)!r} is not valid UTF-8 text: {exc}") from None
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip() or line.startswith("#"):
                continue
            fields = line.split("\t")
            try:
                a, b, score = fields[0].strip(), fields[1].strip(), float(fields[2])
            except (IndexError, ValueError):
                raise ValueError(
                    f"path: line {n} of {str(path)!r} is not 'word1<TAB>word2<TAB>score': {line!r}"
                ) from None
            if not np.isfinite(score):
                raise ValueError(f"path: line {n} of {str(path)!r} has score {score}: {line!r}")
            ia, ib = index.get(fold(a)), index.get(fold(b))
            if ia is None or ib is None:
                oov += 1
                continue
            model.append(float(self._unit_vd[ia] @ self._unit_vd[ib]))
            human.append(score)
        if len(model) < 2:
            raise ValueError(
                f"path: fewer than 2 pairs of {str(path)!r} are in the vocabulary "
                f"({len(model)} in, {oov} out); nothing to correlate"
            )
        result = spearmanr(model, human)
        total = len(model) + oov
        return {
            "spearman": float(result.statistic),
            "pvalue": float(result.pvalue),
            "pairs": len(model),
            "oov_pairs": oov,
            "oov_ratio": oov / total,
        }

    # --- files -------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write ``path/vectors.safetensors`` and ``path/vocab.json`` atomically (a previous
        save at ``path`` is replaced as a whole); returns ``path``."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
        try:
            save_file({"vectors": self.vectors}, str(tmp / VECTORS_FILE))
            vocab = {
                "format": FORMAT,
                "words": self.words,
                "counts": None if self.counts is None else self.counts.tolist(),
            }
            (tmp / VOCAB_FILE).write_text(json.dumps(vocab, ensure_ascii=False), "utf-8")
            for name in (VECTORS_FILE, VOCAB_FILE):
                fsync_path(tmp / name)
            old = None
            if path.exists():
                if not path.is_dir():
                    raise ValueError(f"path: {str(path)!r} exists and is not a directory")
                old = path.parent / f".{path.name}.old-{os.getpid()}"
                os.replace(path, old)
            os.replace(tmp, path)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> WordVectors:
        """Read a directory written by :meth:`save` (checked: files, format, shapes)."""
        path = Path(path)
        for name in (VECTORS_FILE, VOCAB_FILE):
            if not (path / name).is_file():
                raise ValueError(f"path: {str(path)!r} has no {name} (not saved word vectors)")
        try:
            vocab = json.loads((path / VOCAB_FILE).read_text(encoding="utf-8"))
            tensors = load_file(str(path / VECTORS_FILE))
        except (OSError, ValueError) as exc:  # JSONDecodeError and safetensors errors included
            raise ValueError(f"path: cannot read word vectors from {str(path)!r}: {exc}") from exc
        if not isinstance(vocab, dict) or vocab.get("format") != FORMAT:
            raise ValueError(f"path: {str(path / VOCAB_FILE)!r} is not format {FORMAT}")
        if set(tensors) != {"vectors"}:
            raise ValueError(f"path: expected one tensor 'vectors', got {sorted(tensors)}")
        return cls(vocab["words"], tensors["vectors"], counts=vocab.get("counts"))
