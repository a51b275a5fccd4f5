"""`secure-ft deploy …` and `secure-ft sites list`: the deploy kit, runnable from any installation.

Coordinator: ``deploy certs ca|server``, ``deploy superlink`` (the SuperLink on loopback plus
the Fleet-only TLS front sites connect to), ``deploy register`` (site keys, over the loopback
Control API), ``deploy launch`` (pre-flight, then the run), ``sites list``.
A site: ``deploy certs site-key``, ``deploy supernode``. See ``deploy/README.md``.
"""

from __future__ import annotations

import argparse
import json
import logging
import socket
import subprocess
import sys
from pathlib import Path

from secure_ft.errors import ConfigError

log = logging.getLogger(__name__)

DEFAULT_FLEET_PORT = 9092
DEFAULT_CONTROL_PORT = 9093
LOOPBACK = "127.0.0.1"


def _control_address(args: argparse.Namespace) -> str:
    return f"{LOOPBACK}:{args.control_port}"


def _flwr(args: list[str], env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    from secure_ft.deploy.flower_runtime import flower_command

    return subprocess.run([flower_command("flwr"), *args], env=env, capture_output=True, text=True, timeout=timeout)


def _flwr_json(args: list[str], env: dict[str, str], what: str, control: str) -> dict:
    """Run ``flwr … --format json``; its JSON answer, or a `ConfigError` saying why there is none.

    ``flwr`` exits 0 with ``"success": false`` when the SuperLink refuses (e.g. HTTP 403 from
    the Fleet front), so the exit status alone is not enough.
    """
    result = _flwr([*args, "--format", "json"], env)
    try:
        payload = json.loads(result.stdout)
    except ValueError:
        payload = None
    if result.returncode == 0 and isinstance(payload, dict) and payload.get("success", True) is not False:
        return payload
    detail = (payload or {}).get("error-message") if isinstance(payload, dict) else None
    detail = str(detail or (result.stdout + result.stderr).strip())[-500:]
    hint = ""
    if "403" in detail or "refused" in detail.lower() or "connect" in detail.lower():
        hint = (f" (the SuperLink's Control API listens on {control} only: run this on the coordinator machine, "
                "next to `secure-ft deploy superlink`)")
    raise ConfigError(f"{what}: {detail}{hint}")


def cmd_certs(args: argparse.Namespace) -> int:
    from secure_ft.deploy.certificates import make_ca, make_server, make_site_key

    out = Path(args.out)
    key_dir = Path(args.ca_key_dir) if args.ca_key_dir else None
    if args.kind == "ca":
        make_ca(out, args.days, args.force, key_dir)
    elif args.kind == "server":
        make_server(out, args.dns, args.ip, args.days, args.force, key_dir)
    else:
        if not args.site:
            raise ConfigError("site-key needs --site NAME")
        make_site_key(out, args.site, args.force)
    return 0


def cmd_superlink(args: argparse.Namespace) -> int:
    from secure_ft.deploy.fleet_front import serve_fleet_front
    from secure_ft.deploy.flower_runtime import flower_command, flower_environment
    from secure_ft.deploy.processes import start_group, stop_group, wait_for_port
    from secure_ft.deploy.site_registry import REGISTRY_ENV, REGISTRY_FILE

    pki, state = Path(args.pki), Path(args.state)
    for name in ("ca.crt", "server.pem", "server.key"):
        if not (pki / name).is_file():
            raise ConfigError(f"{pki / name}: missing; create it with `secure-ft deploy certs ca|server --out {pki}`")
    if args.control_port == args.port:
        raise ConfigError("--control-port must differ from --port (the Fleet front)")
    flower_command("flower-superexec")  # the SuperLink starts it by name to run the ServerApp
    _private_state(state)
    command = [flower_command("flower-superlink"),
               "--ssl-ca-certfile", str(pki / "ca.crt"), "--ssl-certfile", str(pki / "server.pem"),
               "--ssl-keyfile", str(pki / "server.key"), "--enable-supernode-auth",
               "--disable-runtime-dependency-installation", "--database", str(state / "superlink.db"),
               "--log-file", str(state / "superlink.log"),
               # Control and runtime APIs: this machine only (registration, runs, the ServerApp)
               "--host", LOOPBACK, "--port", str(args.control_port)]
    # the ServerApp names every site by the registry entry of the key it authenticated with
    registry = state.resolve() / REGISTRY_FILE
    superlink = start_group(command, {**flower_environment(), REGISTRY_ENV: str(registry)})
    try:
        wait_for_port(LOOPBACK, args.control_port, superlink, 120, "the SuperLink")
        print(f"SuperLink: control and runtime APIs on {LOOPBACK}:{args.control_port} (this machine only); "
              f"database {state / 'superlink.db'}, log {state / 'superlink.log'}", flush=True)
        print(f"Fleet front: sites connect to {args.host}:{args.port} (TLS; Fleet API only)", flush=True)
        serve_fleet_front(args.host, args.port, f"https://{LOOPBACK}:{args.control_port}", pki, registry)
    except RuntimeError as error:
        raise ConfigError(f"{error}; see {state / 'superlink.log'}") from None
    finally:
        seconds = stop_group(superlink)
        print(f"SuperLink and the processes it started (SuperExec, ServerApp) stopped in {seconds:.1f}s", flush=True)
    return 0


def _private_state(state: Path) -> None:
    """The state folder and everything the SuperLink writes into it: owner only (0700 / 0600)."""
    import os

    os.umask(0o077)  # the SuperLink, SuperExec and ServerApp inherit it: superlink.db, its log, run files
    state.mkdir(parents=True, exist_ok=True, mode=0o700)
    state.chmod(0o700)
    for path in state.iterdir():  # files an earlier start (or an older version) left readable
        if path.is_file():
            path.chmod(0o600)


def cmd_register(args: argparse.Namespace) -> int:
    from secure_ft.deploy.certificates import check_site_name
    from secure_ft.deploy.flower_runtime import CONNECTION, flower_environment, write_connection
    from secure_ft.deploy.site_registry import record_site

    env = flower_environment()
    write_connection(env, _control_address(args), Path(args.ca))
    for key in map(Path, args.keys):
        if not key.is_file():
            raise ConfigError(f"{key}: the site's public key does not exist")
        name = check_site_name(key.name.removesuffix(".pub"))
        payload = _flwr_json(["supernode", "register", str(key), CONNECTION, "--name", name],
                             env, f"{key}: registration refused", _control_address(args))
        node_id = _node_id(payload)
        record_site(Path(args.state), name, key, node_id)
        print(f"registered site {name} (node id {node_id}) from {key}")
    return 0


def _node_id(payload: dict) -> int | None:
    value = payload.get("node-id", payload.get("node_id")) if isinstance(payload, dict) else None
    return int(value) if isinstance(value, (int, str)) and str(value).isdigit() else None


def cmd_sites_list(args: argparse.Namespace) -> int:
    from secure_ft.deploy.flower_runtime import CONNECTION, flower_environment, write_connection
    from secure_ft.deploy.site_registry import read_registry

    registry = read_registry(Path(args.state))
    env = flower_environment()
    write_connection(env, _control_address(args), Path(args.ca))
    status = {}
    try:
        listed = _flwr_json(["supernode", "list", CONNECTION], env, "the SuperLink did not list its SuperNodes",
                            _control_address(args))
        for node in listed.get("nodes", []):
            status[int(node.get("node-id", -1))] = node.get("status") or node.get("online")
    except ConfigError as error:
        print(f"({error})")
    print(f"{'site':<20} {'node id':>22}  {'status':<12} public key (sha256)")
    for name, entry in sorted(registry.items()):
        node_id = entry.get("node_id")
        print(f"{name:<20} {str(node_id):>22}  {str(status.get(node_id, 'unknown')):<12} "
              f"{entry['public_key_sha256'][:16]}…")
    if not registry:
        print(f"no sites registered with `secure-ft deploy register` (state folder {args.state})")
    return 0


def cmd_supernode(args: argparse.Namespace) -> int:
    from secure_ft.deploy.certificates import check_site_name
    from secure_ft.deploy.flower_runtime import flower_command, flower_environment
    from secure_ft.deploy.site_identity import check_site_identity

    site = check_site_name(args.site)
    for path, what in ((args.ca, "CA certificate"), (args.key, "site key"), (args.data, "data file")):
        if not Path(path).is_file():
            raise ConfigError(f"{path}: the {what} does not exist")
    # the name is the registry's for this key: a --site that differs never starts
    identity = check_site_identity(site, args.superlink, Path(args.ca), Path(args.key))
    state = Path(args.state or Path.home() / ".secure-ft" / "sites" / site).resolve()
    state.mkdir(parents=True, exist_ok=True)
    state.chmod(0o700)
    port = args.port or _free_port()  # the SuperNode's local runtime API: one port per SuperNode on a host
    data, key = Path(args.data).resolve(), Path(args.key).resolve()
    node_config = f'data-path="{data}" site-name="{site}" state-dir="{state}" auth-key="{key}"'
    if args.site_policy:
        from federated.site_policy import POLICY_KEY, load_site_policy

        load_site_policy(args.site_policy)  # a bad file fails now, not at the first round
        node_config += f' {POLICY_KEY}="{Path(args.site_policy).resolve()}"'
    command = [flower_command("flower-supernode"), "--root-certificates", str(Path(args.ca).resolve()),
               "--superlink", args.superlink, "--auth-supernode-private-key", str(key),
               "--node-config", node_config, "--port", str(port)]
    print(f"site {site} (registered key {identity['public_key_sha256'][:16]}…): SuperNode for {args.superlink}, "
          f"data {data}, records in {state}, local runtime port {port}", flush=True)
    return _run_supernode(command, flower_environment(), site)


ACTIVATION_RETRY_S = 150.0  # the SuperLink holds a crashed node "online" for up to 2 heartbeats (60 s)


def _run_supernode(command: list[str], env: dict[str, str], site: str) -> int:
    """Run the SuperNode; after a crash the SuperLink refuses it until its old session expires, so retry that."""
    import time

    from secure_ft.deploy.processes import start_group, stop_group

    first = time.monotonic()
    while True:
        started = time.monotonic()
        process = start_group(command, env)
        try:
            code = process.wait()
        except KeyboardInterrupt:
            return 130
        finally:
            stop_group(process)
        quick = time.monotonic() - started < 30
        if code == 0 or not quick or time.monotonic() - first > ACTIVATION_RETRY_S:
            return code
        print(f"site {site}: the SuperNode exited at once (status {code}); if this site was restarted after a crash "
              "the SuperLink still holds its previous session (up to 60 s): retrying in 10 s", flush=True)
        time.sleep(10)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def cmd_launch(args: argparse.Namespace) -> int:
    from federated.coordinator import refuse_used_run_dir, require_declared_labels
    from federated.run_checkpoint import has_checkpoint
    from secure_ft.deploy.flower_runtime import (CONNECTION, flower_app_folder, flower_command, flower_environment,
                                                 write_connection)
    from secure_ft.deploy.site_registry import REGISTRY_FILE
    from secure_ft.pipeline.main_job import resolve_policy
    from secure_ft.pipeline.preflight import check_before_training
    from secure_ft.records.config import load_config
    from secure_ft.records.run_directory import RunDirectory

    if args.resume:
        if args.config or args.run_dir:
            raise ConfigError("--resume RUN_DIR continues a run with the config it started with; "
                              "give neither --config nor --run-dir")
        run_dir = Path(args.resume).resolve()
        if RunDirectory(run_dir).model_dir.is_dir():
            raise ConfigError(f"{run_dir}: the run finished already (model/ is there); nothing to resume")
        if not has_checkpoint(run_dir):
            raise ConfigError(f"{run_dir}: no federated checkpoint (no round finished before it stopped); "
                              "start a new run with --config and a new --run-dir")
        config_file = RunDirectory(run_dir).config_file
        config = load_config(config_file)
    else:
        if not (args.config and args.run_dir):
            raise ConfigError("give --config and --run-dir for a new run (or --resume RUN_DIR to continue one)")
        config_file = Path(args.config).resolve()
        config = load_config(config_file).model_copy(update={"mode": "federated"})
        run_dir = Path(args.run_dir).resolve()
        refuse_used_run_dir(run_dir)
    require_declared_labels(config)
    policy_path, policy, _ = resolve_policy(config, args.policy)
    # what the gate would block after training, refused now
    check_before_training(config, policy, policy_path, deployed=True)
    print(f"pre-flight passed against policy {policy.name!r} ({policy_path})", flush=True)
    run_config = f'sites="deployed" config-file="{config_file}" run-dir="{run_dir}"'
    if args.resume:
        run_config += ' resume="true"'
    if args.state:
        registry = Path(args.state).resolve() / REGISTRY_FILE
        if not registry.is_file():
            raise ConfigError(f"{registry}: no site registry; --state is the SuperLink's --state folder")
        run_config += f' site-registry="{registry}"'
    env = flower_environment()
    write_connection(env, _control_address(args), Path(args.ca))
    with flower_app_folder() as app:
        result = subprocess.run([flower_command("flwr"), "run", str(app), CONNECTION, "--stream", "--run-config",
                                 run_config], env=env)
    if result.returncode != 0 or not RunDirectory(run_dir).model_dir.is_dir():
        resumable = has_checkpoint(run_dir)
        print(f"error: the run did not finish (flwr run exited {result.returncode}); see the log above and "
              f"{run_dir / 'ledger.jsonl'}"
              + (f"; continue it with `secure-ft deploy launch --resume {run_dir} --ca {args.ca}`" if resumable
                 else ""), file=sys.stderr)
        return result.returncode or 1
    print(f"run directory: {run_dir}\nnext: secure-ft audit {run_dir}"
          + (f" --policy {args.policy}" if args.policy else "") + f"\n then: secure-ft export {run_dir} --out BUNDLE")
    return 0


def register(subparsers) -> None:
    deploy = subparsers.add_parser("deploy", help="the deploy kit: certificates, SuperLink, SuperNodes, "
                                                  "registration, launching a federated run across sites")
    actions = deploy.add_subparsers(dest="deploy_command", metavar="ACTION", required=True)

    certs = actions.add_parser("certs", help="create the CA (ca), the SuperLink certificate (server) or a site key")
    certs.add_argument("kind", choices=["ca", "server", "site-key"])
    certs.add_argument("--out", required=True, help="folder to write into")
    certs.add_argument("--dns", action="append", default=[], help="server: DNS name sites use (repeatable)")
    certs.add_argument("--ip", action="append", default=[], help="server: IP address sites use (repeatable)")
    certs.add_argument("--site", help="site-key: the site's name (file names; its .pub is what gets registered)")
    certs.add_argument("--days", type=int, default=365, help="validity in days (default 365)")
    certs.add_argument("--force", action="store_true", help="replace existing files")
    certs.add_argument("--ca-key-dir", help="ca/server: folder of the CA's private key ca.key (default: ca-private/ "
                                            "beside --out; keep it offline, never on the SuperLink machine)")
    certs.set_defaults(handler=cmd_certs)

    superlink = actions.add_parser("superlink", help="run the SuperLink (loopback) and the Fleet-only TLS front")
    superlink.add_argument("--pki", required=True, help="folder with ca.crt, server.pem, server.key")
    superlink.add_argument("--host", default="0.0.0.0", help="address the Fleet front listens on (default 0.0.0.0)")
    superlink.add_argument("--port", type=int, default=DEFAULT_FLEET_PORT,
                           help=f"port sites connect to (default {DEFAULT_FLEET_PORT})")
    _control_port(superlink)
    superlink.add_argument("--state", default="./superlink-state",
                           help="folder for superlink.db (registered sites, runs), superlink.log and sites.json")
    superlink.set_defaults(handler=cmd_superlink, interrupted_hint=(
        "stopped: the SuperLink and every process it started (SuperExec, ServerApp) are stopped; a federated run "
        "that was under way records the interruption in its ledger and continues from its last round with "
        "`secure-ft deploy launch --resume RUN_DIR` once the SuperLink is back"))

    register_sites = actions.add_parser("register", help="register site public keys (coordinator machine only)")
    register_sites.add_argument("keys", nargs="+", metavar="SITE.pub", help="the file name (without .pub) is the site's name")
    register_sites.add_argument("--ca", required=True, help="the federation's ca.crt")
    register_sites.add_argument("--state", required=True, help="the SuperLink's --state folder (keeps site names)")
    register_sites.epilog = ("runs on the coordinator machine only: the Control API it uses listens on 127.0.0.1; "
                             "from anywhere else the Fleet front answers 403")
    _control_port(register_sites)
    register_sites.set_defaults(handler=cmd_register)

    supernode = actions.add_parser("supernode", help="run this site's SuperNode on its own data file")
    supernode.add_argument("--superlink", required=True, help="HOST:PORT of the coordinator's Fleet front")
    supernode.add_argument("--ca", required=True, help="the federation's ca.crt")
    supernode.add_argument("--key", required=True, help="this site's private key (its .pub must be registered)")
    supernode.add_argument("--data", required=True, help="this site's labelled CSV / TSV / JSONL / Parquet file")
    supernode.add_argument("--site", required=True, help="this site's name (as registered)")
    supernode.add_argument("--state", help="where the site keeps its ledgers (default ~/.secure-ft/sites/NAME)")
    supernode.add_argument("--port", type=int, help="local runtime API port (default: a free one)")
    supernode.add_argument("--site-policy", metavar="FILE", help="this site's own limits, checked before it trains "
                           "any round: max ε per run, lifetime ε of its data file, min noise multiplier, max rounds, "
                           "accepted base-model digests and label sets (see deploy/README.md, 'Site policy')")
    supernode.set_defaults(handler=cmd_supernode, interrupted_hint=(
        "stopped: this SuperNode and its ClientApps are stopped; start it again to rejoin the run from its next round"))

    launch = actions.add_parser("launch", help="pre-flight, then run a federated training across the sites "
                                               "(or --resume an interrupted one)")
    launch.add_argument("--config", help="the run config (its data is the coordinator's hold-out)")
    launch.add_argument("--run-dir", help="the run directory to create (must not hold a run)")
    launch.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its last checkpoint, "
                                                            "with the config it started with")
    launch.add_argument("--ca", required=True, help="the federation's ca.crt")
    launch.add_argument("--state", help="the SuperLink's --state folder: sites that do not answer are named from its "
                                        "site registry")
    launch.add_argument("--policy", help="policy the pre-flight checks against (default: the config's, else built-in)")
    _control_port(launch)
    launch.set_defaults(handler=cmd_launch, interrupted_hint=(
        "interrupted: stopped following the run; on the SuperLink it goes on (or, if it was stopped, continues with "
        "`secure-ft deploy launch --resume RUN_DIR`)"))

    sites = subparsers.add_parser("sites", help="the federation's registered sites (coordinator machine)")
    sites_actions = sites.add_subparsers(dest="sites_command", metavar="ACTION", required=True)
    listing = sites_actions.add_parser("list", help="registered sites: name, node id, status, key")
    listing.add_argument("--ca", required=True, help="the federation's ca.crt")
    listing.add_argument("--state", required=True, help="the SuperLink's --state folder")
    _control_port(listing)
    listing.set_defaults(handler=cmd_sites_list)


def _control_port(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--control-port", type=int, default=DEFAULT_CONTROL_PORT,
                        help=f"the SuperLink's loopback port for the Control and runtime APIs (default {DEFAULT_CONTROL_PORT})")
