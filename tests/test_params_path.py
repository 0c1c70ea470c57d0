"""One parameter path for every stage command: the stage's defaults file < --params FILE < flags and --set in the
order given, each flag shorthand for a --set of its key; bad values are one line naming their source."""

from __future__ import annotations

import subprocess
import sys
import typing
from pathlib import Path
from typing import Any

import pytest
import yaml

from fungilib.cli import build_parser, command_params, main
from fungilib.stages import COMMANDS, Flag

EXAMPLES = {int: 7, float: 0.25, bool: False, str: "tcp://127.0.0.1:8786"}


def _dotted(params: Any, key: str) -> Any:
    for part in key.split("."):
        params = getattr(params, part)
    return params


def _field_type(cls: type, key: str) -> Any:
    *groups, leaf = key.split(".")
    for group in groups:
        cls = typing.get_type_hints(cls)[group]
    tp = typing.get_type_hints(cls)[leaf]
    return next((a for a in typing.get_args(tp) if a is not type(None)), tp) if typing.get_args(tp) else tp


def _example(cls: type, flag: Flag, tmp_path: Path) -> tuple[str, Any]:
    """(what the command line says, the value the stage must see) for one flag's key."""
    if flag.switch:
        return "", flag.const
    tp = _field_type(cls, flag.key)
    if tp is Path:
        target = tmp_path / f"given-{flag.key}"
        target.write_text("x")  # exists: ingest checks its archive exists
        return str(target), target
    value = EXAMPLES[tp]
    return str(value), value


def _required(command: str, tmp_path: Path, skip: str) -> list[str]:
    """Values for the command's other flags that name paths, so the parameters are complete."""
    argv = []
    for flag in COMMANDS[command][1].flags:
        if flag.key == skip or flag.switch:
            continue
        cls = COMMANDS[command][1].params_class
        if _field_type(cls, flag.key) is Path:
            path = tmp_path / f"other-{flag.key}"
            path.write_text("x")
            argv += [flag.option, str(path)] if flag.option else [str(path)]
    return argv


CASES = [(name, flag) for name, (_, command) in COMMANDS.items() for flag in command.flags]


@pytest.mark.parametrize(("command", "flag"), CASES, ids=[f"{c}-{f.key}" for c, f in CASES])
@pytest.mark.parametrize("how", ["flag", "set"])
def test_every_flag_and_its_set_reach_the_stage(command: str, flag: Flag, how: str, tmp_path: Path) -> None:
    cls = COMMANDS[command][1].params_class
    text, expected = _example(cls, flag, tmp_path)
    argv = [command, *_required(command, tmp_path, flag.key)]
    if how == "flag":
        argv += [flag.option] if flag.switch else (
            [flag.option, text] if flag.option else [text])
    else:
        value = expected if not isinstance(expected, Path) else str(expected)
        text = yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()
        argv += ["--set", f"{flag.key}={text}"]
    params = command_params(build_parser().parse_args(argv))
    assert isinstance(params, cls)
    assert _dotted(params, flag.key) == expected


def test_command_line_overrides_apply_in_the_order_given(tmp_path: Path) -> None:
    base = ["clean", "--observations", "o", "--downloads", "d"]
    parse = build_parser().parse_args
    assert command_params(parse([*base, "--out", "a", "--set", "out=b"])).out == Path("b")
    assert command_params(parse([*base, "--set", "out=b", "--out", "a"])).out == Path("a")
    assert command_params(parse([*base, "--out", "a", "--min-per-class", "3", "--set",
                                 "min_per_class=4"])).min_per_class == 4
    assert command_params(parse([*base, "--out", "a", "--set", "min_per_class=4", "--min-per-class",
                                 "3"])).min_per_class == 3
    # defaults file (params/clean.yaml) < --params FILE < the command line
    assert command_params(parse([*base, "--out", "a"])).min_per_class == 10
    file = tmp_path / "mine.yaml"
    file.write_text("min_per_class: 20\nseed: 5\n")
    from_file = command_params(parse([*base, "--out", "a", "--params", str(file)]))
    assert (from_file.min_per_class, from_file.seed) == (20, 5)
    assert command_params(parse([*base, "--out", "a", "--params", str(file), "--seed", "6"])).seed == 6
    # groups merge key by key: one --set inside a group keeps the group's other defaults
    train = command_params(parse(["train", "--manifest", "m", "--out", "r", "--set", "fit.epochs=4"]))
    assert train.fit.epochs == 4 and train.fit.patience == 5 and train.dataset.manifest == Path("m")
    assert command_params(parse(["train", "--manifest", "m", "--out", "r", "--set", "dataset.manifest=n"])
                          ).dataset.manifest == Path("n")


BAD = [
    (["download", "o", "--out", "d", "--set", "max_side=abc"],
     "--set max_side=abc: max_side: expected an integer, got 'abc'"),
    (["download", "o", "--out", "d", "--max-side", "abc"], "--max-side abc: max_side: expected an integer, got 'abc'"),
    (["download", "o", "--out", "d", "--set", "max_side=[1"], "--set max_side=[1: not a valid value"),
    (["download", "o", "--out", "d", "--set", "timeout=1", "--set", "timeout.x=2"],
     "--set timeout.x=2: timeout is a single value (1), not a group"),
    (["download", "o", "--out", "d", "--set", "timeout=.nan"], "--set timeout=.nan: timeout: expected a finite number"),
    (["download", "o", "--out", "d", "--set", "timeout=.inf"], "--set timeout=.inf: timeout: expected a finite number"),
    (["download", "o", "--out", "d", "--set", "max_side=0"], "--set max_side=0: max_side must be at least 1"),
    (["download", "o", "--out", "d", "--set", "nothing"], "--set expects KEY=VALUE, got 'nothing'"),
    (["download", "o", "--out", "d", "--set", "max_sid=3"], "--set max_sid=3: unknown parameter 'max_sid' for "
                                                             "DownloadParams; allowed: observations, out, max_side"),
    (["clean", "--observations", "o", "--downloads", "d", "--out", "c", "--seed", "-1"],
     "--seed -1: seed must be >= 0"),
    (["train", "--manifest", "m", "--out", "r", "--set", "fit.epochs=-1"], "--set fit.epochs=-1: fit.epochs and"),
    (["train", "--manifest", "m", "--out", "r", "--set", "fit.epochs=2"], "--set fit.epochs=2: schedule.head_epochs "
     "(3) must be below fit.epochs (2) for freeze=two_phase: lower schedule.head_epochs or set model.freeze=train_all"),
    (["download", "o", "--set", "workers=2"], "command line: missing required parameter 'out' for DownloadParams: "
                                              "give --out (or --set out=...)"),
    (["ingest", "--out", "x"], "command line: missing required parameter 'archive' for IngestParams: give the "
                               "ARCHIVE argument (or --set archive=...)"),
]


@pytest.mark.parametrize(("argv", "message"), BAD, ids=[" ".join(a[-2:]) for a, _ in BAD])
def test_a_bad_value_is_one_line_naming_its_source(argv: list[str], message: str,
                                                   capsys: pytest.CaptureFixture) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"fungilib: error: {message}") and err.count("\n") == 1, err


def test_bad_params_files_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    latin = tmp_path / "latin.yaml"
    latin.write_bytes(b"seed: 1 # caf\xe9\n")
    cases = [(tmp_path, "is a folder; expected a YAML file"), (latin, "not UTF-8 text (byte 0xe9"),
             (tmp_path / "none.yaml", "parameter file not found")]
    for path, message in cases:
        assert main(["clean", "--observations", "o", "--downloads", "d", "--out", "c", "--params", str(path)]) == 2
        err = capsys.readouterr().err
        assert err == f"fungilib: error: {path}: {message}" + err.split(message, 1)[1] and err.count("\n") == 1
    bad_value = tmp_path / "bad.yaml"
    bad_value.write_text("fit:\n  epochs: 0\n")
    assert main(["train", "--manifest", "m", "--out", "r", "--params", str(bad_value)]) == 2
    assert capsys.readouterr().err.startswith(f"fungilib: error: {bad_value}: fit.epochs and dataset.batch_size")


def test_a_set_value_reaches_a_real_stage_run(pipeline, tmp_path: Path) -> None:  # noqa: ANN001
    """Through the real command, in a subprocess: the values the stage ran with are those it writes beside its
    outputs (the eda stage's resolved parameters), and a flag's key set with --set wins when given after it."""
    out = tmp_path / "eda"
    proc = subprocess.run([sys.executable, "-m", "fungilib.cli", "eda", str(pipeline.root / "ingest"), "--out",
                           str(tmp_path / "elsewhere"), "--set", f"out={out}", "--set", "min_images=[2, 30]",
                           "--set", "species_only=false"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    written = yaml.safe_load((out / "eda_params.yaml").read_text())
    assert written["min_images"] == [2, 30] and written["species_only"] is False and written["out"] == str(out)
    assert not (tmp_path / "elsewhere").exists()
    assert list(yaml.safe_load("[" + ",".join(
        line.split()[0] for line in proc.stdout.splitlines()[1:3]) + "]")) == [2, 30]  # the cut table's rows
