"""Checkpoints as directories, written atomically and checked when read.

A checkpoint ``DIR/`` holds:

- ``config.json``: ``{"format": 1, "config": {...}, "checksums": {file: sha256}}``; ``config``
  is whatever the caller stores (the training run's model, task and trainer settings and step);
- ``model.safetensors``: the model's tensors (a tied copy, e.g. GPT's ``lm_head.weight``, is
  stored once; the loader re-ties it through :func:`load_model_state`);
- ``trainer.pt`` (optional): optimizer, scheduler, RNG states and step, ``torch.save`` format,
  read back with ``weights_only=True``.

Saving writes everything into a fresh temporary directory beside ``DIR`` (same filesystem),
fsyncs each file and the directory, then renames it to ``DIR``. An existing ``DIR`` is first
renamed aside to ``.DIR.old-PID`` and removed after the new one is in place; if the process dies
between those two renames, :func:`read_checkpoint` finds the ``.old`` copy and reads it. So a run
killed at any moment leaves either the previous checkpoint or the new one, never a mix.

Reading checks every file against its sha256 before parsing it, so a truncated or corrupted
file gives a :class:`CheckpointError` that names the file, never a traceback from deep inside
safetensors or pickle. A file and its checksum can both be rewritten, so what is read is also
checked as untrusted input: ``config.json``'s structure (``checksums`` naming plain files of the
directory), ``model.safetensors``' header (:func:`models.heads.safe_load.safetensors_header`:
offsets, shapes and dtypes against the file's size) before its data is read, ``trainer.pt``'s
pickle scanned (:func:`models.heads.safe_load.check_torch_file`) before ``torch.load``, and in
:func:`load_model_state` every tensor's shape and dtype against the module's.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from flowgraph.models._atomic import fsync_path

__all__ = [
    "CheckpointError",
    "RunCheckpoint",
    "find_checkpoint",
    "load_model_state",
    "read_checkpoint",
    "save_checkpoint",
]

FORMAT = 1
CONFIG, MODEL, TRAINER = "config.json", "model.safetensors", "trainer.pt"


class CheckpointError(ValueError):
    """A checkpoint that is missing, truncated, corrupted or of an unknown format."""


@dataclass
class RunCheckpoint:
    """A training checkpoint as read back: its directory, stored config, model and trainer state."""

    path: Path
    config: dict[str, Any]
    model_state: dict[str, torch.Tensor]
    trainer_state: dict[str, Any] | None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _unshared(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop later names of a tensor stored under two names (tied weights): safetensors refuses
    shared storage, and the module re-ties them itself."""
    seen: dict[tuple[int, int, tuple[int, ...]], str] = {}
    out = {}
    for name, t in state.items():
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape))
        if key in seen:
            continue
        seen[key] = name
        out[name] = t.detach().cpu().contiguous()
    return out


def save_checkpoint(
    path: str | Path,
    *,
    config: dict[str, Any],
    model_state: dict[str, torch.Tensor],
    trainer_state: dict[str, Any] | None = None,
) -> Path:
    """Write a checkpoint directory at ``path`` atomically (see the module docstring)."""
    from safetensors.torch import save_file

    path = Path(path)
    parent = path.parent
    parent.mkdir(parents=True, exist_ok=True)
    for stale in parent.glob(f".{path.name}.tmp-*"):  # left by a run killed mid-save
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=parent))
    try:
        save_file(_unshared(model_state), str(tmp / MODEL), metadata={"format": str(FORMAT)})
        files = [MODEL]
        if trainer_state is not None:
            torch.save(trainer_state, tmp / TRAINER)
            files.append(TRAINER)
        checksums = {}
        for name in files:
            fsync_path(tmp / name)
            checksums[name] = _sha256(tmp / name)
        text = json.dumps({"format": FORMAT, "config": config, "checksums": checksums}, indent=2)
        with open(tmp / CONFIG, "w", encoding="utf-8") as f:
            f.write(text + "\n")
            f.flush()
            os.fsync(f.fileno())
        fsync_path(tmp)
        if path.exists():
            old = parent / f".{path.name}.old-{os.getpid()}"
            shutil.rmtree(old, ignore_errors=True)
            os.rename(path, old)
            os.rename(tmp, path)
            fsync_path(parent)
            shutil.rmtree(old)
        else:
            os.rename(tmp, path)
        fsync_path(parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def find_checkpoint(path: str | Path) -> Path | None:
    """``path`` if it exists, else the copy a save interrupted between its renames left aside
    (``.NAME.old-PID``), else None."""
    path = Path(path)
    if path.is_dir():
        return path
    aside = sorted(path.parent.glob(f".{path.name}.old-*"), key=lambda p: p.stat().st_mtime)
    return aside[-1] if aside else None


def _fail(file: Path, why: str) -> CheckpointError:
    return CheckpointError(f"checkpoint file {file}: {why}")


def _checked_meta(config_file: Path, meta: Any) -> dict[str, str]:
    """The ``checksums`` of a parsed ``config.json``, its structure checked."""
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        got = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise _fail(config_file, f"unknown checkpoint format {got!r}, expected {FORMAT}")
    if not isinstance(meta.get("config"), dict):
        raise _fail(config_file, f"'config' must be an object, got {type(meta.get('config'))}")
    checksums = meta.get("checksums", {})
    if not isinstance(checksums, dict):
        raise _fail(config_file, f"'checksums' must be an object, got {type(checksums).__name__}")
    for name, digest in checksums.items():
        if "/" in name or "\\" in name or name in ("", ".", ".."):
            raise _fail(config_file, f"checksums name {name!r}, not a file of the checkpoint")
        if not isinstance(digest, str):
            raise _fail(config_file, f"the checksum of {name} must be a string, got {digest!r}")
    if MODEL not in checksums:
        raise _fail(config_file, f"lists no {MODEL}")
    return checksums


def read_checkpoint(
    path: str | Path, *, map_location: str | torch.device = "cpu", trainer: bool = True
) -> RunCheckpoint:
    """Read and check a checkpoint directory; raises :class:`CheckpointError` naming the file.

    ``trainer=False`` leaves ``trainer.pt`` (the optimizer state, a pickle) unread and unchecked:
    what a reader of the weights alone needs (``models.load_checkpoint``)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    found = find_checkpoint(path)
    if found is None:
        raise CheckpointError(f"no checkpoint at {path} (expected a directory with {CONFIG})")
    config_file = found / CONFIG
    try:
        meta = json.loads(config_file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise _fail(config_file, "missing") from None
    except (ValueError, RecursionError) as exc:  # bad UTF-8 or JSON, huge ints, deep nesting
        raise _fail(config_file, f"not valid JSON, truncated or corrupted ({exc})") from None
    checksums = _checked_meta(config_file, meta)
    for name, expected in checksums.items():
        if name == TRAINER and not trainer:
            continue
        file = found / name
        if not file.is_file():
            raise _fail(file, "missing")
        if _sha256(file) != expected:
            raise _fail(
                file,
                f"sha256 does not match {CONFIG} "
                f"(truncated or corrupted; {file.stat().st_size} bytes)",
            )
    # the header first: offsets, shapes and dtypes against the file, before any data is read
    from flowgraph.models.heads.safe_load import check_torch_file, safetensors_header

    try:
        safetensors_header(found / MODEL)
    except CheckpointError as exc:
        why = str(exc).removeprefix(f"cannot read {found / MODEL}: ")
        raise _fail(found / MODEL, f"cannot be read ({why})") from None
    try:
        model_state = load_file(str(found / MODEL), device=str(map_location))
    except (SafetensorError, OSError, ValueError) as exc:
        raise _fail(found / MODEL, f"cannot be read ({exc})") from None
    trainer_state = None
    if trainer and TRAINER in checksums:
        check_torch_file(found / TRAINER)  # a pickle built to hang the loader is refused first
        try:
            trainer_state = torch.load(
                found / TRAINER, map_location=map_location, weights_only=True
            )
        except pickle.UnpicklingError as exc:  # weights_only refused a global: never retry unsafely
            raise _fail(
                found / TRAINER,
                f"refused: it holds objects that safe (weights_only) loading does not allow, "
                f"so it was not loaded ({str(exc).splitlines()[-1] if str(exc) else exc!r})",
            ) from None
        except Exception as exc:  # pickle raises many types; the message names the file
            raise _fail(found / TRAINER, f"cannot be read ({type(exc).__name__}: {exc})") from None
    return RunCheckpoint(found, meta["config"], model_state, trainer_state)


def _check_like(name: str, t: object, own: torch.Tensor) -> None:
    """A checkpoint tensor that can be copied into the module's ``own``: a dense CPU tensor of
    its shape, floating point where the module's is (no silent int → float, complex → real)."""
    if not isinstance(t, torch.Tensor):
        raise CheckpointError(f"tensor {name} is a {type(t).__name__} in the checkpoint")
    if t.is_meta or t.layout != torch.strided:
        raise CheckpointError(
            f"tensor {name} is a {t.layout} tensor on the {t.device.type} device in the "
            "checkpoint; expected a dense tensor holding data"
        )
    if t.shape != own.shape:
        raise CheckpointError(
            f"tensor {name} has shape {tuple(t.shape)} in the checkpoint, "
            f"{tuple(own.shape)} in the model"
        )
    if own.is_floating_point() and not t.is_floating_point():
        raise CheckpointError(
            f"tensor {name} has dtype {t.dtype} in the checkpoint, the model's is {own.dtype}: "
            "expected a real floating-point weight"
        )


def load_model_state(module: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load ``state`` into ``module``; the only keys allowed to be missing are tied copies of a
    stored tensor (same parameter object), and shapes and dtypes are checked before copying."""
    own = module.state_dict()
    unexpected = sorted(set(state) - set(own))
    if unexpected:
        raise CheckpointError(f"checkpoint has tensors the model lacks: {unexpected}")
    by_id = {}
    for name, t in own.items():
        by_id.setdefault((t.untyped_storage().data_ptr(), t.storage_offset()), []).append(name)
    missing = []
    for names in by_id.values():
        if not any(n in state for n in names):
            missing.extend(names)
    if missing:
        raise CheckpointError(f"checkpoint lacks tensors of the model: {sorted(missing)}")
    for name, t in state.items():
        _check_like(name, t, own[name])
    module.load_state_dict(state, strict=False)
