"""The ServerApp (Flower Message API): what `flwr run` starts on the SuperLink side.

Its run config (``[tool.flwr.app.config]`` in ``pyproject.toml``, overridable with
``flwr run --run-config``):

``config-file``  the secure-ft run config YAML ("" = the built-in default)
``run-dir``      the run directory to create ("" = a new ``run-…`` folder under ``output-dir``)
``output-dir``   where new run directories go ("" = the config's ``output_dir``)
``sites``        ``simulated`` (Flower simulation partitions of the config's data) or
                 ``deployed`` (every SuperNode reads its own ``data-path``)
``resume``       ``true``: continue the run in ``run-dir`` from its last checkpoint
``site-registry`` the coordinator's ``sites.json`` (`secure_ft.deploy.site_registry`): names
                 the sites that do not answer ("" = names the sites gave in earlier rounds)

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
from secure_ft.errors import ConfigError
from secure_ft.records.config import RunConfig, load_config
from secure_ft.records.run_directory import new_run_dir

log = logging.getLogger(__name__)


@dataclass
class ServerSettings:
    config: RunConfig
    run_dir: Path
    simulated: bool
    resume: bool = False
    node_names: dict[int, str] | None = None

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, object]) -> "ServerSettings":
        config_file = str(run_config.get("config-file", "") or "")
        config = load_config(config_file or None)
        sites = str(run_config.get("sites", "simulated"))
        if sites not in ("simulated", "deployed"):
            raise ConfigError(f"run config 'sites' must be 'simulated' or 'deployed', got {sites!r}")
        run_dir = str(run_config.get("run-dir", "") or "")
        resume = str(run_config.get("resume", "false")).lower() == "true"
        if resume and not run_dir:
            raise ConfigError("run config 'resume' needs 'run-dir': the run directory to continue")
        if run_dir:
            path = Path(run_dir)
        else:
            path = new_run_dir(str(run_config.get("output-dir", "") or "") or config.output_dir)
        registry = str(run_config.get("site-registry", "") or "")
        return cls(config, path, sites == "simulated", resume, _node_names(Path(registry)) if registry else None)


def _node_names(registry_file: Path) -> dict[int, str]:
    """Node id → site name from the coordinator's site registry (``sites.json``)."""
    from secure_ft.deploy.site_registry import read_registry

    return {int(entry["node_id"]): name for name, entry in read_registry(registry_file.parent).items()
            if entry.get("node_id") is not None}


app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run every round and hand off the global model (see `federated.coordinator`)."""
    route_logs_through_flower()
    settings = ServerSettings.from_run_config(context.run_config)
    log.info("secure-ft federated run %s %s (%s sites)", "resumed in" if settings.resume else "into",
             settings.run_dir, "simulated" if settings.simulated else "deployed")
    FederatedServer(settings.config, settings.run_dir, simulated=settings.simulated, resume=settings.resume,
                    node_names=settings.node_names).run(grid, context)


def make_server_app(server: FederatedServer) -> ServerApp:
    """A ServerApp running `server` (used by the in-process simulation, `federated.simulation`)."""
    server_app = ServerApp()

    @server_app.main()
    def run(grid: Grid, context: Context) -> None:
        server.run(grid, context)

    return server_app
