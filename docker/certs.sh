#!/usr/bin/env bash
# Certificates for the TLS overlay (docker/compose.tls.yml): a demo CA and a SuperLink
# server certificate whose names cover the compose service name "superlink" and the
# published port on the host (127.0.0.1, localhost).
#
#   docker/certs.sh [OUT_DIR]            # default: docker/certs (git-ignored)
#
# The certificates themselves come from scripts/make_certs.sh (the same CA layout as the
# non-container deployment). What this adds: the containers run as the Flower images'
# user (uid 49999), which must be able to read server.key through a read-only bind
# mount. As root we hand the key to that uid and keep it 0600; otherwise (rootless
# engines map uids differently) the key is made world-readable, which is acceptable only
# for a throw-away demo CA: never do that with a real key.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$HERE/.." && pwd)"
OUT_DIR="${1:-$HERE/certs}"
APP_UID="${APP_UID:-49999}"

[[ -f "$REPO_ROOT/scripts/make_certs.sh" ]] ||
    { echo "certs.sh: $REPO_ROOT/scripts/make_certs.sh not found" >&2; exit 2; }

# 0 SuperNode keys: the compose demo uses TLS without SuperNode authentication.
bash "$REPO_ROOT/scripts/make_certs.sh" "$OUT_DIR" 0 >/dev/null

if [[ "$(id -u)" == 0 ]]; then
    chown "$APP_UID:$APP_UID" "$OUT_DIR/server.key"
else
    echo "certs.sh: not root: making $OUT_DIR/server.key world-readable so that the" \
         "containers' user can read it (demo certificates only)" >&2
    chmod 0644 "$OUT_DIR/server.key"
fi
chmod 0755 "$OUT_DIR"
echo "certs.sh: TLS certificates for the compose demo in $OUT_DIR (ca.crt, server.pem, server.key)"
