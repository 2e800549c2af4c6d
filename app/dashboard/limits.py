"""Size caps of the dashboard: every number a user can type or upload is bounded here, so one
request cannot make the server build a huge pattern, decompress a zip bomb or run a model on a
megabyte of text. Each check raises a ValueError that names the control, the value and the cap."""

from __future__ import annotations

import io
import zipfile

__all__ = [
    "MAX_ATTENTION_FLOW_LAYERS",
    "MAX_ATTENTION_FLOW_TOKENS",
    "MAX_BLOCK_CELLS",
    "MAX_CHECK_N",
    "MAX_CHECK_ROWS",
    "MAX_COMPARE_N",
    "MAX_FLOW_GRAPH_N",
    "MAX_FLOW_N",
    "MAX_FLOW_SOURCES",
    "MAX_HEATMAP_N",
    "MAX_LAYERS",
    "MAX_MASKS_CHECK_N",
    "MAX_NPZ_UNPACKED_BYTES",
    "MAX_PATH_CHARS",
    "MAX_TEXT_CHARS",
    "MAX_TOKENS_SHOWN",
    "MAX_UNION_CHECK_N",
    "MAX_UPLOAD_BYTES",
    "check_choice",
    "check_flags",
    "check_npz_bytes",
    "check_scalar",
    "check_text",
    "float_option",
    "int_option",
]

MAX_CHECK_N = 1_048_576  # a library pattern: check reads its rules, seconds at a million tokens
MAX_CHECK_ROWS = 4 * 1_048_576  # n × steps (layers) of one check: about a minute on two cores
MAX_UNION_CHECK_N = 16384  # merged/heads stacks: their union steps are checked in about a second
MAX_MASKS_CHECK_N = 4096  # masks given entry by entry (uploads): the bitset engine, n² bits
MAX_BLOCK_CELLS = 256  # above MAX_HEATMAP_N the masks are drawn as this many blocks a side
MAX_HEATMAP_N = 256  # a step heatmap has n² cells: 65k cells per panel is what a browser draws fast
MAX_FLOW_GRAPH_N = 64  # the layered graph draws every edge; above this it is a grey blur
MAX_FLOW_N = 256  # the flow constraint is one max-flow per query
MAX_COMPARE_N = 4096  # the comparison table checks nine patterns
MAX_LAYERS = 16
MAX_UPLOAD_BYTES = 4 * 2**20  # an .npz upload, as sent (base64 adds a third on the wire)
MAX_NPZ_UNPACKED_BYTES = 64 * 2**20  # its arrays once decompressed (a zip bomb stops here)
MAX_TEXT_CHARS = 2000  # the Heads and Embeddings pages' typed input
MAX_PATH_CHARS = 1024  # a typed checkpoint path
MAX_TOKENS_SHOWN = 64  # heatmaps with token labels on both axes
# The Flow page computes the exact attention flow of every (layer, position, token) of its input:
# 12 layers at T = 64 take about 1.5 s on one core (24 layers ~3 s, 12 at T = 128 ~9 s).
MAX_ATTENTION_FLOW_TOKENS = 64
MAX_ATTENTION_FLOW_LAYERS = 12
MAX_FLOW_SOURCES = 16  # top-k sources drawn in the Flow page's flow graph


def int_option(name: str, value: object, low: int, high: int, *, default: int | None = None) -> int:
    """A number typed into control ``name`` as an int in ``low..high`` (``default`` when empty)."""
    if value is None or value == "":
        if default is None:
            raise ValueError(f"{name} is required (an integer in {low}..{high})")
        return default
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            raise ValueError(f"{name} must be an integer in {low}..{high}, got {value!r}") from None
    if not isinstance(value, int):
        raise TypeError(f"{name} must be an integer in {low}..{high}, got {value!r}")
    if not low <= value <= high:
        raise ValueError(f"{name} must be in {low}..{high}, got {name}={value}")
    return value


def float_option(
    name: str, value: object, low: float, high: float, *, default: float, low_open: bool = False
) -> float:
    """A number typed into control ``name`` as a float in ``low..high`` (``(low, high]`` with
    ``low_open``), ``default`` when empty; NaN, infinities, text and bools are refused."""
    if value is None or value == "":
        return default
    span = f"({low:g}, {high:g}]" if low_open else f"[{low:g}, {high:g}]"
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise ValueError(f"{name} must be a number in {span}, got {value!r:.60}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number in {span}, got {value!r:.60}")
    try:
        number = float(value)
    except OverflowError:  # an int beyond float range
        number = float("inf")
    if not (low < number <= high if low_open else low <= number <= high):  # NaN fails too
        raise ValueError(f"{name} must be in {span}, got {name}={value!r:.60}")
    return number


def check_text(name: str, value: object, limit: int = MAX_TEXT_CHARS) -> str:
    """``value`` as a str of at most ``limit`` characters without NUL bytes."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be text, got {type(value).__name__}")
    if len(value) > limit:
        raise ValueError(f"{name} holds {len(value):,} characters; the limit is {limit:,}")
    if "\x00" in value:
        raise ValueError(f"{name} must not contain NUL bytes")
    return value


def check_scalar(name: str, value: object) -> object:
    """``value`` when it is what a box sends (None, text or a number); a list or a mapping —
    which no control sends, and which a cache key cannot hold — is a TypeError naming ``name``."""
    if value is None or isinstance(value, (str, int, float)):
        return value
    raise TypeError(f"{name} must be a number or text, got {type(value).__name__} {value!r:.60}")


def check_choice(name: str, value: object, choices: tuple[str, ...]) -> str:
    """``value`` when it is one of ``choices`` (a radio's or a dropdown's values)."""
    if isinstance(value, str) and value in choices:
        return value
    raise ValueError(f"{name} must be one of {', '.join(choices)}, got {value!r:.60}")


def check_flags(name: str, value: object, choices: tuple[str, ...]) -> list[str]:
    """The ticked values of a checklist: a list of some of ``choices`` (None: none ticked)."""
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise TypeError(f"{name} must be a list of {', '.join(choices)}, got {value!r:.60}")
    unknown = [v for v in value if v not in choices]
    if unknown:
        raise ValueError(f"{name}: {unknown[0]!r:.60} is not one of {', '.join(choices)}")
    return value


def check_npz_bytes(name: str, data: bytes) -> None:
    """Refuse an upload above :data:`MAX_UPLOAD_BYTES`, one that is not a zip (``.npz``) or one
    whose members decompress to more than :data:`MAX_NPZ_UNPACKED_BYTES` (read from the zip's
    directory, before anything is decompressed)."""
    if len(data) > MAX_UPLOAD_BYTES:
        raise ValueError(f"{name} is {len(data):,} bytes; the limit is {MAX_UPLOAD_BYTES:,} bytes")
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            unpacked = sum(info.file_size for info in archive.infolist())
    except zipfile.BadZipFile:
        raise ValueError(f"{name} is not an .npz file (not a zip archive)") from None
    if unpacked > MAX_NPZ_UNPACKED_BYTES:
        raise ValueError(
            f"{name} unpacks to {unpacked:,} bytes; the limit is {MAX_NPZ_UNPACKED_BYTES:,} bytes"
        )
