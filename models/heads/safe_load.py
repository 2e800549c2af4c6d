"""Reading weight files without running code from them, and without letting them hang the loader
or make it allocate what the file does not hold.

- ``*.safetensors``: a JSON header and raw bytes; nothing to execute. :func:`safetensors_header`
  checks the header up front, before ``safetensors`` reads a byte of data: its length against
  the file, that it is a JSON object without repeated names, every entry's dtype, shape and
  ``data_offsets`` (in the file, not overlapping, covering the data exactly, and the span equal
  to the shape × the dtype's size), so a truncated, corrupted or lying file is an error naming
  it. The data is read on first use.
- anything else (``pytorch_model.bin``, nanoGPT's ``ckpt.pt``): :func:`check_torch_file` first
  scans the pickle(s) statically (:mod:`models.heads.pickle_scan`: memo reuse that would make
  hashing take 2^64 steps, deep nesting, keys chosen to collide; storages declaring more
  elements than the file has bytes) — the member ending in ``data.pkl`` (and every other
  ``.pkl``) of torch's zip format, the five pickles at the start of the legacy format; the tar
  format of PyTorch < 0.4 is refused. Then ``torch.load(weights_only=True)``, whose unpickler
  builds tensors, containers and plain values only. A pickle that asks for any other object
  (``os.system``, ``eval``, a class of some package) is refused with
  :class:`UnsafeCheckpointError` naming the file; nothing in it runs.
- ``meta.pkl`` (nanoGPT's vocabulary): :func:`load_plain_pickle`, the same scan, then an
  unpickler that builds only the builtin containers and scalars that pickle encodes without
  naming a class (dict, list, tuple, str, bytes, int, float, bool, None) and refuses every
  class lookup.

Every tensor of a pickled state dict must be dense (strided), on the CPU and not on the meta
device; :func:`check_tensors` also requires the tensors a loader uses to be real floating point
(float16, bfloat16, float32, float64) and of the shape the config gives, naming the config key
of a wrong dimension.

Errors are :class:`models.checkpoint.CheckpointError` (a ValueError) and name the file, and the
tensor where one is concerned.
"""

from __future__ import annotations

import io
import json
import math
import pickle
import struct
import tarfile
import warnings
import zipfile
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import torch

from flowgraph.models.checkpoint import CheckpointError
from flowgraph.models.heads.pickle_scan import PickleRefused, PickleSummary, scan_pickle

__all__ = [
    "FLOAT_DTYPES",
    "MAX_HEADER_BYTES",
    "SAFETENSORS_ITEMSIZE",
    "Dim",
    "TensorInfo",
    "TensorStore",
    "UnsafeCheckpointError",
    "check_tensors",
    "check_torch_file",
    "load_plain_pickle",
    "load_weights_only",
    "safetensors_header",
]

MAX_HEADER_BYTES = 100_000_000  # safetensors' own limit on the JSON header
SAFETENSORS_ITEMSIZE = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E4M3FNUZ": 1, "F8_E5M2": 1, "F8_E5M2FNUZ": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "C64": 8, "I64": 8,
    "U64": 8, "F64": 8,
}  # fmt: skip
FLOAT_DTYPES = ("F16", "BF16", "F32", "F64")  # what the loaders compute with (upcast to float32)
_TORCH_DTYPES = {
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.float32: "F32",
    torch.float64: "F64",
}
_LEGACY_PICKLES = 5  # magic number, protocol version, sys info, the data, the storage keys
_LEGACY_HEADER = (0x1950A86A20F9469CFC6C, 1001)  # torch.serialization's MAGIC_NUMBER, version


class UnsafeCheckpointError(CheckpointError):
    """A pickle that would build objects other than tensors and plain values (it could run code),
    or one built to make loading it hang."""


class Dim(int):
    """A size a config declares, with the config key it comes from (``Dim(768, "hidden_size")``,
    ``Dim(3 * 768, "3·n_embd")``), so a wrong tensor dimension names the key."""

    key: str

    def __new__(cls, value: int, key: str) -> Dim:
        dim = super().__new__(cls, value)
        dim.key = key
        return dim


@dataclass(frozen=True)
class TensorInfo:
    """A stored tensor's dtype (safetensors' name: ``"F32"``; torch's for others) and shape."""

    dtype: str
    shape: tuple[int, ...]


# --- pickles -------------------------------------------------------------------------------------
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


def _scan(f: BinaryIO, size: int, where: str) -> PickleSummary:
    """:func:`~models.heads.pickle_scan.scan_pickle` with the refusal as a CheckpointError."""
    try:
        return scan_pickle(f, size=size)
    except PickleRefused as exc:
        if exc.unsafe:
            raise UnsafeCheckpointError(
                f"refusing to load {where}: {exc}; nothing in it was unpickled"
            ) from None
        raise CheckpointError(
            f"cannot read {where} (truncated or not a torch file?): {exc}"
        ) from None


def _check_storages(summary: PickleSummary, file_size: int, where: str) -> None:
    """torch's persistent ids ``('storage', type, key, location, numel, …)``: the loader
    allocates ``numel`` elements, which the file must hold."""
    for pid in summary.persistent_ids:
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            continue
        numel = pid[4]
        if isinstance(numel, bool) or not isinstance(numel, int) or not 0 <= numel <= file_size:
            raise CheckpointError(
                f"cannot read {where}: storage {pid[2]!r} declares {numel!r} elements, but the "
                f"file has {file_size} bytes (corrupted or crafted)"
            )


def check_torch_file(path: str | Path) -> None:
    """Scan the pickle(s) of the torch file ``path`` before ``torch.load`` reads it (see the
    module docstring); raises :class:`UnsafeCheckpointError` for a pickle built to hang or
    exhaust the loader, :class:`CheckpointError` for a malformed or truncated file."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            is_zip = f.read(4) == b"PK\x03\x04"  # torch's own test (serialization._is_zipfile)
    except FileNotFoundError:
        raise CheckpointError(f"cannot read {path}: file not found") from None
    except OSError as exc:
        raise CheckpointError(f"cannot read {path}: {exc}") from None
    if is_zip:
        _check_torch_zip(path, size)
        return
    if tarfile.is_tarfile(path):
        raise CheckpointError(
            f"cannot read {path}: a tar-format torch file (PyTorch before 0.4) is not supported; "
            "re-save it with a current torch.save"
        )
    with open(path, "rb") as f:
        for i in range(_LEGACY_PICKLES):
            summary = _scan(f, size - f.tell(), f"{path} (pickle {i + 1} of the legacy format)")
            _check_storages(summary, size, str(path))
            if i < len(_LEGACY_HEADER) and summary.value != _LEGACY_HEADER[i]:
                return  # torch.load stops here (not a torch file), reading nothing after it


def _check_torch_zip(path: Path, size: int) -> None:
    try:
        with zipfile.ZipFile(path) as archive:
            pickles = [i for i in archive.infolist() if i.filename.endswith(".pkl")]
            if not any(i.filename.endswith("data.pkl") for i in pickles):
                shown = ", ".join(archive.namelist()[:8])
                raise CheckpointError(
                    f"cannot read {path}: a torch zip file holds its pickle as …/data.pkl; this "
                    f"one has none (it holds {shown or 'nothing'})"
                )
            for info in pickles:  # torch reads one data.pkl; every .pkl here is checked
                where = f"{path} (member {info.filename})"
                with archive.open(info) as member:
                    summary = _scan(member, info.file_size, where)
                _check_storages(summary, size, where)
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError) as exc:
        raise CheckpointError(f"cannot read {path}: a damaged zip file ({exc})") from None


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
    torch's zip format, after :func:`check_torch_file`; a refused pickle raises
    :class:`UnsafeCheckpointError`, an unreadable file :class:`CheckpointError`, both naming
    ``path``."""
    path = Path(path)
    check_torch_file(path)
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
    bytes, int, float, bool, None), after the static scan of
    :mod:`~models.heads.pickle_scan`; anything that names a class or function, or is built to
    make unpickling hang, raises :class:`UnsafeCheckpointError` before it is built."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"cannot read {path}: {exc}") from None
    _scan(io.BytesIO(data), len(data), str(path))
    try:
        return _PlainUnpickler(io.BytesIO(data)).load()
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


# --- safetensors ---------------------------------------------------------------------------------
def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"the name {key!r} appears twice")
        out[key] = value
    return out


def _is_index(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def _header_entry(
    path: Path, name: str, info: object, data_size: int
) -> tuple[TensorInfo, int, int]:
    """One tensor's dtype, shape and data span, each checked."""

    def bad(why: str) -> CheckpointError:
        return CheckpointError(f"cannot read {path}: header entry {name!r} {why} (corrupted?)")

    if not isinstance(info, dict):
        raise bad(f"is a {type(info).__name__}, not an object")
    dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if not isinstance(dtype, str) or dtype not in SAFETENSORS_ITEMSIZE:
        raise bad(f"has dtype {dtype!r}; known: {', '.join(SAFETENSORS_ITEMSIZE)}")
    if not isinstance(shape, list) or not all(_is_index(s) for s in shape):
        raise bad(f"has shape {shape!r}; expected a list of ints ≥ 0")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(_is_index(o) for o in offsets)
        or offsets[0] > offsets[1]
    ):
        raise bad(f"has data_offsets {offsets!r}; expected [begin, end] with 0 ≤ begin ≤ end")
    if offsets[1] > data_size:
        raise CheckpointError(
            f"cannot read {path}: header entry {name!r} has data_offsets {offsets}, past the "
            f"{data_size} bytes of data in the file (truncated or corrupted)"
        )
    span = offsets[1] - offsets[0]
    needed = math.prod(shape) * SAFETENSORS_ITEMSIZE[dtype]
    if needed != span:
        raise bad(
            f"declares shape {tuple(shape)} of {dtype} ({needed} bytes) over a span of {span} bytes"
        )
    return TensorInfo(dtype, tuple(shape)), offsets[0], offsets[1]


def safetensors_header(path: str | Path) -> dict[str, TensorInfo]:
    """The tensors of the safetensors file ``path`` by name, from its header, which is checked
    as the module docstring says; raises :class:`CheckpointError` naming ``path``."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise CheckpointError(
                    f"cannot read {path}: {size} bytes, too short for safetensors"
                )
            (n,) = struct.unpack("<Q", head)
            if n > size - 8 or n > MAX_HEADER_BYTES:
                raise CheckpointError(
                    f"cannot read {path}: header of {n} bytes in a {size}-byte file "
                    f"(truncated or not safetensors; at most {MAX_HEADER_BYTES} allowed)"
                )
            raw = f.read(n)
    except FileNotFoundError:
        raise CheckpointError(f"cannot read {path}: file not found") from None
    except OSError as exc:
        raise CheckpointError(f"cannot read {path}: {exc}") from None
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_unique_keys)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise CheckpointError(f"cannot read {path}: corrupted header ({exc})") from None
    if not isinstance(header, dict):
        raise CheckpointError(
            f"cannot read {path}: corrupted header (a JSON {type(header).__name__}, not an object)"
        )
    metadata = header.pop("__metadata__", {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise CheckpointError(f"cannot read {path}: __metadata__ must map strings to strings")
    data_size = size - 8 - n
    tensors, spans = {}, []
    for name, info in header.items():
        tensors[name], begin, end = _header_entry(path, name, info, data_size)
        spans.append((begin, end, name))
    spans.sort()
    at = 0
    for begin, end, name in spans:
        if begin != at:
            what = (
                "overlaps the tensor before it"
                if begin < at
                else f"leaves bytes {at}–{begin} unused"
            )
            raise CheckpointError(
                f"cannot read {path}: header entry {name!r} (data_offsets [{begin}, {end}]) "
                f"{what} (corrupted?)"
            )
        at = end
    if at != data_size:
        raise CheckpointError(
            f"cannot read {path}: the header describes {8 + n + at} bytes, the file has {size} "
            "(truncated or corrupted)"
        )
    return tensors


# --- tensors -------------------------------------------------------------------------------------
def _dense_cpu(file: Path, name: str, t: torch.Tensor) -> TensorInfo:
    """A pickled tensor's info; it must be dense, on the CPU, and hold data."""
    if t.is_meta or t.device.type != "cpu":
        raise CheckpointError(
            f"tensor {name} in {file} is on the {t.device.type} device, not the CPU: it holds no "
            "weights here (a meta tensor has no data at all)"
        )
    if t.layout != torch.strided or t.is_nested:
        raise CheckpointError(
            f"tensor {name} in {file} has layout {t.layout}; expected a dense (torch.strided) "
            "tensor"
        )
    return TensorInfo(_TORCH_DTYPES.get(t.dtype, str(t.dtype)), tuple(t.shape))


class TensorStore:
    """The tensors of one or more weight files (shards), by name.

    Dtypes and shapes are known when the store is built (from safetensors headers, or from the
    loaded pickle, whose tensors must be dense CPU tensors); safetensors data is read on the
    first :meth:`get` of a tensor of that file.
    """

    def __init__(self, files: Iterable[str | Path]) -> None:
        self._file_of: dict[str, Path] = {}
        self._info: dict[str, TensorInfo] = {}
        self._loaded: dict[Path, Mapping[str, torch.Tensor]] = {}
        self.files = [Path(f) for f in files]
        for file in self.files:
            if file.suffix == ".safetensors":
                infos = safetensors_header(file)
            else:
                state = load_weights_only(file)
                if not isinstance(state, Mapping) or not all(
                    isinstance(v, torch.Tensor) for v in state.values()
                ):
                    raise CheckpointError(
                        f"{file} does not hold a state dict (a mapping of names to tensors)"
                    )
                self._loaded[file] = state
                infos = {k: _dense_cpu(file, k, v) for k, v in state.items()}
            for name, info in infos.items():
                self._file_of.setdefault(name, file)
                self._info.setdefault(name, info)

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
            store._file_of[name], store._info[name] = file, _dense_cpu(file, name, t)
        return store

    def names(self) -> list[str]:
        return list(self._info)

    def __contains__(self, name: object) -> bool:
        return name in self._info

    def shape(self, name: str) -> tuple[int, ...]:
        return self._info[name].shape

    def dtype(self, name: str) -> str:
        """The stored dtype: safetensors' name (``"F32"``, ``"I64"``) or torch's."""
        return self._info[name].dtype

    def file_of(self, name: str) -> Path:
        return self._file_of[name]

    def nbytes(self) -> int:
        """Bytes of all stored tensors (what reading every file takes)."""
        return sum(
            math.prod(i.shape) * SAFETENSORS_ITEMSIZE.get(i.dtype, 8) for i in self._info.values()
        )

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


def _wrong_dimension(shape: tuple[int, ...], expected: tuple[int, ...], config: str) -> str:
    if len(shape) != len(expected):
        return f"{len(expected)} dimensions, the tensor has {len(shape)}"
    i = next(i for i, (a, b) in enumerate(zip(shape, expected, strict=True)) if a != b)
    size = expected[i]
    declared = f"{size.key}={int(size)} in {config}" if isinstance(size, Dim) else str(size)
    return f"dimension {i} is {declared}, the tensor's is {shape[i]}"


def check_tensors(
    store: TensorStore, expected: Mapping[str, tuple[int, ...]], *, config: str = "the config"
) -> None:
    """Every ``expected`` name is in ``store`` with that shape and a floating-point dtype
    (:data:`FLOAT_DTYPES`); the error names the tensor, the file, both shapes and the key of
    ``config`` (a file name, for the message) behind a wrong dimension (:class:`Dim`), or lists
    what is missing."""
    missing = [name for name in expected if name not in store]
    if missing:
        shown = ", ".join(missing[:5]) + (
            f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        )
        raise CheckpointError(f"tensor {shown} missing from {store.where()}")
    for name, shape in expected.items():
        got = store.shape(name)
        if got != tuple(shape):
            raise CheckpointError(
                f"tensor {name} in {store.file_of(name)} has shape {got}, expected "
                f"{tuple(int(s) for s in shape)} from the config "
                f"({_wrong_dimension(got, tuple(shape), config)})"
            )
        if store.dtype(name) not in FLOAT_DTYPES:
            raise CheckpointError(
                f"tensor {name} in {store.file_of(name)} has dtype {store.dtype(name)}; expected "
                f"a real floating-point weight ({', '.join(FLOAT_DTYPES)})"
            )
