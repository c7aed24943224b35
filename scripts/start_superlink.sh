#!/usr/bin/env bash
# Start a Flower SuperLink in the background and point the Flower CLI at it.
#
#   MODE=insecure scripts/start_superlink.sh      # plain HTTP on 127.0.0.1:8000
#   MODE=tls      scripts/start_superlink.sh      # HTTPS + SuperNode authentication
#                                                 # (certificates from scripts/make_certs.sh)
#   SUPERLINK_HOST=0.0.0.0 MODE=tls scripts/start_superlink.sh   # reachable by other machines
#
# Writes RUN_DIR/superlink.pid and RUN_DIR/logs/superlink.log, waits (bounded) until the
# /health endpoint answers, then adds/updates the connection FLWR_CONNECTION in
# $FLWR_HOME/config.toml (private by default: RUN_DIR/flwr-home), so that
#   FLWR_HOME=<that> flwr run . $FLWR_CONNECTION
# reaches it. Settings: see scripts/_common.sh. Extra flower-superlink flags may follow
# on the command line (e.g. --health-server-address 127.0.0.1:9098).
#
# The SuperLink runs in REPO_ROOT: the ServerApp processes it starts inherit that
# working directory, so a relative results-dir (default results/latest) lands in the
# repository as it does in simulation.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=_common.sh
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

[[ "${1:-}" == -h || "${1:-}" == --help ]] && { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0; }
check_mode
require_int SUPERLINK_PORT "$SUPERLINK_PORT" 1
command -v flower-superlink >/dev/null || die "flower-superlink not found: set FLWR_VENV or install flwr"
ensure_run_dir
LOG="$RUN_DIR/logs/superlink.log"

ARGS=(--host "$SUPERLINK_HOST" --port "$SUPERLINK_PORT" --isolation subprocess)
if [[ "$MODE" == tls ]]; then
    # One certificate serves the Fleet, Control and Runtime APIs (they share the port).
    # --enable-supernode-auth: only SuperNodes whose public key was registered with
    # `flwr supernode register` (scripts/register_nodes.sh) may connect.
    ARGS+=(--ssl-ca-certfile "$CERTS_DIR/ca.crt" --ssl-certfile "$CERTS_DIR/server.pem"
           --ssl-keyfile "$CERTS_DIR/server.key" --enable-supernode-auth)
else
    ARGS+=(--insecure)
fi
# The database keeps runs, registered keys and node ids across SuperLink restarts.
[[ -n "$SUPERLINK_DATABASE" ]] && ARGS+=(--database "$SUPERLINK_DATABASE")
[[ "$FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION" == 1 ]] && ARGS+=(--disable-runtime-dependency-installation)

cd "$REPO_ROOT"
start_detached superlink "$LOG" flower-superlink "${ARGS[@]}" "$@"
if ! wait_for superlink "$RUN_DIR/superlink.pid" "$LOG" "$STARTUP_TIMEOUT" superlink_healthy; then
    stop_pidfile "$RUN_DIR/superlink.pid" >/dev/null || true
    die "the SuperLink did not start (is port $SUPERLINK_PORT in use? set SUPERLINK_PORT)"
fi

# Add the connection to the Flower CLI's config.toml, keeping every other entry.
"$PYTHON" - "$FLWR_CONNECTION" "$SUPERLINK_ADDRESS" "$MODE" "$CERTS_DIR/ca.crt" <<'PY'
import os, sys
from pathlib import Path
import tomli, tomli_w

name, address, mode, ca = sys.argv[1:5]
home = Path(os.environ["FLWR_HOME"])
path = home / "config.toml"
config = tomli.loads(path.read_text()) if path.exists() else {}
superlink = config.setdefault("superlink", {})
superlink.setdefault("default", name)
entry = {"address": address}
if mode == "tls":
    entry["root-certificates"] = str(Path(ca).resolve())
else:
    entry["insecure"] = True
superlink[name] = entry
home.mkdir(parents=True, exist_ok=True)
path.write_text(tomli_w.dumps(config))
print(f"Flower CLI connection '{name}' -> {address} ({mode}) written to {path}")
PY
echo "SuperLink running (pid $(pid_of "$RUN_DIR/superlink.pid"), $MODE) on $SUPERLINK_HOST:$SUPERLINK_PORT; log: $LOG"
if [[ "$FLWR_HOME" != "$HOME/.flwr" ]]; then
    echo "Use it with: export FLWR_HOME=$FLWR_HOME; flwr run $REPO_ROOT $FLWR_CONNECTION --stream"
fi
