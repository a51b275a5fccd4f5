"""The processes one test started, found without looking at anybody else's.

A test that must show "nothing it started outlived it" marks its environment with a fresh
token (`marked_environment`). Every process it starts inherits the token through its
environment — also one that detaches into its own session, and one that is re-parented to
init when its parent exits, which a walk of the parent tree would lose. `own_processes`
lists the live processes carrying this test's token, so an unrelated Flower or Ray process
started elsewhere on the machine during the test (another suite, a federation beside it)
is never counted, while a leak of this test's own is.
"""

from __future__ import annotations

import os
import re
import uuid
from pathlib import Path

MARK = "SECURE_FT_TEST_PROCESS_MARK"


def marked_environment(monkeypatch) -> str:
    """Put a fresh token into this process's environment (undone after the test); returns it."""
    token = uuid.uuid4().hex
    monkeypatch.setenv(MARK, token)
    return token


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:  # gone meanwhile, or not ours to read
        return None


def own_processes(token: str, pattern: str) -> set[str]:
    """``"PID command line"`` of every live (not zombie) process but this one that carries `token` in its
    environment and whose command line matches the regular expression `pattern`."""
    needle = f"{MARK}={token}".encode()
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        environ, cmdline, stat = (_read(entry / name) for name in ("environ", "cmdline", "stat"))
        if not environ or needle not in environ.split(b"\0") or cmdline is None or stat is None:
            continue
        if stat.decode(errors="replace").rsplit(")", 1)[1].split()[0] == "Z":
            continue  # a zombie has exited already; it only waits for its (re-)parent to reap it
        command = cmdline.replace(b"\0", b" ").decode(errors="replace").strip()
        if re.search(pattern, command):
            found.add(f"{entry.name} {command}")
    return found
