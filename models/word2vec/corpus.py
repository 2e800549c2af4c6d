"""Corpora for word2vec: an iterable of token lists, or a text file streamed in blocks (one
sentence per line, tokens split on whitespace, lines cut into sentences of at most 10,000
tokens), so a corpus larger than memory works.

Training reads the corpus ``epochs + 1`` times (one pass counts the vocabulary). A one-shot
iterator (a generator, ``iter(list)``, an open file) cannot be read again, so it is refused with
a ``TypeError`` that says what to pass instead: a list, an object whose ``__iter__`` starts
over each time, or the path of a text file.
"""

from __future__ import annotations

import codecs
import os
from collections.abc import Iterable, Iterator, Sequence
from itertools import chain, repeat
from pathlib import Path

import numpy as np

__all__ = ["Corpus", "TextFile", "as_corpus", "encode_chunks"]


MAX_SENTENCE_WORDS = 10_000  # gensim's LineSentence cap: a one-line corpus (text8) streams too


class TextFile:
    """A text file read lazily, one sentence per line, every time it is iterated.

    The file is read in blocks of ``block_chars`` characters, never a whole line at once, and a
    line longer than ``MAX_SENTENCE_WORDS`` tokens comes out as several sentences of at most
    that many tokens (as gensim's ``LineSentence``), so a corpus that is one huge line (text8)
    streams in bounded memory. Empty lines give no sentence. A file that is not valid text in
    ``encoding``, or holds a NUL byte (a binary file), raises a ValueError naming the line.
    """

    def __init__(
        self, path: str | os.PathLike[str], encoding: str = "utf-8", block_chars: int = 1 << 20
    ) -> None:
        self.path = Path(path)
        if self.path.is_dir():
            raise ValueError(f"sentences: {str(self.path)!r} is a directory, expected a text file")
        if not self.path.is_file():
            raise ValueError(f"sentences: no such file: {str(self.path)!r}")
        try:
            codecs.lookup(encoding)
        except (LookupError, TypeError):
            raise ValueError(f"encoding: unknown text encoding {encoding!r}") from None
        if isinstance(block_chars, bool) or not isinstance(block_chars, int) or block_chars < 1:
            raise ValueError(f"block_chars: expected an integer ≥ 1, got {block_chars!r}")
        self.encoding = encoding
        self.block_chars = block_chars

    def _blocks(self) -> Iterator[str]:
        """The file's text, ``block_chars`` at a time; bad bytes and NULs name their line."""
        lines = 1  # the line the next block starts on
        with self.path.open(encoding=self.encoding) as f:
            while True:
                try:
                    block = f.read(self.block_chars)
                except UnicodeDecodeError as exc:
                    bad = exc.object[exc.start : exc.start + 1]
                    raise ValueError(
                        f"sentences: {str(self.path)!r} is not valid {self.encoding} text "
                        f"(at or after line {lines}: {exc.reason}, byte {bad!r}); re-encode it "
                        "or pass its encoding"
                    ) from None
                if not block:
                    return
                nul = block.find("\0")
                if nul >= 0:
                    line = lines + block.count("\n", 0, nul)
                    raise ValueError(
                        f"sentences: {str(self.path)!r} holds a NUL byte on line {line}; "
                        "expected a text file, not binary"
                    )
                lines += block.count("\n")
                yield block

    def __iter__(self) -> Iterator[list[str]]:
        pending: list[str] = []  # tokens of the current line not yet yielded
        tail = ""  # the last token of the text read so far: the next block may continue it
        for block in self._blocks():
            *lines, last = (tail + block).split("\n")
            for line in lines:
                pending += line.split()
                yield from _pieces(pending, final=True)
                pending = []
            tokens = last.split()
            tail = tokens.pop() if tokens and not last[-1].isspace() else ""
            pending += tokens
            yield from _pieces(pending, final=False)
            del pending[: len(pending) - len(pending) % MAX_SENTENCE_WORDS]
        pending += tail.split()
        yield from _pieces(pending, final=True)

    def __repr__(self) -> str:
        return f"TextFile({str(self.path)!r})"


def _pieces(tokens: list[str], final: bool) -> Iterator[list[str]]:
    """Full MAX_SENTENCE_WORDS slices of ``tokens``, then (``final``) the non-empty rest."""
    full = len(tokens) - len(tokens) % MAX_SENTENCE_WORDS
    for start in range(0, full, MAX_SENTENCE_WORDS):
        yield tokens[start : start + MAX_SENTENCE_WORDS]
    if final and full < len(tokens):
        yield tokens[full:]


class Corpus:
    """A re-iterable corpus that checks each sentence is a list (or tuple) of ``str`` tokens."""

    def __init__(self, source: Iterable[Sequence[str]]) -> None:
        self.source = source
        self.passes = 0

    def __iter__(self) -> Iterator[Sequence[str]]:
        self.passes += 1
        words = 0
        for n, sentence in enumerate(self.source):
            if isinstance(sentence, (str, bytes)) or not isinstance(sentence, (list, tuple)):
                raise TypeError(
                    f"sentences: sentence {n} is a {type(sentence).__name__}, expected a list of "
                    "str tokens (a text corpus goes in as a file path, or split each line)"
                )
            if sentence and not isinstance(sentence[0], str):
                raise TypeError(
                    f"sentences: sentence {n} holds {type(sentence[0]).__name__} tokens, "
                    "expected str"
                )
            words += len(sentence)
            yield sentence
        if words == 0 and self.passes > 1:
            raise ValueError(
                f"sentences: pass {self.passes} over the corpus read no words, but the first "
                "did; give a re-iterable corpus (a list, a file path, or an object whose "
                "__iter__ starts over)"
            )


def as_corpus(sentences: object) -> Corpus:
    """``sentences`` as a :class:`Corpus`: a ``str``/``PathLike`` is a text file; a one-shot
    iterator is refused (``TypeError``) because training reads the corpus more than once."""
    if isinstance(sentences, (str, os.PathLike)):
        return Corpus(TextFile(sentences))
    if isinstance(sentences, (bytes, bytearray)):
        raise TypeError(
            "sentences: got bytes; pass a file path as str or pathlib.Path, or token lists"
        )
    if not isinstance(sentences, Iterable):
        raise TypeError(
            f"sentences: expected an iterable of token lists or a text file path, "
            f"got {type(sentences).__name__}"
        )
    if iter(sentences) is sentences:  # type: ignore[call-overload]
        raise TypeError(
            f"sentences: got a one-shot iterator ({type(sentences).__name__}); training reads "
            "the corpus epochs + 1 times, so pass a list, a text file path, or a re-iterable "
            "object whose __iter__ starts over"
        )
    return Corpus(sentences)  # type: ignore[arg-type]


def encode_chunks(
    corpus: Iterable[Sequence[str]], index: dict[str, int], chunk_words: int
) -> Iterator[tuple[np.ndarray, np.ndarray, int]]:
    """Stream the corpus as chunks of word ids of about ``chunk_words`` words each.

    Yields ``(ids_n, bounds_s1, raw)``: ``ids_n`` int32 ids of the in-vocabulary tokens
    (out-of-vocabulary tokens are dropped before windows are taken, as in word2vec),
    ``bounds_s1`` int64 sentence boundaries into ``ids_n`` (sentence ``i`` is
    ``ids_n[bounds_s1[i]:bounds_s1[i + 1]]``), and ``raw``, the tokens read for this chunk.
    """
    get = index.get
    batch: list[Sequence[str]] = []
    size = 0
    for sentence in corpus:
        batch.append(sentence)
        size += len(sentence)
        if size >= chunk_words:
            yield _encode(batch, get, size)
            batch, size = [], 0
    if batch:
        yield _encode(batch, get, size)


def _encode(batch: list[Sequence[str]], get, size: int) -> tuple[np.ndarray, np.ndarray, int]:
    # one C-level pass: dict.get(word, -1) over every token, then drop the -1s
    ids_raw = np.fromiter(map(get, chain.from_iterable(batch), repeat(-1)), np.int32, count=size)
    lengths = np.fromiter(map(len, batch), np.int64, count=len(batch))
    sentence_of_token = np.repeat(np.arange(len(batch)), lengths)
    known = ids_raw >= 0
    kept_per_sentence = np.bincount(sentence_of_token[known], minlength=len(batch))
    bounds_s1 = np.zeros(len(batch) + 1, dtype=np.int64)
    np.cumsum(kept_per_sentence, out=bounds_s1[1:])
    return ids_raw[known], bounds_s1, size
