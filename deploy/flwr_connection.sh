#!/usr/bin/env bash
# Write the flwr CLI connection "secure-ft" (SuperLink address + CA) into $FLWR_HOME/config.toml.
#
#   deploy/flwr_connection.sh --superlink HOST:PORT --ca ca.crt [--name secure-ft]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

superlink="" ca="" name="secure-ft"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --superlink) superlink="$2"; shift 2 ;;
    --ca) ca="$2"; shift 2 ;;
    --name) name="$2"; shift 2 ;;
    *) die "unknown option $1 (see the header of $0)" ;;
  esac
done
[[ -n "$superlink" && -n "$ca" ]] || die "--superlink and --ca are required"
require_file "$ca" "CA certificate"
require_command python
ca="$(cd "$(dirname "$ca")" && pwd)/$(basename "$ca")"
python - "$name" "$superlink" "$ca" <<'PY'
import os, sys
from pathlib import Path

import tomli
import tomli_w

name, address, ca = sys.argv[1:]
home = Path(os.environ.get("FLWR_HOME") or Path.home() / ".flwr")
path = home / "config.toml"
config = tomli.loads(path.read_text()) if path.is_file() else {}
superlink = config.setdefault("superlink", {})
superlink.setdefault("default", name)
superlink[name] = {"address": address, "root-certificates": ca}
home.mkdir(parents=True, exist_ok=True)
temp = path.with_suffix(".tmp")
temp.write_text(tomli_w.dumps(config))
os.replace(temp, path)
print(f"flwr connection {name!r} -> {address} (CA {ca}) in {path}")
PY
