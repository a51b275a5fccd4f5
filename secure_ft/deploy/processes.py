"""Child processes of the deploy commands: started in their own process group, stopped with every descendant.

Flower's SuperLink and SuperNode start further processes (SuperExec, ServerApp, ClientApps),
each in a session of its own (``start_new_session``), so signalling the SuperLink's process
group alone leaves them running, re-parented to PID 1. `stop_group` therefore collects the
whole process tree below the child (read from ``/proc``) before it signals anything, sends
SIGTERM to every member and its group, waits at most `grace_s` for all of them, then SIGKILLs
what is left — also when the command itself fails.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

log = logging.getLogger(__name__)


def start_group(command: list[str], env: dict[str, str], log_file=None) -> subprocess.Popen:
    return subprocess.Popen(command, env=env, start_new_session=True, stdout=log_file,
                            stderr=subprocess.STDOUT if log_file is not None else None)


def descendants(pid: int) -> set[int]:
    """Every live process below `pid` in the parent tree (empty where ``/proc`` is not available)."""
    parents: dict[int, int] = {}
    proc = Path("/proc")
    if not proc.is_dir():
        return set()
    for entry in proc.iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    try:  # a zombie has exited; it only waits to be reaped
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def _signal_tree(leader: int, members: set[int], sig: int) -> None:
    for pid in (leader, *members):
        for send in (os.killpg, os.kill):  # each member may lead a group (session) of its own
            try:
                send(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass


def stop_group(process: subprocess.Popen, grace_s: float = 10.0) -> float:
    """Stop `process` and every process below it; return the seconds it took.

    SIGTERM to all of them (the ServerApp records the interruption in its run ledger on
    SIGTERM), then SIGKILL to whatever still runs after `grace_s`.
    """
    started = time.monotonic()
    members = descendants(process.pid)
    _signal_tree(process.pid, members, signal.SIGTERM)
    deadline = started + grace_s
    while time.monotonic() < deadline:
        members |= descendants(process.pid)  # a child started just before the signal
        if process.poll() is not None and not any(_alive(pid) for pid in members):
            break
        time.sleep(0.1)
    leftovers = {pid for pid in members if _alive(pid)}
    if process.poll() is None or leftovers:
        log.warning("processes %s did not stop within %.0fs of SIGTERM; killing them",
                    sorted(leftovers | ({process.pid} if process.poll() is None else set())), grace_s)
        _signal_tree(process.pid, leftovers, signal.SIGKILL)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass
    return time.monotonic() - started


def wait_for_port(host: str, port: int, process: subprocess.Popen, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with status {process.returncode} before listening on {host}:{port}")
        with socket.socket() as sock:
            if sock.connect_ex((host, port)) == 0:
                return
        time.sleep(0.3)
    raise RuntimeError(f"{what}: nothing listens on {host}:{port} after {timeout_s:g}s")
