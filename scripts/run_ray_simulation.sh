#!/usr/bin/env bash
# Run the FLEX-MoE app with Flower's simulation engine on an existing (multi-node) Ray
# cluster, e.g. one from scripts/ray_cluster.sh, and wait for the run to finish.
# Run it on a node of that cluster (normally the head): a Ray driver needs a local raylet.
#
#   RAY_ADDRESS=10.0.0.1:6380 scripts/run_ray_simulation.sh "num-server-rounds=3" ...
#   scripts/run_ray_simulation.sh            # the cluster of scripts/ray_cluster.sh start
#
# Each argument is one `--run-config` value: override strings "k1=v1 k2=v2", or a single
# TOML file of overrides (relative to APP_DIR); Flower 1.42 refuses a mix of both.
#
# How Flower 1.42 reaches the cluster: its Ray backend calls ray.init() in the
# flwr-simulation process, which joins the cluster named by RAY_ADDRESS (Ray reads the
# variable). That process is started by the SuperLink and inherits its environment, so
# this script starts its own simulation SuperLink with RAY_ADDRESS set (the `local` one
# that `flwr run` starts by itself would not have it). Do not set the federation's
# init-args-num-cpus/num-gpus: Ray refuses them when it joins an existing cluster.
#
# Settings (environment, plus those of scripts/_common.sh):
#   RAY_ADDRESS        cluster to join                [contents of $RAY_RUN_DIR/address]
#   RAY_RUN_DIR        where scripts/ray_cluster.sh keeps its state      [$RUN_DIR/ray]
#   SIM_PORT           simulation SuperLink port (loopback only)         [9193]
#   SIM_NUM_SUPERNODES simulated SuperNodes                              [4]
#   CLIENT_CPUS        CPUs per ClientApp (an integer); a node runs CPUs / CLIENT_CPUS
#                      ClientApps at a time                              [1]
#   CLIENT_GPUS        GPUs per ClientApp (may be fractional, e.g. 0.25)  [0.0]
#   RUN_TIMEOUT        seconds to wait for the run before stopping it    [900]
#   APP_DIR            the Flower app                                    [repo root]
# Exit status 0 only if the run's status is finished:completed. The run id and status
# go to $RUN_DIR/ray_run.json, the run's log to $RUN_DIR/logs/ray_run_<id>.log.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

RAY_RUN_DIR="${RAY_RUN_DIR:-$RUN_DIR/ray}"
RAY_ADDRESS="${RAY_ADDRESS:-$(cat "$RAY_RUN_DIR/address" 2>/dev/null || true)}"
[[ -n "$RAY_ADDRESS" ]] || die "set RAY_ADDRESS=HEAD:PORT (or start a cluster with scripts/ray_cluster.sh start)"
export RAY_ADDRESS
SIM_PORT="${SIM_PORT:-9193}"
SIM_NUM_SUPERNODES="${SIM_NUM_SUPERNODES:-4}"
CLIENT_CPUS="${CLIENT_CPUS:-1}"
CLIENT_GPUS="${CLIENT_GPUS:-0.0}"
RUN_TIMEOUT="${RUN_TIMEOUT:-900}"
APP_DIR="${APP_DIR:-$REPO_ROOT}"
CONNECTION="${FLWR_CONNECTION}-ray"
require_int SIM_PORT "$SIM_PORT" 1
require_int SIM_NUM_SUPERNODES "$SIM_NUM_SUPERNODES" 1
require_int CLIENT_CPUS "$CLIENT_CPUS" 1
require_int RUN_TIMEOUT "$RUN_TIMEOUT" 1
[[ "$CLIENT_GPUS" =~ ^[0-9]+(\.[0-9]+)?$ ]] || die "CLIENT_GPUS must be a number >= 0, got '$CLIENT_GPUS'"
command -v flower-superlink >/dev/null || die "flower-superlink not found: set FLWR_VENV to the environment with flwr[simulation]"
mkdir -p "$RUN_DIR/logs"

# The simulation SuperLink, stopped (with the flwr-simulation and ServerApp processes it
# spawned) whatever happens below. A subshell with `set +e` so that a kill of a process
# that has just exited cannot end the clean-up half-way.
MODE=insecure SUPERLINK_ADDRESS="127.0.0.1:$SIM_PORT"
start_detached sim_superlink "$RUN_DIR/logs/sim_superlink.log" \
    flower-superlink --insecure --simulation --isolation subprocess --host 127.0.0.1 --port "$SIM_PORT" \
    --database "$RUN_DIR/sim_superlink.db" --disable-runtime-dependency-installation
trap '(set +e; stop_pidfile "$RUN_DIR/sim_superlink.pid" >/dev/null)' EXIT
trap 'exit 130' INT  # bash runs the EXIT trap on a signal only if that signal is trapped
trap 'exit 143' TERM
wait_for "simulation SuperLink" "$RUN_DIR/sim_superlink.pid" "$RUN_DIR/logs/sim_superlink.log" \
    "$STARTUP_TIMEOUT" superlink_healthy

# A named connection to it in $FLWR_HOME/config.toml (Flower 1.42 keeps connections
# there, not in pyproject.toml); other entries of the file are kept.
python3 - "$CONNECTION" "127.0.0.1:$SIM_PORT" <<'PY'
import os, sys, tomllib
from pathlib import Path
import tomli_w  # a dependency of flwr

name, address = sys.argv[1:3]
home = Path(os.environ.get("FLWR_HOME") or Path.home() / ".flwr")
path = home / "config.toml"
config = tomllib.loads(path.read_text()) if path.exists() else {}
superlink = config.setdefault("superlink", {})
superlink.setdefault("default", name)
superlink[name] = {"address": address, "insecure": True}
home.mkdir(parents=True, exist_ok=True)
path.write_text(tomli_w.dumps(config))
PY

# The simulation settings travel with the run (the `options.` entries of config.toml
# are deprecated in 1.42).
RUN_ARGS=(--federation-config "num-supernodes=$SIM_NUM_SUPERNODES client-resources-num-cpus=$CLIENT_CPUS client-resources-num-gpus=$CLIENT_GPUS")
for override in "$@"; do RUN_ARGS+=(--run-config "$override"); done
SUBMIT=$(cd "$APP_DIR" && flwr run . "$CONNECTION" "${RUN_ARGS[@]}" --format json) ||
    die "flwr run failed: $SUBMIT"
RUN_ID=$(python3 -c 'import json,sys; d=json.loads(sys.stdin.read()); print(d["run-id"]) if d.get("success") else sys.exit(1)' \
         <<< "$SUBMIT" 2>/dev/null) || die "flwr run was refused: $SUBMIT"
echo "run $RUN_ID submitted to the simulation SuperLink on 127.0.0.1:$SIM_PORT (Ray at $RAY_ADDRESS)"

# `flwr run --stream` would exit 0 even for a failed run: poll the run's status instead.
run_status() {
    flwr ls "$CONNECTION" --run-id "$RUN_ID" --format json 2>/dev/null |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["runs"][0]["status"])' 2>/dev/null || echo unknown
}
STATUS=unknown
deadline=$((SECONDS + RUN_TIMEOUT))
while ((SECONDS < deadline)); do
    STATUS=$(run_status)
    [[ "$STATUS" == finished:* ]] && break
    sleep 3
done
if [[ "$STATUS" != finished:* ]]; then
    echo "run $RUN_ID not finished after ${RUN_TIMEOUT}s (status $STATUS): stopping it" >&2
    (cd "$APP_DIR" && timeout 60 flwr stop "$RUN_ID" "$CONNECTION" >/dev/null 2>&1) || true
fi
printf '{"run-id": "%s", "status": "%s"}\n' "$RUN_ID" "$STATUS" > "$RUN_DIR/ray_run.json"
(cd "$APP_DIR" && timeout 60 flwr log "$RUN_ID" "$CONNECTION" --show > "$RUN_DIR/logs/ray_run_$RUN_ID.log" 2>&1) || true
echo "run $RUN_ID: $STATUS (log: $RUN_DIR/logs/ray_run_$RUN_ID.log)"
[[ "$STATUS" == finished:completed ]]
