# Shared by the deploy scripts: find the Flower commands, keep Flower offline and quiet.
# Set SECURE_FT_VENV to the virtual environment secure-ft is installed in (or activate it).

if [[ -n "${SECURE_FT_VENV:-}" ]]; then
  export PATH="$SECURE_FT_VENV/bin:$PATH"
fi
# Never phone home, never check for updates, never install an app's dependencies at run time.
export FLWR_TELEMETRY_ENABLED="${FLWR_TELEMETRY_ENABLED:-0}"
export FLWR_DISABLE_UPDATE_CHECK="${FLWR_DISABLE_UPDATE_CHECK:-1}"
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1
export RAY_DISABLE_USAGE_STATS=1
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}" TRANSFORMERS_OFFLINE="${TRANSFORMERS_OFFLINE:-1}"
export TOKENIZERS_PARALLELISM=false

die() { echo "error: $*" >&2; exit 2; }

require_command() {
  command -v "$1" >/dev/null 2>&1 || die "$1 not found on PATH; activate the secure-ft virtual environment or set SECURE_FT_VENV"
}

require_file() {
  [[ -f "$1" ]] || die "$2 $1 does not exist"
}
