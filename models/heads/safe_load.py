"""Reading weight files without running code from them.

- ``*.safetensors``: :mod:`safetensors` (a JSON header and raw bytes; nothing to execute). The
  header is read up front (names, shapes) and checked against the file's size, so a truncated
  file is caught before any tensor is used; the data is read on first use.
- anything else (``pytorch_model.bin``, nanoGPT's ``ckpt.pt``): ``torch.load(weights_only=True)``,
  whose unpickler builds tensors, containers and plain values only. A pickle that asks for any
  other object (``os.system``, ``eval``, a class of some package) is refused with
  :class:`UnsafeCheckpointError` naming the file; nothing in it runs.
- ``meta.pkl`` (nanoGPT's vocabulary): :func:`load_plain_pickle`, an unpickler that builds only
  the builtin containers and scalars that pickle encodes without naming a class (dict, list,
  tuple, str, bytes, int, float, bool, None) and refuses every class lookup.

Errors are :class:`models.checkpoint.CheckpointError` (a ValueError) and name the file, and the
tensor where one is concerned.
"""

from __future__ import annotations

import io
import json
import pickle
import struct
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from flowgraph.models.checkpoint import CheckpointError

__all__ = [
    "TensorStore",
    "UnsafeCheckpointError",
    "check_shapes",
    "load_plain_pickle",
    "load_weights_only",
]


class UnsafeCheckpointError(CheckpointError):
    """A pickle that would build objects other than tensors and plain values (it could run code)."""


def _refused(path: Path, exc: Exception) -> UnsafeCheckpointError:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    # torch's message starts with advice to retry with weights_only=False; keep only the reason
    reason = next(
        (line for line in lines if "GLOBAL" in line or "Unsupported" in line or "global" in line),
        lines[-1] if lines else type(exc).__name__,
    )
    return UnsafeCheckpointError(
        f"refusing to load {path}: torch.load(weights_only=True), which builds only tensors and "
        f"plain values, refused it ({reason}); an arbitrary pickle could run code when loaded, "
        "and nothing from this one was run. Only if you trust the file, convert it to "
        "safetensors and load that"
    )


def _torch_load(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as exc:
        if "mmap" not in str(exc) and "zip" not in str(exc):
            raise
        # the legacy (non-zip) format cannot be memory-mapped; read it whole
        return torch.load(path, map_location="cpu", weights_only=True)


def load_weights_only(path: str | Path) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU, memory-mapped when the file is in
    torch's zip format; a refused pickle raises :class:`UnsafeCheckpointError`, an unreadable
    file :class:`CheckpointError`, both naming ``path``."""
    path = Path(path)
    try:
        with warnings.catch_warnings():  # torch's remark on old pickle protocols is noise here
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return _torch_load(path)
    except pickle.UnpicklingError as exc:
        if "Weights only load failed" in str(exc) or "Unsupported" in str(exc):
            raise _refused(path, exc) from None
        raise CheckpointError(f"cannot read {path}: {exc}") from None
    except FileNotFoundError:
        raise CheckpointError(f"cannot read {path}: file not found") from None
    except Exception as exc:  # truncated zip, EOF, bad magic: many types, one message
        raise CheckpointError(
            f"cannot read {path} (truncated or not a torch file?): {type(exc).__name__}: {exc}"
        ) from None


class _PlainUnpickler(pickle.Unpickler):
    """Builds only what pickle encodes without a class lookup; every lookup is refused."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed")


def load_plain_pickle(path: str | Path) -> Any:
    """Unpickle ``path`` allowing only builtin containers and scalars (dict, list, tuple, str,
    bytes, int, float, bool, None); anything that names a class or function raises
    :class:`UnsafeCheckpointError` before it is built."""
    path = Path(path)
    try:
        return _PlainUnpickler(io.BytesIO(path.read_bytes())).load()
    except pickle.UnpicklingError as exc:
        if "is not allowed" in str(exc):
            raise UnsafeCheckpointError(
                f"refusing to load {path}: it asks for {str(exc).split(' is not')[0]}; only "
                "dicts, lists, strings and numbers are read from this file"
            ) from None
        raise CheckpointError(f"cannot read {path}: {exc}") from None
    except (EOFError, ValueError, TypeError, IndexError, KeyError, AttributeError) as exc:
        raise CheckpointError(
            f"cannot read {path} (truncated or not a pickle?): {type(exc).__name__}: {exc}"
        ) from None


def _safetensors_header(path: Path) -> dict[str, tuple[int, ...]]:
    """Names and shapes from a safetensors header; the data must cover every tensor."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CheckpointError(f"cannot read {path}: {size} bytes, too short for safetensors")
        (n,) = struct.unpack("<Q", head)
        if n > size - 8:
            raise CheckpointError(
                f"cannot read {path}: header of {n} bytes in a {size}-byte file "
                "(truncated or not safetensors)"
            )
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CheckpointError(f"cannot read {path}: corrupted header ({exc})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"cannot read {path}: corrupted header (not a JSON object)")
    shapes, end = {}, 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            shapes[name] = tuple(int(s) for s in info["shape"])
            end = max(end, int(info["data_offsets"][1]))
        except (TypeError, KeyError, IndexError, ValueError):
            raise CheckpointError(f"cannot read {path}: corrupted header entry {name!r}") from None
    if 8 + n + end != size:
        raise CheckpointError(
            f"cannot read {path}: the header describes {8 + n + end} bytes, the file has {size} "
            "(truncated or corrupted)"
        )
    return shapes


class TensorStore:
    """The tensors of one or more weight files (shards), by name.

    Shapes are known when the store is built (from safetensors headers, or from the loaded
    pickle); safetensors data is read on the first :meth:`get` of a tensor of that file.
    """

    def __init__(self, files: Iterable[str | Path]) -> None:
        self._file_of: dict[str, Path] = {}
        self._shape: dict[str, tuple[int, ...]] = {}
        self._loaded: dict[Path, Mapping[str, torch.Tensor]] = {}
        self.files = [Path(f) for f in files]
        for file in self.files:
            if file.suffix == ".safetensors":
                shapes = _safetensors_header(file)
            else:
                state = load_weights_only(file)
                if not isinstance(state, Mapping) or not all(
                    isinstance(v, torch.Tensor) for v in state.values()
                ):
                    raise CheckpointError(
                        f"{file} does not hold a state dict (a mapping of names to tensors)"
                    )
                self._loaded[file] = state
                shapes = {k: tuple(v.shape) for k, v in state.items()}
            for name, shape in shapes.items():
                self._file_of.setdefault(name, file)
                self._shape.setdefault(name, shape)

    @classmethod
    def from_state(cls, state: Mapping[str, torch.Tensor], file: str | Path) -> TensorStore:
        """A store over an already loaded state dict (read from ``file``, named in errors)."""
        store = cls([])
        file = Path(file)
        store.files = [file]
        store._loaded[file] = state
        for name, t in state.items():
            if not isinstance(t, torch.Tensor):
                raise CheckpointError(
                    f"{file}: entry {name!r} is a {type(t).__name__}, not a tensor"
                )
            store._file_of[name], store._shape[name] = file, tuple(t.shape)
        return store

    def names(self) -> list[str]:
        return list(self._shape)

    def __contains__(self, name: object) -> bool:
        return name in self._shape

    def shape(self, name: str) -> tuple[int, ...]:
        return self._shape[name]

    def where(self) -> str:
        """The file(s), for error messages."""
        return ", ".join(str(f) for f in self.files)

    def get(self, name: str) -> torch.Tensor:
        """The tensor ``name`` as stored (dtype unchanged)."""
        if name not in self._file_of:
            raise CheckpointError(f"tensor {name} is missing from {self.where()}")
        file = self._file_of[name]
        if file not in self._loaded:
            from safetensors import SafetensorError
            from safetensors.torch import load_file

            try:
                self._loaded[file] = load_file(str(file), device="cpu")
            except (SafetensorError, OSError, ValueError) as exc:
                raise CheckpointError(f"cannot read {file}: {exc}") from None
        return self._loaded[file][name]


def check_shapes(store: TensorStore, expected: Mapping[str, tuple[int, ...]]) -> None:
    """Every ``expected`` name is in ``store`` with that shape; the error names the tensor, the
    file and both shapes (or lists what is missing)."""
    missing = [name for name in expected if name not in store]
    if missing:
        shown = ", ".join(missing[:5]) + (
            f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        )
        raise CheckpointError(f"tensor {shown} missing from {store.where()}")
    for name, shape in expected.items():
        if store.shape(name) != tuple(shape):
            raise CheckpointError(
                f"tensor {name} in {store._file_of[name]} has shape {store.shape(name)}, "
                f"expected {tuple(shape)} from the config"
            )
