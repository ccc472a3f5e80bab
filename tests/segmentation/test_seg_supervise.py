from __future__ import annotations

import subprocess
import sys

from segmentation import supervise as sup


class FakePopen:
    """Exits with the queued statuses, one per start."""

    codes: list[int] = []
    commands: list[list[str]] = []

    def __init__(self, cmd):
        FakePopen.commands.append(cmd)
        self.code = FakePopen.codes.pop(0)

    def wait(self):
        return self.code

    def poll(self):
        return self.code


def test_restarts_after_signal_death_until_success(monkeypatch):
    monkeypatch.setattr(subprocess, "Popen", FakePopen)
    monkeypatch.setattr(sup.time, "sleep", lambda s: None)
    FakePopen.codes = [-11, -6, 0]
    FakePopen.commands = []
    assert sup.main(["--max-restarts", "5", "--", "--run-dir", "x"]) == 0
    assert len(FakePopen.commands) == 3
    cmd = FakePopen.commands[0]
    assert cmd[:3] == [sys.executable, "-m", "segmentation.train"]
    assert cmd[3:] == ["--run-dir", "x", "--resume"]


def test_normal_errors_and_restart_limit_are_not_retried(monkeypatch):
    monkeypatch.setattr(subprocess, "Popen", FakePopen)
    monkeypatch.setattr(sup.time, "sleep", lambda s: None)
    FakePopen.codes, FakePopen.commands = [2], []
    assert sup.supervise(["--resume"]) == 2
    assert len(FakePopen.commands) == 1
    FakePopen.codes, FakePopen.commands = [-9, -9, -9], []
    assert sup.supervise([], max_restarts=2) == -9
    assert len(FakePopen.commands) == 3
