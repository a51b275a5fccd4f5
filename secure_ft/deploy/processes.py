"""Child processes of the deploy commands: each in its own process group, stopped by that group's id.

Flower's SuperLink and SuperNode start further processes (SuperExec, ServerApp, ClientApps);
stopping the whole group stops those too, also when the command itself fails.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import time

log = logging.getLogger(__name__)


def start_group(command: list[str], env: dict[str, str], log_file=None) -> subprocess.Popen:
    return subprocess.Popen(command, env=env, start_new_session=True, stdout=log_file,
                            stderr=subprocess.STDOUT if log_file is not None else None)


def stop_group(process: subprocess.Popen, grace_s: float = 20.0) -> None:
    """SIGTERM the process's group, then SIGKILL it when it has not exited after `grace_s`."""
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            break
        try:
            process.wait(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            continue
    try:  # the group's other members may outlive its leader by a moment
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


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
