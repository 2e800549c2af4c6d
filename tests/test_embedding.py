"""models.embedding: PartiallyFrozenEmbedding against a full nn.Embedding oracle, and remap against
the seed's dict ``.apply_``.

The oracle (``MaskedFull``) is the thread's gradient-masking workaround written plainly: a full
``nn.Embedding`` whose frozen rows' gradients are zeroed after every backward. With plain SGD it
trains exactly like the module, so outputs, trainable-row gradients and trajectories must match
it. With weight decay or momentum it drifts, and the module must not.
"""

from __future__ import annotations

import doctest
import io
import math
import re
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from flowgraph.models import embedding as embedding_module
from flowgraph.models.embedding import PartiallyFrozenEmbedding, remap

ROOT = Path(__file__).resolve().parents[1]


# --- the oracle ----------------------------------------------------------------------------------
class MaskedFull:
    """A full, trainable nn.Embedding whose frozen rows' gradients are zeroed after backward."""

    def __init__(self, weight_vd: torch.Tensor, trainable_rows: list[int], padding_idx=None):
        self.emb = nn.Embedding.from_pretrained(
            weight_vd.clone(), freeze=False, padding_idx=padding_idx
        )
        self.frozen_v = torch.ones(weight_vd.shape[0], dtype=torch.bool)
        self.frozen_v[trainable_rows] = False

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()
        self.emb.weight.grad[self.frozen_v] = 0


def sgd_step(params, lr: float = 0.1) -> None:
    """Plain SGD, written out: no momentum, no decay."""
    with torch.no_grad():
        for p in params:
            p -= lr * p.grad
            p.grad = None


def loss_of(out: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """A loss with a distinct gradient per output element (a sum of squares would be symmetric)."""
    return (out * g).sum() + 0.5 * out.square().sum()


def make_weight(v: int, d: int, seed: int = 0, dtype=torch.float64) -> torch.Tensor:
    return torch.randn(v, d, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def random_ids(v: int, shape: tuple[int, ...], seed: int = 1) -> torch.Tensor:
    return torch.randint(0, v, shape, generator=torch.Generator().manual_seed(seed))


def as_trainable(rows: list[int], v: int, as_mask: bool):
    if not as_mask:
        return rows
    mask_v = torch.zeros(v, dtype=torch.bool)
    mask_v[rows] = True
    return mask_v


@st.composite
def lookup_cases(draw):
    """A table size, trainable rows in any order (as ids or a mask), a padding_idx and ids."""
    v = draw(st.integers(1, 24))
    d = draw(st.integers(1, 4))
    rows = draw(st.lists(st.integers(0, v - 1), unique=True, max_size=v))  # any order
    as_mask = draw(st.booleans())
    padding_idx = draw(st.none() | st.integers(-v, v - 1))
    shape = tuple(draw(st.lists(st.integers(0, 4), max_size=3)))
    ids = draw(
        st.lists(st.integers(0, v - 1), min_size=math.prod(shape), max_size=math.prod(shape))
    )
    seed = draw(st.integers(0, 2**16))
    return v, d, rows, as_mask, padding_idx, torch.tensor(ids, dtype=torch.int64).view(shape), seed


# --- forward, gradients, trajectories against the oracle -----------------------------------------
@settings(max_examples=150, deadline=None)
@given(lookup_cases())
def test_output_and_gradients_match_the_masked_full_embedding(case) -> None:
    v, d, rows, as_mask, padding_idx, ids, seed = case
    weight_vd = make_weight(v, d, seed)
    ref = MaskedFull(weight_vd, rows, padding_idx)
    g = torch.randn(
        *ids.shape, d, generator=torch.Generator().manual_seed(seed), dtype=weight_vd.dtype
    )
    ref_out = ref.emb(ids)
    ref.backward(loss_of(ref_out, g))
    for path in ("_forward_scatter", "_forward_select"):  # eager and torch.compile formulations
        emb = PartiallyFrozenEmbedding(weight_vd, as_trainable(rows, v, as_mask), padding_idx)
        out = emb(ids) if path == "_forward_scatter" else emb._forward_select(ids)
        assert out.shape == (*ids.shape, d)
        assert torch.equal(out, ref_out)  # a lookup: bit-exact
        if emb.num_trainable == 0:  # nothing trains (the select path's output needs no grad)
            continue
        loss_of(out, g).backward()
        grad_td = emb.trainable_td.grad
        assert grad_td is not None and grad_td.shape == (emb.num_trainable, d)
        torch.testing.assert_close(grad_td, ref.emb.weight.grad[emb.rows_t])
    # every trainable row but padding has a slot; the slots follow the sorted row ids
    pad = None if padding_idx is None else padding_idx % v
    assert emb.rows_t.tolist() == sorted(set(rows) - {pad})


def test_output_and_gradients_on_a_realistic_batch_with_repeats_and_padding() -> None:
    v, d = 500, 16
    weight_vd = make_weight(v, d, dtype=torch.float32)
    rows = torch.randperm(v, generator=torch.Generator().manual_seed(2))[:100].tolist()
    ids_bt = random_ids(v, (32, 20))
    ids_bt[:, -3:] = 0  # padding at the end of every sequence
    ids_bt[0, :5] = rows[0]  # one trainable row read five times
    ref = MaskedFull(weight_vd, rows, padding_idx=0)
    emb = PartiallyFrozenEmbedding(weight_vd, rows, padding_idx=0)
    g_btd = torch.randn(32, 20, d, generator=torch.Generator().manual_seed(3))
    out_btd, ref_btd = emb(ids_bt), ref.emb(ids_bt)
    assert torch.equal(out_btd, ref_btd)
    loss_of(out_btd, g_btd).backward()
    ref.backward(loss_of(ref_btd, g_btd))
    torch.testing.assert_close(emb.trainable_td.grad, ref.emb.weight.grad[emb.rows_t])
    assert ref.emb.weight.grad[rows].abs().sum() > 0  # the comparison is not 0 == 0


@pytest.mark.parametrize("as_mask", [False, True])
def test_sgd_trajectory_matches_the_masked_full_embedding(as_mask: bool) -> None:
    v, d = 60, 5
    weight_vd = make_weight(v, d)
    rows = [17, 3, 59, 40, 8, 0]  # unsorted, 0 is padding and listed
    ref = MaskedFull(weight_vd, rows, padding_idx=0)
    emb = PartiallyFrozenEmbedding(weight_vd, as_trainable(rows, v, as_mask), padding_idx=0)
    for step in range(6):
        ids_bt = random_ids(v, (8, 12), seed=step)
        ids_bt[:, :2] = torch.tensor(rows[:2])  # trainable rows are read every step
        g_btd = torch.randn(8, 12, d, generator=torch.Generator().manual_seed(100 + step))
        g_btd = g_btd.double()
        loss_of(emb(ids_bt), g_btd).backward()
        sgd_step(emb.parameters())
        ref.backward(loss_of(ref.emb(ids_bt), g_btd))
        sgd_step(ref.emb.parameters())
    torch.testing.assert_close(emb.weight, ref.emb.weight.detach())
    frozen_v = ~emb.trainable_mask
    assert torch.equal(emb.weight[frozen_v], weight_vd[frozen_v])
    assert not torch.equal(emb.weight[rows[0]], weight_vd[rows[0]])  # it did train


# --- frozen rows under every optimizer -----------------------------------------------------------
OPTIMIZERS: dict[str, Callable[[list[torch.Tensor]], torch.optim.Optimizer]] = {
    "Adam": lambda p: torch.optim.Adam(p, lr=0.05),
    "Adam-weight-decay": lambda p: torch.optim.Adam(p, lr=0.05, weight_decay=0.1),
    "AdamW-weight-decay": lambda p: torch.optim.AdamW(p, lr=0.05, weight_decay=0.1),
    "AdamW-amsgrad": lambda p: torch.optim.AdamW(p, lr=0.05, weight_decay=0.1, amsgrad=True),
    "SGD-momentum-decay": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=0.01),
    "SGD-nesterov": lambda p: torch.optim.SGD(
        p, lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01
    ),
    "RMSprop": lambda p: torch.optim.RMSprop(p, lr=0.01, momentum=0.5, weight_decay=0.01),
    "Adagrad": lambda p: torch.optim.Adagrad(p, lr=0.1, weight_decay=0.01),
    "Adamax": lambda p: torch.optim.Adamax(p, lr=0.05, weight_decay=0.01),
    "NAdam": lambda p: torch.optim.NAdam(p, lr=0.05, weight_decay=0.01),
    "RAdam": lambda p: torch.optim.RAdam(p, lr=0.05, weight_decay=0.01),
    "Adadelta": lambda p: torch.optim.Adadelta(p, weight_decay=0.01),
    "ASGD": lambda p: torch.optim.ASGD(p, lr=0.05, weight_decay=0.01),
    "Rprop": lambda p: torch.optim.Rprop(p, lr=0.05),
    "LBFGS": lambda p: torch.optim.LBFGS(p, lr=0.5, max_iter=3),
}


def train(
    module: nn.Module,
    optimizer: torch.optim.Optimizer,
    v: int,
    d: int,
    steps: int,
    after_backward=None,
) -> None:
    """``steps`` closure steps on batches that read every row at least once."""
    for step in range(steps):
        ids_bt = torch.cat([torch.arange(v), random_ids(v, (3 * v,), seed=step)]).view(4, v)
        g_btd = torch.randn(4, v, d, generator=torch.Generator().manual_seed(step)).double()

        def closure(ids_bt=ids_bt, g_btd=g_btd):
            optimizer.zero_grad()
            loss = loss_of(module(ids_bt), g_btd)
            if after_backward is None:
                loss.backward()
            else:
                after_backward(loss)
            return loss

        optimizer.step(closure)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_frozen_rows_stay_bit_identical_under_every_optimizer(name: str) -> None:
    v, d = 40, 6
    weight_vd = make_weight(v, d)
    rows = [31, 2, 19, 7, 25]
    emb = PartiallyFrozenEmbedding(weight_vd, rows, padding_idx=7)  # 7: listed, still frozen
    opt = OPTIMIZERS[name](list(emb.parameters()))
    train(emb, opt, v, d, steps=5)
    frozen_v = torch.ones(v, dtype=torch.bool)
    frozen_v[[31, 2, 19, 25]] = False
    table_vd = emb.weight.detach()
    assert torch.equal(table_vd[frozen_v], weight_vd[frozen_v])
    assert not torch.equal(table_vd[~frozen_v], weight_vd[~frozen_v])  # the rest did train
    # the optimizer holds state for the (T, D) parameter alone
    assert [p.shape for p in opt.state] == [(4, d)]
    for value in opt.state[emb.trainable_td].values():
        if isinstance(value, torch.Tensor) and value.dim() > 0 and name != "LBFGS":
            assert value.shape == (4, d), name


@pytest.mark.parametrize("name", ["Adam-weight-decay", "AdamW-weight-decay", "SGD-momentum-decay"])
def test_gradient_masking_drifts_where_the_module_does_not(name: str) -> None:
    """Elementwise optimizers: trainable rows follow the masked full embedding exactly, while
    the oracle's frozen rows drift under weight decay — the thread's problem, made visible."""
    v, d = 30, 4
    weight_vd = make_weight(v, d)
    rows = [4, 29, 11]
    emb = PartiallyFrozenEmbedding(weight_vd, rows)
    ref = MaskedFull(weight_vd, rows)
    train(emb, OPTIMIZERS[name](list(emb.parameters())), v, d, steps=4)
    train(
        ref.emb,
        OPTIMIZERS[name](list(ref.emb.parameters())),
        v,
        d,
        steps=4,
        after_backward=ref.backward,
    )
    ref_vd = ref.emb.weight.detach()
    torch.testing.assert_close(emb.weight[rows], ref_vd[rows])
    frozen_v = ~emb.trainable_mask
    assert torch.equal(emb.weight[frozen_v], weight_vd[frozen_v])
    assert not torch.equal(ref_vd[frozen_v], weight_vd[frozen_v])


# --- padding_idx ---------------------------------------------------------------------------------
@pytest.mark.parametrize("padding_idx", [5, -5])
def test_padding_row_never_changes_and_gets_no_gradient(padding_idx: int) -> None:
    v, d = 10, 3
    weight_vd = make_weight(v, d)
    emb = PartiallyFrozenEmbedding(weight_vd, trainable=[5, 1], padding_idx=padding_idx)
    pad = padding_idx % v
    assert emb.padding_idx == pad and emb.rows_t.tolist() == [1]
    assert repr(emb) == f"PartiallyFrozenEmbedding(10, 3, trainable=1, padding_idx={pad})"
    ids = torch.tensor([pad, 1, pad, 1])
    out = emb(ids)
    assert torch.equal(out[0], weight_vd[pad])  # not zeroed: the given row
    opt = torch.optim.AdamW(emb.parameters(), lr=0.1, weight_decay=0.5)
    for _ in range(3):
        emb(ids).square().sum().backward()
        opt.step()
        opt.zero_grad()
    assert torch.equal(emb.weight[pad], weight_vd[pad])
    assert not torch.equal(emb.weight[1], weight_vd[1])
    # the same padding through nn.Embedding: no gradient for that row either
    ref = nn.Embedding.from_pretrained(weight_vd.clone(), freeze=False, padding_idx=padding_idx)
    ref(ids).square().sum().backward()
    assert torch.equal(ref.weight.grad[pad], torch.zeros(d, dtype=weight_vd.dtype))


# --- the weight property -------------------------------------------------------------------------
def test_weight_is_the_current_table_and_a_fresh_tensor() -> None:
    v, d = 12, 3
    weight_vd = make_weight(v, d)
    emb = PartiallyFrozenEmbedding(weight_vd, [9, 4, 0])
    with torch.no_grad():
        emb.trainable_td.mul_(-2)
    expected_vd = weight_vd.clone()  # the straightforward reference: one row at a time
    for row in (0, 4, 9):
        expected_vd[row] = -2 * weight_vd[row]
    table_vd = emb.weight
    assert table_vd.shape == (v, d)
    assert torch.equal(table_vd, expected_vd)
    with torch.no_grad():
        table_vd.zero_()  # a fresh tensor: the module is untouched
    assert torch.equal(emb.weight, expected_vd)
    assert torch.equal(emb.frozen_vd, weight_vd)


def test_weight_ties_an_output_layer_with_the_right_gradient() -> None:
    v, d = 12, 3
    weight_vd = make_weight(v, d)
    rows = [9, 4, 0]
    emb = PartiallyFrozenEmbedding(weight_vd, rows)
    ref = MaskedFull(weight_vd, rows)
    h_nd = torch.randn(5, d, dtype=torch.float64)
    (h_nd @ emb.weight.T).logsumexp(-1).sum().backward()
    ref.backward((h_nd @ ref.emb.weight.T).logsumexp(-1).sum())
    torch.testing.assert_close(emb.trainable_td.grad, ref.emb.weight.grad[sorted(rows)])


# --- no full-table work per step -----------------------------------------------------------------
class LargestOutput(TorchDispatchMode):
    """Records the largest tensor any aten op produces."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, tuple | list) else [out]:
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def test_a_training_step_never_makes_a_table_sized_tensor() -> None:
    v, d = 5000, 8
    weight_vd = make_weight(v, d, dtype=torch.float32)
    rows = torch.randperm(v, generator=torch.Generator().manual_seed(0))[: v // 5]
    ids_bt = random_ids(v, (16, 10))
    emb = PartiallyFrozenEmbedding(weight_vd, rows)
    opt = torch.optim.AdamW(emb.parameters(), weight_decay=0.1)
    emb(ids_bt).sum().backward()  # the first step creates the optimizer state
    opt.step()
    with LargestOutput() as seen:
        emb(ids_bt).square().sum().backward()
        opt.step()
        opt.zero_grad()
    assert 0 < seen.largest <= rows.numel() * d  # (T, D) at most: the gradient and Adam state
    # the detector sees the full-size gradient of a plain nn.Embedding
    full = nn.Embedding.from_pretrained(weight_vd, freeze=False)
    with LargestOutput() as seen:
        full(ids_bt).square().sum().backward()
    assert seen.largest == v * d


# --- trainable given in any form ------------------------------------------------------------------
def test_mask_ids_in_any_order_tensor_and_list_give_the_same_module() -> None:
    v, d = 20, 3
    weight_vd = make_weight(v, d)
    rows = [13, 2, 19, 6]
    mask_v = torch.zeros(v, dtype=torch.bool)
    mask_v[rows] = True
    forms = [
        rows,
        torch.tensor(rows),
        torch.tensor(rows, dtype=torch.int32),
        mask_v,
        mask_v.tolist(),
        sorted(rows)[::-1],
    ]
    ids = random_ids(v, (4, 5))
    built = [PartiallyFrozenEmbedding(weight_vd, form) for form in forms]
    for emb in built:
        assert emb.rows_t.tolist() == [2, 6, 13, 19]
        assert torch.equal(emb.trainable_mask, mask_v)
        assert torch.equal(emb(ids), built[0](ids))
        assert torch.equal(emb.trainable_td, weight_vd[[2, 6, 13, 19]])


def test_no_trainable_rows_is_a_frozen_table() -> None:
    weight_vd = make_weight(6, 2)
    ids = torch.tensor([[0, 5], [3, 3]])
    for trainable in ([], torch.zeros(6, dtype=torch.bool), torch.tensor([], dtype=torch.int64)):
        emb = PartiallyFrozenEmbedding(weight_vd, trainable)
        assert emb.num_trainable == 0 and emb.trainable_td.shape == (0, 2)
        assert torch.equal(emb(ids), weight_vd[ids])
        assert torch.equal(emb._forward_select(ids), weight_vd[ids])
        opt = torch.optim.Adam(emb.parameters())
        emb(ids).sum().backward()
        opt.step()
        assert torch.equal(emb.weight, weight_vd)


# --- construction --------------------------------------------------------------------------------
def test_from_pretrained_copies_the_weight_and_matches_the_constructor() -> None:
    weight_vd = make_weight(8, 3)
    a = PartiallyFrozenEmbedding.from_pretrained(weight_vd, [1, 6], padding_idx=0)
    b = PartiallyFrozenEmbedding(weight_vd, [6, 1], 0)
    assert repr(a) == repr(b) == "PartiallyFrozenEmbedding(8, 3, trainable=2, padding_idx=0)"
    for key, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[key]), key
    original_vd = weight_vd.clone()
    weight_vd.zero_()  # the caller's tensor is not shared
    assert torch.equal(a.weight, original_vd)
    assert isinstance(a, PartiallyFrozenEmbedding)


def test_dtype_and_device_follow_to_and_double() -> None:
    weight_vd = make_weight(8, 3, dtype=torch.float32)
    emb = PartiallyFrozenEmbedding(weight_vd, [1, 6])
    assert emb.frozen_vd.dtype == emb.trainable_td.dtype == torch.float32
    ids = torch.tensor([[1, 2], [6, 6]], dtype=torch.int32)
    emb.double()
    assert emb.frozen_vd.dtype == emb.trainable_td.dtype == torch.float64
    assert emb.rows_t.dtype == emb.slot_v.dtype == torch.int64  # index buffers are not cast
    assert torch.equal(emb(ids), weight_vd.double()[ids.long()])
    emb.to(torch.bfloat16)
    assert emb(ids).dtype == torch.bfloat16
    built = PartiallyFrozenEmbedding(weight_vd, [1, 6], dtype=torch.float64, device="cpu")
    assert built.weight.dtype == torch.float64 and built.weight.device.type == "cpu"
    assert torch.equal(built(ids), weight_vd.double()[ids.long()])
    emb.to("meta")
    assert emb.frozen_vd.device.type == "meta" and emb.slot_v.device.type == "meta"


@pytest.mark.parametrize(
    "shape", [(), (7,), (3, 4), (2, 3, 4), (0,), (4, 0)], ids=lambda s: f"shape{s}"
)
def test_ids_of_any_shape(shape: tuple[int, ...]) -> None:
    weight_vd = make_weight(9, 2)
    emb = PartiallyFrozenEmbedding(weight_vd, [0, 8, 4])
    ids = random_ids(9, shape)
    out = emb(ids)
    assert out.shape == (*shape, 2)
    assert torch.equal(out, nn.functional.embedding(ids, weight_vd))


# --- state_dict ----------------------------------------------------------------------------------
def test_state_dict_round_trip_into_a_fresh_module() -> None:
    v, d = 30, 4
    weight_vd = make_weight(v, d)
    rows = [3, 27, 14]
    emb = PartiallyFrozenEmbedding(weight_vd, rows, padding_idx=0)
    opt = torch.optim.Adam(emb.parameters(), lr=0.1)
    train(emb, opt, v, d, steps=3)
    state = emb.state_dict()
    assert set(state) == {"frozen_vd", "trainable_td", "rows_t"}  # slot_v is derived
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    fresh = PartiallyFrozenEmbedding(
        torch.zeros(v, d, dtype=torch.float64), rows[::-1], padding_idx=0
    )
    assert not torch.equal(fresh.weight, emb.weight)
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    assert torch.equal(fresh.weight, emb.weight)
    ids = random_ids(v, (5, 6))
    assert torch.equal(fresh(ids), emb(ids))
    # inside a bigger model the prefix is kept in the keys and in the message
    model = nn.Sequential(PartiallyFrozenEmbedding(weight_vd, rows))
    model.load_state_dict({f"0.{k}": t for k, t in state.items()})


@pytest.mark.parametrize(
    "other_rows", [[3, 27], [3, 27, 15], [3, 27, 14, 15]], ids=["fewer", "same-count", "more"]
)
def test_loading_a_checkpoint_with_other_trainable_rows_fails_clearly(other_rows) -> None:
    weight_vd = make_weight(30, 4)
    state = PartiallyFrozenEmbedding(weight_vd, [3, 27, 14]).state_dict()
    other = PartiallyFrozenEmbedding(weight_vd, other_rows)
    before = other.state_dict()
    with pytest.raises(
        RuntimeError, match=r"rows_t: the checkpoint trains 3 rows \(\[3, 14, 27\]\)"
    ):
        other.load_state_dict(state)
    with pytest.raises(RuntimeError, match=r"0\.rows_t.*state_dict\['0\.rows_t'\]"):
        nn.Sequential(other).load_state_dict({f"0.{k}": t for k, t in state.items()})
    for key, value in other.state_dict().items():  # nothing was half-loaded
        assert torch.equal(value, before[key]), key


# --- torch.compile -------------------------------------------------------------------------------
def test_torch_compile_matches_eager() -> None:
    """One compiled module (about 30 s of C++ compilation on CPU): output and gradients."""
    v, d = 200, 8
    weight_vd = make_weight(v, d, dtype=torch.float32)
    rows = torch.randperm(v, generator=torch.Generator().manual_seed(0))[:40]
    ids_bt = random_ids(v, (6, 9))
    ids_bt[0] = rows[:9]
    ids_bt[1, :3] = 0  # padding
    g_btd = torch.randn(6, 9, d, generator=torch.Generator().manual_seed(1))
    eager = PartiallyFrozenEmbedding(weight_vd, rows, padding_idx=0)
    compiled_module = PartiallyFrozenEmbedding(weight_vd, rows, padding_idx=0)
    compiled = torch.compile(compiled_module, fullgraph=True)  # no graph breaks
    out, ref = compiled(ids_bt), eager(ids_bt)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    loss_of(out, g_btd).backward()
    loss_of(ref, g_btd).backward()
    torch.testing.assert_close(compiled_module.trainable_td.grad, eager.trainable_td.grad)
    assert compiled_module.trainable_td.grad.abs().sum() > 0


# --- errors --------------------------------------------------------------------------------------
W = make_weight(10, 3)
EMB = PartiallyFrozenEmbedding(W, [1, 2])
IDS = torch.tensor([[0, 1], [1, 1]])

CONSTRUCTOR_ERRORS = [
    (
        "weight-list",
        lambda: PartiallyFrozenEmbedding([[1.0]], [0]),
        TypeError,
        r"weight_vd must be a torch\.Tensor, got list",
    ),
    (
        "weight-1d",
        lambda: PartiallyFrozenEmbedding(torch.zeros(5), [0]),
        ValueError,
        r"weight_vd must be 2-D.*got shape \(5,\)",
    ),
    (
        "weight-int",
        lambda: PartiallyFrozenEmbedding(torch.zeros(5, 2, dtype=torch.int64), [0]),
        TypeError,
        r"weight_vd must be floating point, got dtype torch\.int64",
    ),
    (
        "dtype-int",
        lambda: PartiallyFrozenEmbedding(W, [0], dtype=torch.int32),
        TypeError,
        r"dtype must be a floating-point dtype, got torch\.int32",
    ),
    (
        "padding-str",
        lambda: PartiallyFrozenEmbedding(W, [0], padding_idx="0"),
        TypeError,
        r"padding_idx must be an int or None, got '0'",
    ),
    (
        "padding-bool",
        lambda: PartiallyFrozenEmbedding(W, [0], padding_idx=True),
        TypeError,
        r"padding_idx.*got True",
    ),
    (
        "padding-big",
        lambda: PartiallyFrozenEmbedding(W, [0], padding_idx=10),
        ValueError,
        r"padding_idx must be in \[-10, 10\).*got 10",
    ),
    (
        "padding-neg",
        lambda: PartiallyFrozenEmbedding(W, [0], padding_idx=-11),
        ValueError,
        r"got -11",
    ),
    (
        "mask-shape",
        lambda: PartiallyFrozenEmbedding(W, [True, False]),
        ValueError,
        r"trainable as a bool mask must have shape \(10,\), got \(2,\)",
    ),
    (
        "mask-2d",
        lambda: PartiallyFrozenEmbedding(W, torch.ones(2, 5, dtype=torch.bool)),
        ValueError,
        r"got \(2, 5\)",
    ),
    (
        "ids-float",
        lambda: PartiallyFrozenEmbedding(W, torch.tensor([1.0, 2.0])),
        TypeError,
        r"trainable must be a bool mask or integer row ids, got dtype torch\.float32",
    ),
    (
        "ids-2d",
        lambda: PartiallyFrozenEmbedding(W, [[1, 2]]),
        ValueError,
        r"trainable as row ids must be 1-D, got shape \(1, 2\)",
    ),
    (
        "ids-outside",
        lambda: PartiallyFrozenEmbedding(W, [3, 10, -1]),
        ValueError,
        r"trainable holds row ids outside \[0, 10\): \[-1, 10\]",
    ),
    (
        "ids-repeated",
        lambda: PartiallyFrozenEmbedding(W, [4, 2, 4, 2, 7]),
        ValueError,
        r"trainable lists row ids more than once: \[2, 4\]",
    ),
    (
        "ids-unconvertible",
        lambda: PartiallyFrozenEmbedding(W, ["a", "b"]),
        TypeError,
        r"trainable must be a \(V,\) bool mask or a 1-D sequence of row ids, got list",
    ),
    ("ids-none", lambda: PartiallyFrozenEmbedding(W, None), TypeError, r"trainable.*got NoneType"),
]

FORWARD_ERRORS = [
    ("ids-list", lambda: EMB([1, 2]), TypeError, r"ids must be a torch\.Tensor"),
    (
        "ids-float",
        lambda: EMB(torch.tensor([1.0])),
        TypeError,
        r"ids must be an int64 or int32 tensor, got dtype torch\.float32",
    ),
    ("ids-bool", lambda: EMB(torch.tensor([True])), TypeError, r"got dtype torch\.bool"),
    (
        "ids-too-big",
        lambda: EMB(torch.tensor([[0, 10], [3, 4]])),
        ValueError,
        r"ids must lie in \[0, 10\).*got values from 0 to 10",
    ),
    ("ids-negative", lambda: EMB(torch.tensor([-1, 3])), ValueError, r"got values from -1 to 3"),
    (
        "ids-device",
        lambda: EMB(torch.tensor([1]).to("meta")),
        ValueError,
        r"expected ids on cpu \(where the table is\), got meta",
    ),
]

REMAP_ERRORS = [
    (
        "ids-list",
        lambda: remap([0, 1], [1, 0]),
        TypeError,
        r"ids must be a torch\.Tensor.*got list",
    ),
    (
        "ids-float",
        lambda: remap(torch.tensor([0.0]), [1, 0]),
        TypeError,
        r"ids must be an int64 or int32 tensor",
    ),
    (
        "ids-outside",
        lambda: remap(torch.tensor([0, 2]), [1, 0]),
        ValueError,
        r"ids must lie in \[0, 2\).*from 0 to 2",
    ),
    (
        "ids-negative",
        lambda: remap(torch.tensor([[1, -1]], dtype=torch.int32), [1, 0]),
        ValueError,
        r"ids must lie in \[0, 2\).*from -1 to 1",
    ),
    (
        "out-list",
        lambda: remap(torch.tensor([0]), [1, 0], out=[0]),
        TypeError,
        r"out must be a torch\.Tensor or None, got list",
    ),
    (
        "out-shape",
        lambda: remap(torch.tensor([0, 1]), [1, 0], out=torch.empty(3, dtype=torch.int64)),
        ValueError,
        r"out must have the shape, dtype and device of ids, \(2,\) torch\.int64 cpu; "
        r"got \(3,\) torch\.int64 cpu",
    ),
    (
        "out-dtype",
        lambda: remap(torch.tensor([0, 1]), [1, 0], out=torch.empty(2, dtype=torch.int32)),
        ValueError,
        r"got \(2,\) torch\.int32 cpu",
    ),
    (
        "out-strided",
        lambda: remap(torch.tensor([0, 1]), [1, 0], out=torch.empty(4, dtype=torch.int64)[::2]),
        ValueError,
        r"out must be contiguous",
    ),
    (
        "out-is-ids",
        lambda: remap(IDS, [1, 0], out=IDS),
        ValueError,
        r"out must not share memory with ids",
    ),
    (
        "order-float",
        lambda: remap(torch.tensor([0]), torch.tensor([1.0, 0.0])),
        TypeError,
        r"order must hold integer ids, got dtype torch\.float32",
    ),
    (
        "order-bool",
        lambda: remap(torch.tensor([0]), [True, False]),
        TypeError,
        r"got dtype torch\.bool",
    ),
    (
        "order-2d",
        lambda: remap(torch.tensor([0]), [[0, 1]]),
        ValueError,
        r"order must be 1-D \(new id → old id\), got shape \(1, 2\)",
    ),
    (
        "order-outside",
        lambda: remap(torch.tensor([0]), [0, 3, 1]),
        ValueError,
        r"permutation of 0\.\.2, but holds values outside \[0, 3\): \[3\]",
    ),
    (
        "order-repeat",
        lambda: remap(torch.tensor([0]), [2, 0, 2, 1, 0]),
        ValueError,
        r"permutation of 0\.\.4, but repeats \[0, 2\] \(and so misses \[3, 4\]\)",
    ),
    (
        "order-unconvertible",
        lambda: remap(torch.tensor([0]), {"a": 1}),
        TypeError,
        r"order must be a 1-D integer tensor or sequence, got dict",
    ),
]


@pytest.mark.parametrize(
    ("name", "call", "error", "message"),
    CONSTRUCTOR_ERRORS + FORWARD_ERRORS + REMAP_ERRORS,
    ids=[case[0] for case in CONSTRUCTOR_ERRORS + FORWARD_ERRORS + REMAP_ERRORS],
)
def test_bad_input_fails_with_a_message_naming_it(name, call, error, message) -> None:
    with pytest.raises(error, match=message):
        call()


# --- remap ---------------------------------------------------------------------------------------
def seed_apply_remap(ids: torch.Tensor, order: list[int]) -> torch.Tensor:
    """The thread's remap, verbatim in spirit: a dict from old to new id, applied per element."""
    original_to_sorted = {orig: new for new, orig in enumerate(order)}
    return ids.clone().apply_(original_to_sorted.get)


@st.composite
def remap_cases(draw):
    v = draw(st.integers(1, 40))
    order = draw(st.permutations(range(v)))
    shape = tuple(draw(st.lists(st.integers(0, 5), max_size=3)))
    ids = draw(
        st.lists(st.integers(0, v - 1), min_size=math.prod(shape), max_size=math.prod(shape))
    )
    dtype = draw(st.sampled_from([torch.int64, torch.int32]))
    as_tensor = draw(st.booleans())
    return (
        torch.tensor(ids, dtype=dtype).view(shape),
        (torch.tensor(order) if as_tensor else order),
        order,
    )


@settings(max_examples=200, deadline=None)
@given(remap_cases())
def test_remap_matches_the_dict_apply(case) -> None:
    ids, order_arg, order = case
    new = remap(ids, order_arg)
    assert new.shape == ids.shape and new.dtype == ids.dtype
    assert torch.equal(new, seed_apply_remap(ids, order))
    # the new numbering points at the same rows: order[new] == old
    assert torch.equal(torch.tensor(order, dtype=torch.int64)[new.long()], ids.long())


@settings(max_examples=50, deadline=None)
@given(st.lists(st.booleans(), min_size=1, max_size=30))
def test_remap_to_the_seeds_sorted_vocabulary(mask: list[bool]) -> None:
    """argsort(mask) puts frozen rows first, trainable last: the layout the seed's module needs."""
    mask_v = torch.tensor(mask)
    v = mask_v.numel()
    order = torch.argsort(mask_v.to(torch.int8), stable=True)
    ids = torch.arange(v)
    new = remap(ids, order)
    num_fixed = int((~mask_v).sum())
    assert torch.equal(new >= num_fixed, mask_v)  # trainable ids land at num_fixed and above
    assert torch.equal(torch.sort(new).values, ids)  # a permutation
    assert torch.equal(new, seed_apply_remap(ids, order.tolist()))


def test_remap_into_out_reuses_the_buffer() -> None:
    order_v = torch.randperm(50, generator=torch.Generator().manual_seed(0))
    out_bt = torch.full((6, 7), -5, dtype=torch.int32)
    for seed in range(3):  # batch after batch into one buffer
        ids_bt = random_ids(50, (6, 7), seed=seed).int()
        result = remap(ids_bt, order_v, out=out_bt)
        assert result is out_bt
        assert torch.equal(out_bt, seed_apply_remap(ids_bt, order_v.tolist()))


def test_remap_leaves_its_inputs_alone() -> None:
    ids = torch.tensor([[2, 0], [1, 1]])
    order = torch.tensor([1, 2, 0])
    ids_before, order_before = ids.clone(), order.clone()
    assert remap(ids, order).tolist() == [[1, 2], [0, 0]]
    assert torch.equal(ids, ids_before) and torch.equal(order, order_before)


# --- documentation -------------------------------------------------------------------------------
def test_module_doctests_run() -> None:
    result = doctest.testmod(embedding_module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted >= 5 and result.failed == 0


def test_docs_page_examples_run() -> None:
    page = ROOT / "docs" / "embedding.md"
    blocks = re.findall(r"^```python\n(.*?)^```", page.read_text(encoding="utf-8"), re.M | re.S)
    assert blocks, "docs/embedding.md lost its examples"
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(page), "exec"), namespace)


def test_docs_page_pastes_the_real_load_error() -> None:
    page = (ROOT / "docs" / "embedding.md").read_text(encoding="utf-8")
    pasted = re.search(r"^```text\n(Error\(s\) in loading.*?)^```", page, re.M | re.S)
    assert pasted is not None
    torch.manual_seed(0)
    pretrained_vd = torch.randn(75_000, 300)
    emb = PartiallyFrozenEmbedding(pretrained_vd, [74_998, 17, 40_321, 5], padding_idx=0)
    other = PartiallyFrozenEmbedding(torch.zeros(75_000, 300), trainable=[5, 17])
    with pytest.raises(RuntimeError) as info:
        other.load_state_dict(emb.state_dict())
    assert str(info.value) == pasted.group(1).rstrip("\n")
