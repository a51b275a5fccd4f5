"""The "nothing outlived the test" helper sees the test's own processes, orphans included, and nobody else's."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from own_processes import MARK, marked_environment, own_processes

PATTERN = "fake-flwr-clientapp"


def _sleeper(env: dict[str, str], *, orphan: bool = False) -> subprocess.Popen:
    # an orphan: the child starts a grandchild in its own session and exits, so init adopts the grandchild
    code = ("import subprocess, sys, time; "
            "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)', 'fake-flwr-clientapp'], "
            "start_new_session=True); sys.exit(0)") if orphan else "import time; time.sleep(60)"
    return subprocess.Popen([sys.executable, "-c", code, "fake-flwr-clientapp"], env=env, start_new_session=True)


def _wait_for(predicate, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


def test_own_processes_include_orphans_and_exclude_strangers(monkeypatch):
    stranger_env = {key: value for key, value in os.environ.items() if key != MARK}
    stranger = _sleeper(stranger_env)  # started before the mark, as by another suite: never counted
    token = marked_environment(monkeypatch)
    own = _sleeper(dict(os.environ))
    orphan_parent = _sleeper(dict(os.environ), orphan=True)
    pids = set()
    try:
        assert orphan_parent.wait(timeout=20) == 0  # its child now belongs to init (or a subreaper), not to us
        assert _wait_for(lambda: len(own_processes(token, PATTERN)) == 2)
        pids = {int(line.split()[0]) for line in own_processes(token, PATTERN)}
        assert own.pid in pids and stranger.pid not in pids and orphan_parent.pid not in pids
        orphan = (pids - {own.pid}).pop()
        parent = int(Path(f"/proc/{orphan}/stat").read_text().rsplit(")", 1)[1].split()[1])
        assert parent != os.getpid()  # a walk of this process's tree would have missed it
    finally:
        for pid in pids | {own.pid, stranger.pid}:
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
        for process in (own, stranger):
            process.wait(timeout=10)
    assert _wait_for(lambda: own_processes(token, PATTERN) == set())
