"""The dashboard's callbacks hit over HTTP, not through the page: ``/_dash-update-component``
gets the JSON the page sends and the JSON it never would — paths that leave the roots in every
path input, huge and odd numbers, wrong types for every input of every callback, malformed and
oversized bodies, and 200 requests at once on a real server.

The server must answer each in bounded time with a 4xx or a message in the page — never a 500,
an "internal error" or a traceback in its log — and never read outside its roots: a real
checkpoint and real vectors are planted outside, reachable by symlinks from inside, and every
file the server opens while these requests run is watched (a Python audit hook) beside every
path its loaders are given.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import shutil
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from browser import make_tiny_vectors, serve_dashboard_process, shared_tiny_runs
from dash.development.base_component import Component

from flowgraph.app.dashboard import create_app, limits
from flowgraph.app.dashboard.app import MAX_REQUEST_BYTES, PAGES
from flowgraph.app.dashboard.state import STATE_KEY, Prefetcher
from flowgraph.app.dashboard.wire import DASH_INPUTS, UPDATE_PATH

pytestmark = pytest.mark.usefixtures("one_torch_thread")

HANG_S = 60  # a request that takes longer hangs (generous: a busy 2-core machine)
CONCURRENT = 200
CLIENTS = 24  # the bounded pool of clients sending them
RSS_GROWTH_LIMIT = 512 * 2**20  # generous: the caches are bounded far below this


# --- set-up: roots with traps outside them ------------------------------------------------------
@pytest.fixture(scope="module")
def roots(tmp_path_factory) -> dict[str, Path]:
    """runs/ and vectors/ roots (copies of the tiny runs), a real checkpoint and real vectors
    outside them, and symlinks inside both roots that point outside."""
    base = tmp_path_factory.mktemp("http")
    runs, vectors, outside = base / "runs", base / "vectors", base / "outside"
    shutil.copytree(shared_tiny_runs(tmp_path_factory), runs, ignore=shutil.ignore_patterns(".*"))
    make_tiny_vectors(vectors)
    shutil.copytree(runs / "tiny-sdpa", outside / "secret-run")
    make_tiny_vectors(outside)  # outside/tiny-w2v
    (runs / "link-out").symlink_to(outside, target_is_directory=True)
    (vectors / "link-out").symlink_to(outside, target_is_directory=True)
    return {"runs": runs, "vectors": vectors, "outside": outside}


class OpenWatch:
    """Records the files opened (``open`` audit events) and the paths given to the loaders
    while :attr:`active`. An audit hook cannot be removed, so it stays installed, idle."""

    def __init__(self) -> None:
        self.active = False
        self.opened: list[str] = []
        self.lock = threading.Lock()
        sys.addaudithook(self._hook)

    def _hook(self, event: str, args: tuple[Any, ...]) -> None:
        if self.active and event == "open" and isinstance(args[0], (str, bytes, Path)):
            with self.lock:
                self.opened.append(str(args[0]))

    def record(self, path: object) -> None:
        with self.lock:
            self.opened.append(str(path))

    def under(self, folder: Path) -> list[str]:
        real = str(folder.resolve())
        return [p for p in self.opened if str(Path(p).resolve()).startswith(real)]


@pytest.fixture(scope="module")
def watch(roots) -> OpenWatch:
    return OpenWatch()


@pytest.fixture(scope="module")
def app(roots, watch):
    """The app over the roots; its loaders report the paths they are given to ``watch``."""
    from flowgraph.models import heads as model_heads
    from flowgraph.models import word2vec

    load_checkpoint, load_vectors = model_heads.load_checkpoint, word2vec.WordVectors.load

    def watched_checkpoint(path: Any, *args: Any, **kwargs: Any) -> Any:
        watch.record(path)
        return load_checkpoint(path, *args, **kwargs)

    def watched_vectors(path: Any, *args: Any, **kwargs: Any) -> Any:
        watch.record(path)
        return load_vectors(path, *args, **kwargs)

    patch = pytest.MonkeyPatch()
    patch.setattr(model_heads, "load_checkpoint", watched_checkpoint)
    patch.setattr(word2vec.WordVectors, "load", staticmethod(watched_vectors))
    dash_app = create_app(roots["runs"], [], roots["vectors"])
    dash_app.server.test_client().get("/")  # the first request sets the callbacks up
    yield dash_app
    patch.undo()


@pytest.fixture
def client(app, watch, roots, caplog):
    """A test client; afterwards nothing was read outside the roots and no callback failed
    with an internal error (logged at ERROR by the pages' guard, or by Flask for a 500)."""
    watch.active = True
    caplog.set_level(logging.WARNING)
    yield app.server.test_client()
    watch.active = False
    assert watch.under(roots["outside"]) == [], "the server opened files outside its roots"
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [], [r.getMessage() for r in errors]


# --- requests as the page sends them ----------------------------------------------------------
def _layout_values(app) -> dict[str, Any]:
    """``id.prop`` → the value each page's layout starts with, for every component with an id."""
    values: dict[str, Any] = {}

    def walk(node: Any) -> None:
        if isinstance(node, (list, tuple)):
            for child in node:
                walk(child)
            return
        if not isinstance(node, Component):
            return
        props = node.to_plotly_json()["props"]
        if isinstance(props.get("id"), str):
            for prop, value in props.items():
                values[f"{props['id']}.{prop}"] = value
        for value in props.values():
            walk(value)

    with app.server.test_request_context("/"):
        for page in PAGES:
            walk(page.layout())
    return values


def _body(app, output: str, values: dict[str, Any]) -> dict[str, Any]:
    """The body the page posts for the callback whose outputs include ``output`` (``id.prop``),
    every input and state taken from ``values`` (``id.prop`` → value; None when absent)."""
    key = next(k for k in app.callback_map if f"..{output}.." in k)
    spec = app.callback_map[key]

    def props(items: list[dict[str, str]]) -> list[dict[str, Any]]:
        return [
            {**i, "value": values.get(f"{i['id']}.{i['property']}")}
            for i in ({"id": x["id"], "property": x["property"]} for x in items)
        ]

    outputs = [
        dict(zip(("id", "property"), p.rsplit(".", 1), strict=True))
        for p in key.strip(".").split("...")
    ]
    inputs = props(spec["inputs"])
    return {
        "output": key,
        "outputs": outputs,
        "inputs": inputs,
        "state": props(spec["state"]),
        "changedPropIds": [f"{inputs[0]['id']}.{inputs[0]['property']}"],
    }


def _bounded(call: Callable[[], Any], seconds: float = HANG_S) -> Any:
    """``call()``'s result, failing the test if it has not returned after ``seconds``."""
    out: list[Any] = []
    thread = threading.Thread(target=lambda: out.append(call()), daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"a request did not return within {seconds} s"
    return out[0]


def _post(
    client, body: object = None, *, raw: bytes | None = None, ctype: str = "application/json"
):
    if raw is None:
        raw = json.dumps(body).encode()
    return _bounded(lambda: client.post(UPDATE_PATH, data=raw, content_type=ctype))


def _shown(response) -> str:
    """The answer as text, after checking it is a callback answer and no traceback."""
    assert response.status_code == 200, (response.status_code, response.data[:300])
    text = response.data.decode()
    assert "Traceback" not in text and 'File \\"' not in text
    assert "internal error" not in text, text[:300]
    return text


@pytest.fixture(scope="module")
def defaults(app, roots) -> dict[str, Any]:
    values = _layout_values(app)
    values["heads-open.n_clicks"] = 1
    values["heads-path.value"] = "tiny-sdpa"
    values["patterns-compare-n.value"] = 16  # the comparison of nine patterns: kept cheap
    return values


# --- paths ------------------------------------------------------------------------------------
TRAVERSALS = [
    "../",
    "../../../../../../etc/passwd",
    "/etc/passwd",
    "/",
    "tiny-sdpa/../../outside/secret-run",
    "link-out/secret-run",  # a symlink inside the root, to a real checkpoint outside
    "link-out/tiny-w2v",
    "link-out",
    "./link-out/../link-out/secret-run",
    "%2e%2e%2f%2e%2e%2fetc%2fpasswd",  # URL-encoded: a name, never decoded
    "..%2F..%2Foutside%2Fsecret-run",
    "tiny-sdpa\x00/../../outside",
    "a" * (limits.MAX_PATH_CHARS + 1),
    "a/" * 2000,
    "~",
    "~/.ssh/id_rsa",
    "\\..\\..\\etc\\passwd",
    "tiny-sdpa/checkpoint/config.json/../../../../outside/secret-run",
]
REFUSED = ("outside the dashboard's roots", "was not found", "NUL bytes", "the limit is")


def _path_inputs(roots: dict[str, Path], text: str) -> list[tuple[str, dict[str, Any], str]]:
    """(output to ask for, the inputs to change, where the refusal shows) for each path input."""
    absolute = [str(roots["outside"] / "secret-run"), str(roots["outside"] / "tiny-w2v")]
    sources = [f"{kind}:{t}" for kind in ("tok", "pos", "w2v") for t in [text, *absolute]]
    cases = [
        ("heads-symmetry.children", {"heads-ckpt.value": text}, "heads-message"),
        ("heads-attention.figure", {"heads-ckpt.value": text}, "heads-attention"),
        ("heads-coverage.figure", {"heads-ckpt.value": text}, "heads-coverage-message"),
        ("heads-info.children", {"heads-ckpt.value": text}, "heads-info"),
        ("heads-symmetry.children", {"heads-ckpt2.value": text}, "heads-message"),
        ("heads-coverage.figure", {"heads-ckpt2.value": text}, "heads-coverage-message"),
        ("heads-path-message.children", {"heads-path.value": text}, "heads-path-message"),
    ]
    cases += [("embeddings-pca.figure", {"embeddings-source.value": s}, "") for s in sources]
    cases += [("heads-path-message.children", {"heads-path.value": a}, "") for a in absolute]
    return cases


@pytest.mark.parametrize("text", TRAVERSALS)
def test_paths_never_leave_the_roots(app, client, defaults, roots, text):
    for output, change, _ in _path_inputs(roots, text):
        answer = _shown(_post(client, _body(app, output, {**defaults, **change})))
        if output == "heads-attention.figure":  # its message is the other half's
            assert "correct the input" in answer or "computing" in answer, answer[:200]
            continue
        assert any(r in answer for r in REFUSED), (output, change, answer[:300])
    state = app.server.config[STATE_KEY]
    for cache in (state.checkpoints, state.vectors):
        for key in list(cache._data):
            assert Path(key).is_relative_to(roots["runs"].resolve()) or Path(key).is_relative_to(
                roots["vectors"].resolve()
            ), key


def test_a_path_inside_the_roots_opens(app, client, defaults):
    # the oracle that the refusals above are not refusing everything
    shown = _shown(_post(client, _body(app, "heads-path-message.children", defaults)))
    assert "opened tiny-sdpa" in shown
    body = _body(
        app, "embeddings-pca.figure", {**defaults, "embeddings-source.value": "w2v:tiny-w2v"}
    )
    assert "40 vectors of dimension 8" in _shown(_post(client, body))


def test_the_watch_sees_the_files_read(app, watch, roots):
    # the oracle of "never read outside the roots" must see a read when there is one
    secret = roots["outside"] / "secret-run" / "checkpoint" / "config.json"
    watch.active = True
    try:
        secret.read_text()
        app.server.config[STATE_KEY].checkpoints._data.clear()  # the next open loads again
        client = app.server.test_client()
        values = {**_layout_values(app), "heads-open.n_clicks": 1, "heads-path.value": "tiny-sdpa"}
        assert "opened" in _shown(_post(client, _body(app, "heads-path-message.children", values)))
    finally:
        watch.active = False
    assert watch.under(roots["outside"]) == [str(secret)]
    assert watch.under(roots["runs"] / "tiny-sdpa")  # the loader was handed the checkpoint
    with watch.lock:
        watch.opened.clear()


def test_open_by_path_keeps_no_forged_options(app, client, defaults, roots):
    # the page sends the dropdown's options back; a forged list was echoed into both dropdowns
    # (or failed as "string indices must be integers")
    forged = [
        "junk",
        5,
        {"label": 1},
        {"label": "secret", "value": str(roots["outside"] / "secret-run")},
        {"label": "x", "value": "../../etc"},
    ]
    for options in (forged, 5, "x", None):
        values = {**defaults, "heads-ckpt.options": options}
        answer = json.loads(
            _shown(_post(client, _body(app, "heads-path-message.children", values)))
        )
        shown = answer["response"]["heads-ckpt"]["options"]
        listed = app.server.config[STATE_KEY].checkpoint_options()
        assert shown == listed and answer["response"]["heads-ckpt2"]["options"] == listed


# --- numbers ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "n",
    [
        10**9,
        10**30,
        -1,
        0,
        1,
        2.5,
        float("nan"),
        float("inf"),
        "abc",
        "1e9",
        "9" * 5000,
        True,
        [64],
        {"n": 64},
    ],
    ids=repr,
)
def test_odd_n_for_the_patterns_page_is_a_message(app, client, defaults, n):
    for output in ("patterns-verdict.children", "patterns-compare.children"):
        key = (
            "patterns-n.value"
            if output.startswith("patterns-verdict")
            else "patterns-compare-n.value"
        )
        answer = _shown(_post(client, _body(app, output, {**defaults, key: n})))
        assert "n must be" in answer or "n is required" in answer, answer[:300]


def test_a_huge_integer_in_the_json_is_a_400(app, client, defaults):
    raw = json.dumps(_body(app, "patterns-verdict.children", defaults)).replace(
        '"value": 64', '"value": ' + "9" * 5000, 1
    )
    response = _post(client, raw=raw.encode())
    assert response.status_code == 400 and "not valid JSON" in response.get_json()["error"]


JUNK = [[], {}, [1, "x"], {"a": [1]}, 10**30, -1, 1.5, True, "x" * 10_000, "\x00", None]


def test_wrong_types_for_every_input_of_every_callback(app, client, defaults):
    # every input and state of every callback, each junk value in turn, the rest as the page
    # starts: the pages answer with a message (or a value the control could hold), never an
    # internal error; Dash's own page router checks no types, so its junk is refused (400)
    for key, spec in app.callback_map.items():
        if "callback" not in spec:
            continue  # a clientside callback: runs in the browser (see the malformed bodies)
        output = key.strip(".").split("...")[0]
        for item in spec["inputs"] + spec["state"]:
            prop = f"{item['id']}.{item['property']}"
            for junk in JUNK:
                answer = _post(client, _body(app, output, {**defaults, prop: junk}))
                if prop in DASH_INPUTS and not DASH_INPUTS[prop][1](junk):
                    assert answer.status_code == 400, (prop, junk, answer.data[:200])
                    assert prop in answer.get_json()["error"]
                    continue
                _shown(answer)
                assert isinstance(answer.get_json()["response"], dict), (prop, junk)


def test_a_checkpoint_switch_leaves_valid_radio_values_alone(app, client, defaults):
    # the lost click: the answer wrote back the values it had read when it left
    values = {**defaults, "heads-ckpt.value": "tiny-sdpa", "heads-layer.value": 1}
    shown = json.loads(_shown(_post(client, _body(app, "heads-info.children", values))))["response"]
    assert "value" not in shown["heads-layer"] and "value" not in shown["heads-head"]
    assert shown["heads-space"]["value"] == "model"  # dot-product heads: model space only
    values["heads-layer.value"] = 7  # not a layer of the new checkpoint: reset
    shown = json.loads(_shown(_post(client, _body(app, "heads-info.children", values))))["response"]
    assert shown["heads-layer"]["value"] == 0


def test_a_pattern_switch_leaves_a_valid_direction_alone(app, client, defaults):
    # the same write-back on the Patterns page: a direction clicked while the answer to a
    # pattern change was on its way was undone
    for name, direction, expected in (
        ("strided", "bidirectional", None),
        ("strided", "causal", None),
        ("ltr", "causal", "bidirectional"),  # bidirectional only: the causal choice is locked
        ("strided", ["x"], "causal"),
    ):
        values = {**defaults, "patterns-name.value": name, "patterns-direction.value": direction}
        body = _body(app, "patterns-direction.value", values)
        shown = json.loads(_shown(_post(client, body)))["response"]["patterns-direction"]
        assert shown.get("value") == expected, (name, direction, shown)


# --- malformed bodies ---------------------------------------------------------------------------
def _malformed(app, defaults) -> list[tuple[str, bytes]]:
    good = _body(app, "patterns-verdict.children", defaults)

    def without(field: str) -> bytes:
        return json.dumps({k: v for k, v in good.items() if k != field}).encode()

    def changed(**fields: Any) -> bytes:
        return json.dumps({**good, **fields}).encode()

    return [
        ("not JSON", b"{not json"),
        ("empty", b""),
        ("a list", b"[1, 2]"),
        ("a string", b'"x"'),
        ("null", b"null"),
        ("invalid UTF-8", b'{"output": "\xff\xfe"}'),
        ("nested 100k deep", b"[" * 100_000 + b"]" * 100_000),
        ("no output", without("output")),
        ("no outputs", without("outputs")),
        ("no inputs", without("inputs")),
        (
            "no state (the callback has state)",
            json.dumps({**_body(app, "heads-info.children", defaults), "state": None}).encode(),
        ),
        ("unknown output", changed(output="..nope.children..")),
        ("a clientside callback", changed(output="_pages_dummy.children")),
        ("output a number", changed(output=5)),
        ("outputs a number", changed(outputs=5)),
        ("an output missing", changed(outputs=good["outputs"][:-1])),
        ("inputs a string", changed(inputs="x")),
        ("an input too few", changed(inputs=good["inputs"][:-1])),
        ("an input too many", changed(inputs=[*good["inputs"], good["inputs"][0]])),
        ("inputs out of order", changed(inputs=good["inputs"][::-1])),
        ("an input without its id", changed(inputs=[{"property": "value"}, *good["inputs"][1:]])),
        ("changedPropIds a number", changed(changedPropIds=5)),
        ("changedPropIds naming an output", changed(changedPropIds=["patterns-verdict.children"])),
    ]


def test_malformed_bodies_are_a_400_naming_what_is_wrong(app, client, defaults, caplog):
    for what, raw in _malformed(app, defaults):
        response = _post(client, raw=raw)
        assert response.status_code == 400, (what, response.status_code, response.data[:200])
        error = response.get_json()["error"]
        assert error and "Traceback" not in error, what
    # what the page sends still works; a body that is not JSON at all is Flask's 415
    assert "NOT full information" in _shown(
        _post(client, _body(app, "patterns-verdict.children", defaults))
    )
    assert _post(client, raw=b"a=b", ctype="application/x-www-form-urlencoded").status_code == 415
    assert _post(client, raw=b"{}", ctype="text/plain").status_code == 415


def _upload_url(data: bytes) -> str:
    return "data:application/octet-stream;base64," + base64.b64encode(data).decode()


def test_oversized_bodies_are_refused_and_the_largest_real_one_fits(app, client, defaults):
    response = _post(client, raw=b"[" + b"0," * (MAX_REQUEST_BYTES // 2) + b"0]")
    assert response.status_code == 413
    # an upload at the cap (4 MiB of masks as base64) is the largest request the page makes
    masks = np.zeros((1, 1024, 1024), dtype=np.uint8)
    masks[0] = np.tril(np.ones((1024, 1024), dtype=np.uint8))
    buffer = io.BytesIO()
    np.savez(buffer, masks=np.concatenate([masks] * 4))
    data = buffer.getvalue()[: limits.MAX_UPLOAD_BYTES]
    assert len(data) > limits.MAX_UPLOAD_BYTES - 2**12
    values = {
        **defaults,
        "patterns-upload.contents": _upload_url(data),
        "patterns-upload.filename": "big.npz",
    }
    assert len(json.dumps(_body(app, "patterns-upload-key.data", values))) < MAX_REQUEST_BYTES
    shown = _shown(_post(client, _body(app, "patterns-upload-key.data", values)))
    assert "not an .npz" in shown or "loaded big.npz" in shown  # cut short: a message
    values["patterns-upload.contents"] = _upload_url(b"\0" * (limits.MAX_UPLOAD_BYTES + 1))
    shown = _shown(_post(client, _body(app, "patterns-upload-key.data", values)))
    assert "the limit is" in shown


# --- the prefetch queue -----------------------------------------------------------------------
def test_the_prefetch_queue_is_bounded_and_keeps_the_newest():
    # every distinct input queued a checkpoint's heads again: a burst of requests left minutes of
    # work queued and a set of keys that only grew
    release = threading.Event()
    prefetcher = Prefetcher(max_jobs=4, max_seen=8)
    ran: list[int] = []
    prefetcher.submit("block", release.wait)  # holds the worker while the queue fills
    time.sleep(0.05)
    for i in range(20):
        assert prefetcher.submit(i, lambda i=i: ran.append(i))
    assert len(prefetcher) == 4 and prefetcher.dropped == 16 and len(prefetcher._seen) <= 8
    release.set()
    deadline = time.monotonic() + 30
    while prefetcher.done < 5 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert ran == [16, 17, 18, 19]
    assert prefetcher.submit(0, lambda: None)  # dropped unrun: may be queued again
    with pytest.raises(ValueError, match="max_jobs"):
        Prefetcher(max_jobs=0)


# --- 200 at once on a real server --------------------------------------------------------------
def _rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def _send(url: str, raw: bytes, ctype: str = "application/json") -> tuple[int, bytes]:
    request = urllib.request.Request(url + UPDATE_PATH.lstrip("/"), data=raw, method="POST")
    request.add_header("Content-Type", ctype)
    try:
        with urllib.request.urlopen(request, timeout=HANG_S) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _mixed_requests(app, defaults, roots) -> list[tuple[bytes, tuple[int, ...]]]:
    """CONCURRENT bodies, each with the statuses it may get: distinct patterns and inputs
    (new computations and prefetches), traversals, junk values, malformed and oversized
    bodies."""
    out: list[tuple[bytes, tuple[int, ...]]] = []
    malformed = _malformed(app, defaults)
    for i in range(CONCURRENT):
        kind = i % 8
        if kind == 0:
            values = {**defaults, "patterns-n.value": 16 + i}
            out.append(
                (json.dumps(_body(app, "patterns-verdict.children", values)).encode(), (200,))
            )
        elif kind == 1:
            values = {
                **defaults,
                "heads-text.value": " ".join(str((i + j) % 3) for j in range(2 + i % 9)),
            }
            out.append((json.dumps(_body(app, "heads-attention.figure", values)).encode(), (200,)))
        elif kind == 2:
            values = {**defaults, "heads-ckpt.value": TRAVERSALS[i % len(TRAVERSALS)]}
            out.append((json.dumps(_body(app, "heads-symmetry.children", values)).encode(), (200,)))
        elif kind == 3:
            values = {**defaults, "embeddings-source.value": f"w2v:link-out/tiny-w2v{i}"}
            out.append((json.dumps(_body(app, "embeddings-pca.figure", values)).encode(), (200,)))
        elif kind == 4:
            _, raw = malformed[i % len(malformed)]
            out.append((raw, (400,)))
        elif kind == 5:
            values = {**defaults, "patterns-n.value": JUNK[i % len(JUNK)]}
            out.append((json.dumps(_body(app, "patterns-reach.figure", values)).encode(), (200,)))
        elif kind == 6:
            values = {**defaults, "heads-layer.value": i % 2, "heads-head.value": (i // 2) % 2}
            out.append((json.dumps(_body(app, "heads-symmetry.children", values)).encode(), (200,)))
        else:
            out.append((b"[" + b"0," * 2**18 + b"0]", (400,)))  # 0.5 MB of JSON, then refused
    return out


def test_200_requests_at_once_on_a_real_server(app, defaults, roots, tmp_path):
    log = tmp_path / "dashboard.log"
    args = ("--runs", str(roots["runs"]), "--vectors", str(roots["vectors"]))
    with serve_dashboard_process(*args, log_path=log) as (url, proc):
        proc_pid = proc.pid
        bodies = _mixed_requests(app, defaults, roots)
        with ThreadPoolExecutor(max_workers=CLIENTS) as pool:  # warm-up: imports, first figures
            list(pool.map(lambda b: _send(url, b[0]), bodies[:40]))
        before = _rss_bytes(proc_pid)
        start = time.monotonic()
        with ThreadPoolExecutor(max_workers=CLIENTS) as pool:
            answers = list(pool.map(lambda b: _send(url, b[0]), bodies))
        took = time.monotonic() - start
        after = _rss_bytes(proc_pid)
        for (raw, allowed), (status, data) in zip(bodies, answers, strict=True):
            assert status in allowed, (status, raw[:120], data[:200])
            assert b"Traceback" not in data and b"internal error" not in data
        # still up and answering, as before the burst
        assert proc.poll() is None, "the server exited"
        with urllib.request.urlopen(url, timeout=HANG_S) as response:
            assert response.status == 200
        status, data = _send(
            url, json.dumps(_body(app, "patterns-verdict.children", defaults)).encode()
        )
        assert status == 200 and b"NOT full information" in data
        assert after - before < RSS_GROWTH_LIMIT, f"RSS grew {(after - before) / 2**20:.0f} MB"
        mb = (before / 2**20, after / 2**20)
        print(f"\n{CONCURRENT} requests in {took:.1f} s; server RSS {mb[0]:.0f} → {mb[1]:.0f} MB")
    text = log.read_text()
    assert "Traceback" not in text and "ERROR" not in text, text[-2000:]


def test_the_value_checks_name_the_control_and_what_was_expected():
    assert limits.check_choice("space", "head", ("model", "head")) == "head"
    with pytest.raises(ValueError, match=r"space must be one of model, head, got \['head'\]"):
        limits.check_choice("space", ["head"], ("model", "head"))
    assert limits.check_flags("flow", None, ("flow",)) == []
    with pytest.raises(TypeError, match="flow must be a list of flow, got 'flow'"):
        limits.check_flags("flow", "flow", ("flow",))
    with pytest.raises(ValueError, match="flow: 'x' is not one of flow"):
        limits.check_flags("flow", ["flow", "x"], ("flow",))
    assert limits.check_scalar("n", 2.5) == 2.5
    with pytest.raises(TypeError, match=r"n must be a number or text, got list \[64\]"):
        limits.check_scalar("n", [64])
