#!/usr/bin/env bash
# One-command multi-node Ray simulation demo on this machine: start a Ray head and
# RAY_NUM_WORKERS worker nodes (scripts/ray_cluster.sh), run the app on that cluster with
# Flower's simulation engine (scripts/run_ray_simulation.sh), record from Ray's GCS on
# which nodes the ClientApps ran, and stop everything it started (also on failure).
#
#   scripts/ray_demo.sh "num-server-rounds=2 max-samples-per-client=200"
#   scripts/ray_demo.sh --netns "num-server-rounds=2"
#
# --netns runs everything in a new network namespace that has only a loopback
# interface (as root, or with unprivileged user namespaces): on one machine Ray would
# otherwise advertise the machine's network address instead of 127.0.0.1. The namespace
# also has its own ports, so nothing clashes with other Ray or Flower processes.
# Arguments after the options are run-config overrides (scripts/run_ray_simulation.sh);
# the settings of scripts/ray_cluster.sh and scripts/run_ray_simulation.sh apply.
# Output in $RUN_DIR: ray_run.json (run id and final status) and ray_placement.json
# (the Ray nodes, the ClientAppActor actors with their nodes, and the finished ClientApp
# calls per node).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

if [[ "${1:-}" == --netns ]]; then
    shift
    if [[ -z "${FLEXMOE_IN_NETNS:-}" ]]; then
        command -v unshare >/dev/null || { echo "ray_demo.sh: --netns needs unshare (util-linux)" >&2; exit 2; }
        export FLEXMOE_IN_NETNS=1
        # Without root a user namespace (mapped to root inside) grants the network one.
        userns=()
        (($(id -u) == 0)) || userns=(--user --map-root-user)
        # exec: the namespace's processes stay this script's process (same pid).
        exec unshare "${userns[@]}" --net -- "$HERE/ray_demo.sh" --netns "$@"
    fi
    # Inside the namespace loopback starts down: bring it up (ip from iproute2, else
    # the SIOCSIFFLAGS ioctl that ip uses).
    if command -v ip >/dev/null; then
        ip link set lo up
    else
        python3 -c '
import fcntl, socket, struct
s = socket.socket()
fcntl.ioctl(s, 0x8914, struct.pack("16sH14s", b"lo", 0x1 | 0x40, b""))  # SIOCSIFFLAGS, IFF_UP | IFF_RUNNING'
    fi
fi

source "$HERE/_common.sh"
export RAY_RUN_DIR="${RAY_RUN_DIR:-$RUN_DIR/ray}"
mkdir -p "$RUN_DIR"
rm -f "$RUN_DIR/ray_run.json" "$RUN_DIR/ray_placement.json"

# bash runs the EXIT trap on a signal only if that signal is trapped too.
trap '"$HERE/ray_cluster.sh" stop' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
"$HERE/ray_cluster.sh" start
RAY_ADDRESS=$("$HERE/ray_cluster.sh" address)
export RAY_ADDRESS

status=0
"$HERE/run_ray_simulation.sh" "$@" || status=$?
# The GCS keeps the actor table and the task events only while the cluster runs.
"$HERE/ray_cluster.sh" report "$RUN_DIR/ray_placement.json" || status=1
exit "$status"
