"""The wheel as a user gets it: built from the repository's files, installed without ``-e`` into a
fresh virtual environment, and used from a working folder that holds its own ``models/``,
``app/`` and ``gpu/`` packages (most ML repositories have a ``models/``).

Only one import name, ``flowgraph``, may land in site-packages; the layers are its subpackages
``flowgraph.gpu``, ``flowgraph.models`` and ``flowgraph.app`` (docs/packaging.md). The fresh
environment borrows this environment's third-party packages through a ``.pth`` line, so the test
needs no network; ``.pth`` files inside the borrowed folder are not run, so this checkout's
editable install stays out of it.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import time
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tomllib
from browser import CHROMIUM_ARGS, STEP_TIMEOUT_MS, free_port, require_browser, stop_process

import flowgraph as fg

ROOT = Path(__file__).resolve().parents[1]
# repository folder → the import name it is installed under
LAYERS = {"flowgraph": "flowgraph", "gpu": "flowgraph.gpu", "models": "flowgraph.models",
          "app": "flowgraph.app"}  # fmt: skip
USER_PACKAGES = ("models", "app", "gpu")


def _repo_files() -> list[str]:
    """The files a clean clone would have (tracked, plus new ones git does not ignore)."""
    out = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return [line for line in out.splitlines() if (ROOT / line).is_file()]


def _installed_path(repo_path: str) -> str | None:
    """Where a repository file lands in the wheel (None: not part of the package)."""
    folder, _, rest = repo_path.partition("/")
    if folder not in LAYERS or not rest:
        return None
    return "/".join([*LAYERS[folder].split("."), rest])


def test_every_package_folder_is_listed_in_pyproject():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    listed = set(config["tool"]["setuptools"]["packages"])
    found = {
        ".".join([LAYERS[folder], *init.parent.relative_to(ROOT / folder).parts])
        for folder in LAYERS
        for init in (ROOT / folder).rglob("__init__.py")
        if "__pycache__" not in init.parts
    }
    assert found == listed
    assert config["tool"]["setuptools"]["package-dir"] == {v: k for k, v in LAYERS.items()}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """``pip wheel`` of a copy of the repository's files (no build/ or egg-info left in it)."""
    src = tmp_path_factory.mktemp("src")
    for name in _repo_files():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, src / name)
    out = tmp_path_factory.mktemp("dist")
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet",
           "-w", str(out), str(src)]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    (found,) = out.glob("flowgraph-*.whl")
    return found


def test_the_wheel_holds_one_import_name_and_every_file(wheel: Path):
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        meta = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        entry_points = zf.read(meta).decode()
        top_level = zf.read(meta.replace("entry_points.txt", "top_level.txt")).decode().split()
    assert {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")} \
        == {"flowgraph"}  # fmt: skip
    assert top_level == ["flowgraph"]
    assert "flowgraph = flowgraph.app.cli:main" in entry_points
    wanted = {
        installed
        for name in _repo_files()
        if (installed := _installed_path(name)) is not None and "__pycache__" not in name
    }
    assert {"flowgraph/app/dashboard/assets/upload.js", "flowgraph/gpu/kernels/tile_common.cuh"} \
        <= wanted  # fmt: skip
    assert wanted - names == set(), "files of the repository missing from the wheel"


@pytest.fixture(scope="module")
def fresh(tmp_path_factory, wheel: Path) -> dict[str, Path]:
    """A new venv with the wheel installed (not editable), and a user's working folder."""
    root = tmp_path_factory.mktemp("fresh")
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()
    )  # fmt: skip
    # this environment's third-party packages, after the venv's own (where the wheel goes)
    (site / "zz_borrowed.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    install = [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
               "--no-index", "--quiet", str(wheel)]  # fmt: skip
    done = subprocess.run(install, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr

    work = root / "work"
    markers = root / "markers"
    markers.mkdir()
    for name in USER_PACKAGES:  # the user's own packages record it when they are imported
        (work / name).mkdir(parents=True)
        (work / name / "__init__.py").write_text(
            f"import os, pathlib\npathlib.Path(os.environ['MARKERS'], {name!r}).touch()\n"
            f"WHOSE = 'user'\n"
        )
    return {"venv": venv, "python": python, "site": site, "work": work, "markers": markers}


def _env(fresh: dict[str, Path]) -> dict[str, str]:
    # the working folder on sys.path, as in a notebook or script started there
    return {**os.environ, "PYTHONPATH": str(fresh["work"]), "MARKERS": str(fresh["markers"]),
            "OMP_NUM_THREADS": "1"}  # fmt: skip


def _run(fresh: dict[str, Path], *cmd: str) -> subprocess.CompletedProcess[str]:
    for marker in fresh["markers"].iterdir():  # each command is judged on its own imports
        marker.unlink()
    return subprocess.run(
        list(cmd), cwd=fresh["work"], env=_env(fresh), capture_output=True, text=True, timeout=600
    )


def _no_user_package_was_imported(fresh: dict[str, Path]) -> None:
    assert sorted(p.name for p in fresh["markers"].iterdir()) == []


API = """
import flowgraph as fg, torch
from flowgraph import gpu, models
from flowgraph.gpu import kernels
from flowgraph.models import EntityMemory, PartiallyFrozenEmbedding, load_checkpoint
from flowgraph.app.dashboard import create_app
import flowgraph.app.cli
assert fg.__file__.startswith({site!r}), fg.__file__
assert gpu.__file__.startswith({site!r}) and flowgraph.app.cli.__file__.startswith({site!r})
assert not fg.check(fg.fixed(64)).full_information
mask = gpu.SparseMask.from_pattern(fg.strided(64, stride=8), block=16)
q = torch.randn(1, 2, 64, 8, dtype=torch.float64)
out = gpu.sparse_attention(q, q, q, mask)
assert out.shape == q.shape and torch.isfinite(out).all()
for name in kernels.NAME_EXPRESSIONS:  # every kernel source and the headers it includes
    for header in __import__("re").findall(r'#include "([^"]+)"', kernels.source(name)):
        assert (kernels.KERNELS / header).is_file(), header
print("api ok")
"""


def test_the_apis_import_from_the_wheel_beside_user_packages(fresh):
    done = _run(fresh, str(fresh["python"]), "-c", API.format(site=str(fresh["site"])))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "api ok"
    _no_user_package_was_imported(fresh)


def test_the_users_own_packages_still_import(fresh):
    code = "import flowgraph.models, flowgraph.app.cli, models, app, gpu; print(models.WHOSE)"
    done = _run(fresh, str(fresh["python"]), "-c", code)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "user"


def test_the_console_script_checks_trains_and_reads_heads(fresh):
    flowgraph = str(fresh["venv"] / "bin" / "flowgraph")
    check = _run(fresh, flowgraph, "check", "fixed", "--n", "64")
    assert check.returncode == 1, check.stderr  # fixed loses information: exit status 1
    assert check.stdout.startswith("fixed: n=64, causal")
    train = _run(
        fresh, flowgraph, "train", "--task", "sort", "--length", "5", "--n-layer", "1",
        "--n-head", "2", "--d-model", "8", "--steps", "3", "--quiet", "--out", "runs/tiny",
    )  # fmt: skip
    assert train.returncode == 0, train.stderr
    heads = _run(fresh, flowgraph, "heads", "runs/tiny", "--ids", "1,2,0", "--out", "head.html")
    assert heads.returncode == 0, heads.stderr
    assert (fresh["work"] / "head.html").stat().st_size > 0
    _no_user_package_was_imported(fresh)


def _wait_for_page(proc: subprocess.Popen[str], url: str, log: Path) -> None:
    deadline = time.monotonic() + 180  # a hang guard: the first start imports torch and dash
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the dashboard exited:\n{log.read_text()}"
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise AssertionError(f"the dashboard did not answer on {url}:\n{log.read_text()}")


@pytest.mark.browser
def test_the_dashboard_serves_its_assets_and_takes_an_upload(fresh, tmp_path):
    chromium = require_browser()
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    log = tmp_path / "dashboard.log"
    cmd = [str(fresh["venv"] / "bin" / "flowgraph"), "dashboard", "--runs", "runs",
           "--port", str(port)]  # fmt: skip
    (fresh["work"] / "runs").mkdir(exist_ok=True)
    for marker in fresh["markers"].iterdir():
        marker.unlink()
    with open(log, "w", encoding="utf-8") as out:
        proc = subprocess.Popen(cmd, cwd=fresh["work"], env=_env(fresh), stdout=out, stderr=out)
    try:
        _wait_for_page(proc, url, log)
        with urllib.request.urlopen(url, timeout=30) as response:
            html = response.read().decode()
        assets = re.findall(r'src="(/assets/[^"?]+)', html)
        assert any(a.endswith("upload.js") for a in assets), assets
        for asset in assets:
            with urllib.request.urlopen(url.rstrip("/") + asset, timeout=30) as response:
                assert response.status == 200 and response.read(), asset

        from playwright.sync_api import sync_playwright

        masks = np.stack([fg.fixed(16, stride=4).dense(s) for s in range(2)])
        upload = tmp_path / "my_masks.npz"
        buffer = io.BytesIO()
        np.savez(buffer, masks=masks)
        upload.write_bytes(buffer.getvalue())
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
            page = browser.new_page()
            page.set_default_timeout(STEP_TIMEOUT_MS)
            page.goto(url)
            page.set_input_files("#patterns-upload input[type=file]", str(upload))
            page.get_by_text("loaded my_masks.npz").wait_for()
            page.wait_for_function(
                "() => document.querySelector('#patterns-verdict').innerText.startsWith('my_masks')"
            )
            browser.close()
    finally:
        stop_process(proc)
    _no_user_package_was_imported(fresh)
