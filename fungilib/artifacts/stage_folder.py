"""Which folders a stage may write into: a new or empty one, one holding only a run's own record (the executed
notebook, status.json, params.yaml, a claim), or one holding this stage's own earlier output (recognised by the
marker every stage leaves, or by its main file). Anything else is the user's, and is never written over."""

from __future__ import annotations

import json
from pathlib import Path

from fungilib.artifacts.dataset import MANIFEST_FILE
from fungilib.artifacts.downloads import DOWNLOAD_CLAIM, DOWNLOADS_FILE, LOG_FILE
from fungilib.artifacts.observations import EDA_SUMMARY, OBSERVATIONS_FILE
from fungilib.artifacts.run_record import PARAMS_FILE, STATUS_FILE
from fungilib.artifacts.trained_run import BACKUP_DIR, HISTORY, MODEL_FILE, SUMMARY, TRAIN_CLAIM
from fungilib.claims import CLAIM_FILE
from fungilib.errors import FungilibError

MARKER = ".fungilib-stage"
CLAIMS = {CLAIM_FILE, TRAIN_CLAIM, DOWNLOAD_CLAIM, MARKER}  # what fungilib's claims and marker leave
RUN_RECORD = {STATUS_FILE, PARAMS_FILE}  # with the executed notebook: what a sweep's or the demo's runner writes
MAIN_FILES = {  # a stage's own output from before markers existed (still recognised)
    "ingest": (OBSERVATIONS_FILE,), "eda": (EDA_SUMMARY, OBSERVATIONS_FILE), "download": (DOWNLOADS_FILE, LOG_FILE),
    "clean": (MANIFEST_FILE,), "import_folder": (MANIFEST_FILE,),
    "train": (MODEL_FILE, SUMMARY, HISTORY, BACKUP_DIR),
}
SHARES = {"eda": {"ingest"}}  # EDA writes beside the observations it describes (the ingest_eda stage)


def _marked(folder: Path) -> str:
    try:
        return str(json.loads((folder / MARKER).read_text()).get("stage", ""))
    except (OSError, ValueError, AttributeError):
        return ""


def prepare_output(out: Path, stage: str, create: bool = True) -> Path:
    """Check that ``stage`` may write into ``out``, then (``create``) make it and mark it as ``stage``'s; returns it
    resolved. A folder that holds anything else is refused in one line naming one of its files."""
    out = Path(out).resolve()
    if out.exists() and not out.is_dir():
        raise FungilibError(f"out {out}: a file, not a folder; name a new folder for the {stage} stage")
    if out.exists():
        marked = _marked(out)
        own = marked in {stage, *SHARES.get(stage, ())} or any((out / n).exists() for n in MAIN_FILES.get(stage, ()))
        runner = (out / STATUS_FILE).is_file()  # a run folder a runner made for this stage, before it ran
        foreign = sorted(p.name for p in out.iterdir() if p.name not in CLAIMS and not (
            runner and (p.name in RUN_RECORD or p.name.endswith(".ipynb"))))
        if foreign and not own:
            raise FungilibError(f"out {out}: holds files fungilib did not write for the {stage} stage (e.g. "
                                f"{foreign[0]!r}); name a new or empty folder, nothing there is written over")
    if not create:
        return out
    out.mkdir(parents=True, exist_ok=True)
    if not _marked(out):
        (out / MARKER).write_text(json.dumps({"stage": stage}) + "\n")
    return out
