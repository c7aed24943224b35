#!/usr/bin/env bash
# Credentials for the TLS and SuperNode-authentication overlays (docker/compose.tls.yml,
# docker/compose.auth.yml):
#   ca.crt, server.pem, server.key   demo CA and SuperLink server certificate; its names
#                                    cover the compose service name "superlink" and the
#                                    published port on the host (127.0.0.1, localhost)
#   supernode_1..3 (+ .pub)          the demo SuperNodes' key pairs (ECDSA P-384, OpenSSH
#                                    format): their identities, registered with the
#                                    SuperLink by `flwr supernode register`
#   supernode_4 (+ .pub)             a key that is never registered: the
#                                    supernode-unregistered service shows it is refused
# and, for compose.auth.yml, the directory of the SuperLink's database (FLEXMOE_STATE_DIR).
#
#   docker/certs.sh [OUT_DIR]            # default: docker/certs (git-ignored)
#
# Settings: NUM_NODE_KEYS [4]; FLEXMOE_STATE_DIR [docker/state] (created, git-ignored).
#
# The certificates and keys come from scripts/make_certs.sh (the same layout as the
# non-container deployment). Keys that exist are kept, so a device keeps its identity
# when this script runs again; delete a key file to rotate it (and register the new
# public key). What this adds: the containers run as the Flower images' user (uid 49999),
# which must be able to read server.key and its own node key through read-only bind
# mounts, and write the SuperLink database. As root we hand those files to that uid and
# keep the keys 0600; otherwise (rootless engines map uids differently) the keys are made
# world-readable and the state directory world-writable, which is acceptable only for a
# throw-away demo: never do that with real keys.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$HERE/.." && pwd)"
OUT_DIR="${1:-$HERE/certs}"
NUM_NODE_KEYS="${NUM_NODE_KEYS:-4}"
STATE_DIR="${FLEXMOE_STATE_DIR:-$HERE/state}"
APP_UID="${APP_UID:-49999}"

[[ -f "$REPO_ROOT/scripts/make_certs.sh" ]] ||
    { echo "certs.sh: $REPO_ROOT/scripts/make_certs.sh not found" >&2; exit 2; }
[[ "$NUM_NODE_KEYS" =~ ^[0-9]+$ ]] || { echo "certs.sh: NUM_NODE_KEYS must be an integer" >&2; exit 2; }

bash "$REPO_ROOT/scripts/make_certs.sh" "$OUT_DIR" "$NUM_NODE_KEYS" >/dev/null
mkdir -p "$STATE_DIR"
[[ -f "$STATE_DIR/.gitignore" ]] || echo '*' > "$STATE_DIR/.gitignore"

KEYS=("$OUT_DIR/server.key")
for ((i = 1; i <= NUM_NODE_KEYS; i++)); do KEYS+=("$OUT_DIR/supernode_$i"); done
if [[ "$(id -u)" == 0 ]]; then
    chown "$APP_UID:$APP_UID" "${KEYS[@]}"
    chown "$APP_UID:$APP_UID" "$STATE_DIR"
    chmod 0700 "$STATE_DIR"
else
    echo "certs.sh: not root: making server.key and the SuperNode keys in $OUT_DIR world-readable" \
         "and $STATE_DIR world-writable, so that the containers' user can use them (demo only)" >&2
    chmod 0644 "${KEYS[@]}"
    chmod 0777 "$STATE_DIR"
fi
chmod 0755 "$OUT_DIR"
echo "certs.sh: TLS certificates (ca.crt, server.pem, server.key) and $NUM_NODE_KEYS SuperNode" \
     "key pairs (supernode_<i>, supernode_<i>.pub) in $OUT_DIR; SuperLink state directory $STATE_DIR"
