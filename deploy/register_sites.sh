#!/usr/bin/env bash
# Register site public keys with the SuperLink: only registered keys may join the federation.
#
#   deploy/register_sites.sh --superlink HOST:PORT --ca ca.crt SITE.pub [SITE.pub ...]
#
# Uses (and creates) the flwr connection "secure-ft" in $FLWR_HOME/config.toml (default ~/.flwr).
# List the registered sites with:  flwr supernode list secure-ft
set -euo pipefail
here="$(dirname "${BASH_SOURCE[0]}")"
source "$here/common.sh"

superlink="" ca="" keys=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --superlink) superlink="$2"; shift 2 ;;
    --ca) ca="$2"; shift 2 ;;
    -*) die "unknown option $1 (see the header of $0)" ;;
    *) keys+=("$1"); shift ;;
  esac
done
[[ -n "$superlink" && -n "$ca" ]] || die "--superlink and --ca are required"
[[ ${#keys[@]} -gt 0 ]] || die "give at least one SITE.pub file"
require_command flwr
"$here/flwr_connection.sh" --superlink "$superlink" --ca "$ca"
for key in "${keys[@]}"; do
  require_file "$key" "public key"
  name="$(basename "$key" .pub)"
  flwr supernode register "$key" secure-ft --name "$name"
done
