"""Tasks: the sorter's layout and split, the character model's windows, and a task added as one
small class that trains through models.train unchanged."""

from __future__ import annotations

import itertools

import pytest
import torch

from flowgraph.models.gpt import GPTConfig
from flowgraph.models.tasks import IGNORE, TASKS, CharTask, SortTask, make_task
from flowgraph.models.train import TrainConfig, train

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_sort_layout():
    task = SortTask()
    assert (task.vocab_size, task.n_ctx) == (3, 21)
    x_bt, y_bt = task.batch("train", 50, _gen())
    assert x_bt.shape == y_bt.shape == (50, 21) and x_bt.dtype == torch.int64
    L = 11
    a_bl = x_bt[:, :L]
    s_bl = torch.sort(a_bl, dim=1).values
    assert torch.equal(y_bt[:, : L - 1], torch.full((50, L - 1), IGNORE))
    assert torch.equal(y_bt[:, L - 1 :], s_bl)  # the L predicted tokens are the sort
    assert torch.equal(x_bt[:, L:], s_bl[:, :-1])  # teacher forcing: the sort's prefix
    assert torch.equal(x_bt[:, 1:][y_bt[:, :-1] != IGNORE], y_bt[:, :-1][y_bt[:, :-1] != IGNORE])


def test_sort_splits_are_disjoint_and_sized():
    task = SortTask(length=6, vocab=3)
    all_bl = torch.tensor(list(itertools.product(range(3), repeat=6)))
    fraction = task.is_test(all_bl).float().mean().item()
    assert 0.07 < fraction < 0.13
    train_x, _ = task.batch("train", 2000, _gen(1))
    test_x, _ = task.batch("test", 500, _gen(1))
    assert not task.is_test(train_x[:, :6]).any()
    assert task.is_test(test_x[:, :6]).all()


def test_batches_depend_only_on_the_generator():
    task = SortTask()
    a = task.batch("train", 8, _gen(5))
    b = task.batch("train", 8, _gen(5))
    c = task.batch("train", 8, _gen(6))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def test_chars(tmp_path):
    text = "to be or not to be, that is the question. " * 20
    path = tmp_path / "t.txt"
    path.write_text(text, encoding="utf-8")
    task = CharTask(path, n_ctx=16)
    assert task.vocab_size == len(set(text)) and task.n_ctx == 16
    x_bt, y_bt = task.batch("train", 4, _gen())
    assert x_bt.shape == y_bt.shape == (4, 16)
    assert torch.equal(x_bt[:, 1:], y_bt[:, :-1])  # every position predicts the next character
    row = task.decode(x_bt[0].tolist()) + task.decode(y_bt[0, -1:].tolist())
    assert row in text
    split = int(0.9 * len(text))
    test_x, test_y = task.batch("test", 4, _gen())
    for i in range(4):
        window = task.decode(test_x[i].tolist() + test_y[i, -1:].tolist())
        assert window in text[split:]
    again = make_task("chars", **task.options())
    assert again.chars == task.chars


def test_task_errors(tmp_path):
    with pytest.raises(ValueError, match="task must be one of"):
        make_task("translate")
    with pytest.raises(ValueError, match="split must be one of"):
        SortTask().batch("valid", 2, _gen())
    with pytest.raises(ValueError, match="length must be"):
        SortTask(length=1)
    with pytest.raises(ValueError, match="text must be a readable"):
        CharTask(tmp_path / "missing.txt")
    short = tmp_path / "short.txt"
    short.write_text("abc")
    with pytest.raises(ValueError, match="characters"):
        CharTask(short, n_ctx=8)
    long = tmp_path / "long.txt"
    long.write_text("abcdefgh" * 100)
    with pytest.raises(ValueError, match="changed since the run started"):
        CharTask(long, n_ctx=8, sha256="0" * 64)


class ReverseTask:
    """A new task in a few lines: read a sequence, emit it reversed (the protocol of
    models.tasks: name, vocab_size, n_ctx, batch, options)."""

    name = "reverse"

    def __init__(self, length: int = 5):
        self.length, self.vocab_size, self.n_ctx = length, 4, 2 * length - 1

    def options(self):
        return {"length": self.length}

    def batch(self, split, batch_size, generator):
        a = torch.randint(0, 4, (batch_size, self.length), generator=generator)
        seq = torch.cat([a, a.flip(1)], dim=1)
        y = seq[:, 1:].clone()
        y[:, : self.length - 1] = IGNORE
        return seq[:, :-1], y


def test_a_new_task_is_one_class(tmp_path, monkeypatch):
    monkeypatch.setitem(TASKS, "reverse", ReverseTask)
    task = make_task("reverse", length=5)
    config = GPTConfig(vocab_size=4, n_ctx=9, n_layer=1, n_head=2, d_model=16)
    result = train(config, task, TrainConfig(steps=5, warmup=1), tmp_path / "run", progress=False)
    assert result["step"] == 5 and 0.0 <= result["test_accuracy"] <= 1.0
    assert (tmp_path / "run" / "checkpoint" / "config.json").is_file()
