"""PartiallyFrozenEmbedding and remap on a CUDA device, against the same module and a full
nn.Embedding on the CPU in float64. Skipped where ``torch.cuda.is_available()`` is False
(tests/gpu/conftest.py)."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

from flowgraph.models.embedding import PartiallyFrozenEmbedding, remap

V, D = 2000, 16


def make_case(seed: int = 0):
    """A table, 20% trainable rows in random order, and (8, 30) ids with repeats and padding 0."""
    gen = torch.Generator().manual_seed(seed)
    weight_vd = torch.randn(V, D, generator=gen, dtype=torch.float64)
    rows = torch.randperm(V, generator=gen)[: V // 5]
    ids_bt = torch.randint(0, V, (8, 30), generator=gen)
    ids_bt[0, :10] = rows[0]
    ids_bt[:, -4:] = 0
    g_btd = torch.randn(8, 30, D, generator=gen, dtype=torch.float64)
    return weight_vd, rows, ids_bt, g_btd


def masked_full_grad(weight_vd, rows, ids_bt, g_btd) -> torch.Tensor:
    """The oracle: a full nn.Embedding's gradient with every frozen row zeroed."""
    ref = nn.Embedding.from_pretrained(weight_vd.clone(), freeze=False, padding_idx=0)
    (ref(ids_bt) * g_btd).sum().backward()
    frozen_v = torch.ones(V, dtype=torch.bool)
    frozen_v[rows] = False
    return ref.weight.grad.masked_fill(frozen_v[:, None], 0)


@pytest.mark.parametrize("path", ["forward", "_forward_select"])
def test_cuda_output_and_gradients_match_the_cpu_oracle(path: str) -> None:
    weight_vd, rows, ids_bt, g_btd = make_case()
    emb = PartiallyFrozenEmbedding(weight_vd, rows, padding_idx=0, device="cuda")
    ids_cuda = ids_bt.cuda()
    out = getattr(emb, path)(ids_cuda)
    assert out.device.type == "cuda"
    assert torch.equal(out.cpu(), weight_vd[ids_bt])
    (out * g_btd.cuda()).sum().backward()
    expected_vd = masked_full_grad(weight_vd, rows, ids_bt, g_btd)
    torch.testing.assert_close(emb.trainable_td.grad.cpu(), expected_vd[emb.rows_t.cpu()])


def test_to_cuda_moves_every_tensor_and_weight_stays_a_table() -> None:
    weight_vd, rows, ids_bt, _ = make_case(1)
    mask_v = torch.zeros(V, dtype=torch.bool, device="cuda")
    mask_v[rows.cuda()] = True
    emb = PartiallyFrozenEmbedding(weight_vd.float(), mask_v).to("cuda")  # a mask on the device
    for name, t in [*emb.named_parameters(), *emb.named_buffers()]:
        assert t.device.type == "cuda", name
    assert torch.equal(emb.weight.cpu(), weight_vd.float())
    assert torch.equal(emb(ids_bt.cuda().int()).cpu(), weight_vd.float()[ids_bt])


@pytest.mark.parametrize(
    "make_optimizer",
    [
        lambda p: torch.optim.AdamW(p, lr=0.05, weight_decay=0.1),
        lambda p: torch.optim.Adam(p, lr=0.05, weight_decay=0.1, fused=True),
        lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=0.01, foreach=True),
    ],
    ids=["AdamW", "Adam-fused", "SGD-momentum-foreach"],
)
def test_frozen_rows_stay_bit_identical_on_cuda(make_optimizer) -> None:
    weight_vd, rows, ids_bt, g_btd = make_case(2)
    emb = PartiallyFrozenEmbedding(weight_vd.float(), rows, padding_idx=0, device="cuda")
    opt = make_optimizer(list(emb.parameters()))
    for _ in range(4):
        (emb(ids_bt.cuda()) * g_btd.float().cuda()).square().sum().backward()
        opt.step()
        opt.zero_grad()
    table_vd = emb.weight.detach().cpu()
    frozen_v = ~emb.trainable_mask.cpu()
    assert torch.equal(table_vd[frozen_v], weight_vd.float()[frozen_v])
    assert not torch.equal(table_vd[rows[0]], weight_vd.float()[rows[0]])


def test_bad_ids_on_cuda_fail_before_any_kernel() -> None:
    weight_vd, rows, _, _ = make_case(3)
    emb = PartiallyFrozenEmbedding(weight_vd, rows, device="cuda")
    with pytest.raises(ValueError, match=rf"ids must lie in \[0, {V}\).*from 0 to {V}"):
        emb(torch.tensor([0, V], device="cuda"))
    with pytest.raises(
        ValueError, match=r"expected ids on cuda:\d \(where the table is\), got cpu"
    ):
        emb(torch.tensor([0, 1]))
    with pytest.raises(TypeError, match=r"ids must be an int64 or int32 tensor"):
        emb(torch.tensor([0.0], device="cuda"))
    with pytest.raises(ValueError, match=r"ids must lie in \[0, 3\).*from -1 to 2"):
        remap(torch.tensor([2, -1], device="cuda"), torch.tensor([2, 0, 1], device="cuda"))
    assert emb(torch.tensor([0, 1], device="cuda")).shape == (2, D)  # the context still works


def test_state_dict_from_cuda_loads_on_the_cpu() -> None:
    weight_vd, rows, ids_bt, _ = make_case(4)
    emb = PartiallyFrozenEmbedding(weight_vd, rows, device="cuda")
    with torch.no_grad():
        emb.trainable_td.mul_(3)
    buffer = io.BytesIO()
    torch.save(emb.state_dict(), buffer)
    buffer.seek(0)
    cpu = PartiallyFrozenEmbedding(torch.zeros(V, D, dtype=torch.float64), rows)
    cpu.load_state_dict(torch.load(buffer, map_location="cpu", weights_only=True))
    assert torch.equal(cpu(ids_bt), emb(ids_bt.cuda()).cpu())


def test_remap_on_cuda_matches_the_cpu() -> None:
    gen = torch.Generator().manual_seed(5)
    order_v = torch.randperm(V, generator=gen)
    ids_bt = torch.randint(0, V, (64, 75), generator=gen, dtype=torch.int32)
    new = remap(ids_bt.cuda(), order_v.cuda())
    assert new.device.type == "cuda" and new.dtype == torch.int32
    assert torch.equal(new.cpu(), remap(ids_bt, order_v))
    assert torch.equal(order_v[new.cpu().long()], ids_bt.long())
    out_bt = torch.empty_like(ids_bt, device="cuda")
    assert remap(ids_bt.cuda(), order_v.cuda(), out=out_bt) is out_bt
    assert torch.equal(out_bt, new)


def test_torch_compile_on_cuda_matches_eager() -> None:
    weight_vd, rows, ids_bt, g_btd = make_case(6)
    eager = PartiallyFrozenEmbedding(weight_vd.float(), rows, padding_idx=0, device="cuda")
    module = PartiallyFrozenEmbedding(weight_vd.float(), rows, padding_idx=0, device="cuda")
    compiled = torch.compile(module, fullgraph=True)
    ids_cuda, g_cuda = ids_bt.cuda(), g_btd.float().cuda()
    out, ref = compiled(ids_cuda), eager(ids_cuda)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    (out * g_cuda).sum().backward()
    (ref * g_cuda).sum().backward()
    torch.testing.assert_close(module.trainable_td.grad, eager.trainable_td.grad)
