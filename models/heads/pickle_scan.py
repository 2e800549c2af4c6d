"""Static checks of a pickle before anything unpickles it: :func:`scan_pickle`.

An unpickler that builds only plain values (``torch.load(weights_only=True)``, our
``meta.pkl`` reader) runs no code from the file, but it can still be made to work forever. A
pickle's memo lets one object be referenced many times: a tuple of two references to a tuple of
two references to … (64 levels, ~300 bytes) is a DAG of 64 objects and a tree of 2^64, and
hashing it — as a dict key or a set member — walks the tree. So does every ``repr``, ``==`` or
deep copy of the result later.

:func:`scan_pickle` reads the opcodes with :func:`pickletools.genops` (no object is built) and
replays the unpickler's stack on placeholders, recording which object contains which. Then,
in time linear in the pickle's size, it refuses a pickle

- whose objects, expanded into a tree (every memo reference a copy), number more than
  ``EXPANSION_FACTOR`` × the objects it creates + ``EXPANSION_SLACK`` (a torch checkpoint
  reuses only short strings and globals: its tree is barely larger than its DAG);
- nested deeper than ``MAX_DEPTH``, or holding a container that contains itself;
- with more than ``COLLISION_LIMIT`` distinct hashable values (numbers, strings, tuples,
  frozensets) of one hash: dict keys chosen to collide make each insertion compare with all
  earlier ones (quadratic work);
- that is malformed (the unpickler would fail on it anyway), uses memo indices an unpickler
  would store in a hash table (≥ 2^32), or asks to read more bytes than the stream holds.

Containers in a hashed key are walked once per path, so the expansion bound also bounds the
hashing a load does. The caveat: values built by a callable (``REDUCE``) are opaque here; their
arguments are checked like everything else.
"""

from __future__ import annotations

import pickletools
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO

__all__ = [
    "COLLISION_LIMIT",
    "EXPANSION_FACTOR",
    "EXPANSION_SLACK",
    "MAX_DEPTH",
    "PickleRefused",
    "PickleSummary",
    "scan_pickle",
]

EXPANSION_FACTOR = 4
EXPANSION_SLACK = 1 << 20  # ~1M more objects than the pickle makes: milliseconds to hash
MAX_DEPTH = 100  # checkpoints nest a few levels; deep nesting overflows recursive hashing
COLLISION_LIMIT = 16  # distinct values of one hash; unplanned collisions of 64-bit hashes: ~2
MAX_MEMO_INDEX = 1 << 32

_OPAQUE = object()  # built by a callable, a buffer, a persistent id: value unknown here
_UNHASHABLE = object()  # lists, dicts, sets, bytearrays

# opcode kinds of the placeholder objects
_LEAF, _LIST, _DICT, _SET, _TUPLE, _FROZENSET, _OBJECT = range(7)


class PickleRefused(ValueError):
    """The pickle is refused; ``unsafe`` says whether it was built to exhaust the loader (True) or
    is just malformed (False)."""

    def __init__(self, message: str, *, unsafe: bool) -> None:
        super().__init__(message)
        self.unsafe = unsafe


@dataclass
class PickleSummary:
    """What a scan learned: the object count, the expanded tree size, the nesting depth, the
    persistent ids (torch's storages) and the pickle's value, where those are plain values
    (numbers, strings, tuples of them; None otherwise)."""

    objects: int = 0
    expanded: int = 0
    depth: int = 0
    persistent_ids: list[Any] = field(default_factory=list)
    value: Any = None


class _Bounded:
    """A stream that never reads past ``size`` bytes (genops trusts a length in the file)."""

    def __init__(self, f: BinaryIO, size: int) -> None:
        self._f, self._left = f, size

    def read(self, n: int = -1) -> bytes:
        # a length of 2^62 in the file reads what is left (genops then reports the shortfall)
        data = self._f.read(self._left if n < 0 else min(n, self._left))
        self._left -= len(data)
        return data

    def readline(self) -> bytes:
        line = self._f.readline(min(self._left, 1 << 20) + 1)
        if not line.endswith(b"\n"):
            raise PickleRefused("a text opcode's line has no end", unsafe=False)
        self._left -= len(line)
        return line


class _Graph:
    """Placeholders for the objects a pickle builds: kind, contents (edges), plain value."""

    def __init__(self) -> None:
        self.kind: list[int] = []
        self.children: list[list[int]] = []
        self.value: list[Any] = []
        self.persistent: list[int] = []  # BINPERSID nodes

    def new(self, kind: int, children: list[int] | None = None, value: Any = _OPAQUE) -> int:
        self.kind.append(kind)
        self.children.append(children if children is not None else [])
        self.value.append(value)
        return len(self.kind) - 1


_SCALARS = {
    "INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4", "STRING", "BINSTRING",
    "SHORT_BINSTRING", "BINBYTES", "SHORT_BINBYTES", "BINBYTES8", "UNICODE", "SHORT_BINUNICODE",
    "BINUNICODE", "BINUNICODE8", "FLOAT", "BINFLOAT",
}  # fmt: skip
_CONSTANTS = {"NONE": None, "NEWTRUE": True, "NEWFALSE": False}


def _replay(ops: Iterator[tuple[Any, Any, int | None]], graph: _Graph) -> int:
    """Run the unpickler's stack machine on placeholders up to STOP; the object STOP returns."""
    stack: list[int] = []
    marks: list[list[int]] = []  # the stacks MARK set aside, as pickle's metastack
    memo: dict[int, int] = {}

    def pop() -> int:
        if not stack:
            raise PickleRefused("an opcode pops an empty stack", unsafe=False)
        return stack.pop()

    def pop_mark() -> list[int]:
        nonlocal stack
        if not marks:
            raise PickleRefused("an opcode needs a MARK that is not there", unsafe=False)
        items, stack = stack, marks.pop()
        return items

    def top() -> int:
        if not stack:
            raise PickleRefused("an opcode needs an object on an empty stack", unsafe=False)
        return stack[-1]

    def push(node: int) -> None:  # looks ``stack`` up after pop_mark() may have replaced it
        stack.append(node)

    def memo_index(arg: Any) -> int:
        if not isinstance(arg, int) or not 0 <= arg < MAX_MEMO_INDEX:
            raise PickleRefused(f"memo index {arg!r} is out of range", unsafe=True)
        return arg

    for opcode, arg, _pos in ops:
        name = opcode.name
        if name in _SCALARS:
            push(graph.new(_LEAF, value=arg))
        elif name in _CONSTANTS:
            push(graph.new(_LEAF, value=_CONSTANTS[name]))
        elif name == "BYTEARRAY8":
            push(graph.new(_LEAF, value=_UNHASHABLE))
        elif name in ("NEXT_BUFFER", "PERSID", "EXT1", "EXT2", "EXT4"):
            push(graph.new(_LEAF))
        elif name == "READONLY_BUFFER":
            top()
        elif name == "EMPTY_LIST":
            push(graph.new(_LIST, value=_UNHASHABLE))
        elif name == "EMPTY_DICT":
            push(graph.new(_DICT, value=_UNHASHABLE))
        elif name == "EMPTY_SET":
            push(graph.new(_SET, value=_UNHASHABLE))
        elif name == "EMPTY_TUPLE":
            push(graph.new(_TUPLE))
        elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
            items = [pop() for _ in range(int(name[-1]))][::-1]
            push(graph.new(_TUPLE, items))
        elif name == "TUPLE":
            push(graph.new(_TUPLE, pop_mark()))
        elif name == "LIST":
            push(graph.new(_LIST, pop_mark(), _UNHASHABLE))
        elif name == "DICT":
            push(graph.new(_DICT, pop_mark(), _UNHASHABLE))
        elif name == "FROZENSET":
            push(graph.new(_FROZENSET, pop_mark()))
        elif name == "APPEND":
            item = pop()
            graph.children[top()].append(item)
        elif name == "SETITEM":
            value, key = pop(), pop()
            graph.children[top()].extend((key, value))
        elif name in ("APPENDS", "SETITEMS", "ADDITEMS"):
            items = pop_mark()
            graph.children[top()].extend(items)
        elif name == "BUILD":
            state = pop()
            graph.children[top()].append(state)
        elif name == "GLOBAL":
            module, _, attr = str(arg).partition(" ")
            push(graph.new(_LEAF, value=("global", module, attr)))
        elif name == "STACK_GLOBAL":
            attr, module = pop(), pop()
            push(graph.new(_LEAF, [module, attr]))
        elif name == "REDUCE" or name == "NEWOBJ":
            args, func = pop(), pop()
            push(graph.new(_OBJECT, [func, args]))
        elif name == "NEWOBJ_EX":
            kwargs, args, cls = pop(), pop(), pop()
            push(graph.new(_OBJECT, [cls, args, kwargs]))
        elif name in ("INST", "OBJ"):
            push(graph.new(_OBJECT, pop_mark()))
        elif name == "BINPERSID":
            node = graph.new(_OBJECT, [pop()])
            graph.persistent.append(node)
            push(node)
        elif name == "MARK":
            marks.append(stack)
            stack = []
        elif name == "POP":
            if stack:
                stack.pop()
            else:
                pop_mark()
        elif name == "POP_MARK":
            pop_mark()
        elif name == "DUP":
            push(top())
        elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
            memo[memo_index(arg)] = top()
        elif name == "MEMOIZE":
            memo[memo_index(len(memo))] = top()
        elif name in ("GET", "BINGET", "LONG_BINGET"):
            index = memo_index(arg)
            if index not in memo:
                raise PickleRefused(f"memo index {index} is read before it is set", unsafe=False)
            push(memo[index])
        elif name == "STOP":
            return pop()
        elif name not in ("PROTO", "FRAME"):
            raise PickleRefused(f"opcode {name} is not understood", unsafe=False)
    raise PickleRefused("the pickle ends without STOP (truncated?)", unsafe=False)


def _measure(graph: _Graph, limit: int, summary: PickleSummary) -> list[int]:
    """Expanded tree size and depth of every object (iterative post-order), refusing cycles and
    what exceeds ``limit`` or :data:`MAX_DEPTH`; returns the objects children first."""
    n = len(graph.kind)
    size, depth = [0] * n, [0] * n
    state = bytearray(n)  # 0 unseen, 1 on the path, 2 done
    has_parent = bytearray(n)
    for children in graph.children:
        for c in children:
            has_parent[c] = 1
    order: list[int] = []
    for start in [i for i in range(n) if not has_parent[i]] + list(range(n)):
        if state[start]:
            continue
        state[start] = 1
        path = [(start, iter(graph.children[start]))]
        while path:
            node, it = path[-1]
            child = next(it, None)
            if child is None:
                path.pop()
                children = graph.children[node]
                size[node] = 1 + sum(size[c] for c in children)
                depth[node] = 1 + max((depth[c] for c in children), default=0)
                if size[node] > limit:
                    raise PickleRefused(
                        f"its memo references expand it to more than {limit} objects (it "
                        f"creates {n}): a structure built to make hashing or printing it take "
                        "forever",
                        unsafe=True,
                    )
                if depth[node] > MAX_DEPTH:
                    raise PickleRefused(
                        f"it nests containers more than {MAX_DEPTH} deep", unsafe=True
                    )
                state[node] = 2
                order.append(node)
            elif state[child] == 1:
                raise PickleRefused("a container in it contains itself", unsafe=True)
            elif state[child] == 0:
                state[child] = 1
                path.append((child, iter(graph.children[child])))
        if not has_parent[start]:
            summary.expanded += size[start]
            if summary.expanded > limit:
                raise PickleRefused(
                    f"its memo references expand it to more than {limit} objects (it creates {n})",
                    unsafe=True,
                )
            summary.depth = max(summary.depth, depth[start])
    return order


def _check_collisions(graph: _Graph, order: list[int]) -> None:
    """Plain values (children first, so tuples are built from their items) and a count of the
    distinct values of each hash; a dict or set of keys chosen to collide is quadratic."""
    first: dict[int, Any] = {}
    many: dict[int, set[Any]] = {}
    for node in order:
        kind, value = graph.kind[node], graph.value[node]
        if kind in (_TUPLE, _FROZENSET):
            items = [graph.value[c] for c in graph.children[node]]
            if any(v is _OPAQUE or v is _UNHASHABLE for v in items):
                value = _OPAQUE
            else:
                value = tuple(items) if kind == _TUPLE else frozenset(items)
        elif kind == _LEAF and graph.children[node]:  # STACK_GLOBAL from two strings
            module, attr = (graph.value[c] for c in graph.children[node])
            value = ("global", module, attr) if isinstance(module, str) else _OPAQUE
        graph.value[node] = value
        if value is _OPAQUE or value is _UNHASHABLE:
            continue
        h = hash(value)
        seen = first.setdefault(h, value)
        if seen is value or seen == value:
            continue
        bucket = many.setdefault(h, {seen})
        bucket.add(value)
        if len(bucket) > COLLISION_LIMIT:
            raise PickleRefused(
                f"more than {COLLISION_LIMIT} of its values share one hash ({h}): keys chosen "
                "to collide make building a dict of them take quadratic time",
                unsafe=True,
            )


def scan_pickle(f: BinaryIO, *, size: int) -> PickleSummary:
    """Check the pickle at the stream ``f``'s position (at most ``size`` bytes; ``f`` is left
    just after its STOP) as the module docstring describes; raises :class:`PickleRefused`.

    A malformed pickle is still measured as far as it goes (an unpickler would have hashed
    what comes before the damage), so a bomb followed by garbage is refused as a bomb."""
    graph = _Graph()
    broken: PickleRefused | None = None
    root = None
    try:
        root = _replay(pickletools.genops(_Bounded(f, size)), graph)
    except PickleRefused as exc:
        broken = exc
    except (ValueError, EOFError, OverflowError) as exc:  # genops' own: bad opcode, short data
        broken = PickleRefused(f"not a valid pickle ({exc})", unsafe=False)
    if broken is not None and broken.unsafe:
        raise broken
    n = len(graph.kind)
    summary = PickleSummary(objects=n)
    order = _measure(graph, EXPANSION_FACTOR * n + EXPANSION_SLACK, summary)
    _check_collisions(graph, order)
    if broken is not None:
        raise broken
    summary.persistent_ids = [graph.value[graph.children[p][0]] for p in graph.persistent]
    value = graph.value[root] if root is not None else _OPAQUE
    summary.value = None if value is _OPAQUE or value is _UNHASHABLE else value
    return summary
