"""Stage notebooks: parameters match params/, unknown ones are refused, failures keep their executed notebook."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from fungilib.errors import FungilibError
from fungilib.notebooks import notebook_parameters, run_notebook
from fungilib.params import params_to_dict
from fungilib.stages import NOTEBOOKS_DIR, STAGES

HERE = Path(__file__).parent
NOTEBOOK_STAGES = [name for name, stage in STAGES.items() if stage.notebook]


@pytest.mark.parametrize("name", NOTEBOOK_STAGES)
def test_notebook_parameters_are_the_stage_parameters_and_defaults(name: str) -> None:
    """A notebook's parameters cell declares exactly its stage's parameters (plus its runner's), with the values
    of params/<stage>.yaml, which are also the parameter class's defaults."""
    stage = STAGES[name]
    declared = notebook_parameters(stage.notebook_path)
    fields = {f.name: f for f in dataclasses.fields(stage.params_class)}
    assert set(declared) == set(fields) | set(stage.runner_parameters), stage.notebook
    defaults = stage.defaults()
    assert defaults, f"params/{name}.yaml is missing or empty"
    for key, value in defaults.items():
        in_notebook = eval(declared[key])  # papermill reports defaults as source text
        field = fields[key]
        default = field.default if field.default is not dataclasses.MISSING else field.default_factory()
        if isinstance(value, dict):  # a parameter group: compare the keys the file sets
            in_notebook = {k: v for k, v in in_notebook.items() if k in value}
            default = {k: v for k, v in params_to_dict(default).items() if k in value}
        assert in_notebook == value, f"{stage.notebook}: {key}"
        assert default == value, f"{stage.params}: {key}"


def test_every_stage_is_found_from_its_name() -> None:
    """The registry leads to each stage's code, notebook, defaults and command in one step."""
    for stage in STAGES.values():
        assert callable(stage.entry_function) and dataclasses.is_dataclass(stage.params_class)
        assert stage.notebook is None or stage.notebook_path.is_file()
        for command in stage.commands:
            assert callable(command.entry_function)
            fields = {f.name for f in dataclasses.fields(command.params_class)}
            assert {flag.key.split(".")[0] for flag in command.flags} <= fields, command.name


def test_notebooks_are_committed_without_outputs() -> None:
    for path in NOTEBOOKS_DIR.glob("*.ipynb"):
        nb = json.loads(path.read_text())
        for cell in nb["cells"]:
            if cell["cell_type"] == "code":
                assert not cell["outputs"] and cell["execution_count"] is None, path.name
        assert any("parameters" in c.get("metadata", {}).get("tags", []) for c in nb["cells"]), path.name


def test_unknown_parameter_is_refused_before_anything_runs(tmp_path: Path) -> None:
    with pytest.raises(FungilibError, match=r"unknown parameter 'min_imags' for 01_ingest_eda.ipynb; allowed: archive"):
        run_notebook(NOTEBOOKS_DIR / "01_ingest_eda.ipynb", tmp_path / "out.ipynb", {"min_imags": [3]})
    assert not (tmp_path / "out.ipynb").exists()


def test_failed_notebook_is_kept_with_its_traceback(tmp_path: Path) -> None:
    out = tmp_path / "broken.ipynb"
    run = run_notebook(HERE / "notebooks" / "broken.ipynb", out, {"divisor": 0}, raise_on_error=False)
    assert not run.ok and run.error.startswith("ZeroDivisionError")
    text = out.read_text()
    assert "before the failure" in text and "ZeroDivisionError" in text and "never reached" not in text.split(
        "ZeroDivisionError")[-1].split('"source"')[0]
    with pytest.raises(FungilibError, match=r"broken.ipynb failed \(ZeroDivisionError.*the executed notebook is"):
        run_notebook(HERE / "notebooks" / "broken.ipynb", tmp_path / "again.ipynb", {"divisor": 0})


def test_a_kernel_that_dies_while_starting_is_started_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A kernel spec whose first launches exit at once (as a kernel that lost a port race does): run_notebook starts
    another kernel, and the notebook runs; one that never starts fails after KERNEL_START_TRIES launches."""
    import json
    import sys

    from fungilib.notebooks import KERNEL_START_TRIES

    def kernel_spec(name: str, failures: int) -> None:
        folder = tmp_path / "jupyter" / "kernels" / name
        folder.mkdir(parents=True)
        launcher = folder / "launch.py"
        launcher.write_text(
            "import os, sys, pathlib, runpy\n"
            f"count = pathlib.Path({str(folder / 'launches')!r})\n"
            "n = int(count.read_text()) + 1 if count.exists() else 1\n"
            "count.write_text(str(n))\n"
            f"if n <= {failures}:\n    sys.exit(1)\n"
            "sys.argv = ['ipykernel_launcher', *sys.argv[1:]]\n"
            "runpy.run_module('ipykernel_launcher', run_name='__main__')\n")
        (folder / "kernel.json").write_text(json.dumps({
            "argv": [sys.executable, str(launcher), "-f", "{connection_file}"], "display_name": name,
            "language": "python"}))

    kernel_spec("dies-twice", KERNEL_START_TRIES - 1)
    kernel_spec("never-starts", 99)
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    out = tmp_path / "twice.ipynb"
    run = run_notebook(HERE / "notebooks" / "broken.ipynb", out, {"divisor": 2}, kernel_name="dies-twice")
    assert run.ok and "before the failure" in out.read_text()
    assert (tmp_path / "jupyter" / "kernels" / "dies-twice" / "launches").read_text() == str(KERNEL_START_TRIES)
    with pytest.raises(RuntimeError, match="before replying to kernel_info"):
        run_notebook(HERE / "notebooks" / "broken.ipynb", tmp_path / "never.ipynb", {"divisor": 2},
                     kernel_name="never-starts")
    assert (tmp_path / "jupyter" / "kernels" / "never-starts" / "launches").read_text() == str(KERNEL_START_TRIES)
