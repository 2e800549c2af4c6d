"""models.entity_memory against plain references: a Python span finder, dense attention that
materialises the logits, float64 gradcheck, and the saved-tensor sizes that keep memory off
mentions × N."""

from __future__ import annotations

import doctest
import inspect
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import example, given, settings
from hypothesis import strategies as st
from torch import Tensor

from flowgraph.models import entity_memory as em_module
from flowgraph.models.entity_memory import EntityMemory, entity_attention, find_mentions

O, B, I = 0, 1, 2  # noqa: E741


# --- oracles -------------------------------------------------------------------------------------
def oracle_spans(bio: list[list[int]]) -> list[tuple[int, int, int]]:
    """Mentions by walking each row: a B, then every I right after it."""
    spans = []
    for b, row in enumerate(bio):
        for s, tag in enumerate(row):
            if tag == B:
                e = s
                while e + 1 < len(row) and row[e + 1] == I:
                    e += 1
                spans.append((b, s, e))
    return spans


def dense_reference(
    em: EntityMemory, x_bnc: Tensor, bio_bn: Tensor, ids_bn: Tensor | None, *, top_k: int | None
) -> tuple[Tensor | None, Tensor]:
    """The module's definition written plainly: all m × N logits, one softmax, a loop for y.

    ``top_k=None`` is training (softmax over all N), otherwise the softmax over the top-k logits.
    """
    spans = oracle_spans(bio_bn.tolist())
    rows = [torch.cat([x_bnc[b, s], x_bnc[b, e]]) for b, s, e in spans]
    y_bnc = torch.zeros_like(x_bnc)
    if not spans:
        return (None if ids_bn is None else torch.zeros(())), y_bnc
    h_md = em.W_f(torch.stack(rows))
    logits_mk = h_md @ em.E.T
    if top_k is None:
        o_md = torch.softmax(logits_mk, dim=1) @ em.E
    else:
        val_mt, idx_mt = logits_mk.topk(top_k, dim=1)
        alpha_mt = torch.softmax(val_mt, dim=1)
        o_md = torch.stack([alpha_mt[i] @ em.E[idx_mt[i]] for i in range(len(spans))])
    out_md = em.W_b(o_md)
    zero_c = torch.zeros_like(x_bnc[0, 0])
    rows = [[zero_c] * x_bnc.shape[1] for _ in range(x_bnc.shape[0])]
    for i, (b, s, _) in enumerate(spans):
        rows[b][s] = out_md[i]
    y_bnc = torch.stack([torch.stack(row) for row in rows])
    if ids_bn is None:
        return None, y_bnc
    gold_m = torch.tensor([int(ids_bn[b, s]) for b, s, _ in spans])
    return F.cross_entropy(logits_mk, gold_m), y_bnc


def make_case(
    bio: list[list[int]], *, n_entities: int = 37, d_model: int = 6, d_entity: int = 5,
    dtype: torch.dtype = torch.float64, seed: int = 0, **kwargs: int,
) -> tuple[EntityMemory, Tensor, Tensor, Tensor]:  # fmt: skip
    torch.manual_seed(seed)
    kwargs.setdefault("top_k", 5)
    em = EntityMemory(d_model, n_entities, d_entity, **kwargs).to(dtype)
    bio_bn = torch.tensor(bio)
    x_bnc = torch.randn(*bio_bn.shape, d_model, dtype=dtype, requires_grad=True)
    ids_bn = torch.randint(0, n_entities, bio_bn.shape)
    return em, x_bnc, bio_bn, ids_bn


def grads(params: list[Tensor], out: Tensor) -> list[Tensor]:
    return list(torch.autograd.grad(out, params, allow_unused=False))


BIO = [[B, I, I, O, I, B, B, I], [I, O, B, B, I, I, I, I], [O, O, O, O, O, O, O, B]]


# --- spans ---------------------------------------------------------------------------------------
bio_rows = st.integers(1, 4).flatmap(
    lambda rows: st.integers(0, 24).flatmap(
        lambda n: st.lists(
            st.lists(st.sampled_from([O, B, I]), min_size=n, max_size=n),
            min_size=rows,
            max_size=rows,
        )
    )
)


@settings(max_examples=300, deadline=None)
@given(bio_rows)
@example([[I, B, I]])  # I at position 0 starts nothing
@example([[O, B]])  # B at the last position: a one-token span ending there
@example([[B, I, I]])  # a span running to the end (the seed's off-by-one)
@example([[B, B]])
@example([[B, I, I, O, I]])  # the I after an O is ignored
@example([[I, I, I]])
def test_find_mentions_matches_the_python_oracle(bio: list[list[int]]) -> None:
    got = find_mentions(torch.tensor(bio, dtype=torch.long).reshape(len(bio), -1))
    assert got.dtype == torch.long and got.shape[1] == 3
    assert [tuple(r) for r in got.tolist()] == oracle_spans(bio)


@pytest.mark.parametrize(
    ("bio", "spans"),
    [
        ([[O, O, B]], [(0, 2, 2)]),
        ([[O, B, I]], [(0, 1, 2)]),
        ([[B, I, I, O, I]], [(0, 0, 2)]),
        ([[I, B, B, I]], [(0, 1, 1), (0, 2, 3)]),
        ([[B], [I], [O]], [(0, 0, 0)]),
    ],
)
def test_find_mentions_hand_cases(bio: list[list[int]], spans: list[tuple[int, int, int]]) -> None:
    # Hand-checked cases beside the oracle, so an oracle bug cannot hide a finder bug.
    assert [tuple(r) for r in find_mentions(torch.tensor(bio)).tolist()] == spans


def test_find_mentions_accepts_other_integer_dtypes() -> None:
    bio = torch.tensor(BIO, dtype=torch.int8)
    assert find_mentions(bio).tolist() == find_mentions(bio.long()).tolist()


def test_docstring_examples_run() -> None:
    assert doctest.testmod(em_module, raise_on_error=False).failed == 0


# --- streaming attention: gradcheck and the dense formula ----------------------------------------
@pytest.mark.parametrize("block_size", [1, 4, 23, 64])
@pytest.mark.parametrize("with_gold", [True, False])
def test_entity_attention_gradcheck(block_size: int, with_gold: bool) -> None:
    torch.manual_seed(block_size)
    h = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    e = torch.randn(23, 4, dtype=torch.float64, requires_grad=True)
    gold = torch.randint(0, 23, (5,)) if with_gold else None
    fn = lambda h, e: entity_attention(h, e, gold, block_size=block_size)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (h, e))


def test_entity_attention_gradcheck_loss_only() -> None:
    torch.manual_seed(1)
    h = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    e = torch.randn(11, 3, dtype=torch.float64, requires_grad=True)
    gold = torch.tensor([0, 10, 3, 3])
    fn = lambda h, e: entity_attention(h, e, gold, block_size=3, need_out=False)[1]  # noqa: E731
    assert torch.autograd.gradcheck(fn, (h, e))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_entity_attention_matches_dense_autograd(dtype: torch.dtype) -> None:
    torch.manual_seed(2)
    m, n, d = 9, 1000, 16
    h = torch.randn(m, d, dtype=dtype, requires_grad=True)
    e = torch.randn(n, d, dtype=dtype, requires_grad=True)
    gold = torch.randint(0, n, (m,))
    w_o, w_nll = torch.randn(m, d, dtype=dtype), torch.randn(m, dtype=dtype)
    o, nll = entity_attention(h, e, gold, block_size=128)
    logits = h @ e.T
    o_ref = torch.softmax(logits, dim=1) @ e
    nll_ref = F.cross_entropy(logits, gold, reduction="none")
    tol = {"rtol": 1e-10, "atol": 1e-10} if dtype == torch.float64 else {"rtol": 1e-4, "atol": 1e-5}
    torch.testing.assert_close(o, o_ref, **tol)
    torch.testing.assert_close(nll, nll_ref, **tol)
    got = grads([h, e], (o * w_o).sum() + (nll * w_nll).sum())
    ref = grads([h, e], (o_ref * w_o).sum() + (nll_ref * w_nll).sum())
    for g, r in zip(got, ref, strict=True):
        torch.testing.assert_close(g, r, **tol)


def test_entity_attention_with_a_frozen_table_or_query() -> None:
    torch.manual_seed(3)
    h = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    e = torch.randn(10, 4, dtype=torch.float64)
    o, nll = entity_attention(h, e, torch.tensor([1, 2, 3]), block_size=3)
    (dh,) = torch.autograd.grad(o.sum() + nll.sum(), [h])
    logits = h @ e.T
    ref = (torch.softmax(logits, 1) @ e).sum() + F.cross_entropy(
        logits, torch.tensor([1, 2, 3]), reduction="sum"
    )
    torch.testing.assert_close(dh, torch.autograd.grad(ref, [h])[0])
    e.requires_grad_(True)
    (de,) = torch.autograd.grad(entity_attention(h.detach(), e, block_size=4)[0].sum(), [e])
    (de_ref,) = torch.autograd.grad((torch.softmax(h.detach() @ e.T, 1) @ e).sum(), [e])
    torch.testing.assert_close(de, de_ref)


def test_streaming_topk_finds_the_global_top_k() -> None:
    torch.manual_seed(4)
    h, e = torch.randn(7, 5), torch.randn(50, 5)
    for block_size in (1, 3, 8, 50, 64):
        for k in (1, 5, 9, 50):
            idx = em_module._streaming_topk(h, e, k, block_size)
            ref = (h @ e.T).topk(k, dim=1).indices
            assert idx.sort(1).values.tolist() == ref.sort(1).values.tolist(), (block_size, k)


# --- the module against the dense reference ------------------------------------------------------
@pytest.mark.parametrize("block_size", [1, 7, 64])
def test_module_train_matches_dense_reference_float64(block_size: int) -> None:
    em, x, bio, ids = make_case(BIO, block_size=block_size, top_k=5)
    params = [x, *em.parameters()]
    g = torch.randn_like(x)
    loss, y = em(x, bio, ids)
    loss_ref, y_ref = dense_reference(em, x, bio, ids, top_k=None)
    torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(loss, loss_ref, rtol=1e-12, atol=1e-12)
    got = grads(params, loss + (y * g).sum())
    ref = grads(params, loss_ref + (y_ref * g).sum())
    names = ["x", *(n for n, _ in em.named_parameters())]
    for name, a, r in zip(names, got, ref, strict=True):
        torch.testing.assert_close(a, r, rtol=1e-10, atol=1e-12, msg=name)


def test_module_train_matches_dense_reference_float32() -> None:
    em, x, bio, ids = make_case(BIO, n_entities=3000, d_model=24, d_entity=16,
                                dtype=torch.float32, block_size=512)  # fmt: skip
    params = [x, *em.parameters()]
    g = torch.randn_like(x)
    loss, y = em(x, bio, ids)
    loss_ref, y_ref = dense_reference(em, x, bio, ids, top_k=None)
    torch.testing.assert_close(y, y_ref, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(loss, loss_ref, rtol=1e-5, atol=1e-6)
    for a, r in zip(grads(params, loss + (y * g).sum()),
                    grads(params, loss_ref + (y_ref * g).sum()), strict=True):  # fmt: skip
        torch.testing.assert_close(a, r, rtol=1e-4, atol=1e-5)


def test_module_gradcheck_in_x_float64() -> None:
    em, x, bio, ids = make_case([[B, I, O, B], [O, B, I, I]], n_entities=9, block_size=2)
    g = torch.randn_like(x)
    fn = lambda x: (lambda ly: ly[0] + (ly[1] * g).sum())(em(x, bio, ids))  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x,))


def test_module_eval_is_top_k_attention() -> None:
    em, x, bio, ids = make_case(BIO, n_entities=40, block_size=6, top_k=7)
    em.eval()
    loss, y = em(x, bio, ids)
    _, y_ref = dense_reference(em, x, bio, ids, top_k=7)
    torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)
    params = [x, *em.parameters()]
    g = torch.randn_like(x)
    for a, r in zip(grads(params, (y * g).sum()), grads(params, (y_ref * g).sum()), strict=True):
        torch.testing.assert_close(a, r, rtol=1e-10, atol=1e-12)
    # The eval loss is the full-softmax cross-entropy: the same number training reports.
    loss_train, y_train = em.train()(x, bio, ids)
    torch.testing.assert_close(loss, loss_train)
    assert not torch.allclose(y, y_train)  # top-7 of 40 is not the full softmax


def test_module_eval_with_top_k_equal_to_n_is_training() -> None:
    em, x, bio, ids = make_case(BIO, n_entities=12, block_size=5, top_k=12)
    _, y_train = em(x, bio, ids)
    _, y_eval = em.eval()(x, bio, ids)
    torch.testing.assert_close(y_eval, y_train, rtol=1e-12, atol=1e-12)


def test_module_writes_only_at_mention_starts_and_loss_is_none_without_ids() -> None:
    em, x, bio, _ = make_case(BIO)
    loss, y = em(x, bio)
    assert loss is None
    nonzero = y.abs().sum(-1) != 0
    starts = torch.zeros_like(nonzero)
    starts[find_mentions(bio)[:, 0], find_mentions(bio)[:, 1]] = True
    assert torch.equal(nonzero, starts)


def test_ids_outside_mention_starts_are_not_read() -> None:
    em, x, bio, ids = make_case(BIO)
    padded = torch.where(bio == B, ids, -100)  # padding elsewhere, as token-level labels often do
    loss, _ = em(x, bio, padded)
    torch.testing.assert_close(loss, em(x, bio, ids)[0])


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_zero_mentions_give_zeros_and_a_differentiable_zero_loss(mode: str) -> None:
    em, x, bio, ids = make_case([[O, I, I, O], [O, O, O, I]])
    em.train(mode == "train")
    loss, y = em(x, bio, ids)
    assert torch.equal(y, torch.zeros_like(x))
    assert loss is not None and float(loss.detach()) == 0.0 and loss.requires_grad
    loss.backward(retain_graph=True)
    for p in (em.W_f.weight, em.W_f.bias, em.E):
        assert p.grad is not None and torch.equal(p.grad, torch.zeros_like(p)), p.shape
    y.sum().backward()
    assert torch.equal(em.W_b.weight.grad, torch.zeros_like(em.W_b.weight))
    assert torch.equal(x.grad, torch.zeros_like(x))


def test_memory_does_not_grow_as_mentions_times_entities() -> None:
    """Autograd keeps O(m·d + N·d) for the module; the dense reference keeps m × N matrices."""
    m_rows, n = 8, 4096
    bio = [[B, O] * 8 for _ in range(m_rows // 8)]
    em, x, bio_bn, ids = make_case(bio, n_entities=n, d_entity=4, block_size=256,
                                   dtype=torch.float32)  # fmt: skip
    m = int((bio_bn == B).sum())

    def largest_saved(fn):  # numel of the largest tensor autograd saves while fn runs
        sizes = []
        with torch.autograd.graph.saved_tensors_hooks(
            lambda t: sizes.append(t.numel()) or t, lambda t: t
        ):
            fn()
        return max(sizes)

    assert largest_saved(lambda: em(x, bio_bn, ids)) <= n * em.d_entity  # E itself
    assert largest_saved(lambda: dense_reference(em, x, bio_bn, ids, top_k=None)) >= m * n


# --- bad input -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("bio", "match"),
    [
        (torch.tensor([[0, 3, 1]]), r"bio_bn must hold 0 \(O\), 1 \(B\) or 2 \(I\), got 3 at"),
        (torch.tensor([[0, 1], [-1, 0]]), r"got -1 at position \(1, 0\)"),
        (torch.tensor([0, 1, 2]), r"bio_bn must have 2 dimensions, got shape \(3,\)"),
    ],
)
def test_bad_bio_values_and_shapes(bio: Tensor, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        find_mentions(bio)


@pytest.mark.parametrize(
    "bio", [torch.tensor([[0.0, 1.0]]), torch.tensor([[True, False]]), [[0, 1]]]
)
def test_bio_must_be_an_integer_tensor(bio: object) -> None:
    with pytest.raises(TypeError, match="bio_bn must"):
        find_mentions(bio)  # type: ignore[arg-type]


def test_module_rejects_bad_inputs() -> None:
    em, x, bio, ids = make_case(BIO, n_entities=37)
    with pytest.raises(ValueError, match=r"bio_bn must hold .* got 5"):
        em(x, torch.full_like(bio, 5), ids)
    with pytest.raises(ValueError, match=r"x_bnc must have shape \(batch, tokens, d_model=6\)"):
        em(x[..., :5], bio, ids)
    with pytest.raises(ValueError, match=r"x_bnc must have shape"):
        em(x[0], bio, ids)
    with pytest.raises(ValueError, match=r"x_bnc \(batch, tokens\) = \(3, 8\) disagrees"):
        em(x, bio[:, :7], ids)
    with pytest.raises(TypeError, match=r"x_bnc must match the module's parameters"):
        em(x.float(), bio, ids)
    with pytest.raises(TypeError, match=r"x_bnc must be a torch\.Tensor"):
        em(x.tolist(), bio, ids)
    with pytest.raises(ValueError, match=r"entity_ids_bn shape \(3, 7\) disagrees"):
        em(x, bio, ids[:, :7])
    with pytest.raises(TypeError, match="entity_ids_bn must hold integers"):
        em(x, bio, ids.double())
    bad = ids.clone()
    bad[0, 0] = 37  # (0, 0) is a mention start
    with pytest.raises(ValueError, match=r"ids_bn at mention start \(0, 0\) is 37, expected"):
        em(x, bio, bad)
    bad[0, 0] = -1
    with pytest.raises(ValueError, match=r"mention start \(0, 0\) is -1"):
        em(x, bio, bad)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_entities": 0}, "n_entities must be a positive int, got 0"),
        ({"d_model": 2.0}, "d_model must be a positive int, got 2.0"),
        ({"d_entity": True}, "d_entity must be a positive int, got True"),
        ({"top_k": 0}, "top_k must be a positive int"),
        ({"top_k": 11}, "top_k must be ≤ n_entities = 10, got 11"),
        ({"block_size": -1}, "block_size must be a positive int, got -1"),
    ],
)
def test_constructor_rejects_bad_arguments(kwargs: dict, match: str) -> None:
    args = {"d_model": 4, "n_entities": 10, "d_entity": 3, "top_k": 2} | kwargs
    with pytest.raises(ValueError, match=match):
        EntityMemory(**args)


def test_entity_attention_rejects_bad_arguments() -> None:
    h, e = torch.randn(3, 4), torch.randn(10, 4)
    with pytest.raises(ValueError, match=r"expected h_md \(m, d\) and e_kd \(N, d\) with one d"):
        entity_attention(h, e[:, :3])
    with pytest.raises(ValueError, match="expected h_md"):
        entity_attention(h[0], e)
    with pytest.raises(ValueError, match="block_size must be a positive int, got 0"):
        entity_attention(h, e, block_size=0)
    with pytest.raises(ValueError, match=r"gold_m has 2 ids, expected one per query \(3\)"):
        entity_attention(h, e, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"gold_m must lie in \[0, 10\), got ids from 0 to 10"):
        entity_attention(h, e, torch.tensor([0, 10, 2]))
    with pytest.raises(TypeError, match="gold_m must hold integers"):
        entity_attention(h, e, torch.tensor([0.0, 1.0, 2.0]))
    with pytest.raises(TypeError, match=r"expected h_md and e_kd of one dtype on one device, got"):
        entity_attention(h, e.double())


def test_second_derivatives_are_refused() -> None:
    h = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    e = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    (dh,) = torch.autograd.grad(entity_attention(h, e)[0].sum(), [h], create_graph=True)
    with pytest.raises(RuntimeError, match=r"does not require grad"):
        dh.sum().backward()


# --- the documentation page ----------------------------------------------------------------------
DOC_PAGE = Path(__file__).resolve().parents[1] / "docs" / "entity_memory.md"


def _fenced(lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", DOC_PAGE.read_text(encoding="utf-8"), re.M | re.S)


def test_docs_usage_example_runs() -> None:
    code = next(block for block in _fenced("python") if "EntityMemory(" in block)
    scope: dict = {}
    exec(compile(code, str(DOC_PAGE), "exec"), scope)
    y_bnc = scope["y_bnc"]
    assert y_bnc.shape == (8, 512, 768)
    assert (y_bnc.abs().sum(-1) != 0).nonzero().tolist() == [[0, 5]]
    assert scope["em"].E.grad is not None


def test_docs_error_messages_are_real() -> None:
    pasted = next(block for block in _fenced("text") if "ValueError" in block).splitlines()
    with pytest.raises(ValueError) as bio_error:
        find_mentions(torch.tensor([[0, 3, 1]]))
    em, x, bio, ids = make_case(BIO, n_entities=37)
    ids[0, 0] = 37
    with pytest.raises(ValueError) as id_error:
        em(x, bio, ids)
    assert pasted == [f"ValueError: {bio_error.value}", f"ValueError: {id_error.value}"]


def test_docs_find_mentions_example_matches_the_docstring() -> None:
    example_block = next(block for block in _fenced("pycon") if ">>> find_mentions" in block)
    example = example_block[example_block.index(">>> find_mentions") :]  # after its imports
    assert example.strip() in inspect.cleandoc(em_module.find_mentions.__doc__ or "")
