"""The offline web classifier in an export bundle, and TF.js run in Node for the export's parity check.

The page lives in ``web/`` (static files, no build step); the bundle gets a copy, ``tf.min.js`` from the
pinned npm package ``@tensorflow/tfjs`` (installed by ``make setup``), ``config.json`` and a service worker
whose version and file list are filled in here, so a new export replaces the old offline copy.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from fungilib.artifacts.bundle import CONFIG, INDEX_PAGE, LABELS, PREPROCESSING, SERVICE_WORKER
from fungilib.errors import FungilibError
from fungilib.fsutil import PROJECT_ROOT, write_json

WEB_DIR = PROJECT_ROOT / "web"
NODE_PREDICT = Path(__file__).resolve().parent / "js" / "tfjs_predict.cjs"
WEB_FILES = (INDEX_PAGE, "tf-globals.js", "app.js", "runtime.js", "preprocess.js", "prepare.js", "rollup.js",
             "place_prior.js", "exif.js", "journal.js", "style.css", "manifest.webmanifest", "icon.svg")
TFJS_PACKAGE = "@tensorflow/tfjs"
LITERT_PACKAGE = "@litertjs/core"
# LiteRT.js builds the page may load (the loader picks one by the browser's features); JSPI (WebNN, partial
# WebGPU) is not used. Only the one a browser fetches is kept offline by the service worker.
LITERT_WASM = ("litert_wasm_internal", "litert_wasm_threaded_internal", "litert_wasm_compat_internal")


def node_modules() -> Path:
    """The ``node_modules`` folder that holds ``@tensorflow/tfjs`` (``FUNGILIB_NODE_MODULES`` overrides)."""
    candidates = [Path(os.environ["FUNGILIB_NODE_MODULES"])] if os.environ.get("FUNGILIB_NODE_MODULES") else []
    candidates += [folder / "node_modules" for folder in (Path.cwd(), *Path.cwd().parents, PROJECT_ROOT)]
    for candidate in candidates:
        if (candidate / TFJS_PACKAGE / "dist" / "tf.min.js").is_file():
            return candidate
    raise FungilibError(f"{TFJS_PACKAGE} is not installed (no node_modules/{TFJS_PACKAGE}); run `make setup`, "
                        "which runs `npm ci` in the project root")


def node_executable() -> str:
    node = shutil.which("node")
    if node is None:
        raise FungilibError("Node.js (`node`) is not on PATH; it runs the TF.js parity check — install Node.js 20+")
    return node


def tfjs_predict_node(model_dir: Path, images: np.ndarray, timeout: float = 600) -> tuple[np.ndarray, float]:
    """Probabilities of a TF.js graph model on ``images`` (N×H×W×3, [0, 255]) in Node, and ms per image."""
    n, h, w, _ = images.shape
    with tempfile.TemporaryDirectory(prefix="fungilib-tfjs-") as tmp:
        pixels = Path(tmp) / "images.f32"
        out = Path(tmp) / "out.json"
        images.astype("<f4").tofile(pixels)
        env = {**os.environ, "NODE_PATH": str(node_modules())}
        cmd = [node_executable(), str(NODE_PREDICT), str(model_dir), str(pixels), str(n), str(h), str(w), str(out)]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0 or not out.exists():
            lines = [line for line in done.stderr.splitlines() if line.startswith("tfjs_predict")] or ["(no output)"]
            raise FungilibError(f"TF.js in Node failed on {model_dir}: {lines[-1]}")
        result = json.loads(out.read_text())
    return np.asarray(result["probabilities"], dtype=np.float32), float(result["ms_per_image"])


def _digest(paths: list[Path]) -> str:
    sha = hashlib.sha256()
    for path in paths:
        sha.update(path.name.encode())
        sha.update(path.read_bytes())
    return sha.hexdigest()[:16]


def copy_litert(folder: Path) -> list[str]:
    """LiteRT.js into ``folder``: its module (its one bare import pointed at the copy beside it, so the page needs
    no import map) and its WebAssembly builds. Returns the bundle-relative module files the page always loads."""
    package = node_modules() / LITERT_PACKAGE
    if not (package / "dist" / "index.js").is_file():
        raise FungilibError(f"{package} is missing: run `make setup` (npm ci installs LiteRT.js for the page)")
    (folder / "wasm").mkdir(parents=True, exist_ok=True)
    module = (package / "dist" / "index.js").read_text(encoding="utf-8")
    bare = 'from "@litertjs/wasm-utils"'
    if bare not in module:
        raise FungilibError(f"{package}/dist/index.js no longer imports @litertjs/wasm-utils as expected; "
                            "check the pinned version in package.json")
    (folder / "litert.js").write_text(module.replace(bare, 'from "./wasm-utils.js"').replace(
        "//# sourceMappingURL=index.js.map", ""), encoding="utf-8")
    utils = (node_modules() / "@litertjs" / "wasm-utils" / "dist" / "index.js").read_text(encoding="utf-8")
    (folder / "wasm-utils.js").write_text(utils.replace("//# sourceMappingURL=index.js.map", ""), encoding="utf-8")
    for name in LITERT_WASM:
        for suffix in (".js", ".wasm"):
            shutil.copyfile(package / "wasm" / f"{name}{suffix}", folder / "wasm" / f"{name}{suffix}")
    return ["litert/litert.js", "litert/wasm-utils.js"]


def write_web_app(bundle: Path, config: dict, model_files: list[str]) -> list[str]:
    """Copy the page and ``tf.min.js`` into ``bundle``, write ``config.json`` and the service worker.

    ``model_files`` are the bundle-relative files of the model the page loads; the service worker caches them
    with the page. Returns the precached file list.
    """
    if not (WEB_DIR / INDEX_PAGE).is_file():
        raise FungilibError(f"the web page sources are missing ({WEB_DIR}); fungilib must run from its checkout")
    for name in WEB_FILES:
        shutil.copyfile(WEB_DIR / name, bundle / name)
    shutil.copyfile(node_modules() / TFJS_PACKAGE / "dist" / "tf.min.js", bundle / "tf.min.js")
    runtime = copy_litert(bundle / "litert")
    write_json(bundle / CONFIG, config)
    # the TF.js fallback (tf.min.js, its model) is not precached: a browser that needs it keeps what it fetched
    precache = ["./", *[name for name in WEB_FILES if name != "tf-globals.js"], *runtime, CONFIG, LABELS,
                PREPROCESSING, *model_files]
    _write_worker(bundle, precache)
    return precache


def _write_worker(bundle: Path, precache: list[str]) -> None:
    """``sw.js`` from the template: the precached files and a version that changes whenever one of them does."""
    version = _digest([bundle / name for name in precache[1:]])
    template = (WEB_DIR / SERVICE_WORKER).read_text()
    worker = template.replace('"__BUNDLE_VERSION__"', json.dumps(version))
    (bundle / SERVICE_WORKER).write_text(worker.replace("__PRECACHE_FILES__", json.dumps(precache)))


def refresh_worker(bundle: Path) -> None:
    """Give the bundle's service worker a new version after files it precaches changed (``config.json`` when a model
    is added): a page that has the old one installs the new worker, whose cache then holds the new files."""
    worker = (bundle / SERVICE_WORKER).read_text()
    _write_worker(bundle, json.loads(worker.split("const FILES = ", 1)[1].split(";", 1)[0]))
