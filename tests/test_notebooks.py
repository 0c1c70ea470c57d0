"""Stage notebooks: parameters match params/, unknown ones are refused, failures keep their executed notebook."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from fungilib.clean import CleanParams
from fungilib.demo import STAGE_NOTEBOOKS
from fungilib.download import DownloadParams
from fungilib.eda import EdaParams
from fungilib.errors import FungilibError
from fungilib.export import ExportParams
from fungilib.notebooks import NOTEBOOKS_DIR, notebook_parameters, run_notebook, stage_defaults
from fungilib.params import params_to_dict
from fungilib.train import TrainParams

HERE = Path(__file__).parent
STAGE_CLASSES = {"ingest_eda": EdaParams, "download": DownloadParams, "clean": CleanParams, "train": TrainParams,
                 "export": ExportParams}


@pytest.mark.parametrize(("stage", "notebook", "_folder"), [*STAGE_NOTEBOOKS, ("export", "05_export.ipynb", "export")])
def test_notebook_defaults_match_params_file_and_dataclass(stage: str, notebook: str, _folder: str) -> None:
    declared = notebook_parameters(NOTEBOOKS_DIR / notebook)
    defaults = stage_defaults(stage)
    assert defaults, f"params/{stage}.yaml is missing or empty"
    fields = {f.name: f for f in dataclasses.fields(STAGE_CLASSES[stage])}
    for key, value in defaults.items():
        assert key in declared, f"params/{stage}.yaml: {key} is not a parameter of {notebook}"
        assert eval(declared[key]) == value, key  # papermill reports defaults as source text
        field = fields[key]
        default = field.default if field.default is not dataclasses.MISSING else field.default_factory()
        if dataclasses.is_dataclass(default):  # a parameter group: compare the keys the file sets
            default = {k: v for k, v in params_to_dict(default).items() if k in value}
        assert default == value, key


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
