"""Flower's commands as this installation has them, kept offline, and the flwr CLI's connection.

Every Flower command (flower-superlink, flower-superexec, flower-supernode, flwr) is taken from
the folder of the running Python (`sys.executable`), never from whatever ``PATH`` holds: the
SuperLink starts ``flower-superexec`` by name, so that folder also goes first on ``PATH``.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import Iterator

from secure_ft.errors import ConfigError
from secure_ft.records.atomic_files import atomic_write_text

CONNECTION = "secure-ft"

OFFLINE = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",  # nothing is installed at run time
    "RAY_DISABLE_USAGE_STATS": "1",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
}


def bin_dir() -> Path:
    return Path(sys.executable).parent


def flower_command(name: str) -> str:
    """The absolute path of a Flower command installed beside this Python."""
    path = bin_dir() / name
    if not path.is_file():
        raise ConfigError(f"{path}: not found; secure-ft's environment lacks Flower's `{name}` "
                          "(reinstall secure-ft in this virtual environment)")
    return str(path)


def flower_environment(flwr_home: Path | None = None) -> dict[str, str]:
    """This process's environment, offline, with this Python's folder first on PATH."""
    env = {**os.environ, **OFFLINE, "PATH": f"{bin_dir()}{os.pathsep}{os.environ.get('PATH', '')}"}
    if flwr_home is not None:
        env["FLWR_HOME"] = str(flwr_home)
    return env


def flwr_home(env: dict[str, str]) -> Path:
    return Path(env.get("FLWR_HOME") or Path.home() / ".flwr")


def write_connection(env: dict[str, str], address: str, ca: Path, name: str = CONNECTION) -> Path:
    """The flwr CLI connection `name` (address + CA) in ``$FLWR_HOME/config.toml``."""
    import tomli
    import tomli_w

    ca = Path(ca).resolve()
    if not ca.is_file():
        raise ConfigError(f"{ca}: the CA certificate does not exist (secure-ft deploy certs ca)")
    path = flwr_home(env) / "config.toml"
    config = tomli.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    superlink = config.setdefault("superlink", {})
    superlink.setdefault("default", name)
    superlink[name] = {"address": address, "root-certificates": str(ca)}
    atomic_write_text(path, tomli_w.dumps(config))
    return path


@contextmanager
def flower_app_folder() -> Iterator[Path]:
    """A folder holding the Flower app ``flwr run`` builds (package data; the code is the installed package)."""
    source = resources.files("secure_ft.deploy") / "flower_app" / "pyproject.toml"
    with tempfile.TemporaryDirectory(prefix="secure-ft-app-") as folder:
        target = Path(folder) / "pyproject.toml"
        with resources.as_file(source) as path:
            shutil.copyfile(path, target)
        yield Path(folder)
