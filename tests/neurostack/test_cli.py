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
