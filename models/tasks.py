"""Training tasks: where batches come from and which positions carry a loss.

The protocol (what :mod:`models.train` uses) is small; a new task is one class:

- class attribute ``name`` (the ``--task`` value) and instance attributes ``vocab_size`` and
  ``n_ctx`` (the model's input length);
- ``batch(split, batch_size, generator) -> (x_bt, y_bt)``: int64 (B, n_ctx) inputs and targets
  for ``split`` in ``("train", "test")``, drawn only from ``generator`` (a CPU
  ``torch.Generator``) so that a run is reproducible and resumable; ``y_bt == IGNORE`` (−100,
  ``F.cross_entropy``'s ``ignore_index``) marks positions without a loss;
- ``options() -> dict``: JSON-ready keyword arguments that rebuild the task, stored in a
  checkpoint's ``config.json``;

and one line in :data:`TASKS`. The loss is the mean cross-entropy over the positions with a
target; *token accuracy* is the fraction of those positions where the argmax is the target
(teacher forcing: each prediction sees the true prefix).

>>> task = SortTask(length=5, vocab=3)
>>> x_bt, y_bt = task.batch("train", 1, torch.Generator().manual_seed(0))
>>> x_bt.shape, task.n_ctx
(torch.Size([1, 9]), 9)
"""

from __future__ import annotations

import hashlib
import math
import numbers
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import torch

from flowgraph import _validate

__all__ = ["EVAL_SEED", "IGNORE", "TASKS", "CharTask", "SortTask", "heldout_batches", "make_task"]

IGNORE = -100  # target of a position without a loss (F.cross_entropy's default ignore_index)
EVAL_SEED = 1_000_003  # the held-out examples' generator: the same ones in every evaluation
SPLITS = ("train", "test")


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got split={split!r}")


def _check_batch(batch_size: object, generator: object, row_bytes: int) -> int:
    """``batch_size`` as an int ≥ 1 whose batch fits in memory; ``generator`` a CPU Generator."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral):
        raise TypeError(f"batch_size must be an int, got {batch_size!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be ≥ 1, got batch_size={batch_size}")
    if not isinstance(generator, torch.Generator) or generator.device.type != "cpu":
        raise TypeError(f"generator must be a CPU torch.Generator, got {generator!r}")
    _validate.memory(
        f"a batch of {batch_size:,}", batch_size * row_bytes, _validate.MEMORY_LIMIT_BYTES,
        fix="draw smaller batches",
    )  # fmt: skip
    return int(batch_size)


def heldout_batches(
    task: Any, size: int, batch_size: int = 256
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The held-out examples every evaluation uses: ``size`` of them from ``task``'s test split,
    in batches of ``batch_size``, drawn from a generator seeded with :data:`EVAL_SEED`."""
    for name, value in (("size", size), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
            raise ValueError(f"{name} must be an int ≥ 1, got {name}={value!r}")
    generator = torch.Generator().manual_seed(EVAL_SEED)
    done = 0
    while done < size:
        n = min(batch_size, size - done)
        yield task.batch("test", n, generator)
        done += n


class SortTask:
    """The seed's array sorter (minGPT's layout): read ``length`` tokens, emit them sorted.

    A sequence a (``length`` tokens over ``vocab`` symbols) and its sort s are laid out as
    ``a₀ … a_{L−1} s₀ … s_{L−1}``; the model reads all but the last token (n_ctx = 2L − 1) and
    predicts the next one; only the L predictions of s carry a loss::

        x: a0 a1 a2 a3 s0 s1 s2
        y: .  .  .  s0 s1 s2 s3      (. = IGNORE)

    Held-out sequences: about ``test_fraction`` of all vᴸ sequences, chosen by a hash of the
    sequence; the train split never draws them.
    """

    name: ClassVar[str] = "sort"

    def __init__(self, length: int = 11, vocab: int = 3, test_fraction: float = 0.1) -> None:
        if isinstance(length, bool) or not isinstance(length, int) or length < 2:
            raise ValueError(f"length must be an int ≥ 2, got length={length!r}")
        if isinstance(vocab, bool) or not isinstance(vocab, int) or vocab < 2:
            raise ValueError(f"vocab must be an int ≥ 2, got vocab={vocab!r}")
        if length * math.log(vocab) < math.log(100):  # vocab**length: huge for a huge length
            raise ValueError(
                f"vocab**length = {vocab**length} sequences is too few to hold out a test split"
            )
        if isinstance(test_fraction, bool) or not isinstance(test_fraction, numbers.Real):
            raise TypeError(f"test_fraction must be a number in (0, 0.5), got {test_fraction!r}")
        if not 0.0 < test_fraction < 0.5:
            raise ValueError(f"test_fraction must be in (0, 0.5), got {test_fraction}")
        self.length, self.vocab, self.test_fraction = length, vocab, test_fraction
        self.vocab_size = vocab
        self.n_ctx = 2 * length - 1

    def options(self) -> dict[str, Any]:
        return {"length": self.length, "vocab": self.vocab, "test_fraction": self.test_fraction}

    def is_test(self, a_bl: torch.Tensor) -> torch.Tensor:
        """(B,) bool: which sequences belong to the held-out split (a fixed hash of a)."""
        code_b = (a_bl.long() * self.vocab ** torch.arange(self.length)).sum(-1)
        hashed_b = (code_b * 2654435761) % 2**32  # Knuth's multiplicative hash
        return hashed_b < self.test_fraction * 2**32

    def batch(
        self, split: str, batch_size: int, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        _check_split(split)
        # rejection sampling draws 4·B + 16 candidates of L int64 tokens a round
        batch_size = _check_batch(batch_size, generator, 4 * 8 * 4 * self.length)
        want_test = split == "test"
        parts, have = [], 0
        while have < batch_size:  # rejection sampling; the odds are ≥ 10%, so few rounds
            a_bl = torch.randint(
                0, self.vocab, (4 * batch_size + 16, self.length), generator=generator
            )
            a_bl = a_bl[self.is_test(a_bl) == want_test]
            parts.append(a_bl)
            have += a_bl.shape[0]
        a_bl = torch.cat(parts)[:batch_size]
        s_bl = a_bl.sort(dim=-1).values
        seq_bt = torch.cat([a_bl, s_bl], dim=1)
        x_bt = seq_bt[:, :-1].clone()
        y_bt = seq_bt[:, 1:].clone()
        y_bt[:, : self.length - 1] = IGNORE  # predictions inside a carry no loss
        return x_bt, y_bt

    @torch.no_grad()
    def sorted_exactly(self, model: torch.nn.Module, size: int = 1024) -> float:
        """Fraction of ``size`` held-out sequences the model sorts exactly when it generates
        the L tokens itself (greedy, no teacher forcing)."""
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        exact = 0
        for x_bt, _ in heldout_batches(self, size):
            a_bl = x_bt[:, : self.length].to(device)
            out_bt = model.generate(a_bl, self.length)
            exact += int((out_bt[:, self.length :] == a_bl.sort(dim=-1).values).all(-1).sum())
        model.train(was_training)
        return exact / size


class CharTask:
    """A character language model over a text file: windows of ``n_ctx`` characters, every
    position predicts the next character. The first 90% of the text is the train split, the
    rest the test split."""

    name: ClassVar[str] = "chars"

    def __init__(self, text: str | Path, n_ctx: int = 64, sha256: str | None = None) -> None:
        path = Path(text)
        if not path.is_file():
            raise ValueError(f"text must be a readable text file, got text={str(path)!r}")
        raw = path.read_bytes()
        digest = hashlib.sha256(raw).hexdigest()
        if sha256 is not None and sha256 != digest:
            raise ValueError(
                f"text file {path} changed since the run started (sha256 {digest[:12]}…, "
                f"expected {sha256[:12]}…)"
            )
        try:
            content = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = raw.count(b"\n", 0, exc.start) + 1
            raise ValueError(
                f"text file {path} is not valid UTF-8: byte {exc.start} (line {line}) is "
                f"{raw[exc.start : exc.start + 1]!r}; re-encode it as UTF-8"
            ) from None
        split = int(0.9 * len(content))
        if not isinstance(n_ctx, int) or n_ctx < 2:
            raise ValueError(f"n_ctx must be an int ≥ 2, got n_ctx={n_ctx!r}")
        if min(split, len(content) - split) <= n_ctx + 1:
            raise ValueError(
                f"text file {path} has {len(content)} characters; each split needs more than "
                f"n_ctx + 1 = {n_ctx + 1} (use a longer text or a smaller --n-ctx)"
            )
        self.path, self.sha256, self.n_ctx = path, digest, n_ctx
        self.chars = sorted(set(content))
        self.vocab_size = len(self.chars)
        lookup = {ch: i for i, ch in enumerate(self.chars)}
        data = torch.tensor([lookup[ch] for ch in content], dtype=torch.long)
        self.data = {"train": data[:split], "test": data[split:]}

    def options(self) -> dict[str, Any]:
        return {"text": str(self.path), "n_ctx": self.n_ctx, "sha256": self.sha256}

    def decode(self, ids: list[int]) -> str:
        return "".join(self.chars[i] for i in ids)

    def batch(
        self, split: str, batch_size: int, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        _check_split(split)
        batch_size = _check_batch(batch_size, generator, 4 * 8 * self.n_ctx)  # x, y, offsets
        data = self.data[split]
        start_b = torch.randint(0, len(data) - self.n_ctx - 1, (batch_size,), generator=generator)
        offset_bt = start_b[:, None] + torch.arange(self.n_ctx)
        return data[offset_bt], data[offset_bt + 1]


TASKS: dict[str, type] = {task.name: task for task in (SortTask, CharTask)}


def make_task(name: str, **options: Any) -> SortTask | CharTask:
    """The task ``name`` of :data:`TASKS` built with ``options``."""
    if name not in TASKS:
        raise ValueError(f"task must be one of {', '.join(TASKS)}, got task={name!r}")
    return TASKS[name](**options)
