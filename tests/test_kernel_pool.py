"""Warm kernels: every notebook kernel a fresh fork of one zygote that did the heavy imports once.

Real papermill executions of a fixture notebook (a tiny Keras fit and a figure) with a warm and a cold kernel, a
kernel killed mid-cell, a second import environment, and a pool whose owner is SIGKILLed."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from nbclient.exceptions import DeadKernelError

from fungilib.kernel_launcher import POOL_ENV, SWITCH_ENV, import_signature, zygote_socket
from fungilib.kernel_pool import OWNER_FILE, active_pool, start_pool
from fungilib.kernel_zygote import notebook_imports
from fungilib.notebooks import run_notebook

HERE = Path(__file__).resolve().parent
TINY = HERE / "notebooks" / "tiny_fit.ipynb"


def _printed(executed: Path) -> tuple[dict, list[str]]:
    """What the fit cell printed, and the output types of the figure cell."""
    cells = [c for c in json.loads(executed.read_text())["cells"] if c["cell_type"] == "code"]
    fit = next(o["text"] for c in cells for o in c.get("outputs", []) if '"loss"' in "".join(o.get("text", "")))
    figure = [kind for o in cells[-1]["outputs"] for kind in o.get("data", {})]
    return json.loads("".join(fit).strip().splitlines()[-1]), figure


def test_a_warm_kernel_trains_to_the_same_bits_as_a_cold_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Forks start from the zygote's imports, never from an earlier run: two warm runs and a cold one agree bit for
    bit, and the kernel sees its own folder, path and inline figures as a cold kernel does."""
    assert start_pool() is not None  # the test session keeps a pool (conftest); this is its zygote
    warm = [run_notebook(TINY, tmp_path / f"warm{i}.ipynb", {"seed": 3}) for i in range(2)]
    monkeypatch.setenv(SWITCH_ENV, "0")
    cold = run_notebook(TINY, tmp_path / "cold.ipynb", {"seed": 3})
    assert [r.kernel for r in warm] == ["warm", "warm"] and cold.kernel == "cold"
    (w0, fig0), (w1, _), (c, figc) = (_printed(r.output) for r in (*warm, cold))
    assert w0["kernel"] == w1["kernel"] == "warm" and c["kernel"] == "cold"
    assert w0["loss"] == w1["loss"] == c["loss"] and w0["weights"] == c["weights"]
    for key in ("cwd", "path0", "argv0", "main", "rc", "signals", "umask"):
        assert w0[key] == c[key], key
    assert w0["cwd"] == str(TINY.parent)
    assert "image/png" in fig0 and "image/png" in figc


def test_a_warm_kernel_killed_mid_cell_fails_its_run_and_the_next_runs(tmp_path: Path) -> None:
    start_pool()
    with pytest.raises(DeadKernelError):  # as a cold kernel's death: the sweep records it as the run's failure
        run_notebook(TINY, tmp_path / "dies.ipynb", {"die": True}, raise_on_error=False)
    again = run_notebook(TINY, tmp_path / "after.ipynb", {"seed": 1})
    assert again.ok and _printed(again.output)[0]["kernel"] == "warm"


def test_another_import_environment_gets_its_own_zygote(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """OpenBLAS reads OMP_NUM_THREADS when NumPy is imported: a kernel that sets it is not a fork of a zygote
    without it. TF_CONFIG is read only when a strategy is made, so it shares the zygote."""
    pool = start_pool()
    assert pool is not None
    before = import_signature(os.environ)
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["127.0.0.1:1"]}, "task": {"index": 0}}))
    assert import_signature(os.environ) == before
    threads = "3" if os.environ.get("OMP_NUM_THREADS") != "3" else "5"  # a sweep test may have set it already
    monkeypatch.setenv("OMP_NUM_THREADS", threads)
    signature = import_signature(os.environ)
    assert signature != before
    run = run_notebook(TINY, tmp_path / "omp1.ipynb", {"seed": 0})
    assert run.kernel == "warm" and _printed(run.output)[0]["kernel"] == "warm"
    assert zygote_socket(pool.parent, signature).exists() and zygote_socket(pool.parent, before).exists()


def test_without_a_pool_a_notebook_run_starts_its_kernel_cold(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A single notebook run from the shell keeps no pool: its kernel is ipykernel itself (the launcher execs it)."""
    monkeypatch.delenv(POOL_ENV)
    run = run_notebook(TINY, tmp_path / "alone.ipynb", {"seed": 0})
    assert run.ok and run.kernel == "cold" and _printed(run.output)[0]["kernel"] == "cold"


def test_zygotes_end_with_the_process_that_made_the_pool(tmp_path: Path) -> None:
    """The owner SIGKILLed (no clean-up of its own): its zygote sees it go and ends; the folder left behind is
    removed by the next pool made on this machine."""
    env = {k: v for k, v in os.environ.items() if k != POOL_ENV}
    code = ("import os, sys; from fungilib.kernel_pool import start_pool; p = start_pool(); "
            "print(p, flush=True); sys.stdin.read()")
    owner = subprocess.Popen([sys.executable, "-c", code], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True)
    assert owner.stdout is not None
    socket_path = Path(owner.stdout.readline().strip())
    pool = socket_path.parent
    assert int((pool / OWNER_FILE).read_text()) == owner.pid
    zygote = next(int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and _is_zygote_of(p, socket_path))
    watch = os.pidfd_open(zygote)
    owner.send_signal(signal.SIGKILL)
    owner.wait()
    assert select.select([watch], [], [], 30)[0], "the zygote outlived its owner"
    os.close(watch)
    assert not socket_path.exists()
    subprocess.run([sys.executable, "-c", "from fungilib.kernel_pool import _remove_stale_pools as r; r()"],
                   env=env, check=True)
    assert not pool.exists()


def _is_zygote_of(proc: Path, socket_path: Path) -> bool:
    try:
        return str(socket_path) in (proc / "cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False


def test_the_zygote_preloads_what_the_stage_notebooks_import() -> None:
    imports = notebook_imports(HERE.parent / "notebooks")
    assert {"fungilib.artifacts.trained_run", "fungilib.stages", "pandas"} <= set(imports)
    assert "IPython.display" in imports and len(imports) == len(set(imports))


def test_the_session_keeps_one_pool() -> None:
    pool = active_pool()
    assert pool is not None and os.environ[POOL_ENV] == str(pool)


def test_a_killed_zygote_is_started_again(tmp_path: Path) -> None:
    """Its socket left behind answers nobody: the next run starts a new zygote rather than going cold unawares."""
    path = start_pool()
    assert path is not None
    zygote = next(int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and _is_zygote_of(p, path))
    watch = os.pidfd_open(zygote)
    os.kill(zygote, signal.SIGKILL)
    assert select.select([watch], [], [], 30)[0]
    os.close(watch)
    assert path.exists()  # SIGKILL: no clean-up
    run = run_notebook(TINY, tmp_path / "after.ipynb", {"seed": 0})
    assert run.kernel == "warm" and _printed(run.output)[0]["kernel"] == "warm"
