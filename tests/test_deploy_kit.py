"""The deploy kit's small parts, without a deployment: stopping process trees, the CA key's place,
the front's logging, and `flwr`'s JSON refusals."""

from __future__ import annotations

import logging
import subprocess
import sys
import time

import pytest

from secure_ft.deploy.processes import _alive, descendants, start_group, stop_group
from secure_ft.errors import ConfigError

# a child that starts a grandchild in a session of its own (as Flower's SuperLink starts SuperExec),
# then both ignore nothing and sleep
TREE = """
import subprocess, sys, time
subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True)
time.sleep(600)
"""

STUBBORN = """
import signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
time.sleep(600)
"""


def _tree(process: subprocess.Popen, size: int) -> set[int]:
    deadline = time.monotonic() + 30
    while len(members := descendants(process.pid)) < size:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    return members


def test_stopping_a_group_stops_descendants_in_their_own_sessions_too():
    process = start_group([sys.executable, "-c", TREE], {})
    members = _tree(process, 1)
    seconds = stop_group(process, grace_s=10)
    assert process.poll() is not None and not any(_alive(pid) for pid in members)
    assert seconds < 10


def test_a_process_ignoring_sigterm_is_killed_after_the_grace_period():
    process = start_group([sys.executable, "-c", STUBBORN], {})
    time.sleep(1.0)  # let it install its handler
    seconds = stop_group(process, grace_s=1.5)
    assert process.poll() is not None and 1.5 <= seconds < 10


def test_the_ca_key_is_written_outside_the_pki_folder_and_server_certificates_find_it(tmp_path, capsys):
    from secure_ft.deploy.certificates import make_ca, make_server

    pki = tmp_path / "pki"
    make_ca(pki, 30, False)
    assert not (pki / "ca.key").exists() and (pki / "ca.crt").is_file()
    key = tmp_path / "ca-private" / "ca.key"
    assert oct(key.stat().st_mode)[-3:] == "600" and oct(key.parent.stat().st_mode)[-3:] == "700"
    assert "keep it offline" in capsys.readouterr().out
    make_server(pki, [], [], 30, False)
    assert (pki / "server.pem").is_file()
    with pytest.raises(ConfigError, match="must not be the --out folder"):
        make_ca(pki, 30, True, key_dir=pki)


def test_the_front_logs_requests_at_debug_and_a_summary_once_a_minute(caplog):
    from secure_ft.deploy.fleet_front import RequestTally

    now = [0.0]
    tally = RequestTally(every_s=60, clock=lambda: now[0])
    with caplog.at_level(logging.INFO, logger="secure_ft.deploy.fleet_front"):
        for second in range(0, 59, 2):
            now[0] = float(second)
            tally.count("forwarded")
        assert not caplog.records
        now[0] = 61.0
        tally.count("refused")
    assert [record.getMessage() for record in caplog.records] == ["fleet front, last 61s: 30 forwarded, 1 refused"]


def test_a_refusal_that_flwr_reports_with_exit_status_0_is_an_error(monkeypatch):
    from secure_ft.commands import deploy

    refused = subprocess.CompletedProcess([], 0, stdout='{"success": false, "error-message": "HTTP 403 refused"}',
                                          stderr="")
    monkeypatch.setattr(deploy, "_flwr", lambda args, env, timeout=120: refused)
    with pytest.raises(ConfigError, match="registration refused: HTTP 403 refused.*run this on the coordinator"):
        deploy._flwr_json(["supernode", "register"], {}, "k.pub: registration refused", "127.0.0.1:9093")
    answered = subprocess.CompletedProcess([], 0, stdout='{"success": true, "node-id": 7}', stderr="")
    monkeypatch.setattr(deploy, "_flwr", lambda args, env, timeout=120: answered)
    assert deploy._node_id(deploy._flwr_json(["supernode", "register"], {}, "x", "y")) == 7


def test_state_folder_files_are_made_owner_only(tmp_path, monkeypatch):
    import os

    from secure_ft.commands.deploy import _private_state

    state = tmp_path / "state"
    state.mkdir()
    (state / "superlink.db").write_text("")
    os.chmod(state / "superlink.db", 0o644)
    previous = os.umask(0o022)
    try:
        _private_state(state)
        assert os.umask(0o022) == 0o077  # what the SuperLink and its children inherit
    finally:
        os.umask(previous)
    assert oct((state / "superlink.db").stat().st_mode)[-3:] == "600" and oct(state.stat().st_mode)[-3:] == "700"
