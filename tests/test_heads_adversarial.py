"""Hostile and broken checkpoint files against models.heads and models.checkpoint: pickles built
to hang the loader (a 2^64-node hash bomb from 64 memo references, keys chosen to collide, deep
nesting), lying safetensors headers, tensors that are not dense real floats, configs with
absurd sizes, and consistent checkpoints too large for memory. Each is refused up front with a
CheckpointError naming the file (and the tensor, the config key and the values). The bombs run
in a subprocess with a generous timeout, so a regression fails instead of hanging the suite.

Oracles: the static pickle scan's tree size against a recursive count of the unpickled value
(hypothesis), and real torch.save / transformers outputs it must accept."""

from __future__ import annotations

import hashlib
import io
import json
import math
import pickle
import re
import struct
import subprocess
import sys
import tarfile
import textwrap
import warnings
import zipfile
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file
from test_heads_safety import CONFIG, _bert_dir, _bert_state, _config_dir

from flowgraph.models.checkpoint import CheckpointError, read_checkpoint, save_checkpoint
from flowgraph.models.heads import UnsafeCheckpointError, load_checkpoint
from flowgraph.models.heads.checkpoint import MAX_CONFIG_SIZE, MEMORY_LIMIT_ENV, memory_needed
from flowgraph.models.heads.pickle_scan import (
    COLLISION_LIMIT,
    MAX_DEPTH,
    PickleRefused,
    scan_pickle,
)
from flowgraph.models.heads.safe_load import check_torch_file, safetensors_header

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ROOT = Path(__file__).resolve().parents[1]
HANG_TIMEOUT_S = 60  # generous: a refused bomb takes milliseconds, an accepted one forever


# --- pickles written opcode by opcode -------------------------------------------------------------
def _binput(i: int) -> bytes:
    return b"q" + bytes([i])


def _bomb_key(depth: int = 64, *, dup: bool = False) -> bytes:
    """Opcodes leaving one tuple on the stack: level i is (level i−1, level i−1), level 0 None;
    the second reference is a BINGET of the memoized level below (torch's weights_only unpickler
    knows BINGET, not POP or DUP), or with ``dup`` a DUP. A DAG of ``depth`` + 1 objects whose
    tree has 2^depth leaves, in 5 bytes a level."""
    out = bytearray(b"N" + _binput(0))  # NONE, BINPUT 0
    for i in range(1, depth + 1):
        out += (b"2" if dup else b"h" + bytes([i - 1])) + b"\x86" + _binput(i)  # …, TUPLE2, BINPUT
    return bytes(out)


def _bomb(container: str = "dict", depth: int = 64, *, dup: bool = False) -> bytes:
    """A pickle whose loading hashes the bomb key: {key: None} (by SETITEM or SETITEMS), {key}
    or frozenset({key})."""
    key = _bomb_key(depth, dup=dup)
    if container == "dict":
        return b"\x80\x02}" + key + b"Ns."  # PROTO 2, EMPTY_DICT, key, NONE, SETITEM, STOP
    if container == "setitems":
        return b"\x80\x02}(" + key + b"Nu."  # EMPTY_DICT, MARK, key, NONE, SETITEMS
    if container == "set":
        return b"\x80\x04\x8f(" + key + b"\x90."  # EMPTY_SET, MARK, key, ADDITEMS
    return b"\x80\x04(" + key + b"\x91."  # MARK, key, FROZENSET


def _tree_size(x: object) -> int:
    """Objects of ``x`` as a tree (a shared object counted once per reference), recursively."""
    if isinstance(x, dict):
        return 1 + sum(_tree_size(k) + _tree_size(v) for k, v in x.items())
    if isinstance(x, (list, tuple, set, frozenset)):
        return 1 + sum(_tree_size(v) for v in x)
    return 1


def _scan(data: bytes):
    return scan_pickle(io.BytesIO(data), size=len(data))


def test_the_bomb_is_what_it_claims():
    """At depth 3 plain pickle builds it: one tuple object per level, shared (so the depth-64
    pickle, ~330 bytes, stands for a 2^64-leaf tree, and hashing it walks all of them)."""
    for dup in (False, True):
        key = next(iter(pickle.loads(_bomb("dict", 3, dup=dup))))
        assert key[0] is key[1] and key[0][0] is key[0][1]
        assert _tree_size(key) == 2**4 - 1
        assert _scan(_bomb("dict", 3, dup=dup)).expanded == 1 + _tree_size(key) + 1
    assert len(_bomb("dict", 64)) < 350
    for container in ("dict", "setitems", "set", "frozenset"):
        assert pickle.loads(_bomb(container, 3)) is not None


@pytest.mark.parametrize("container", ["dict", "setitems", "set", "frozenset"])
@pytest.mark.parametrize("dup", [False, True], ids=["binget", "dup"])
def test_the_scan_refuses_the_bomb(container, dup):
    with pytest.raises(PickleRefused, match="expand it to more than") as info:
        _scan(_bomb(container, 64, dup=dup))
    assert info.value.unsafe


def test_a_bomb_followed_by_garbage_is_still_a_bomb():
    """An unpickler hashes the key before it reaches the damage: refused as unsafe."""
    data = _bomb("dict", 64)[:-1] + b"\xff\xff"
    with pytest.raises(PickleRefused, match="expand") as info:
        _scan(data)
    assert info.value.unsafe


# --- the bombs in every file the loaders unpickle (one subprocess, with a timeout) ----------------
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # torch.serialization.MAGIC_NUMBER


def _legacy_torch(main_pickle: bytes) -> bytes:
    """torch's legacy (non-zip) format around ``main_pickle``: magic number, protocol version,
    sys info, the data, the storage keys."""
    head = [LEGACY_MAGIC, 1001, {"protocol_version": 1001, "little_endian": True}]
    return b"".join(pickle.dumps(x, protocol=2) for x in head) + main_pickle + pickle.dumps([])


def _zip_torch(path: Path, data_pkl: bytes, extra: dict[str, bytes] | None = None) -> Path:
    """A torch zip file (from torch.save) whose data.pkl is ``data_pkl``, plus ``extra``
    members."""
    torch.save({}, path)
    with zipfile.ZipFile(path) as archive:
        members = {i.filename: archive.read(i) for i in archive.infolist()}
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data_pkl if name.endswith("data.pkl") else data)
        for name, data in (extra or {}).items():
            archive.writestr(name, data)
    return path


def _nanogpt_dir(directory: Path) -> Path:
    from test_heads_nanogpt import _write

    return _write(directory, meta=False)


def _run_with_checksum(root: Path, name: str, data: bytes) -> Path:
    """A saved run whose file ``name`` is ``data``, its checksum in config.json made to match."""
    from test_heads_load import _model, _save_run

    run = _save_run(root, _model("sdpa", None, "interleave", True, "symmetric"))
    directory = run / "checkpoint"
    (directory / name).write_bytes(data)
    config = json.loads((directory / "config.json").read_text())
    config["checksums"][name] = hashlib.sha256(data).hexdigest()
    (directory / "config.json").write_text(json.dumps(config))
    return directory


def _bomb_cases(root: Path) -> dict[str, tuple[str, Path, Path]]:
    """case → (what to call, its path, the file the error must name): "load" load_checkpoint,
    "tokens" its .tokens (meta.pkl is read then), "read" read_checkpoint."""
    cases = {}
    for fmt in ("zip", "legacy"):
        for container in ("dict", "setitems"):
            case = f"{fmt}-{container}"
            bomb = _bomb(container)
            ckpt = root / f"nano-{case}" / "ckpt.pt"
            ckpt.parent.mkdir()
            if fmt == "zip":
                _zip_torch(ckpt, bomb)
            else:
                ckpt.write_bytes(_legacy_torch(bomb))
            cases[f"ckpt.pt-{case}"] = ("load", ckpt, ckpt)
            hf = _config_dir(root / f"hf-{case}")
            (hf / "pytorch_model.bin").write_bytes(ckpt.read_bytes())
            cases[f"pytorch_model.bin-{case}"] = ("load", hf, hf / "pytorch_model.bin")
    for container, dup in (("dict", False), ("dict", True), ("set", False), ("frozenset", False)):
        case = f"{container}{'-dup' if dup else ''}"
        ckpt = _nanogpt_dir(root / f"meta-{case}")
        (ckpt.parent / "meta.pkl").write_bytes(_bomb(container, dup=dup))
        cases[f"meta.pkl-{case}"] = ("tokens", ckpt, ckpt.parent / "meta.pkl")
    zipped = _zip_torch(root / "trainer-bomb.pt", _bomb("dict"))
    run = _run_with_checksum(root / "run", "trainer.pt", zipped.read_bytes())
    cases["trainer.pt"] = ("read", run, run / "trainer.pt")
    return cases


_RUNNER = textwrap.dedent(
    """
    import json, sys
    from flowgraph.models.checkpoint import read_checkpoint
    from flowgraph.models.heads import load_checkpoint

    for case, (what, path) in json.loads(sys.argv[1]).items():
        try:
            if what == "read":
                read_checkpoint(path)
            else:
                ckpt = load_checkpoint(path)
                if what == "tokens":
                    ckpt.tokens
            result = "loaded"
        except Exception as exc:
            result = f"{type(exc).__name__}: {exc}"
        print(json.dumps([case, result]), flush=True)
    """
)


@pytest.fixture(scope="module")
def bomb_results(tmp_path_factory) -> dict[str, tuple[str, Path]]:
    """Every bomb case loaded in one subprocess (imports are paid once); a hang is a failure
    that names the cases that did finish."""
    cases = _bomb_cases(tmp_path_factory.mktemp("bombs"))
    arg = json.dumps({case: [what, str(path)] for case, (what, path, _) in cases.items()})
    try:
        done = subprocess.run(
            [sys.executable, "-c", _RUNNER, arg],
            capture_output=True,
            text=True,
            timeout=HANG_TIMEOUT_S,
            cwd=ROOT,
        )
    except subprocess.TimeoutExpired as exc:
        finished = exc.stdout.decode() if isinstance(exc.stdout, bytes) else exc.stdout
        pytest.fail(f"a loader hung on a hash bomb; finished before it: {finished!r}")
    assert done.returncode == 0, done.stderr
    results = dict(json.loads(line) for line in done.stdout.splitlines())
    assert set(results) == set(cases)
    return {case: (results[case], cases[case][2]) for case in cases}


BOMB_CASES = [
    f"{file}-{fmt}-{c}"
    for file in ("ckpt.pt", "pytorch_model.bin")
    for fmt in ("zip", "legacy")
    for c in ("dict", "setitems")
] + ["meta.pkl-dict", "meta.pkl-dict-dup", "meta.pkl-set", "meta.pkl-frozenset", "trainer.pt"]


@pytest.mark.parametrize("case", BOMB_CASES)
def test_a_hash_bomb_is_refused_in_every_pickled_file(bomb_results, case):
    result, file = bomb_results[case]
    assert result.startswith(f"UnsafeCheckpointError: refusing to load {file}"), result
    assert "expand it to more than" in result and "nothing in it was unpickled" in result


# --- what the scan must accept: real files --------------------------------------------------------
def _nanogpt_like_checkpoint() -> dict:
    """What nanoGPT's train.py saves: model state, a stepped AdamW's state, model_args, config."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Embedding(11, 16), torch.nn.Linear(16, 16))
    opt = torch.optim.AdamW(model.parameters(), lr=6e-4)
    model(torch.tensor([1, 2, 3])).sum().backward()
    opt.step()
    return {
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "model_args": dict(n_layer=2, n_head=4, n_embd=16, block_size=8, bias=True, vocab_size=11),
        "iter_num": 250,
        "best_val_loss": torch.tensor(1.25),
        "config": {"dataset": "shakespeare_char", "lr": 6e-4, "betas": (0.9, 0.95), "tags": ["a"]},
    }


@pytest.mark.parametrize("zipped", [True, False], ids=["zip", "legacy"])
def test_real_torch_files_pass_the_scan(tmp_path, zipped):
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(
        n_embd=16, n_layer=2, n_head=2, vocab_size=20, n_positions=8, bos_token_id=0, eos_token_id=0
    )
    torch.manual_seed(0)
    objects = {
        "gpt2-state": transformers.GPT2LMHeadModel(config).state_dict(),
        "nanogpt": _nanogpt_like_checkpoint(),
        "tied": {"a": (t := torch.ones(3)), "b": t, "view": t[1:]},  # one storage, three tensors
    }
    for name, obj in objects.items():
        file = tmp_path / f"{name}.pt"
        torch.save(obj, file, _use_new_zipfile_serialization=zipped)
        check_torch_file(file)
    directory = tmp_path / "hf"  # as transformers' torch.save of a state dict writes it
    directory.mkdir()
    config.to_json_file(directory / "config.json")
    torch.save(
        objects["gpt2-state"],
        directory / "pytorch_model.bin",
        _use_new_zipfile_serialization=zipped,
    )
    assert load_checkpoint(tmp_path / "hf").num_layers == 2


def test_a_torch_state_dicts_tree_is_barely_larger_than_its_objects(tmp_path):
    """torch reuses memoized globals and short strings only: expanded / objects stays near 1,
    far below the limit (EXPANSION_FACTOR × objects + EXPANSION_SLACK)."""
    file = tmp_path / "ckpt.pt"
    torch.save(_nanogpt_like_checkpoint(), file)
    with zipfile.ZipFile(file) as archive:
        name = next(n for n in archive.namelist() if n.endswith("data.pkl"))
        summary = _scan(archive.read(name))
    assert summary.objects < summary.expanded < 2 * summary.objects
    assert len(summary.persistent_ids) == _count_tensors(_nanogpt_like_checkpoint())


def _count_tensors(x: object) -> int:
    if isinstance(x, torch.Tensor):
        return 1
    if isinstance(x, dict):
        return sum(_count_tensors(v) for v in x.values())
    if isinstance(x, (list, tuple)):
        return sum(_count_tensors(v) for v in x)
    return 0


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_a_real_meta_pkl_loads_at_every_protocol(tmp_path, protocol):
    from test_heads_nanogpt import _write

    file = _write(tmp_path / "out", meta=False)
    chars = sorted(set("hello world!?."))
    meta = {
        "vocab_size": 11,
        "itos": dict(enumerate(chars)),
        "stoi": {c: i for i, c in enumerate(chars)},
    }
    (tmp_path / "out" / "meta.pkl").write_bytes(pickle.dumps(meta, protocol=protocol))
    assert load_checkpoint(file).tokens[:3] == chars[:3]


_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text(max_size=4)
    | st.binary(max_size=4)
)
_HASHABLE = st.recursive(
    _SCALARS, lambda inner: st.tuples(inner, inner) | st.frozensets(inner, max_size=3), max_leaves=8
)
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.tuples(inner, inner)
        | st.dictionaries(_HASHABLE, inner, max_size=3)
        | st.sets(_HASHABLE, max_size=3)
    ),
    max_leaves=30,
)


@settings(max_examples=150, deadline=None)
@given(value=_VALUES, protocol=st.sampled_from([4, 5]), shared=st.booleans())
def test_the_scans_tree_size_is_the_values(value, protocol, shared):
    """Oracle: a recursive count of the unpickled value. ``shared``: the value twice and inside
    a tuple ([v, v, (v, v)]), so memo references (BINGET) of whole subtrees are counted too."""
    if shared:
        value = [value, value, (value, value)]
    data = pickle.dumps(value, protocol=protocol)
    summary = _scan(data)
    assert summary.expanded == _tree_size(pickle.loads(data))


@settings(max_examples=100, deadline=None)
@given(value=_VALUES, protocol=st.sampled_from([0, 1, 2, 3]))
def test_the_scans_tree_size_at_old_protocols(value, protocol):
    """Before protocol 4 sets are pickled as calls (set([...])) and bytes, before 3, too: the
    scan counts the call's parts, never fewer objects than the value has."""
    data = pickle.dumps(value, protocol=protocol)
    assert _scan(data).expanded >= _tree_size(pickle.loads(data))


# --- other pickles built to exhaust the loader ----------------------------------------------------
def test_keys_chosen_to_collide_are_refused():
    """ints k·(2^61 − 1) + 1 all hash to 1: a dict of n of them takes n² comparisons to build."""
    keys = [1 + k * (2**61 - 1) for k in range(COLLISION_LIMIT + 2)]
    assert len({hash(k) for k in keys}) == 1
    with pytest.raises(PickleRefused, match="share one hash") as info:
        _scan(pickle.dumps(dict.fromkeys(keys)))
    assert info.value.unsafe
    # ordinary keys, even ones that collide by nature (hash(-1) == hash(-2)), are fine
    _scan(pickle.dumps({-1: 0, -2: 0, **{i * 7919: i for i in range(20_000)}}))


def test_deep_nesting_and_cycles_are_refused():
    deep: list = []
    for _ in range(MAX_DEPTH + 5):
        deep = [deep]
    with pytest.raises(PickleRefused, match=f"more than {MAX_DEPTH} deep"):
        _scan(pickle.dumps(deep))
    ok: list = []
    for _ in range(MAX_DEPTH - 5):
        ok = [ok]
    _scan(pickle.dumps(ok))
    cycle: list = []
    cycle.append(cycle)
    with pytest.raises(PickleRefused, match="contains itself"):
        _scan(pickle.dumps(cycle))


@pytest.mark.parametrize(
    "data, message",
    [
        (b"\x80\x02N" + b"p99999999999\n" + b".", "memo index"),  # PUT with a huge text index
        (b"\x80\x02h\x05.", "read before it is set"),  # BINGET of nothing
        (b"\x80\x04\x8e" + struct.pack("<Q", 2**62) + b"xx.", "only 3 remain"),  # BINBYTES8
        (b"\x80\x02t.", "MARK"),  # TUPLE without MARK
        (b"\x80\x02]", "before seeing STOP"),
        (b"\x80\x02\xff.", "not a valid pickle"),
    ],
    ids=["huge-memo-index", "bad-get", "huge-length", "no-mark", "no-stop", "bad-opcode"],
)
def test_malformed_pickles_are_refused(data, message):
    with pytest.raises(PickleRefused, match=message):
        _scan(data)


def test_zip_members_several_pickles_and_none(tmp_path):
    """Every .pkl of a torch zip is scanned (torch reads one data.pkl; which one is its choice);
    a zip without data.pkl is not a torch file."""
    file = _zip_torch(tmp_path / "two.pt", pickle.dumps({}), {"other/data.pkl": _bomb("dict")})
    with pytest.raises(UnsafeCheckpointError, match=re.escape("(member other/data.pkl)")):
        check_torch_file(file)
    none = tmp_path / "none.pt"
    with zipfile.ZipFile(none, "w") as archive:
        archive.writestr("archive/version", "3")
    with pytest.raises(CheckpointError, match=r"data\.pkl; this one has none"):
        check_torch_file(none)
    damaged = tmp_path / "damaged.pt"
    damaged.write_bytes((tmp_path / "two.pt").read_bytes()[:200])
    with pytest.raises(CheckpointError, match=re.escape(str(damaged))):
        check_torch_file(damaged)


def test_a_storage_larger_than_the_file_is_refused(tmp_path):
    """The legacy loader allocates the declared numel before reading: 2^40 floats (4 TiB) here
    gave 'DefaultCPUAllocator: can't allocate'; now it is refused up front."""
    file = tmp_path / "pytorch_model.bin"
    torch.save({"w": torch.zeros(3)}, file, _use_new_zipfile_serialization=False)
    data = file.read_bytes()
    at = data.index(b"cpuq")  # ('storage', FloatStorage, key, 'cpu', numel=3, None)
    numel = b"\x8a\x06" + (2**40).to_bytes(6, "little")  # LONG1 for BININT1 3
    assert data[at + 5 : at + 7] == b"K\x03"
    file.write_bytes(data[: at + 5] + numel + data[at + 7 :])
    with pytest.raises(CheckpointError, match=r"declares 1099511627776 elements, but the file"):
        check_torch_file(file)


def test_a_tar_format_torch_file_is_refused(tmp_path):
    file = tmp_path / "old.pt"
    with tarfile.open(file, "w") as tar:
        info = tarfile.TarInfo("pickle")
        payload = pickle.dumps({})
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    with pytest.raises(CheckpointError, match="tar-format torch file"):
        check_torch_file(file)


# --- safetensors headers --------------------------------------------------------------------------
def _split(file: Path) -> tuple[dict, bytes]:
    raw = file.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + n]), raw[8 + n :]


def _join(header: dict | bytes, data: bytes, length: int | None = None) -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(raw) if length is None else length) + raw + data


def _first(header: dict) -> str:
    return min((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"])


def _entry(header: dict, **change) -> dict:
    name = _first(header)
    return {**header, name: {**header[name], **change}}


def _second_overlaps(header: dict) -> dict:
    """The second tensor's data moved onto the first's (its span keeps its own size)."""
    names = sorted(
        (k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"]
    )
    (a_begin, _), (b_begin, b_end) = (
        header[names[0]]["data_offsets"],
        header[names[1]]["data_offsets"],
    )
    moved = [a_begin, a_begin + b_end - b_begin]
    return {**header, names[1]: {**header[names[1]], "data_offsets": moved}}


HEADER_CASES = {  # name → (header, data) → file bytes; and what the error says
    "length-past-the-end": (lambda h, d: _join(h, d, length=len(d) + 10**6), "header of"),
    "length-2^63": (lambda h, d: _join(h, d, length=2**63), "header of 9223372036854775808 bytes"),
    "not-json": (lambda h, d: _join(b"{not json" + b" " * 40, d), "corrupted header"),
    "not-utf8": (lambda h, d: _join(b"\xff\xfe" * 20, d), "corrupted header"),
    "json-list": (lambda h, d: _join(b"[1, 2, 3]", d), "not an object"),
    "json-nested-deep": (lambda h, d: _join(b"[" * 100_000 + b"]" * 100_000, d), "corrupted"),
    "entry-not-object": (lambda h, d: _join({**h, _first(h): 5}, d), "is a int, not an object"),
    "unknown-dtype": (lambda h, d: _join(_entry(h, dtype="F128"), d), "has dtype 'F128'"),
    "negative-shape": (lambda h, d: _join(_entry(h, shape=[-1, 8]), d), "has shape"),
    "bool-shape": (lambda h, d: _join(_entry(h, shape=[True, 8]), d), "has shape"),
    "offsets-reversed": (lambda h, d: _join(_entry(h, data_offsets=[64, 0]), d), "data_offsets"),
    "offsets-past-file": (
        lambda h, d: _join(_entry(h, data_offsets=[len(d), len(d) + 40]), d),
        "past the",
    ),
    "overlapping": (lambda h, d: _join(_second_overlaps(h), d), "overlaps"),
    "span-not-shape": (lambda h, d: _join(_entry(h, shape=[2, 3]), d), "declares shape"),
    "huge-shape": (lambda h, d: _join(_entry(h, shape=[10**9, 10**9]), d), "declares shape"),
    "duplicate-name": (
        lambda h, d: _join(
            json.dumps(h)[:-1].encode() + b', "' + _first(h).encode() + b'": {}}', d
        ),
        "appears twice",
    ),
    "gap": (lambda h, d: _gap(h, d), "unused"),
    "metadata-not-strings": (
        lambda h, d: _join({**h, "__metadata__": {"format": 1}}, d),
        "__metadata__",
    ),
    "truncated": (lambda h, d: _join(h, d[:-4]), "truncated or corrupted"),
}


def _gap(header: dict, data: bytes) -> bytes:
    """Every tensor moved 8 bytes on: bytes 0–8 of the data belong to none."""
    moved = {
        k: v if k == "__metadata__" else {**v, "data_offsets": [o + 8 for o in v["data_offsets"]]}
        for k, v in header.items()
    }
    return _join(moved, b"\x00" * 8 + data)


@pytest.mark.parametrize("case", HEADER_CASES)
def test_a_lying_safetensors_header_is_refused_at_load(tmp_path, case):
    directory = _bert_dir(tmp_path / "hf")
    file = directory / "model.safetensors"
    build, message = HEADER_CASES[case]
    header, data = _split(file)
    file.write_bytes(build(header, data))
    with pytest.raises(CheckpointError, match=re.escape(message)) as info:
        load_checkpoint(directory)
    assert f"cannot read {file}" in str(info.value)


@pytest.mark.parametrize("case", ["offsets-past-file", "span-not-shape", "huge-shape", "gap"])
def test_a_lying_header_in_a_run_is_refused_by_read_checkpoint(tmp_path, case):
    """The training reader too, even with config.json's checksum made to match the file."""
    from test_heads_load import _model, _save_run

    run = _save_run(tmp_path / "run", _model("sdpa", None, "interleave", True, "symmetric"))
    file = run / "checkpoint" / "model.safetensors"
    header, data = _split(file)
    build, message = HEADER_CASES[case]
    directory = _run_with_checksum(tmp_path / "run2", "model.safetensors", build(header, data))
    with pytest.raises(CheckpointError, match=re.escape(message)) as info:
        read_checkpoint(directory)
    assert f"{directory / 'model.safetensors'}: cannot be read" in str(info.value)


def test_the_header_check_accepts_what_safetensors_writes(tmp_path):
    state = {
        "empty": torch.zeros(0, 3),
        "scalar": torch.tensor(2.0),
        "f16": torch.zeros(2, 3, dtype=torch.float16),
        "bf16": torch.zeros(2, 3, dtype=torch.bfloat16),
        "ints": torch.arange(5),
        "bools": torch.ones(2, dtype=torch.bool),
    }
    save_file(state, str(tmp_path / "x.safetensors"), metadata={"format": "pt"})
    infos = safetensors_header(tmp_path / "x.safetensors")
    assert {k: i.shape for k, i in infos.items()} == {k: tuple(t.shape) for k, t in state.items()}
    assert infos["ints"].dtype == "I64" and infos["f16"].dtype == "F16"


# --- tensors that are not dense real floats -------------------------------------------------------
KEY = "encoder.layer.0.attention.self.key.weight"
BAD_TENSORS = {
    "meta": (lambda: torch.empty(8, 8, device="meta"), "is on the meta device"),
    "sparse-coo": (lambda: torch.eye(8).to_sparse(), "layout torch.sparse_coo"),
    "sparse-csr": (lambda: torch.eye(8).to_sparse_csr(), "layout torch.sparse_csr"),
    "complex64": (lambda: torch.zeros(8, 8, dtype=torch.complex64), "dtype torch.complex64"),
    "int64": (lambda: torch.zeros(8, 8, dtype=torch.int64), "dtype torch.int64"),
}


@pytest.mark.parametrize("kind", BAD_TENSORS)
def test_a_bin_tensor_that_is_not_a_dense_real_float_is_refused(tmp_path, kind):
    make, message = BAD_TENSORS[kind]
    with warnings.catch_warnings():  # sparse CSR is "in beta state"
        warnings.simplefilter("ignore")
        state = {**_bert_state(), KEY: make()}
    directory = _bert_dir(tmp_path / "hf", state=state, weights="pytorch_model.bin")
    with pytest.raises(CheckpointError, match=re.escape(message)) as info:
        load_checkpoint(directory)
    assert f"tensor {KEY} in {directory / 'pytorch_model.bin'}" in str(info.value)


@pytest.mark.parametrize("dtype", [torch.int64, torch.bool, torch.complex64, torch.uint8])
def test_a_safetensors_weight_that_is_not_float_is_refused(tmp_path, dtype):
    state = {**_bert_state(), KEY: torch.zeros(8, 8, dtype=dtype)}
    directory = _bert_dir(tmp_path / "hf", state=state)
    name = {torch.int64: "I64", torch.bool: "BOOL", torch.complex64: "C64", torch.uint8: "U8"}
    with pytest.raises(CheckpointError, match=f"has dtype {name[dtype]}; expected a real floating"):
        load_checkpoint(directory)


@pytest.mark.parametrize("weights", ["model.safetensors", "pytorch_model.bin"])
def test_an_unused_int_buffer_is_still_fine(tmp_path, weights):
    """Old BERT files carry embeddings.position_ids (int64), which the loader does not use."""
    state = {**_bert_state(), "embeddings.position_ids": torch.arange(6)[None]}
    assert load_checkpoint(_bert_dir(tmp_path / "hf", state=state, weights=weights)).num_layers == 1


@pytest.mark.parametrize("kind", ["meta", "complex64", "sparse-coo"])
def test_a_nanogpt_tensor_that_is_not_a_dense_real_float_is_refused(tmp_path, kind):
    from test_heads_nanogpt import ARGS, _state

    message = BAD_TENSORS[kind][1]
    state = _state(bias=True)
    c = ARGS["n_embd"]
    shape = (3 * c, c)
    bad = {
        "meta": torch.empty(*shape, device="meta"),
        "complex64": torch.zeros(*shape, dtype=torch.complex64),
    }
    state["transformer.h.0.attn.c_attn.weight"] = bad.get(kind, torch.zeros(*shape).to_sparse())
    file = tmp_path / "ckpt.pt"
    torch.save({"model": state, "model_args": {**ARGS, "bias": True}}, file)
    with pytest.raises(CheckpointError, match=re.escape(message)) as info:
        load_checkpoint(file)
    assert f"tensor transformer.h.0.attn.c_attn.weight in {file}" in str(info.value)


def test_a_run_weight_of_the_wrong_dtype_is_refused(tmp_path):
    """models.checkpoint.load_model_state: no silent int → float or complex → real copy."""
    from test_heads_load import _model

    from flowgraph.models.checkpoint import load_model_state

    model = _model("sdpa", None, "interleave", True, "symmetric")
    state = {k: v.clone() for k, v in model.state_dict().items() if k != "lm_head.weight"}
    for dtype in (torch.int64, torch.complex64):
        bad = {
            **state,
            "blocks.0.attn.c_proj.weight": state["blocks.0.attn.c_proj.weight"].to(dtype),
        }
        with pytest.raises(CheckpointError, match=f"dtype {dtype} in the checkpoint"):
            load_model_state(model, bad)


# --- configs with absurd sizes --------------------------------------------------------------------
ABSURD = [-1, 0, 1.5, 10**12, "12", math.nan, [8]]


def _shown(value: object) -> str:
    return "nan" if isinstance(value, float) and math.isnan(value) else repr(value)


@pytest.mark.parametrize("value", ABSURD, ids=repr)
@pytest.mark.parametrize(
    "key",
    [
        "hidden_size",
        "num_attention_heads",
        "num_hidden_layers",
        "vocab_size",
        "max_position_embeddings",
        "intermediate_size",
    ],
)
def test_an_absurd_bert_size_is_refused_by_key_and_value(tmp_path, key, value):
    directory = _bert_dir(tmp_path / "hf")
    (directory / "config.json").write_text(json.dumps({**CONFIG, key: value}))
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(directory)
    message = str(info.value)
    assert f"{directory / 'config.json'}: {key} must be an int" in message
    assert f"got {_shown(value)}" in message


@pytest.mark.parametrize("value", ABSURD, ids=repr)
@pytest.mark.parametrize("key", ["n_embd", "n_head", "n_layer", "vocab_size", "block_size"])
def test_an_absurd_nanogpt_size_is_refused_by_key_and_value(tmp_path, key, value):
    from test_heads_nanogpt import ARGS, _state

    file = tmp_path / "ckpt.pt"
    torch.save({"model": _state(bias=True), "model_args": {**ARGS, key: value}}, file)
    with pytest.raises(
        CheckpointError, match=re.escape(f"model_args[{key!r}] must be an int")
    ) as info:
        load_checkpoint(file)
    assert f"got {_shown(value)}" in str(info.value)


def test_sizes_beyond_the_bound_say_so(tmp_path):
    directory = _bert_dir(tmp_path / "hf")
    (directory / "config.json").write_text(json.dumps({**CONFIG, "vocab_size": 10**12}))
    message = f"vocab_size must be an int ≤ {MAX_CONFIG_SIZE}, got 1000000000000"
    with pytest.raises(CheckpointError, match=re.escape(message)):
        load_checkpoint(directory)


@pytest.mark.parametrize("layers", [10**6, 2])
def test_more_layers_than_the_file_holds_is_refused_at_once(tmp_path, layers):
    """A config claiming a million layers is refused by the last layer's missing tensor, before
    a million layers of names are listed."""
    directory = _bert_dir(tmp_path / "hf")
    (directory / "config.json").write_text(json.dumps({**CONFIG, "num_hidden_layers": layers}))
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(directory)
    assert f"encoder.layer.{layers - 1}.attention.self.query.weight missing" in str(info.value)
    assert f"num_hidden_layers={layers}" in str(info.value)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"layer_norm_eps": "abc"}, "layer_norm_eps must be a finite number > 0, got 'abc'"),
        ({"layer_norm_eps": math.nan}, "layer_norm_eps must be a finite number > 0, got nan"),
        ({"layer_norm_eps": -1}, "layer_norm_eps must be a finite number > 0, got -1"),
        ({"is_decoder": "false"}, "is_decoder must be true or false, got 'false'"),
        ({"hidden_act": ["gelu"]}, "hidden_act=['gelu'] is not supported"),
        ({"model_type": ["bert"]}, "model_type=['bert'] is not supported"),
        ({"type_vocab_size": -1}, "type_vocab_size must be an int ≥ 0, got -1"),
        (
            {"model_type": "roberta", "pad_token_id": "1"},
            "pad_token_id must be an int ≥ 0, got '1'",
        ),
        ({"hidden_size": 10**9}, "hidden_size=1000000000 in"),
    ],
    ids=lambda x: str(x)[:30],
)
def test_other_absurd_config_values_are_named(tmp_path, change, message):
    directory = _bert_dir(tmp_path / "hf")
    (directory / "config.json").write_text(json.dumps({**CONFIG, **change}))
    with pytest.raises(CheckpointError, match=re.escape(message)):
        load_checkpoint(directory)


def test_a_wrong_dimension_names_the_config_key_for_each_kind(tmp_path):
    from test_heads_nanogpt import ARGS, _state

    file = tmp_path / "ckpt.pt"
    torch.save(
        {"model": _state(bias=True), "model_args": {**ARGS, "n_embd": 64, "bias": True}}, file
    )
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(file)
    assert re.search(
        r"tensor transformer\.wte\.weight in .* has shape \(11, 32\), expected \(11, 64\) .*"
        r"dimension 1 is n_embd=64 in .*model_args, the tensor's is 32",
        str(info.value),
    )


@pytest.mark.parametrize(
    "change, message",
    [
        ({"d_model": 2**20}, "dimension 1 is d_model=1048576"),
        ({"vocab_size": 10**9}, "dimension 0 is vocab_size=1000000000"),
        ({"n_ctx": 10**6}, "dimension 0 is n_ctx=1000000"),
        ({"n_layer": 5000}, "blocks.4999.ln_1.weight missing"),
    ],
    ids=lambda x: str(x)[:20],
)
def test_a_runs_lying_config_is_refused_before_the_model_is_built(tmp_path, change, message):
    """Before, GPT(config) allocated what config.json said (d_model 2^20: 'DefaultCPUAllocator:
    can't allocate'); the sizes are now checked against model.safetensors first."""
    from test_heads_load import _model, _save_run

    run = _save_run(tmp_path / "run", _model("sdpa", None, "interleave", True, "symmetric"))
    config_file = run / "checkpoint" / "config.json"
    meta = json.loads(config_file.read_text())
    meta["config"]["model"].update(change)
    config_file.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=re.escape(message)):
        load_checkpoint(run)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda m: m.update(checksums=["model.safetensors"]), "'checksums' must be an object"),
        (lambda m: m.pop("config"), "'config' must be an object"),
        (
            lambda m: m["checksums"].update({"../../etc/passwd": "0"}),
            "not a file of the checkpoint",
        ),
        (lambda m: m["checksums"].update({"model.safetensors": 5}), "must be a string"),
        (lambda m: m.update(format=[1]), "unknown checkpoint format [1]"),
    ],
    ids=["checksums-list", "no-config", "path-in-checksums", "checksum-int", "format-list"],
)
def test_a_lying_run_config_json_is_refused(tmp_path, change, message):
    from test_heads_load import _model, _save_run

    run = _save_run(tmp_path / "run", _model("sdpa", None, "interleave", True, "symmetric"))
    config_file = run / "checkpoint" / "config.json"
    meta = json.loads(config_file.read_text())
    change(meta)
    config_file.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=re.escape(message)) as info:
        read_checkpoint(run / "checkpoint")
    assert str(config_file) in str(info.value)


# --- consistent checkpoints that cannot fit in memory ---------------------------------------------
def _sparse_safetensors(file: Path, tensors: dict[str, tuple[str, tuple[int, ...]]]) -> None:
    """A safetensors file whose header is honest and whose data is a hole: the file is as large
    as the shapes say (a sparse file: no disk used, nothing read at load)."""
    header, at = {}, 0
    for name, (dtype, shape) in tensors.items():
        size = math.prod(shape) * {"F16": 2, "F32": 4}[dtype]
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [at, at + size]}
        at += size
    raw = json.dumps(header).encode()
    with open(file, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        f.truncate(8 + len(raw) + at)


def test_a_huge_but_consistent_gpt2_is_refused_with_the_bytes_needed(tmp_path, monkeypatch):
    """d_model 32768, head_dim 8192, vocab 131072: every shape agrees with the config and the
    file is as large as they say (34 GiB, sparse). Before, it loaded and attention() died in the
    allocator; now the bytes it needs are compared with the limit at load."""
    c, V, P = 32768, 131072, 8
    config = {
        "model_type": "gpt2",
        "n_embd": c,
        "n_head": 4,
        "n_layer": 1,
        "vocab_size": V,
        "n_positions": P,
    }
    directory = tmp_path / "gpt2"
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps(config))
    tensors = {"wte.weight": ("F16", (V, c)), "wpe.weight": ("F16", (P, c))}
    for part, shape in {
        "attn.c_attn": (c, 3 * c),
        "attn.c_proj": (c, c),
        "mlp.c_fc": (c, 4 * c),
        "mlp.c_proj": (4 * c, c),
    }.items():
        tensors[f"h.0.{part}.weight"] = ("F16", shape)
        tensors[f"h.0.{part}.bias"] = ("F16", shape[1:])
    for part in ("ln_1", "ln_2"):
        tensors[f"h.0.{part}.weight"] = tensors[f"h.0.{part}.bias"] = ("F16", (c,))
    _sparse_safetensors(directory / "model.safetensors", tensors)
    monkeypatch.setenv(MEMORY_LIMIT_ENV, str(16 * 2**30))
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(directory)
    message = str(info.value)
    need = re.search(r"needs about (\d+) bytes", message)
    assert need and int(need.group(1)) > 16 * 2**30
    assert f"more than the limit of {16 * 2**30} bytes" in message
    assert f"{MEMORY_LIMIT_ENV}={16 * 2**30}" in message and str(directory) in message


def test_a_nanogpt_whose_longest_attention_cannot_fit_is_refused(tmp_path, monkeypatch):
    """block_size 2^20 with a 1-wide model: a 4 MiB file, but the (1, 1, T, T) attention of a
    longest sequence takes 12 TiB — more than any machine's memory (the default limit)."""
    monkeypatch.delenv(MEMORY_LIMIT_ENV, raising=False)
    T = 2**20
    state = {
        "transformer.wte.weight": torch.zeros(4, 1),
        "transformer.wpe.weight": torch.zeros(T, 1),
        "transformer.h.0.ln_1.weight": torch.ones(1),
        "transformer.h.0.ln_2.weight": torch.ones(1),
        "transformer.h.0.attn.c_attn.weight": torch.zeros(3, 1),
        "transformer.h.0.attn.c_proj.weight": torch.zeros(1, 1),
        "transformer.h.0.mlp.c_fc.weight": torch.zeros(4, 1),
        "transformer.h.0.mlp.c_proj.weight": torch.zeros(1, 4),
    }
    args = dict(n_layer=1, n_head=1, n_embd=1, block_size=T, vocab_size=4, bias=False)
    file = tmp_path / "ckpt.pt"
    torch.save({"model": state, "model_args": args}, file)
    with pytest.raises(CheckpointError, match=r"the \(1, 1, 1048576, 1048576\) attention") as info:
        load_checkpoint(file)
    assert "physical memory" in str(info.value) and str(file) in str(info.value)


def test_a_run_whose_attention_cannot_fit_is_refused_before_the_model_is_built(
    tmp_path, monkeypatch
):
    from test_heads_load import _model

    model = _model("sdpa", None, "interleave", True, "symmetric")
    config = {**model.config.to_dict(), "n_ctx": 4096}
    state = {k: v for k, v in model.state_dict().items() if k != "lm_head.weight"}
    state["wpe.weight"] = torch.zeros(4096, model.config.d_model)
    save_checkpoint(tmp_path / "run" / "checkpoint", config={"model": config}, model_state=state)
    monkeypatch.setenv(MEMORY_LIMIT_ENV, str(2**28))  # 256 MiB; attention needs ~0.8 GiB
    with pytest.raises(CheckpointError, match=r"the \(2, 2, 4096, 4096\) attention"):
        load_checkpoint(tmp_path / "run")


def test_memory_needed_counts_the_attention_and_the_float64_copies():
    parts = memory_needed(
        attention_kind="dot",
        num_layers=12,
        num_heads=12,
        head_dim=64,
        d_model=768,
        n_ctx=1024,
        vocab_size=50257,
        weight_bytes=0,
    )
    assert parts["the (12, 12, 1024, 1024) attention of a 1024-token sequence"] == (
        12 * 12 * 1024 * 1024 * (4 + 8) + 16 * 12 * 1024 * 1024
    )
    assert parts["float64 head weights of 12 layers"] == 8 * 12 * 2 * 768 * 768
    assert sum(parts.values()) < 4 * 2**30  # GPT-2 small fits a small machine


def test_the_loading_page_states_the_codes_limits():
    from flowgraph.models.heads.pickle_scan import EXPANSION_FACTOR, EXPANSION_SLACK
    from flowgraph.models.heads.safe_load import FLOAT_DTYPES, MAX_HEADER_BYTES

    text = " ".join((ROOT / "docs" / "heads_loading.md").read_text(encoding="utf-8").split())
    slack = EXPANSION_SLACK.bit_length() - 1
    assert EXPANSION_SLACK == 2**slack
    assert f"{EXPANSION_FACTOR} × the objects it creates + 2^{slack}" in text
    assert f"nested more than {MAX_DEPTH} deep" in text
    assert f"more than {COLLISION_LIMIT} distinct values of one hash" in text
    assert MAX_CONFIG_SIZE == 2**31 - 1 and "an int in [1, 2³¹ − 1]" in text
    assert MAX_HEADER_BYTES == 100_000_000 and "at most 100 MB" in text
    assert all(f"`{d}`" in text for d in FLOAT_DTYPES) and f"`{MEMORY_LIMIT_ENV}`" in text


@pytest.mark.parametrize("shard", ["../outside.safetensors", "/etc/x.safetensors", "model.bin"])
def test_a_shard_index_naming_other_files_is_refused(tmp_path, shard):
    directory = _bert_dir(tmp_path / "hf", weights="model-00001-of-00001.safetensors")
    index = {"weight_map": {"embeddings.word_embeddings.weight": shard}}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=re.escape(f"shard {shard!r} is not a file name")):
        load_checkpoint(directory)
