#!/usr/bin/env bash
# Register each SuperNode's public key with a SuperLink running with
# --enable-supernode-auth (MODE=tls), through the Flower CLI connection FLWR_CONNECTION.
#
#   scripts/register_nodes.sh            # keys CERTS_DIR/supernode_1.pub .. _N.pub
#   scripts/register_nodes.sh 4          # only node 4 (a device that joins later)
#
# The SuperLink gives each key a node id at registration and keeps it (in its
# --database) across SuperNode and SuperLink restarts: that id is the device's
# identity. The ids are kept in RUN_DIR/node_ids.tsv (node number <TAB> node id).
# Registering a key again is harmless: the SuperLink answers 'Public key already in
# use' and the key keeps its node id; the script reports it and goes on.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=_common.sh
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

[[ "${1:-}" == -h || "${1:-}" == --help ]] && { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0; }
[[ "$MODE" == tls ]] || die "node registration needs MODE=tls (SuperNode authentication requires TLS)"
check_mode
require_int NUM_SUPERNODES "$NUM_SUPERNODES" 1
NODES=("$@")
if [[ ${#NODES[@]} -eq 0 ]]; then mapfile -t NODES < <(seq 1 "$NUM_SUPERNODES"); fi
ensure_run_dir
command -v flwr >/dev/null || die "flwr not found: set FLWR_VENV or install flwr"
grep -qsF "[superlink.$FLWR_CONNECTION]" "$FLWR_HOME/config.toml" ||
    die "no connection '$FLWR_CONNECTION' in $FLWR_HOME/config.toml: start the SuperLink with scripts/start_superlink.sh (same RUN_DIR/FLWR_HOME)"

failed=0
for i in "${NODES[@]}"; do
    require_int "node number" "$i" 1
    PUB="$CERTS_DIR/supernode_$i.pub"
    [[ -f "$PUB" ]] || die "missing $PUB: run scripts/make_certs.sh '$CERTS_DIR' $NUM_SUPERNODES"
    # --format json answers {"success": true, "node-id": N} or {"success": false, "error-message": ...}
    # (exit status 0 or not); parse the answer rather than trust the status.
    OUT=$(flwr supernode register "$PUB" "$FLWR_CONNECTION" --name "device-$i" --format json 2>&1) || true
    VERDICT=$("$PYTHON" -c '
import json, sys
try:
    d = json.loads(sys.stdin.read())
except ValueError:
    print("error"); sys.exit()
if d.get("success"):
    print("ok", d["node-id"])
elif "already in use" in d.get("error-message", ""):
    print("known")
else:
    print("error")' <<< "$OUT")
    case "$VERDICT" in
        ok\ *)
            NODE_ID=${VERDICT#ok }
            # one line per node: replace an older entry of a rotated key
            { grep -v "^$i"$'\t' "$RUN_DIR/node_ids.tsv" 2>/dev/null || true
              printf '%s\t%s\n' "$i" "$NODE_ID"; } > "$RUN_DIR/node_ids.tsv.new"
            mv "$RUN_DIR/node_ids.tsv.new" "$RUN_DIR/node_ids.tsv"
            echo "node $i ($PUB) registered as node id $NODE_ID" ;;
        known)
            echo "node $i ($PUB) was already registered (its node id is unchanged)" ;;
        *)
            echo "node $i ($PUB) not registered: $OUT" >&2
            failed=1 ;;
    esac
done
exit "$failed"
