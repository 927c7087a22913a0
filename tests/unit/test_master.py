"""The master's rules for a worker that exited (nginx's ngx_process_get_status and
ngx_reap_children): what is logged, at which level, and whether it is respawned."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from pyngx.core.listening import SocketTable
from pyngx.core.log import DEBUG, ErrorLog, LogFile, LogTarget
from pyngx.core.master import Generation, Master


def exit_status(code: int) -> int:
    return code << 8  # as waitpid reports exit(code)


def signal_status(sig: int, core: bool = False) -> int:
    return sig | (0x80 if core else 0)


class Harness:
    def __init__(self, tmp_path: Path) -> None:
        self.log_path = tmp_path / "error.log"
        log = ErrorLog([LogTarget(LogFile(str(self.log_path)), DEBUG)])
        cycle: Any = SimpleNamespace(error_log=log, files=SimpleNamespace(close=lambda: None))
        self.gen = Generation(cycle, [], {}, pids={101, 102})
        self.master = Master(self.gen, SocketTable(), (None, None))
        self.master.index_of = {101: 0, 102: 1}
        self.spawned: list[int] = []
        self.master.spawn = self._spawn  # type: ignore[method-assign]

    def _spawn(self, gen: Generation, index: int) -> int:
        self.spawned.append(index)
        return 0

    def lines(self) -> list[str]:
        text = self.log_path.read_text()
        return [
            line.split(" ", 2)[2].replace(f"{os.getpid()}#0: ", "") for line in text.splitlines()
        ]


@pytest.fixture
def h(tmp_path: Path) -> Harness:
    return Harness(tmp_path)


def test_killed_worker_is_an_alert_and_respawned(h: Harness) -> None:
    h.master.worker_exited(102, signal_status(signal.SIGKILL))
    assert h.lines() == ["[alert] worker process 102 exited on signal 9"]
    assert h.spawned == [1]


def test_core_dump_is_said(h: Harness) -> None:
    h.master.worker_exited(101, signal_status(signal.SIGSEGV, core=True))
    assert h.lines() == ["[alert] worker process 101 exited on signal 11 (core dumped)"]
    assert h.spawned == [0]


@pytest.mark.parametrize("code", [0, 1])
def test_worker_that_left_on_its_own_is_respawned(h: Harness, code: int) -> None:
    h.master.worker_exited(101, exit_status(code))
    assert h.lines() == [f"[notice] worker process 101 exited with code {code}"]
    assert h.spawned == [0]


def test_fatal_code_2_is_not_respawned(h: Harness) -> None:
    """A worker that cannot start would fail again at once: no respawn loop."""
    h.master.worker_exited(101, exit_status(2))
    assert h.lines() == [
        "[notice] worker process 101 exited with code 2",
        "[alert] worker process 101 exited with fatal code 2 and cannot be respawned",
    ]
    assert h.spawned == []
    assert h.gen.pids == {102}


@pytest.mark.parametrize("stopping", ["quit", "term"])
def test_nothing_is_respawned_while_stopping(h: Harness, stopping: str) -> None:
    h.master.stopping = stopping
    h.master.worker_exited(101, exit_status(0))
    h.master.worker_exited(102, signal_status(signal.SIGKILL))
    assert h.spawned == []
    assert h.master.all_pids() == set()
