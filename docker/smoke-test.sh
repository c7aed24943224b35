#!/usr/bin/env bash
# End-to-end smoke test of the container demo (docker/compose.yml):
#   1. build the images (official Flower base images, or local stand-ins where no image
#      registry is reachable, podman only);
#   2. start SuperLink, ServerApp SuperExec and 3 SuperNodes with their ClientApp
#      SuperExecs (compose; plus compose.tls.yml with MODE=tls; plus compose.auth.yml with
#      MODE=auth: the nodes' keys are registered with the SuperLink before they start,
#      each node must come online under the node id its key was registered with, and a
#      node with an unregistered key must be refused);
#   3. submit a 2-round FLEX-MoE run with `flwr run . <connection>`, wait until the
#      SuperLink reports it finished, and require "finished:completed";
#   4. copy the results out of the results volume and check them (files, round count,
#      accuracies in [0, 1], 3 clients per round, no failures, the capacity-bounded
#      expert load, stable client ids); MODE=auth: restart a SuperNode and the SuperLink
#      and check that every node keeps its node id;
#   5. tear everything down (containers, network, results volume), also on failure or
#      Ctrl-C, after saving every service's log.
#
#   docker/smoke-test.sh                 # plain HTTP
#   MODE=tls docker/smoke-test.sh        # TLS overlay (certificates from docker/certs.sh)
#   MODE=auth docker/smoke-test.sh       # TLS + SuperNode authentication (+ node keys)
#
# Settings (environment variables):
#   MODE           insecure | tls | auth                                       [insecure]
#   ENGINE         auto | docker | podman (auto: a reachable Docker engine, else podman) [auto]
#   BASE_SOURCE    auto | official | local: flwr/{superlink,supernode,superexec} images
#                  from the registry, or built here (debootstrap + pip; podman, root).
#                  auto: official if present or pullable, else local         [auto]
#   REBUILD_BASE   1 = rebuild the local base images even if they exist       [0]
#   TORCH_SOURCE   auto | cpu-index | wheelhouse | default-index: where CPU torch comes
#                  from. auto: the PyTorch CPU index if reachable, else a torch *+cpu
#                  wheel in WHEELHOUSE (podman), else the default index's build, which
#                  pulls ~3 GB of CUDA libraries                               [auto]
#   WHEELHOUSE     local wheel directory mounted into the build (podman)  [pip's find-links]
#   FLWR_VERSION   Flower version of the base images (must match pyproject)   [1.42.0]
#   FLEXMOE_IMAGE  tag of the app's SuperExec image           [localhost/flexmoe-superexec:latest]
#   PROJECT        compose project name (containers, network, volume)        [flexmoe-smoke]
#   SUPERLINK_PORT host port of the SuperLink                                 [a free port]
#   FASHION_MNIST_DIR  host directory with the Fashion-MNIST IDX files
#                                                [/usr/share/datasets/fashion-mnist]
#   SMOKE_DIR      logs, copied results and the Flower CLI home   [${TMPDIR:-/tmp}/flexmoe-smoke]
#   STARTUP_TIMEOUT / RUN_TIMEOUT  bounded waits in seconds                  [300 / 900]
#   KEEP           1 = leave the demo running after the test (stop it with the printed
#                  `down` command)                                           [0]
#
# Needs: bash, python3, the project's venv (or `flwr` on PATH) for the Flower CLI, and
# Docker with the compose plugin, or podman (podman-compose is installed from PyPI into
# ~/.cache/flexmoe/podman-compose when it is not on PATH).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$HERE/.." && pwd)"

MODE="${MODE:-insecure}"
ENGINE="${ENGINE:-auto}"
BASE_SOURCE="${BASE_SOURCE:-auto}"
REBUILD_BASE="${REBUILD_BASE:-0}"
TORCH_SOURCE="${TORCH_SOURCE:-auto}"
TORCH_INDEX_URL="${TORCH_INDEX_URL:-https://download.pytorch.org/whl/cpu}"
WHEELHOUSE="${WHEELHOUSE:-}"
FLWR_VERSION="${FLWR_VERSION:-1.42.0}"
FLEXMOE_IMAGE="${FLEXMOE_IMAGE:-localhost/flexmoe-superexec:latest}"
LOCAL_ROOTFS_IMAGE="${LOCAL_ROOTFS_IMAGE:-localhost/flexmoe-debian-python:bookworm}"
LOCAL_FLWR_IMAGE="${LOCAL_FLWR_IMAGE:-localhost/flwr-superexec-local:$FLWR_VERSION}"
DEBIAN_MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
PROJECT="${PROJECT:-flexmoe-smoke}"
FASHION_MNIST_DIR="${FASHION_MNIST_DIR:-/usr/share/datasets/fashion-mnist}"
SMOKE_DIR="${SMOKE_DIR:-${TMPDIR:-/tmp}/flexmoe-smoke}"
STARTUP_TIMEOUT="${STARTUP_TIMEOUT:-300}"
RUN_TIMEOUT="${RUN_TIMEOUT:-900}"
KEEP="${KEEP:-0}"
PODMAN_COMPOSE_VERSION="${PODMAN_COMPOSE_VERSION:-1.6.0}"
CONNECTION="flexmoe-docker"
# Node capacities of compose.yml (1 + 2 + 4 = 7 expert slots for the 8 experts).
CAPACITIES=(1 2 4)

T0=$SECONDS
log() { printf '[smoke %4ds] %s\n' "$((SECONDS - T0))" "$*"; }
die() { echo "smoke-test.sh: error: $*" >&2; exit 1; }
declare -A PHASE_SECONDS=()
phase_start() { PHASE_NAME="$1"; PHASE_T0=$SECONDS; log "== $1"; }
phase_end() { PHASE_SECONDS[$PHASE_NAME]=$((SECONDS - PHASE_T0)); }

case "$MODE" in insecure|tls|auth) ;; *) die "MODE must be insecure, tls or auth, got '$MODE'" ;; esac
case "$BASE_SOURCE" in auto|official|local) ;; *) die "BASE_SOURCE must be auto, official or local" ;; esac
case "$TORCH_SOURCE" in auto|cpu-index|wheelhouse|default-index) ;;
    *) die "TORCH_SOURCE must be auto, cpu-index, wheelhouse or default-index" ;; esac
for t in "$STARTUP_TIMEOUT" "$RUN_TIMEOUT"; do [[ "$t" =~ ^[0-9]+$ ]] || die "timeouts must be integers (seconds)"; done

# ----------------------------------------------------------------------------- tools
if [[ -x "$REPO_ROOT/.venv/bin/flwr" ]]; then
    FLWR="$REPO_ROOT/.venv/bin/flwr"; PYTHON="$REPO_ROOT/.venv/bin/python"
elif command -v flwr >/dev/null; then
    FLWR="$(command -v flwr)"; PYTHON="$(command -v python3)"
else
    die "the Flower CLI was not found: run scripts/setup.sh (creates .venv) or put flwr on PATH"
fi
command -v python3 >/dev/null || die "python3 not found"

if [[ "$ENGINE" == auto ]]; then
    if command -v docker >/dev/null && docker info >/dev/null 2>&1; then ENGINE=docker
    elif command -v podman >/dev/null; then ENGINE=podman
    else die "neither a running Docker engine nor podman was found"; fi
fi
case "$ENGINE" in
    docker)
        docker info >/dev/null 2>&1 || die "ENGINE=docker but the Docker engine is not reachable"
        docker compose version >/dev/null 2>&1 || die "the Docker compose plugin is missing (docker compose)"
        COMPOSE=(docker compose)
        ;;
    podman)
        command -v podman >/dev/null || die "ENGINE=podman but podman is not installed"
        # Settings that make podman work without systemd, cgroup delegation or overlay
        # mounts (docker/podman/*.conf); a caller's own settings win.
        export CONTAINERS_CONF="${CONTAINERS_CONF:-$HERE/podman/containers.conf}"
        # Storage: overlay through fuse-overlayfs where it exists (a container starts in
        # about a second), else vfs (copies the whole image per container: minutes).
        if [[ -z "${CONTAINERS_STORAGE_CONF:-}" ]]; then
            if [[ -x /usr/bin/fuse-overlayfs && -c /dev/fuse ]]; then
                CONTAINERS_STORAGE_CONF="$HERE/podman/storage.conf"
            else
                CONTAINERS_STORAGE_CONF="$HERE/podman/storage-vfs.conf"
            fi
        fi
        export CONTAINERS_STORAGE_CONF
        if command -v podman-compose >/dev/null; then
            COMPOSE=(podman-compose)
        else
            TOOL_VENV="${XDG_CACHE_HOME:-$HOME/.cache}/flexmoe/podman-compose"
            if [[ ! -x "$TOOL_VENV/bin/podman-compose" ]]; then
                log "installing podman-compose $PODMAN_COMPOSE_VERSION into $TOOL_VENV"
                python3 -m venv "$TOOL_VENV"
                "$TOOL_VENV/bin/python" -m pip install -q "podman-compose==$PODMAN_COMPOSE_VERSION"
            fi
            COMPOSE=("$TOOL_VENV/bin/podman-compose")
        fi
        ;;
    *) die "ENGINE must be auto, docker or podman, got '$ENGINE'" ;;
esac
log "engine: $ENGINE ($(${ENGINE} --version)), compose: ${COMPOSE[*]}"

for f in train-images-idx3-ubyte.gz train-labels-idx1-ubyte.gz t10k-images-idx3-ubyte.gz t10k-labels-idx1-ubyte.gz; do
    [[ -f "$FASHION_MNIST_DIR/$f" ]] || die "Fashion-MNIST not found in $FASHION_MNIST_DIR ($f missing):" \
        "apt-get install dataset-fashion-mnist, or set FASHION_MNIST_DIR to a directory with the 4 IDX files"
done

image_exists() { "$ENGINE" image inspect "$1" >/dev/null 2>&1; }

# Build-time access to the package registry. podman builds in a private network
# namespace with the image's own CA bundle: use the host network, and the host's CA
# bundle (pip's `cert` setting; a TLS-intercepting proxy's CA is often only there).
BUILD_ARGS=(--network host)
PIP_ARGS=""
if [[ "$ENGINE" == podman ]]; then
    CA_FILE="${PIP_CERT:-}"
    if [[ -z "$CA_FILE" ]] && "$PYTHON" -m pip --version >/dev/null 2>&1; then
        CA_FILE="$("$PYTHON" -m pip config get global.cert 2>/dev/null || true)"
    fi
    [[ -z "$CA_FILE" && -f /etc/ssl/certs/ca-certificates.crt ]] && CA_FILE=/etc/ssl/certs/ca-certificates.crt
    if [[ -n "$CA_FILE" && -f "$CA_FILE" ]]; then
        CA_DIR="$(dirname "$(readlink -f "$CA_FILE")")"
        BUILD_ARGS+=(--volume "$CA_DIR:$CA_DIR:ro")
        PIP_ARGS="--cert $(readlink -f "$CA_FILE")"
    fi
fi

# ---------------------------------------------------------------- teardown (trap)
COMPOSE_FILES=(-f "$HERE/compose.yml")
[[ "$MODE" == tls || "$MODE" == auth ]] && COMPOSE_FILES+=(-f "$HERE/compose.tls.yml")
[[ "$MODE" == auth ]] && COMPOSE_FILES+=(-f "$HERE/compose.auth.yml")
compose() { "${COMPOSE[@]}" -p "$PROJECT" "${COMPOSE_FILES[@]}" "$@"; }
SERVICES=(superlink superexec-serverapp supernode-1 supernode-2 supernode-3
          superexec-clientapp-1 superexec-clientapp-2 superexec-clientapp-3)
# `down` with every profile enabled, so that it also removes the unregistered node's
# container should one be left over.
DOWN_PROFILES=()
[[ "$MODE" == auth ]] && DOWN_PROFILES=(--profile unregistered)
STARTED=0

save_logs() {
    mkdir -p "$SMOKE_DIR/logs"
    for s in "${SERVICES[@]}"; do
        compose logs "$s" > "$SMOKE_DIR/logs/$s.log" 2>&1 || true
    done
}

teardown() {
    local rc=$?
    trap - EXIT INT TERM
    if ((STARTED)); then
        save_logs
        if ((rc != 0)); then
            echo "---- last log lines of each service (full logs in $SMOKE_DIR/logs) ----" >&2
            for s in "${SERVICES[@]}"; do
                echo "---- $s" >&2
                tail -n 15 "$SMOKE_DIR/logs/$s.log" >&2 || true
            done
        fi
        if [[ "$KEEP" == 1 ]]; then
            log "KEEP=1: the demo is still running; stop it with:"
            echo "    ${COMPOSE[*]} -p $PROJECT ${COMPOSE_FILES[*]} ${DOWN_PROFILES[*]} down -v"
        else
            log "tearing down (containers, network, results volume)"
            compose "${DOWN_PROFILES[@]}" down -v -t 10 >"$SMOKE_DIR/logs/down.log" 2>&1 ||
                echo "smoke-test.sh: warning: '${COMPOSE[*]} down' failed; see $SMOKE_DIR/logs/down.log" >&2
        fi
    fi
    if ((rc == 0)); then log "PASSED"; else echo "smoke-test.sh: FAILED (exit $rc) after $((SECONDS - T0))s" >&2; fi
    exit "$rc"
}
trap teardown EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

rm -rf "$SMOKE_DIR"
mkdir -p "$SMOKE_DIR/logs"

# ------------------------------------------------------------------ base images
phase_start "base images"
# Fully qualified names: podman resolves no short names without a search registry.
OFFICIAL=("docker.io/flwr/superlink:$FLWR_VERSION" "docker.io/flwr/supernode:$FLWR_VERSION"
          "docker.io/flwr/superexec:$FLWR_VERSION")
if [[ "$BASE_SOURCE" == auto ]]; then
    BASE_SOURCE=official
    for img in "${OFFICIAL[@]}"; do
        image_exists "$img" && continue
        log "pulling $img"
        if ! timeout 600 "$ENGINE" pull -q "$img" >"$SMOKE_DIR/logs/pull.log" 2>&1; then
            log "cannot pull $img ($(tail -n 1 "$SMOKE_DIR/logs/pull.log" | cut -c1-160))"
            BASE_SOURCE=local
            break
        fi
    done
    log "base images: $BASE_SOURCE"
fi

if [[ "$BASE_SOURCE" == official ]]; then
    SUPERLINK_IMAGE="${OFFICIAL[0]}"; SUPERNODE_IMAGE="${OFFICIAL[1]}"; SUPEREXEC_BASE="${OFFICIAL[2]}"
    for img in "${OFFICIAL[@]}"; do
        image_exists "$img" || "$ENGINE" pull -q "$img" >/dev/null || die "cannot pull $img"
    done
else
    [[ "$ENGINE" == podman ]] || die "BASE_SOURCE=local is implemented for podman only (docker can pull the official images)"
    # Stage 1: a Debian root file system with Python (what flwr/base provides).
    if [[ "$REBUILD_BASE" == 1 ]] || ! image_exists "$LOCAL_ROOTFS_IMAGE"; then
        [[ "$(id -u)" == 0 ]] || die "building $LOCAL_ROOTFS_IMAGE needs root (debootstrap)"
        command -v debootstrap >/dev/null || die "debootstrap not found (apt-get install debootstrap)"
        ROOTFS="$(mktemp -d "${TMPDIR:-/var/tmp}/flexmoe-rootfs.XXXXXX")"
        log "debootstrap bookworm into $ROOTFS ($DEBIAN_MIRROR)"
        debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
            bookworm "$ROOTFS" "$DEBIAN_MIRROR" >"$SMOKE_DIR/logs/debootstrap.log" 2>&1 ||
            { rm -rf "$ROOTFS"; die "debootstrap failed; see $SMOKE_DIR/logs/debootstrap.log"; }
        rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/lib/apt/lists/*
        tar -C "$ROOTFS" -c . | podman import --change 'CMD ["/bin/bash"]' - "$LOCAL_ROOTFS_IMAGE" \
            >"$SMOKE_DIR/logs/import.log" 2>&1 || die "podman import failed; see $SMOKE_DIR/logs/import.log"
        rm -rf "$ROOTFS"
        log "built $LOCAL_ROOTFS_IMAGE"
    else
        log "reusing $LOCAL_ROOTFS_IMAGE"
    fi
    # Stage 2: the flwr/superexec stand-in (user app 49999, /python/venv, flwr).
    if [[ "$REBUILD_BASE" == 1 ]] || ! image_exists "$LOCAL_FLWR_IMAGE"; then
        log "building $LOCAL_FLWR_IMAGE"
        podman build "${BUILD_ARGS[@]}" -f "$HERE/podman/Containerfile.flwr-base" \
            --build-arg ROOTFS_IMAGE="$LOCAL_ROOTFS_IMAGE" --build-arg FLWR_VERSION="$FLWR_VERSION" \
            --build-arg PIP_ARGS="$PIP_ARGS" -t "$LOCAL_FLWR_IMAGE" "$HERE/podman" \
            >"$SMOKE_DIR/logs/build-flwr-base.log" 2>&1 ||
            die "building $LOCAL_FLWR_IMAGE failed; see $SMOKE_DIR/logs/build-flwr-base.log"
    else
        log "reusing $LOCAL_FLWR_IMAGE"
    fi
    SUPERLINK_IMAGE="$LOCAL_FLWR_IMAGE"; SUPERNODE_IMAGE="$LOCAL_FLWR_IMAGE"; SUPEREXEC_BASE="$LOCAL_FLWR_IMAGE"
fi
phase_end

# -------------------------------------------------------------------- app image
phase_start "app image"
index_reachable() {
    python3 - "$1" <<'PY'
import sys, urllib.request
try:
    urllib.request.urlopen(sys.argv[1].rstrip("/") + "/torch/", timeout=10).close()
except Exception:
    sys.exit(1)
PY
}
# The newest torch CPU wheel in a wheelhouse, plus the matching torchvision CPU wheel if
# the wheelhouse has one (torchvision 0.(minor+15).patch pairs with torch 2.minor.patch).
# The default index's torchvision is built against CUDA torch and fails to load with a
# CPU torch, so without a CPU wheel torchvision is left out: the demo's Fashion-MNIST
# path never imports it (only the CIFAR-10/EMNIST/GTSRB loaders do).
wheelhouse_torch() {
    local whl version minor patch vision
    whl="$(find "$1" -maxdepth 1 -name 'torch-*+cpu-cp311-*.whl' 2>/dev/null | sort -V | tail -n 1)"
    [[ -n "$whl" ]] || return 1
    version="$(basename "$whl" | cut -d- -f2)"          # e.g. 2.13.0+cpu
    IFS=. read -r _ minor patch <<< "${version%%+*}"
    vision="0.$((minor + 15)).$patch"
    if compgen -G "$1/torchvision-$vision+cpu-cp311-*.whl" >/dev/null; then
        echo "torch==$version torchvision==$vision+cpu"
    else
        echo "torch==$version"
    fi
}
if [[ -z "$WHEELHOUSE" ]]; then
    WHEELHOUSE="${PIP_FIND_LINKS:-}"
    [[ -z "$WHEELHOUSE" ]] && WHEELHOUSE="$("$PYTHON" -m pip config get global.find-links 2>/dev/null || true)"
    WHEELHOUSE="${WHEELHOUSE%% *}"
fi
if [[ "$TORCH_SOURCE" == auto ]]; then
    if index_reachable "$TORCH_INDEX_URL"; then TORCH_SOURCE=cpu-index
    elif [[ "$ENGINE" == podman && -n "$WHEELHOUSE" ]] && wheelhouse_torch "$WHEELHOUSE" >/dev/null; then TORCH_SOURCE=wheelhouse
    else TORCH_SOURCE=default-index; fi
fi
TORCH_PACKAGES=""
case "$TORCH_SOURCE" in
    cpu-index) ;;
    wheelhouse)
        [[ "$ENGINE" == podman ]] || die "TORCH_SOURCE=wheelhouse needs podman (docker build cannot mount a directory)"
        [[ -d "$WHEELHOUSE" ]] || die "WHEELHOUSE '$WHEELHOUSE' is not a directory"
        TORCH_PACKAGES="$(wheelhouse_torch "$WHEELHOUSE")" || die "no torch-*+cpu-cp311-*.whl in $WHEELHOUSE"
        TORCH_INDEX_URL=""
        BUILD_ARGS+=(--volume "$(readlink -f "$WHEELHOUSE"):/wheels:ro")
        PIP_ARGS="$PIP_ARGS --find-links /wheels"
        log "warning: the PyTorch CPU index is unreachable; using $TORCH_PACKAGES from $WHEELHOUSE" \
            "instead of pyproject's pins (fine for the demo's CNN, not a release image)"
        ;;
    default-index)
        TORCH_INDEX_URL=""
        log "warning: torch from the default index: its Linux build adds ~3 GB of CUDA libraries"
        ;;
esac
log "torch: $TORCH_SOURCE ${TORCH_PACKAGES:-(pyproject pins)}"
IGNORE_ARGS=()
# BuildKit picks up docker/Dockerfile.dockerignore by itself; podman needs to be told.
[[ "$ENGINE" == podman ]] && IGNORE_ARGS=(--ignorefile "$HERE/Dockerfile.dockerignore")
"$ENGINE" build "${BUILD_ARGS[@]}" "${IGNORE_ARGS[@]}" -f "$HERE/Dockerfile" \
    --build-arg BASE_IMAGE="$SUPEREXEC_BASE" --build-arg PIP_ARGS="$PIP_ARGS" \
    --build-arg TORCH_PACKAGES="$TORCH_PACKAGES" --build-arg TORCH_INDEX_URL="$TORCH_INDEX_URL" \
    -t "$FLEXMOE_IMAGE" "$REPO_ROOT" >"$SMOKE_DIR/logs/build-app.log" 2>&1 ||
    { tail -n 20 "$SMOKE_DIR/logs/build-app.log" >&2; die "building $FLEXMOE_IMAGE failed; see $SMOKE_DIR/logs/build-app.log"; }
log "built $FLEXMOE_IMAGE"
phase_end

# ------------------------------------------------------------------ certificates
# The certificates and node keys live in docker/certs/ and are kept across runs (the
# nodes' identities); the SuperLink's database starts empty in every test run.
export FLEXMOE_STATE_DIR="$SMOKE_DIR/superlink-state"
if [[ "$MODE" != insecure ]]; then
    export FLEXMOE_CERTS_DIR="$HERE/certs"
    bash "$HERE/certs.sh" "$FLEXMOE_CERTS_DIR" >/dev/null
fi

# ---------------------------------------------------------------------- start
phase_start "start demo"
if [[ -z "${SUPERLINK_PORT:-}" ]]; then
    SUPERLINK_PORT="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
fi
export SUPERLINK_PORT SUPERLINK_BIND=127.0.0.1 FASHION_MNIST_DIR
export FLEXMOE_IMAGE FLWR_SUPERLINK_IMAGE="$SUPERLINK_IMAGE" FLWR_SUPERNODE_IMAGE="$SUPERNODE_IMAGE"
export FLWR_SUPEREXEC_IMAGE="$SUPEREXEC_BASE" FLEXMOE_RESULTS_VOLUME="$PROJECT-results"
export CAPACITY_1="${CAPACITIES[0]}" CAPACITY_2="${CAPACITIES[1]}" CAPACITY_3="${CAPACITIES[2]}"

# Leftovers of an earlier run of this project (e.g. KEEP=1) would be reused by `up`.
compose "${DOWN_PROFILES[@]}" down -v -t 5 >"$SMOKE_DIR/logs/down-before.log" 2>&1 || true
STARTED=1
# compose_up LOG [SERVICE...]: `compose up -d` (all services of the default profile, or
# those named), failing the test if it fails.
compose_up() {
    local log="$1"; shift
    compose up -d --no-build "$@" >"$log" 2>&1 ||
        { tail -n 20 "$log" >&2; die "'compose up $*' failed; see $log"; }
}
if [[ "$MODE" == auth ]]; then
    # Authenticated nodes: the SuperLink alone first; the nodes start once their keys are
    # registered (below), because the SuperLink refuses an unknown key at once.
    compose_up "$SMOKE_DIR/logs/up-superlink.log" superlink
else
    compose_up "$SMOKE_DIR/logs/up.log"
fi

# The Flower CLI talks to the SuperLink through its published port.
export FLWR_HOME="$SMOKE_DIR/flwr-home"
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1 FLWR_DISABLE_UPDATE_CHECK=1
mkdir -p "$FLWR_HOME"
if [[ "$MODE" != insecure ]]; then
    SCHEME=https; TRANSPORT="root-certificates = \"$FLEXMOE_CERTS_DIR/ca.crt\""
else
    SCHEME=http; TRANSPORT="insecure = true"
fi
cat > "$FLWR_HOME/config.toml" <<EOF
[superlink]
default = "$CONNECTION"

[superlink.$CONNECTION]
address = "127.0.0.1:$SUPERLINK_PORT"
$TRANSPORT
EOF

# wait_until TIMEOUT WHAT CMD...: poll CMD every 2 s (bounded).
wait_until() {
    local timeout="$1" what="$2"; shift 2
    local deadline=$((SECONDS + timeout))
    until "$@"; do
        ((SECONDS < deadline)) || die "$what not ready after ${timeout}s"
        sleep 2
    done
}
superlink_healthy() {
    python3 - "$SCHEME://127.0.0.1:$SUPERLINK_PORT/health" "${FLEXMOE_CERTS_DIR:-}/ca.crt" <<'PY'
import ssl, sys, urllib.request
url, ca = sys.argv[1:3]
ctx = ssl.create_default_context(cafile=ca) if url.startswith("https") else None
try:
    with urllib.request.urlopen(url, timeout=3, context=ctx) as r:
        sys.exit(0 if r.status == 200 else 1)
except Exception:
    sys.exit(1)
PY
}
# flwr_json ARGS...: a `flwr` command's JSON answer on stdout (nothing if it had none).
# Bounded: a SuperLink that accepts the connection but never answers must not hang the test.
flwr_json() { (cd "$REPO_ROOT" && timeout 180 "$FLWR" "$@" --format json 2>>"$SMOKE_DIR/logs/flwr-cli.log") || true; }
# node_list [STATUS]: "node-id status" per line of the SuperLink's node list (only the
# nodes with that status if given); nothing when the SuperLink did not answer.
node_list() {
    flwr_json supernode ls "$CONNECTION" | python3 -c '
import json, sys
try:
    nodes = json.load(sys.stdin).get("nodes", [])
except ValueError:
    nodes = []
want = sys.argv[1] if len(sys.argv) > 1 else None
for n in nodes:
    status = str(n.get("status", "")).lower()
    if want is None or status == want:
        print(n.get("node-id"), status)' "$@"
}
nodes_online() { [[ "$(node_list online | wc -l)" -ge 3 ]]; }
wait_until "$STARTUP_TIMEOUT" "SuperLink ($SCHEME://127.0.0.1:$SUPERLINK_PORT/health)" superlink_healthy
log "SuperLink healthy on 127.0.0.1:$SUPERLINK_PORT ($MODE)"

if [[ "$MODE" == auth ]]; then
    # register_key N: `flwr supernode register` of docker/certs/supernode_N.pub; prints
    # "ok <node id>", "known" (already registered: its node id is unchanged) or "error <answer>".
    register_key() {
        flwr_json supernode register "$FLEXMOE_CERTS_DIR/supernode_$1.pub" "$CONNECTION" --name "device-$1" |
            python3 -c '
import json, sys
text = sys.stdin.read()
try:
    d = json.loads(text)
except ValueError:
    d = {}
if d.get("success"):
    print("ok", d["node-id"])
elif "already in use" in str(d.get("error-message", "")):
    print("known")
else:
    print("error", " ".join(text.split())[:300] or "no answer")'
    }
    declare -A NODE_ID=()
    for i in 1 2 3; do
        verdict="$(register_key "$i")"
        [[ "$verdict" == ok\ * ]] || die "registering supernode_$i.pub failed: $verdict (see $SMOKE_DIR/logs/flwr-cli.log)"
        NODE_ID[$i]="${verdict#ok }"
        log "registered docker/certs/supernode_$i.pub (device-$i) as node id ${NODE_ID[$i]}"
    done
    verdict="$(register_key 2)"
    [[ "$verdict" == known ]] || die "registering supernode_2.pub a second time answered '$verdict', expected 'already in use'"
    log "registering supernode_2.pub again: refused as already in use (node id kept)"
    REGISTERED="$(printf '%s\n' "${NODE_ID[@]}" | sort -n | paste -sd ' ' -)"
    compose_up "$SMOKE_DIR/logs/up.log"
fi
wait_until "$STARTUP_TIMEOUT" "3 SuperNodes online" nodes_online
log "3 SuperNodes online"

if [[ "$MODE" == auth ]]; then
    # node_id_in_log SERVICE: the node id in the service's last "SuperNode ID: N" line.
    node_id_in_log() {
        compose logs "$1" 2>/dev/null | grep -ao 'SuperNode ID: [0-9]*' | tail -n 1 | awk '{print $3}' || true
    }
    # nodes_are_registered: the SuperLink lists exactly the registered node ids, all online.
    nodes_are_registered() {
        [[ "$(node_list online | awk '{print $1}' | sort -n | paste -sd ' ' -)" == "$REGISTERED" &&
           "$(node_list | wc -l)" -eq 3 ]]
    }
    wait_until 60 "the online nodes to be exactly the registered ones ($REGISTERED)" nodes_are_registered
    for i in 1 2 3; do
        got="$(node_id_in_log "supernode-$i")"
        [[ "$got" == "${NODE_ID[$i]}" ]] || die "supernode-$i runs as node id '${got:-none}', registered as ${NODE_ID[$i]}"
    done
    log "each SuperNode runs under the node id its key was registered with: $REGISTERED"

    # A SuperNode with a valid key pair that the SuperLink does not know: must be refused.
    set +e
    timeout 180 "${COMPOSE[@]}" -p "$PROJECT" "${COMPOSE_FILES[@]}" --profile unregistered \
        run --rm --no-deps -T supernode-unregistered >"$SMOKE_DIR/logs/supernode-unregistered.log" 2>&1
    rc=$?
    set -e
    grep -a 'Failed to activate SuperNode\|Failed to initialize\|SuperNode ID' "$SMOKE_DIR/logs/supernode-unregistered.log" |
        sed 's/^/    /' || true
    ((rc != 0 && rc != 124)) ||
        die "the SuperNode with the unregistered key exited with $rc (expected a refusal); see $SMOKE_DIR/logs/supernode-unregistered.log"
    grep -aq 'Failed to activate SuperNode' "$SMOKE_DIR/logs/supernode-unregistered.log" ||
        die "the SuperNode with the unregistered key did not report 'Failed to activate SuperNode'; see $SMOKE_DIR/logs/supernode-unregistered.log"
    ! grep -aq 'SuperNode ID:' "$SMOKE_DIR/logs/supernode-unregistered.log" ||
        die "the SuperNode with the unregistered key got a node id; see $SMOKE_DIR/logs/supernode-unregistered.log"
    nodes_are_registered || die "after the unregistered node's attempt the SuperLink lists '$(node_list | tr '\n' ',')', expected exactly $REGISTERED"
    log "the SuperNode with the unregistered key (docker/certs/supernode_4) was refused (exit $rc); the SuperLink still lists only $REGISTERED"
fi
phase_end

# ------------------------------------------------------------------------ run
phase_start "2-round run"
# Enough data that the two rounds visibly train (100 samples leave the model at the majority class).
RUN_CONFIG="num-server-rounds=2 max-samples-per-client=400 local-epochs=2 results-dir='/app/results/smoke'"
SUBMITTED="$(flwr_json run . "$CONNECTION" --run-config "$RUN_CONFIG")"
RUN_ID="$(python3 -c 'import json, sys; a = json.loads(sys.argv[1] or "{}"); print(a.get("run-id", "") if a.get("success") else "")' "$SUBMITTED")" ||
    RUN_ID=""
[[ -n "$RUN_ID" ]] || die "flwr run did not submit a run: ${SUBMITTED:-no answer} (see $SMOKE_DIR/logs/flwr-cli.log)"
log "run $RUN_ID submitted ($RUN_CONFIG)"

run_status() {
    flwr_json ls "$CONNECTION" --run-id "$RUN_ID" | python3 -c '
import json, sys
try:
    runs = json.load(sys.stdin).get("runs") or []
except ValueError:
    runs = []
print(runs[0].get("status", "unknown") if runs else "unknown")'
}
DEADLINE=$((SECONDS + RUN_TIMEOUT))
STATUS=unknown
while ((SECONDS < DEADLINE)); do
    STATUS="$(run_status)"
    [[ "$STATUS" == finished* ]] && break
    sleep 5
done
# `flwr log` keeps the ServerApp's output (per-round lines) for the record.
(cd "$REPO_ROOT" && timeout 60 "$FLWR" log "$RUN_ID" "$CONNECTION" --show) >"$SMOKE_DIR/logs/run.log" 2>&1 || true
if [[ "$STATUS" != "finished:completed" ]]; then
    [[ "$STATUS" == finished* ]] || (cd "$REPO_ROOT" && timeout 60 "$FLWR" stop "$RUN_ID" "$CONNECTION") >/dev/null 2>&1 || true
    tail -n 30 "$SMOKE_DIR/logs/run.log" >&2 || true
    if [[ "$STATUS" == finished* ]]; then
        die "run $RUN_ID ended in status '$STATUS' (expected finished:completed)"
    fi
    die "run $RUN_ID did not finish within RUN_TIMEOUT=${RUN_TIMEOUT}s (status '$STATUS'; stopped)"
fi
grep -a '\[round ' "$SMOKE_DIR/logs/run.log" | sed 's/^/    /' || true
log "run $RUN_ID: $STATUS"
phase_end

# --------------------------------------------------------------------- results
phase_start "check results"
# Read the volume through a throw-away container: works the same for Docker and podman,
# rootless or not, whatever the volume's host path is.
mkdir -p "$SMOKE_DIR/results"
"$ENGINE" run --rm --entrypoint tar -v "$FLEXMOE_RESULTS_VOLUME:/results:ro" "$FLEXMOE_IMAGE" \
    -C /results/smoke -c . | tar -x -C "$SMOKE_DIR/results" ||
    die "cannot read the results from volume $FLEXMOE_RESULTS_VOLUME"
python3 - "$SMOKE_DIR/results" "${CAPACITIES[@]}" <<'PY'
import json, sys
from pathlib import Path

out, caps = Path(sys.argv[1]), [int(c) for c in sys.argv[2:]]
problems = []
def check(ok, what):
    if not ok:
        problems.append(what)

for name in ("config.json", "metrics.json", "metrics.csv", "assignments.json",
             "final_assignment.json", "fitness.json", "checkpoint.npz"):
    check((out / name).is_file() and (out / name).stat().st_size > 0, f"missing or empty {name}")
if problems:
    sys.exit("results check failed:\n  " + "\n  ".join(problems))

rounds = json.loads((out / "metrics.json").read_text())
check([r.get("round") for r in rounds] == [1, 2], f"rounds {[r.get('round') for r in rounds]} != [1, 2]")
num_experts = json.loads((out / "config.json").read_text()).get("num-experts", 8)
expected_load = sorted([1.0] * sum(caps) + [0.0] * (num_experts - sum(caps)))
for r in rounds:
    tag = f"round {r.get('round')}"
    check(0.0 <= r["accuracy-min"] <= r["accuracy"] <= 1.0, f"{tag}: accuracy {r['accuracy']} / min {r['accuracy-min']} out of range")
    check(r["num-sampled"] == r["num-completed"] == r["num-evaluated"] == len(caps),
          f"{tag}: sampled/completed/evaluated {r['num-sampled']}/{r['num-completed']}/{r['num-evaluated']} != {len(caps)}")
    check(r["num-failed"] == 0, f"{tag}: {r['num-failed']} failed clients")
    if sum(caps) <= num_experts:  # balanced: no expert held twice while one is idle
        check(sorted(r["expert-load"]) == expected_load, f"{tag}: expert load {r['expert-load']} != {expected_load}")
final = json.loads((out / "final_assignment.json").read_text())
held = {c: len(h) for c, h in zip(final["clients"], final["held"])}
want = {f"device-{i + 1}": k for i, k in enumerate(caps)}
check(held == want, f"experts held per client {held} != capacities {want}")
if problems:
    sys.exit("results check failed:\n  " + "\n  ".join(problems))
last = rounds[-1]
print(f"    results OK: 2 rounds, accuracy {rounds[0]['accuracy']:.3f} -> {last['accuracy']:.3f}, "
      f"expert load {last['expert-load']}, held {held}")
PY
log "results copied to $SMOKE_DIR/results"
phase_end

PHASES=("base images" "app image" "start demo" "2-round run" "check results")
if [[ "$MODE" == auth ]]; then
    # ------------------------------------------------------------- stable identities
    phase_start "node identity"
    # A SuperNode restart (graceful: SIGTERM, the node deactivates itself) comes back
    # under the same node id: the SuperLink maps its key to the id it registered.
    before="$(compose logs supernode-2 2>/dev/null | grep -ac 'SuperNode ID:' || true)"
    compose restart supernode-2 >"$SMOKE_DIR/logs/restart-supernode-2.log" 2>&1 ||
        die "'compose restart supernode-2' failed; see $SMOKE_DIR/logs/restart-supernode-2.log"
    reconnected() { [[ "$(compose logs supernode-2 2>/dev/null | grep -ac 'SuperNode ID:' || true)" -gt "$before" ]] && nodes_are_registered; }
    wait_until "$STARTUP_TIMEOUT" "supernode-2 to reconnect after its restart" reconnected
    got="$(node_id_in_log supernode-2)"
    [[ "$got" == "${NODE_ID[2]}" ]] || die "supernode-2 came back as node id '$got', registered as ${NODE_ID[2]}"
    log "supernode-2 restarted: back online as node id $got (unchanged)"
    # A SuperLink restart keeps the registrations: they are in its database (FLEXMOE_STATE_DIR).
    compose restart superlink >"$SMOKE_DIR/logs/restart-superlink.log" 2>&1 ||
        die "'compose restart superlink' failed; see $SMOKE_DIR/logs/restart-superlink.log"
    wait_until "$STARTUP_TIMEOUT" "the SuperLink after its restart" superlink_healthy
    same_ids() { [[ "$(node_list | awk '{print $1}' | sort -n | paste -sd ' ' -)" == "$REGISTERED" ]]; }
    wait_until 60 "the registered node ids after the SuperLink's restart" same_ids
    verdict="$(register_key 3)"
    [[ "$verdict" == known ]] || die "after the SuperLink's restart, supernode_3.pub is not known any more ('$verdict')"
    log "SuperLink restarted: it still knows the 3 keys and their node ids ($REGISTERED; from its database)"
    phase_end
    PHASES+=("node identity")
fi

for p in "${PHASES[@]}"; do
    printf '    %-14s %5ss\n' "$p" "${PHASE_SECONDS[$p]:-0}"
done
log "total $((SECONDS - T0))s (teardown follows)"
