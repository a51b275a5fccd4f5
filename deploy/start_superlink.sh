#!/usr/bin/env bash
# Start the federation's SuperLink: TLS on, SuperNode authentication on (only registered site
# keys may join), no run-time dependency installation. Runs in the foreground (systemd, tmux).
#
#   deploy/start_superlink.sh --pki DIR [--host 0.0.0.0] [--port 9093] [--state DIR]
#
# --pki    folder with ca.crt, server.pem, server.key (deploy/make_certs.py ca / server)
# --host   address to listen on (default 0.0.0.0: sites must reach it)
# --port   the one HTTPS port for SuperNodes, the flwr CLI and the ServerApp (default 9093)
# --state  folder for the SuperLink's database (registered sites, runs) and log (default ./superlink-state)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

pki="" host="0.0.0.0" port="9093" state="./superlink-state"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --pki) pki="$2"; shift 2 ;;
    --host) host="$2"; shift 2 ;;
    --port) port="$2"; shift 2 ;;
    --state) state="$2"; shift 2 ;;
    *) die "unknown option $1 (see the header of $0)" ;;
  esac
done
[[ -n "$pki" ]] || die "--pki DIR is required"
for file in ca.crt server.pem server.key; do require_file "$pki/$file" "TLS file"; done
require_command flower-superlink
require_command flower-superexec   # the SuperLink starts it to run the ServerApp
mkdir -p "$state"

exec flower-superlink \
  --ssl-ca-certfile "$pki/ca.crt" --ssl-certfile "$pki/server.pem" --ssl-keyfile "$pki/server.key" \
  --enable-supernode-auth \
  --disable-runtime-dependency-installation \
  --database "$state/superlink.db" \
  --host "$host" --port "$port"
