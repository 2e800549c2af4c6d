"""The torch reference for masked sparse attention: the fallback backend and every kernel's oracle.

``out[q] = Σ_k softmax_k(scale·q·k) · v[k]`` over the keys the mask allows for q, scale = 1/√d by
default; a query with no allowed key gives zeros (never NaN) and zero gradients. The reference
walks the same block CSR the kernels walk, one query block at a time, so its memory is that of the
computed tiles (O(b·h·tiles·block²)), never (b, h, n, n). It is plain torch, so autograd
differentiates it; half inputs are computed in float32, float64 in float64.

Input checks live here too (:func:`check_inputs`), shared by every backend, and run before any
work. NaN or ±inf in q, k or v is refused (a ValueError naming the tensor and an index): there is
no attention to compute from it. A score that overflows to +inf from finite inputs takes all the
weight, as the softmax does in the limit, so the output stays finite.
"""

from __future__ import annotations

import math
import numbers

import torch
import torch.nn.functional as F

from flowgraph.gpu.mask import SparseMask

__all__ = ["DTYPES", "check_finite", "check_inputs", "sparse_attention_reference"]

DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _check_tensor(name: str, x: object) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"{name} must be 4-D (b, h, n, d), got shape {tuple(x.shape)}")
    if x.dtype not in DTYPES:
        raise TypeError(
            f"{name} must be float16, bfloat16, float32 or float64, got dtype {x.dtype}"
        )
    return x


def check_finite(**tensors: torch.Tensor) -> None:
    """Refuse NaN or ±inf in any of ``tensors`` (by argument name), naming the first bad index.

    One reduction over them all (on CUDA, one host synchronisation); meta tensors, which hold no
    values, pass.
    """
    real = {name: x for name, x in tensors.items() if x.device.type != "meta" and x.numel()}
    if not real:
        return
    with torch.no_grad():
        ok = torch.stack([torch.isfinite(x).all() for x in real.values()]).all()
        if bool(ok):
            return
        for name, x in real.items():
            bad = ~torch.isfinite(x)
            if bad.any():
                index = tuple(int(i) for i in bad.nonzero()[0])
                raise ValueError(
                    f"{name} must be finite, got {float(x[index])} at index {index} "
                    f"({int(bad.sum())} NaN or inf values in all)"
                )


def softmax_limit(s: torch.Tensor) -> torch.Tensor:
    """Scores whose rows hold a +inf (an overflow): the softmax's limit, all the weight on those
    keys shared equally, instead of inf − inf = NaN. Other rows are returned unchanged."""
    inf = torch.isposinf(s)
    return torch.where(inf.any(-1, keepdim=True), torch.where(inf, 0.0, -math.inf), s)


def check_inputs(
    q_bhnd: torch.Tensor,
    k_bhnd: torch.Tensor,
    v_bhnd: torch.Tensor,
    mask: SparseMask,
    scale: float | None,
) -> float:
    """Check the arguments of :func:`gpu.sparse_attention`; return the scale to use.

    Raises TypeError/ValueError naming the argument, its value and what was expected.
    """
    q = _check_tensor("q_bhnd", q_bhnd)
    if min(q.shape) < 1:
        raise ValueError(f"q_bhnd must have no empty dimension, got shape {tuple(q.shape)}")
    for name, x in (("k_bhnd", k_bhnd), ("v_bhnd", v_bhnd)):
        _check_tensor(name, x)
        if x.shape != q.shape:
            raise ValueError(
                f"{name} must have the shape of q_bhnd (b, h, n, d)={tuple(q.shape)}, "
                f"got {tuple(x.shape)}"
            )
        if x.dtype != q.dtype:
            raise TypeError(f"{name} must have the dtype of q_bhnd ({q.dtype}), got {x.dtype}")
        if x.device != q.device:
            raise ValueError(
                f"expected q_bhnd and {name} on one device, got {q.device} and {x.device}"
            )
    if not isinstance(mask, SparseMask):
        raise TypeError(f"mask must be a gpu.SparseMask, got {type(mask).__name__}")
    _, h, n, d = q.shape
    if mask.heads not in (1, h):
        raise ValueError(f"mask has heads={mask.heads}, expected 1 or the heads of q_bhnd, h={h}")
    if mask.n != n:
        raise ValueError(f"mask has n={mask.n}, expected the n of q_bhnd, n={n}")
    if mask.device != q.device:
        raise ValueError(
            f"expected q_bhnd and mask on one device, got {q.device} and {mask.device}; "
            "move the mask with mask.to(q_bhnd.device)"
        )
    scale = _scale(scale, d)
    check_finite(q_bhnd=q, k_bhnd=k_bhnd, v_bhnd=v_bhnd)
    return scale


def _scale(scale: object, d: int) -> float:
    if scale is None:
        return 1.0 / math.sqrt(d)
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real):
        raise TypeError(f"scale must be a real number or None, got {scale!r}")
    if not math.isfinite(scale):
        raise ValueError(f"scale must be finite, got scale={scale}")
    return float(scale)


def _per_head(x_bhnd: torch.Tensor, index_hn: torch.Tensor) -> torch.Tensor:
    """x[:, h, index[h, i]] at position i (index has 1 head for all, or h)."""
    b, h, n, d = x_bhnd.shape
    index = index_hn.long()[None, :, :, None].expand(b, h, n, d)
    return x_bhnd.gather(2, index)


def _tile_table(mask: SparseMask) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The forward CSR padded to (H, nb, K): key block, slot, valid; and row lengths (H, nb)."""
    indptr = mask.kv_indptr.long()
    lengths = indptr[:, 1:] - indptr[:, :-1]
    width = max(int(lengths.max()), 1)
    pos = torch.arange(width, device=indptr.device)
    valid = pos < lengths[..., None]
    at = torch.where(valid, indptr[:, :-1, None] + pos, 0)
    if mask.kv_indices.numel() == 0:
        zeros = torch.zeros_like(at)
        return zeros, zeros, valid, lengths
    return mask.kv_indices.long()[at], mask.kv_slots.long()[at], valid, lengths


def sparse_attention_reference(
    q_bhnd: torch.Tensor,
    k_bhnd: torch.Tensor,
    v_bhnd: torch.Tensor,
    mask: SparseMask,
    scale: float | None = None,
    *,
    return_lse: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Masked attention computed tile by tile over ``mask``'s block CSR (differentiable).

    Parameters
    ----------
    q_bhnd, k_bhnd, v_bhnd : (b, h, n, d) tensors of one dtype (float16, bfloat16, float32,
        float64) on one device.
    mask : a :class:`gpu.SparseMask` with n positions and 1 or h heads, on the same device.
    scale : the score scale, default 1/√d.
    return_lse : also return the (b, h, n) float32/float64 logsumexp of the scaled allowed
        scores per query (−inf for a query with no allowed key), as the kernels write it.

    Returns
    -------
    (b, h, n, d) tensor of the input dtype (and the logsumexp when asked for). The result does
    not depend on the inputs' memory layout: non-contiguous q, k, v are computed as their
    contiguous copies (as the CUDA kernels read them).
    """
    scale = check_inputs(q_bhnd, k_bhnd, v_bhnd, mask, scale)
    if mask.device.type == "meta":
        raise ValueError(
            "the reference walks the mask's tiles, and a mask on the meta device holds none; "
            "run it on CPU or CUDA tensors"
        )
    b, h, n, d = q_bhnd.shape
    work = torch.float64 if q_bhnd.dtype == torch.float64 else torch.float32
    block, nb = mask.block, mask.num_blocks
    # Contiguous copies: the tile matmuls then take one BLAS path whatever the inputs' strides,
    # so a non-contiguous input gives bit for bit the result of its contiguous copy.
    q, k, v = (x.to(work).contiguous() for x in (q_bhnd, k_bhnd, v_bhnd))
    if mask.perm_hn is not None:
        q, k, v = (_per_head(x, mask.perm_hn) for x in (q, k, v))
    pad = (0, 0, 0, nb * block - n)
    q5, k5, v5 = (F.pad(x, pad).reshape(b, h, nb, block, d) for x in (q, k, v))

    tiles, slots, valid, lengths = _tile_table(mask)
    heads = torch.arange(h, device=q.device)[:, None]
    outs, lses = [], []
    for i in range(nb):
        width = int(lengths[:, i].max())
        if width == 0:  # no query of this block attends anything
            outs.append(q5.new_zeros(b, h, block, d))
            lses.append(q5.new_full((b, h, block), -math.inf))
            continue
        tile, slot, ok = tiles[:, i, :width], slots[:, i, :width], valid[:, i, :width]
        partial = ok & (slot >= 0)
        allowed = (ok & (slot < 0))[..., None, None].expand(-1, -1, block, block).clone()
        allowed[partial] = mask.unpacked_bits(slot[partial])  # (H, K, block_q, block_k)
        allowed = allowed.permute(0, 2, 1, 3).reshape(1, -1, block, width * block)

        if mask.heads == 1:
            kt, vt = k5[:, :, tile[0]], v5[:, :, tile[0]]
        else:
            kt, vt = k5[:, heads, tile], v5[:, heads, tile]
        kt = kt.reshape(b, h, width * block, d)
        vt = vt.reshape(b, h, width * block, d)

        s = (q5[:, :, i] @ kt.transpose(-1, -2)) * scale  # (b, h, block, K·block)
        s = s.masked_fill(~allowed, -math.inf)
        overflow = torch.isposinf(s).any(-1)  # its logsumexp is +inf
        s = softmax_limit(s)
        m = s.amax(-1, keepdim=True).detach()  # the softmax does not depend on m
        m = torch.where(torch.isfinite(m), m, 0.0)  # a query with no key: exp(−inf) = 0
        p = torch.exp(s - m)
        total = p.sum(-1, keepdim=True)
        outs.append((p @ vt) / torch.where(total > 0, total, 1.0))
        lse = torch.where(total > 0, m + torch.log(total), -math.inf)[..., 0]
        lses.append(lse.masked_fill(overflow, math.inf))

    out = torch.cat(outs, dim=2)[:, :, :n]
    if torch.is_grad_enabled():  # + an exact 0 that depends on q, k, v: an empty mask still
        out = out + sum(x[..., :0].sum() for x in (q, k, v))  # yields (zero) gradients
    lse = torch.cat(lses, dim=2)[:, :, :n]
    if mask.inv_perm_hn is not None:
        out = _per_head(out, mask.inv_perm_hn)
        lse = _per_head(lse[..., None], mask.inv_perm_hn)[..., 0]
    out = out.to(q_bhnd.dtype)
    return (out, lse) if return_lse else out
