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
from flowgraph.rule import StepRule

__all__ = ["stack"]


BYTES_PER_ENTRY = 32  # each layer's step is a copy: the kept CSR and its build temporaries


def stack(
    pattern: Pattern,
    layers: int,
    mode: str = "interleave",
    heads: int | None = None,
    *,
    max_bytes: int = _validate.MEMORY_LIMIT_BYTES,
) -> Pattern:
    """Lay ``pattern`` over ``layers`` layers in ``mode``; returns a Pattern with ``layers`` steps.

    ``heads`` is used by ``mode="heads"`` only (default: one head per step). Every layer holds
    its own copy of its step: a stack needing more than ``max_bytes`` is refused (ValueError)
    before any is made.

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
    max_bytes = _validate.byte_limit("max_bytes", max_bytes)
    p = pattern.num_steps
    if heads is not None and mode != "heads":
        raise ValueError(
            f"heads is only used with mode='heads', got heads={heads} with mode={mode!r}"
        )
    if mode == "heads":
        heads = p if heads is None else _validate.positive_int("heads", heads)
    params = {**pattern.params, "base": pattern.name, "layers": layers, "mode": mode}
    if mode == "heads":
        params["heads"] = heads
    name = f"{pattern.name}×{layers}/{mode}"
    if pattern.rules is not None:
        return _stack_rules(pattern, name, layers, mode, heads, params, max_bytes)
    # entries of the stacked steps (a union holds at most the sum of the steps it joins)
    edges = pattern.edges()
    if mode == "interleave":
        full, rest = divmod(layers, p)
        entries = sum(edges) * full + sum(edges[:rest])
    else:
        used = p if mode == "merged" else min(heads, p)
        entries = sum(edges[:used]) * layers
    _validate.memory(
        f"stack(layers={layers}, mode={mode!r}) of {entries:,} entries",
        entries * BYTES_PER_ENTRY,
        max_bytes,
    )
    if mode == "interleave":
        steps = [pattern.steps[i % p] for i in range(layers)]
    elif mode == "merged":
        steps = [pattern.merged().steps[0]] * layers
    else:
        # head h uses step h mod p: the union is that of the first min(heads, p) steps
        union = Pattern("heads", pattern.n, pattern.causal, pattern.steps[: min(heads, p)])
        steps = [union.merged().steps[0]] * layers
    return Pattern(name, pattern.n, pattern.causal, steps, params)


def _stack_rules(
    pattern: Pattern,
    name: str,
    layers: int,
    mode: str,
    heads: int | None,
    params: dict,
    max_bytes: int,
) -> Pattern:
    """A rule pattern's stack: its layers share the rule objects (no copy per layer), and a
    union is one more rule whose terms are those of the steps it joins."""
    rules = pattern.rules
    assert rules is not None
    p = len(rules)
    # two references per layer (its rule, and its CSR once built)
    _validate.memory(f"stack(layers={layers}, mode={mode!r})", 16 * layers, max_bytes)
    if mode == "interleave":
        if pattern.compressed:  # layers keep their compressed keys (and the rule objects)
            key_rules, spans = pattern.key_rules, pattern.key_spans
            assert key_rules is not None
            return Pattern.from_rules(
                name, pattern.n, pattern.causal, [key_rules[i % p] for i in range(layers)],
                params, max_bytes=max_bytes, what=name,
                key_spans=[spans[i % p] for i in range(layers)],
            )  # fmt: skip
        steps = [rules[i % p] for i in range(layers)]
    else:  # a union layer is over tokens: compressed steps join as their flow views
        joined = rules if mode == "merged" else rules[: min(heads or p, p)]
        _validate.memory(
            f"stack(layers={layers}, mode={mode!r}): the union of {len(joined)} rules",
            sum(r.nbytes() for r in joined),
            max_bytes,
        )
        steps = [StepRule.union(joined)] * layers
    return Pattern.from_rules(
        name, pattern.n, pattern.causal, steps, params, max_bytes=max_bytes, what=name
    )
