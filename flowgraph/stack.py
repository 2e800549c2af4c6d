"""Attention modes: how a multi-step pattern is laid over the layers (and heads) of a model.

The three modes of the talk, as a Pattern with one step per layer so that :func:`flowgraph.check`
and :func:`flowgraph.flow_graph` apply unchanged:

- ``interleave``: layer i uses step i mod p (sequential interleave);
- ``merged``: every layer uses the union of the p steps (merged head);
- ``heads``: head h of every layer uses step h mod p; information moves through the union of the
  heads, so each layer's mask is the union of the steps its ``heads`` heads use.
"""

from __future__ import annotations

from flowgraph import _validate
from flowgraph.pattern import Pattern

__all__ = ["stack"]


def stack(
    pattern: Pattern, layers: int, mode: str = "interleave", heads: int | None = None
) -> Pattern:
    """Lay ``pattern`` over ``layers`` layers in ``mode``; returns a Pattern with ``layers`` steps.

    ``heads`` is used by ``mode="heads"`` only (default: one head per step).

    Examples
    --------
    >>> import flowgraph as fg
    >>> s = fg.stack(fg.fixed(16, stride=4), layers=4, mode="interleave")
    >>> s.num_steps, s.name, s.steps[2] is s.steps[0] or (s.steps[2] != s.steps[0]).nnz == 0
    (4, 'fixed×4/interleave', True)
    """
    if not isinstance(pattern, Pattern):
        raise TypeError(f"pattern must be a flowgraph.Pattern, got {type(pattern).__name__}")
    layers = _validate.positive_int("layers", layers)
    mode = _validate.mode(mode)
    p = pattern.num_steps
    if heads is not None and mode != "heads":
        raise ValueError(
            f"heads is only used with mode='heads', got heads={heads} with mode={mode!r}"
        )
    if mode == "interleave":
        steps = [pattern.steps[i % p] for i in range(layers)]
    elif mode == "merged":
        steps = [pattern.merged().steps[0]] * layers
    else:
        heads = p if heads is None else _validate.positive_int("heads", heads)
        union = Pattern(
            "heads", pattern.n, pattern.causal, [pattern.steps[h % p] for h in range(heads)]
        )
        steps = [union.merged().steps[0]] * layers
    params = {**pattern.params, "base": pattern.name, "layers": layers, "mode": mode}
    if mode == "heads":
        params["heads"] = heads
    return Pattern(f"{pattern.name}×{layers}/{mode}", pattern.n, pattern.causal, steps, params)
