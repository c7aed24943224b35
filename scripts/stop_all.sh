#!/usr/bin/env bash
# Stop every process the deployment scripts started, by the pid files in RUN_DIR:
# SuperNodes first (so they do not spend the grace period retrying a vanished
# SuperLink), then the SuperLink and any other pid file there, each with its process
# group and its descendants (the SuperExec and ClientApp/ServerApp processes run in
# sessions of their own, so the group alone would miss them). SIGTERM, a bounded wait
# of STOP_TIMEOUT seconds, then SIGKILL. Removes the pid files; keeps logs, keys and
# the SuperLink database (registrations and node ids survive a restart).
#
#   scripts/stop_all.sh              # everything in RUN_DIR
#   scripts/stop_all.sh supernode_2  # one process by its pid-file name (device 2 leaves)
#
# Only processes named by these pid files are signalled, never processes found by
# name: other people's Flower or Ray processes on the same machine are left alone.
# A pid file whose process has exited, or whose pid now belongs to a process started
# later (the start time is recorded), is just removed.
set -uo pipefail   # no -e: one process that cannot be stopped must not keep the rest running
# shellcheck source-path=SCRIPTDIR source=_common.sh
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

[[ "${1:-}" == -h || "${1:-}" == --help ]] && { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0; }

if [[ $# -gt 0 ]]; then
    for n in "$@"; do
        [[ "$n" =~ ^[A-Za-z0-9_.-]+$ && "$n" != .* ]] || die "not a pid-file name: '$n' (e.g. supernode_2, superlink)"
        n="${n%.pid}"
        [[ -f "$RUN_DIR/$n.pid" ]] || echo "$n: no pid file in $RUN_DIR (not running)"
        stop_pidfile "$RUN_DIR/$n.pid"
    done
    exit 0
fi
[[ -d "$RUN_DIR" ]] || { echo "nothing to stop: $RUN_DIR does not exist"; exit 0; }
shopt -s nullglob
for f in "$RUN_DIR"/supernode_*.pid; do stop_pidfile "$f"; done
for f in "$RUN_DIR"/*.pid; do [[ -f "$f" ]] && stop_pidfile "$f"; done
exit 0
