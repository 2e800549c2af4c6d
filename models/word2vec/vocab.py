"""The vocabulary of word2vec: word counts, ``min_count``, frequent-word subsampling and the
unigram^0.75 noise distribution, with word2vec's (and gensim's) formulas.

Words are numbered by descending count, ties in order of first appearance, so id 0 is the most
frequent word (gensim's order too).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = ["NOISE_POWER", "Vocab", "build_vocab", "check_sample"]

NOISE_POWER = 0.75  # negatives are drawn ∝ count^0.75 (Mikolov et al. 2013)
CUM_TABLE_DOMAIN = 2**31 - 1  # integer cumulative table, as gensim's cum_table


@dataclass
class Vocab:
    """Words kept after ``min_count`` (most frequent first), their counts, and the corpus totals.

    ``total_words`` is the number of corpus tokens whose word is kept (the learning-rate schedule
    counts these); ``raw_words`` counts every token, kept or not.
    """

    words: list[str]
    counts: np.ndarray  # (V,) int64
    raw_words: int
    index: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.counts = np.asarray(self.counts, dtype=np.int64)
        if self.counts.shape != (len(self.words),):
            raise ValueError(
                f"counts: expected shape ({len(self.words)},), got {self.counts.shape}"
            )
        self.index = {w: i for i, w in enumerate(self.words)}

    def __len__(self) -> int:
        return len(self.words)

    @property
    def total_words(self) -> int:
        return int(self.counts.sum())

    def keep_probabilities(self, sample: float) -> np.ndarray:
        """(V,) float64: the probability that one occurrence of each word is kept.

        word2vec's formula: with ``t = sample · total_words``, a word counted ``c`` times is
        kept with probability ``min(1, (√(c/t) + 1) · t/c)``; ``sample = 0`` keeps everything.
        """
        check_sample(sample)
        counts = self.counts.astype(np.float64)
        if sample == 0:
            return np.ones_like(counts)
        threshold = sample * counts.sum()
        return np.minimum(1.0, (np.sqrt(counts / threshold) + 1.0) * threshold / counts)

    def noise_probabilities(self) -> np.ndarray:
        """(V,) float64: the negative-sampling distribution, ∝ count^0.75."""
        weights = self.counts.astype(np.float64) ** NOISE_POWER
        return weights / weights.sum()

    def noise_cum_table(self) -> np.ndarray:
        """(V,) int64 cumulative noise weights scaled to ``[0, 2^31 − 1]``: word ``i`` is drawn
        when a uniform integer ``r < table[-1]`` has ``table[i−1] ≤ r < table[i]``."""
        cum = np.cumsum(self.noise_probabilities())
        table = np.round(cum * CUM_TABLE_DOMAIN).astype(np.int64)
        table[-1] = CUM_TABLE_DOMAIN  # exact, whatever the rounding
        return table


def check_sample(sample: float) -> None:
    """``sample`` must lie in [0, 1): 0 disables subsampling."""
    if not isinstance(sample, (int, float)) or not (0 <= sample < 1) or math.isnan(sample):
        raise ValueError(f"sample: expected a number in [0, 1), got {sample!r}")


def build_vocab(sentences: Iterable[Sequence[str]], min_count: int = 5) -> Vocab:
    """Count the words of ``sentences`` (one pass) and keep those seen at least ``min_count``
    times.

    Raises:
        ValueError: ``min_count`` < 1, the corpus holds no words, or no word reaches
            ``min_count`` (the message gives the most frequent word's count).
    """
    if isinstance(min_count, bool) or not isinstance(min_count, int) or min_count < 1:
        raise ValueError(f"min_count: expected an integer ≥ 1, got {min_count!r}")
    counter: Counter[str] = Counter()
    for sentence in sentences:
        counter.update(sentence)
    odd = next((w for w in counter if not isinstance(w, str)), None)
    if odd is not None:  # Corpus checks a sentence's first token only: this is all of them
        raise TypeError(
            f"sentences: tokens must be str, got {odd!r} ({type(odd).__name__}) in the corpus"
        )
    raw_words = sum(counter.values())
    if raw_words == 0:
        raise ValueError("sentences: the corpus is empty (no words in any sentence)")
    # sorted() is stable and Counter keeps first-appearance order: ties stay in corpus order
    kept = sorted(((w, c) for w, c in counter.items() if c >= min_count), key=lambda wc: -wc[1])
    if not kept:
        top_word, top_count = counter.most_common(1)[0]
        raise ValueError(
            f"min_count: no word occurs at least {min_count} times (the vocabulary would be "
            f"empty; the most frequent word, {top_word!r}, occurs {top_count} times); "
            "lower min_count or give a larger corpus"
        )
    words = [w for w, _ in kept]
    counts = np.array([c for _, c in kept], dtype=np.int64)
    return Vocab(words=words, counts=counts, raw_words=raw_words)
