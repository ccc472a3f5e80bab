"""Command-line helper: records printed as JSON, user errors as exit code 2."""

from __future__ import annotations

import json

import pytest

from neurostack.cli import print_record, reference_parser
from neurostack.errors import ArtifactError


def test_record_is_printed_as_json(capsys) -> None:
    assert print_record(lambda: {"a": 1, "b": [0.5]}) == 0
    assert json.loads(capsys.readouterr().out) == {"a": 1, "b": [0.5]}


@pytest.mark.parametrize(
    "exc", [ArtifactError("bad sha"), FileNotFoundError("no file"), ValueError("lr must be > 0")]
)
def test_user_errors_exit_2_with_the_message_only(exc, capsys) -> None:
    def fail() -> dict:
        raise exc

    assert print_record(fail) == 2
    out = capsys.readouterr()
    assert out.out == "" and out.err == f"error: {exc}\n"


def test_bugs_keep_their_traceback() -> None:
    def bug() -> dict:
        raise KeyError("x")

    with pytest.raises(KeyError):
        print_record(bug)


def test_reference_parser_has_the_shared_arguments(tmp_path) -> None:
    p = reference_parser("build a reference")
    a = p.parse_args([str(tmp_path), "--split", "s.csv", "--out", "o"])
    assert (a.data_dir, str(a.split), str(a.out), a.check_per_class) == (tmp_path, "s.csv", "o", 50)
    with pytest.raises(SystemExit):
        p.parse_args([str(tmp_path), "--out", "o"])  # --split is required


def test_report_errors_turns_user_errors_into_exit_code_2(capsys) -> None:
    from neurostack.cli import report_errors

    assert report_errors(lambda: print("done")) == 0
    assert capsys.readouterr().out == "done\n"

    def bad() -> None:
        raise ValueError("no such split")

    assert report_errors(bad) == 2
    assert capsys.readouterr().err == "error: no such split\n"

    def bug() -> None:
        raise KeyError("a bug")

    with pytest.raises(KeyError):
        report_errors(bug)


def test_fit_score_parser_one_or_many_records() -> None:
    from pathlib import Path

    from neurostack.cli import fit_score_parser

    one = fit_score_parser("d", "per_image", "h", Path("arts"))
    args = one.parse_args(["fit", "a.csv"])
    assert (args.command, args.per_image, args.artifacts) == ("fit", Path("a.csv"), Path("arts"))
    many = fit_score_parser("d", "predictions", "h", Path("arts"), many=True)
    assert many.parse_args(["score", "a", "b"]).predictions == [Path("a"), Path("b")]
    with pytest.raises(SystemExit):
        many.parse_args(["refit", "a"])
