#!/usr/bin/env bash
# Start SuperNodes in the background, each its own device: own partition, own capacity,
# own stable client id and (in TLS mode) own authentication key.
#
#   scripts/start_supernodes.sh          # nodes 1..NUM_SUPERNODES
#   scripts/start_supernodes.sh 2        # (re)start node 2 only, e.g. after stopping it
#
# Node i gets
#   --node-config "partition-id=<i-1> num-partitions=NUM_SUPERNODES capacity=<i-th of CAPACITIES>
#                  client-id='device-<i>' $NODE_CONFIG_EXTRA"
#   --host NODE_HOST --port NODE_PORT_BASE+i-1   (its Runtime API, where the ClientApp's
#                                                  SuperExec connects; one port per node)
#   MODE=tls: --root-certificates CERTS_DIR/ca.crt --auth-supernode-private-key CERTS_DIR/supernode_<i>
# and writes RUN_DIR/supernode_<i>.pid and RUN_DIR/logs/supernode_<i>.log.
# In TLS mode register the public keys first (scripts/register_nodes.sh): the SuperLink
# refuses unknown keys. The script waits (bounded by STARTUP_TIMEOUT) until each node
# has connected; a node that does not connect in time is stopped again and the script
# fails, so it never leaves a half-started node behind. Settings: see scripts/_common.sh.
#
# The nodes run in REPO_ROOT, so that a relative state-dir in NODE_CONFIG_EXTRA or the
# run config's client-state-dir lands in the repository.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=_common.sh
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

[[ "${1:-}" == -h || "${1:-}" == --help ]] && { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0; }
check_mode
command -v flower-supernode >/dev/null || die "flower-supernode not found: set FLWR_VENV or install flwr"
require_int NUM_SUPERNODES "$NUM_SUPERNODES" 1
require_int NODE_PORT_BASE "$NODE_PORT_BASE" 1
read -r -a CAPS <<< "$CAPACITIES"
[[ ${#CAPS[@]} -eq "$NUM_SUPERNODES" ]] ||
    die "CAPACITIES must list one capacity per node ($NUM_SUPERNODES), got '${CAPACITIES}'"
for c in "${CAPS[@]}"; do require_int "capacity in CAPACITIES" "$c" 1; done

# NODE_PORTS (optional): one Runtime API port per node, overriding NODE_PORT_BASE+i-1.
read -r -a PORTS <<< "${NODE_PORTS:-}"
if [[ ${#PORTS[@]} -gt 0 && ${#PORTS[@]} -ne "$NUM_SUPERNODES" ]]; then
    die "NODE_PORTS must list one port per node ($NUM_SUPERNODES), got '${NODE_PORTS}'"
fi

NODES=("$@")
if [[ ${#NODES[@]} -eq 0 ]]; then mapfile -t NODES < <(seq 1 "$NUM_SUPERNODES"); fi
for i in "${NODES[@]}"; do  # validate all before starting any
    require_int "node number" "$i" 1
    ((i <= NUM_SUPERNODES)) || die "node number $i > NUM_SUPERNODES=$NUM_SUPERNODES"
done
for p in ${PORTS[@]+"${PORTS[@]}"}; do require_int "port in NODE_PORTS" "$p" 1; done
ensure_run_dir
cd "$REPO_ROOT"
declare -a LOG_START=()
# log_since LOG FROM GREP-ARGS...: grep the lines this start wrote (from line FROM on).
# Never grep -q here: it may exit before tail has written, and pipefail would count
# tail's SIGPIPE as a failure.
log_since() { local log="$1" from="$2"; shift 2; tail -n "+$from" "$log" | grep "$@"; }
log_has() { log_since "$1" "$2" -- "$3" >/dev/null; }

for i in "${NODES[@]}"; do
    NODE_CONFIG="partition-id=$((i - 1)) num-partitions=$NUM_SUPERNODES capacity=${CAPS[$((i - 1))]} client-id='device-$i'"
    [[ -n "$NODE_CONFIG_EXTRA" ]] && NODE_CONFIG="$NODE_CONFIG $NODE_CONFIG_EXTRA"
    PORT=$((NODE_PORT_BASE + i - 1))
    [[ ${#PORTS[@]} -gt 0 ]] && PORT=${PORTS[$((i - 1))]}
    ARGS=(--superlink "$SUPERLINK_ADDRESS" --host "$NODE_HOST" --port "$PORT"
          --isolation subprocess --node-config "$NODE_CONFIG")
    if [[ "$MODE" == tls ]]; then
        KEY="$CERTS_DIR/supernode_$i"
        [[ -f "$KEY" ]] || die "missing $KEY: run scripts/make_certs.sh '$CERTS_DIR' $NUM_SUPERNODES"
        ARGS+=(--root-certificates "$CERTS_DIR/ca.crt" --auth-supernode-private-key "$KEY")
    else
        ARGS+=(--insecure)
    fi
    LOG="$RUN_DIR/logs/supernode_$i.log"
    LOG_START[i]=$(($(wc -l 2>/dev/null < "$LOG" || echo 0) + 1))   # logs are appended to
    start_detached "supernode_$i" "$LOG" flower-supernode "${ARGS[@]}"
    echo "SuperNode $i started (pid $(pid_of "$RUN_DIR/supernode_$i.pid")): $NODE_CONFIG"
done

# Bounded wait until every started node has connected (it logs its node id). The nodes
# start in parallel, so this usually takes one start-up time, not one per node.
failed=()
for i in "${NODES[@]}"; do
    LOG="$RUN_DIR/logs/supernode_$i.log"
    if wait_for "SuperNode $i" "$RUN_DIR/supernode_$i.pid" "$LOG" "$STARTUP_TIMEOUT" \
            log_has "$LOG" "${LOG_START[$i]}" "SuperNode ID"; then
        echo "SuperNode $i connected: $(log_since "$LOG" "${LOG_START[$i]}" -o 'SuperNode ID: [0-9]*' | tail -n 1)"
    else
        stop_pidfile "$RUN_DIR/supernode_$i.pid" >/dev/null || true
        failed+=("$i")
    fi
done
((${#failed[@]} == 0)) ||
    die "SuperNode(s) ${failed[*]} did not connect to $SUPERLINK_ADDRESS and were stopped (is the SuperLink up? MODE=tls: are their keys registered?)"
