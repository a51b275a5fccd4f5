#!/usr/bin/env bash
# Start one site's SuperNode: it connects out to the SuperLink over TLS, authenticates with the
# site's private key, and trains only on the site's own data file. Runs in the foreground.
#
#   deploy/start_supernode.sh --superlink HOST:PORT --ca ca.crt --key KEYFILE --data FILE --site NAME \
#                             [--state DIR] [--port 9094]
#
# --superlink  the SuperLink's address as the site reaches it (its certificate must name it)
# --ca         the federation's CA certificate (ca.crt)
# --key        this site's private key (deploy/make_certs.py site-key); its .pub must be registered
# --data       this site's labelled CSV / TSV / JSONL / Parquet file, columns as in the run config
# --site       this site's name (shown in the server's logs and records)
# --state      where the site keeps its own ledger and privacy records (default ~/.secure-ft/sites/NAME)
# --port       local port of the SuperNode's runtime API (default 9094; one per SuperNode on a host)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

superlink="" ca="" key="" data="" site="" state="" port="9094"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --superlink) superlink="$2"; shift 2 ;;
    --ca) ca="$2"; shift 2 ;;
    --key) key="$2"; shift 2 ;;
    --data) data="$2"; shift 2 ;;
    --site) site="$2"; shift 2 ;;
    --state) state="$2"; shift 2 ;;
    --port) port="$2"; shift 2 ;;
    *) die "unknown option $1 (see the header of $0)" ;;
  esac
done
for option in superlink ca key data site; do
  [[ -n "${!option}" ]] || die "--$option is required"
done
require_file "$ca" "CA certificate"
require_file "$key" "site key"
require_file "$data" "data file"
[[ "$site" =~ ^[A-Za-z0-9_.-]+$ ]] || die "--site must be a plain name (letters, digits, . _ -)"
state="${state:-$HOME/.secure-ft/sites/$site}"
mkdir -p "$state"
require_command flower-supernode
data="$(cd "$(dirname "$data")" && pwd)/$(basename "$data")"
state="$(cd "$state" && pwd)"

exec flower-supernode \
  --root-certificates "$ca" \
  --superlink "$superlink" \
  --auth-supernode-private-key "$key" \
  --node-config "data-path=\"$data\" site-name=\"$site\" state-dir=\"$state\"" \
  --port "$port"
