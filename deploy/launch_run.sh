#!/usr/bin/env bash
# Launch a federated run on the SuperLink and stream its log until it ends.
#
#   deploy/launch_run.sh --superlink HOST:PORT --ca ca.crt --config run.yaml --run-dir DIR
#
# --config   the secure-ft run config the ServerApp uses (its data is the coordinator's
#            held-out evaluation set; the sites' data never leaves the sites)
# --run-dir  the run directory the ServerApp creates (model/, metrics.json, privacy.json, ledger)
# Paths are read by the ServerApp, which runs on the SuperLink's machine: give absolute paths.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/common.sh"

superlink="" ca="" config="" run_dir=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --superlink) superlink="$2"; shift 2 ;;
    --ca) ca="$2"; shift 2 ;;
    --config) config="$2"; shift 2 ;;
    --run-dir) run_dir="$2"; shift 2 ;;
    *) die "unknown option $1 (see the header of $0)" ;;
  esac
done
for option in superlink ca config run_dir; do
  [[ -n "${!option}" ]] || die "--${option//_/-} is required"
done
require_file "$config" "run config"
[[ ! -e "$run_dir/model" ]] || die "$run_dir already holds a run; choose a new --run-dir"
require_command flwr
config="$(cd "$(dirname "$config")" && pwd)/$(basename "$config")"
case "$run_dir" in /*) ;; *) run_dir="$(pwd)/$run_dir" ;; esac

"$here/flwr_connection.sh" --superlink "$superlink" --ca "$ca"
# the app is the repository root: pyproject.toml's [tool.flwr.app] names the ServerApp / ClientApp
exec flwr run "$here/.." secure-ft --stream \
  --run-config "sites=\"deployed\" config-file=\"$config\" run-dir=\"$run_dir\""
