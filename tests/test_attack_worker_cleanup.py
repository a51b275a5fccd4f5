"""Robustness workers never outlive the audit: killed outright (SIGKILL) or stopped (SIGTERM)."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent


def sleeping_worker(parent: int) -> None:
    from audits._attack_runner import exit_with_parent_in_background

    exit_with_parent_in_background(parent)
    time.sleep(120)


def start_parent() -> None:
    """The 'audit': spawn a worker as `_run_in_workers` does, say its pid, then wait to be killed."""
    worker = multiprocessing.get_context("spawn").Process(target=sleeping_worker, args=(os.getpid(),), daemon=True)
    worker.start()
    print(worker.pid, flush=True)
    time.sleep(120)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie has exited already
    status = Path(f"/proc/{pid}/status")
    return not (status.exists() and "State:\tZ" in status.read_text())


def test_a_worker_exits_when_its_audit_is_killed():
    code = f"import sys; sys.path[:0] = [{str(TESTS)!r}, {str(REPO)!r}]; import test_attack_worker_cleanup as t; t.start_parent()"
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=REPO)
    worker = None
    try:
        worker = int(parent.stdout.readline())
        assert alive(worker)
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=10)
        deadline = time.monotonic() + 60  # the worker may still be importing under load
        while alive(worker) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not alive(worker), "the worker outlived its killed audit"
    finally:
        for pid in (worker, parent.pid):
            if pid and alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_sigterm_unwinds_the_cli_like_ctrl_c(tmp_path):
    """`kill PID` on a secure-ft command runs its `finally` blocks (exit 130, the resume hint)."""
    script = tmp_path / "slow.py"
    script.write_text(
        "import sys, time\n"
        "from secure_ft import cli\n"
        "def handler(args):\n"
        "    try:\n"
        "        print('ready', flush=True); time.sleep(60)\n"
        "    finally:\n"
        f"        open({str(tmp_path / 'cleaned')!r}, 'w').close()\n"
        "cli.cmd_config_show = handler\n"
        "sys.exit(cli.main(['config', 'show']))\n")
    process = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert process.stdout.readline().strip() == "ready"
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 130
        assert (tmp_path / "cleaned").exists()
    finally:
        if process.poll() is None:
            process.kill()
