"""The ServerApp (Flower Message API): what `flwr run` starts on the SuperLink side.

Its run config (``[tool.flwr.app.config]`` in ``pyproject.toml``, overridable with
``flwr run --run-config``):

``config-file``  the secure-ft run config YAML ("" = the built-in default)
``run-dir``      the run directory to create ("" = a new ``run-…`` folder under ``output-dir``)
``output-dir``   where new run directories go ("" = the config's ``output_dir``)
``sites``        ``simulated`` (Flower simulation partitions of the config's data) or
                 ``deployed`` (every SuperNode reads its own ``data-path``)

Paths are read on the machine that runs the ServerApp; give absolute ones.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from federated.coordinator import FederatedServer
from federated.protocol import route_logs_through_flower
from secure_ft.config import RunConfig, load_config
from secure_ft.errors import ConfigError
from secure_ft.run_directory import new_run_dir

log = logging.getLogger(__name__)


@dataclass
class ServerSettings:
    config: RunConfig
    run_dir: Path
    simulated: bool

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, object]) -> "ServerSettings":
        config_file = str(run_config.get("config-file", "") or "")
        config = load_config(config_file or None)
        sites = str(run_config.get("sites", "simulated"))
        if sites not in ("simulated", "deployed"):
            raise ConfigError(f"run config 'sites' must be 'simulated' or 'deployed', got {sites!r}")
        run_dir = str(run_config.get("run-dir", "") or "")
        if run_dir:
            path = Path(run_dir)
        else:
            path = new_run_dir(str(run_config.get("output-dir", "") or "") or config.output_dir)
        return cls(config, path, sites == "simulated")


app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run every round and hand off the global model (see `federated.coordinator`)."""
    route_logs_through_flower()
    settings = ServerSettings.from_run_config(context.run_config)
    log.info("secure-ft federated run into %s (%s sites)", settings.run_dir,
             "simulated" if settings.simulated else "deployed")
    FederatedServer(settings.config, settings.run_dir, simulated=settings.simulated).run(grid, context)


def make_server_app(server: FederatedServer) -> ServerApp:
    """A ServerApp running `server` (used by the in-process simulation, `federated.simulation`)."""
    server_app = ServerApp()

    @server_app.main()
    def run(grid: Grid, context: Context) -> None:
        server.run(grid, context)

    return server_app
