"""Where the dashboard may read from: the ``--runs`` / ``--checkpoint`` / ``--vectors`` roots.

A path that arrives from the browser (a dropdown value, a typed path) is resolved — ``..``
collapsed and symlinks followed — and accepted only when the real path lies inside a root. So
``../x``, an absolute path elsewhere and a symlink inside a root that points outside are all
refused with a ValueError; nothing outside the roots is opened or listed.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from flowgraph.app.dashboard.limits import MAX_PATH_CHARS, check_text

__all__ = [
    "Root",
    "find_checkpoints",
    "find_vectors",
    "make_roots",
    "resolve_inside",
]

MAX_DEPTH = 3  # runs/NAME/checkpoint is depth 2; a little room for runs/group/NAME
MAX_FOUND = 200  # a listing, not an index of the disk


@dataclass(frozen=True)
class Root:
    """A folder (or a single checkpoint file) the dashboard may read, resolved at start-up."""

    flag: str  # the command-line option that named it, for messages
    given: Path  # as typed on the command line
    real: Path  # resolved: symlinks followed, absolute

    def holds(self, real: Path) -> bool:
        """True when the resolved path ``real`` is this root or lies inside it."""
        return real == self.real or (self.real.is_dir() and real.is_relative_to(self.real))


def make_roots(flag: str, paths: Sequence[Path | str], folders: bool = False) -> list[Root]:
    """The roots named by ``flag``; each must exist, and be a folder when ``folders``
    (ValueError otherwise)."""
    roots = []
    for given in paths:
        given = Path(given)
        if not given.exists():
            raise ValueError(f"{flag}: no such file or folder: {str(given)!r}")
        if folders and not given.is_dir():
            raise ValueError(f"{flag}: expected a folder, got the file {str(given)!r}")
        roots.append(Root(flag, given, given.resolve(strict=True)))
    return roots


def resolve_inside(text: object, roots: Sequence[Root], what: str = "path") -> Path:
    """The real path ``text`` names, when it exists inside one of ``roots``.

    A relative ``text`` is tried under each folder root in turn, then as the checkpoint and
    vector lists label it (from a root's own name: ``runs/a`` for ``a`` under ``--runs runs``);
    an absolute one as it is. The result is resolved (``..`` and symlinks), so what is checked is
    what would be opened.

    Raises
    ------
    ValueError : empty, too long, not found under any root, or outside every root.
    """
    text = check_text(what, text, MAX_PATH_CHARS).strip()
    if not text:
        raise ValueError(f"{what} is empty; choose one from the list or type a path under a root")
    if not roots:
        raise ValueError(f"{what} {text!r}: the dashboard was started without roots to read from")
    path = Path(text)
    if path.is_absolute():
        candidates = [path]
    else:  # under a root, or as the lists label it: from the root's own name (runs/a)
        candidates = [root.real / path for root in roots if root.real.is_dir()]
        candidates += [
            root.real.joinpath(*path.parts[1:])
            for root in roots
            if root.real.is_dir() and path.parts and path.parts[0] == root.given.name
        ]
    outside = False
    for candidate in candidates:
        try:
            real = candidate.resolve(strict=True)
        except (OSError, RuntimeError):  # missing, or a symlink loop
            continue
        if any(root.holds(real) for root in roots):
            return real
        outside = True
    names = ", ".join(f"{r.flag} {r.given}" for r in roots)
    if outside:
        raise ValueError(f"{what} {text!r} lies outside the dashboard's roots ({names})")
    raise ValueError(f"{what} {text!r} was not found under the dashboard's roots ({names})")


def _is_checkpoint_dir(path: Path) -> bool:
    """A run folder (``DIR/checkpoint/config.json``), a checkpoint folder or a Hugging Face
    folder (``config.json`` beside weights)."""
    if (path / "checkpoint" / "config.json").is_file():
        return True
    if not (path / "config.json").is_file():
        return False
    weights = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json")
    return any((path / name).is_file() for name in weights)


def _walk(root: Root) -> list[Path]:
    """Folders under ``root`` up to :data:`MAX_DEPTH` deep, without following symlinks out."""
    found = []
    base_depth = len(root.real.parts)
    for dirpath, dirnames, _ in os.walk(root.real, followlinks=False):
        here = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        if len(here.parts) - base_depth >= MAX_DEPTH:
            dirnames[:] = []
        found.append(here)
        if len(found) > 20 * MAX_FOUND:
            break
    return found


def find_checkpoints(roots: Sequence[Root]) -> list[tuple[str, Path]]:
    """(label, real path) of every checkpoint under the roots: run folders, checkpoint and
    Hugging Face folders, nanoGPT ``*.pt`` files. A root that is itself a checkpoint is listed
    as it is. Labels are the path relative to the root's parent (``runs/sort-sdpa``)."""
    found: dict[Path, str] = {}
    for root in roots:
        if root.real.is_file():
            found.setdefault(root.real, root.given.name)
            continue
        for folder in _walk(root):
            real = folder.resolve()
            if not root.holds(real):
                continue
            if folder.name == "checkpoint" and folder.parent.resolve() in found:
                continue  # runs/NAME is listed; its checkpoint/ is the same model
            if _is_checkpoint_dir(folder):
                found.setdefault(real, _label(root, folder))
            for pt in sorted(folder.glob("*.pt")):
                if pt.name != "trainer.pt" and root.holds(pt.resolve()):
                    found.setdefault(pt.resolve(), _label(root, pt))
            if len(found) >= MAX_FOUND:
                break
    return sorted(((label, path) for path, label in found.items()), key=lambda t: t[0])


def find_vectors(roots: Sequence[Root]) -> list[tuple[str, Path]]:
    """(label, real path) of every saved word2vec vectors folder (``vectors.safetensors`` beside
    ``vocab.json``) under the roots."""
    found: dict[Path, str] = {}
    for root in roots:
        if not root.real.is_dir():
            continue
        for folder in _walk(root):
            if (folder / "vectors.safetensors").is_file() and (folder / "vocab.json").is_file():
                real = folder.resolve()
                if root.holds(real):
                    found.setdefault(real, _label(root, folder))
            if len(found) >= MAX_FOUND:
                break
    return sorted(((label, path) for path, label in found.items()), key=lambda t: t[0])


def _label(root: Root, path: Path) -> str:
    rel = path.relative_to(root.real)
    return str(Path(root.given.name or str(root.given)) / rel) if rel.parts else root.given.name
