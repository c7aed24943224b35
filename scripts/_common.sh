# shellcheck shell=bash
# Shared settings and helpers for the deployment scripts (sourced, not run).
#
# Every setting is an environment variable with a default, so the same scripts serve
# a laptop demo, a test and a real multi-machine setup:
#   MODE              insecure | tls   (tls = TLS + SuperNode authentication)  [insecure]
#   RUN_DIR           pid files, logs, SuperLink state database               [<repo>/.deploy]
#   CERTS_DIR         output of make_certs.sh                                  [$RUN_DIR/certs]
#   SUPERLINK_HOST    interface the SuperLink binds                           [127.0.0.1]
#   SUPERLINK_PORT    the SuperLink's single HTTP(S) port (Fleet, Control, Runtime APIs) [8000]
#   SUPERLINK_ADDRESS where SuperNodes and the CLI reach it                   [127.0.0.1:$SUPERLINK_PORT]
#   SUPERLINK_DATABASE state file; registrations and node ids survive restarts only with it
#                     ("" = in memory)                                        [$RUN_DIR/superlink.db]
#   NUM_SUPERNODES    number of SuperNodes                                     [3]
#   CAPACITIES        experts each node can hold, one per node                 ["1 2 4"]
#   NODE_HOST / NODE_PORT_BASE  SuperNode i serves its Runtime API on NODE_PORT_BASE+i-1 [127.0.0.1 / 9094]
#   NODE_PORTS        explicit Runtime API ports, one per node (overrides NODE_PORT_BASE)
#   NODE_CONFIG_EXTRA extra node-config pairs for every node, e.g. "state-dir='/var/lib/flexmoe'"
#   FLWR_CONNECTION   name of the SuperLink connection written to $FLWR_HOME/config.toml [flexmoe]
#   FLWR_HOME         Flower CLI home; private by default so ~/.flwr is never touched
#                                                                              [$RUN_DIR/flwr-home]
#   FLWR_VENV         virtual environment with flwr + the app                  [<repo>/.venv if present]
#   STARTUP_TIMEOUT / STOP_TIMEOUT  bounded waits in seconds                   [60 / 15]
#   OWNER_PID         if set, every process started here stops by itself when that pid
#                     dies, however it dies (flexmoe_core/watchdog.py)           [unset]

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MODE="${MODE:-insecure}"
RUN_DIR="${RUN_DIR:-$REPO_ROOT/.deploy}"
CERTS_DIR="${CERTS_DIR:-$RUN_DIR/certs}"
SUPERLINK_HOST="${SUPERLINK_HOST:-127.0.0.1}"
SUPERLINK_PORT="${SUPERLINK_PORT:-8000}"
SUPERLINK_ADDRESS="${SUPERLINK_ADDRESS:-127.0.0.1:$SUPERLINK_PORT}"
SUPERLINK_DATABASE="${SUPERLINK_DATABASE-$RUN_DIR/superlink.db}"
NUM_SUPERNODES="${NUM_SUPERNODES:-3}"
CAPACITIES="${CAPACITIES:-1 2 4}"
NODE_HOST="${NODE_HOST:-127.0.0.1}"
NODE_PORT_BASE="${NODE_PORT_BASE:-9094}"
NODE_CONFIG_EXTRA="${NODE_CONFIG_EXTRA:-}"
FLWR_CONNECTION="${FLWR_CONNECTION:-flexmoe}"
STARTUP_TIMEOUT="${STARTUP_TIMEOUT:-60}"
STOP_TIMEOUT="${STOP_TIMEOUT:-15}"
# The Flower CLI keeps its connections in $FLWR_HOME/config.toml. A private home keeps
# the user's own ~/.flwr untouched; export it so every `flwr` call of these scripts
# (and of anything they start) sees the same connections.
export FLWR_HOME="${FLWR_HOME:-$RUN_DIR/flwr-home}"
# Absolute paths: the start scripts change into REPO_ROOT (see there) and the pid files,
# logs and keys must stay where the caller meant them.
abspath() { if [[ "$1" == /* || "$1" == :* || -z "$1" ]]; then echo "$1"; else echo "$PWD/$1"; fi; }
RUN_DIR="$(abspath "$RUN_DIR")"
CERTS_DIR="$(abspath "$CERTS_DIR")"
SUPERLINK_DATABASE="$(abspath "$SUPERLINK_DATABASE")"
FLWR_HOME="$(abspath "$FLWR_HOME")"

if [[ -z "${FLWR_VENV:-}" && -x "$REPO_ROOT/.venv/bin/flower-superlink" ]]; then
    FLWR_VENV="$REPO_ROOT/.venv"
fi
if [[ -n "${FLWR_VENV:-}" ]]; then
    # The SuperLink/SuperNode start `flower-superexec` by name, so the venv must be on PATH.
    export PATH="$FLWR_VENV/bin:$PATH"
fi
# The Python that has flwr (and so tomli, tomli_w, cryptography): the one next to
# flower-superlink, whatever `python3` on PATH happens to be.
if [[ -z "${PYTHON:-}" ]]; then
    _flwr_bin="$(command -v flower-superlink 2>/dev/null || true)"
    if [[ -n "$_flwr_bin" && -x "$(dirname "$_flwr_bin")/python" ]]; then
        PYTHON="$(dirname "$_flwr_bin")/python"
    else
        PYTHON="python3"
    fi
    unset _flwr_bin
fi
# The app's dependencies are installed with the project; without this Flower would
# `uv sync` them (gigabytes with torch) when a run starts.
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="${FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION:-1}"
export FLWR_DISABLE_UPDATE_CHECK="${FLWR_DISABLE_UPDATE_CHECK:-1}"

die() { echo "$(basename "$0"): $*" >&2; exit 1; }

check_mode() {
    case "$MODE" in
        insecure) ;;
        tls)
            [[ -f "$CERTS_DIR/ca.crt" && -f "$CERTS_DIR/server.pem" && -f "$CERTS_DIR/server.key" ]] ||
                die "MODE=tls needs certificates in CERTS_DIR=$CERTS_DIR: run scripts/make_certs.sh '$CERTS_DIR' $NUM_SUPERNODES"
            ;;
        *) die "MODE must be 'insecure' or 'tls', got '$MODE'" ;;
    esac
}

require_int() {  # require_int NAME VALUE MIN
    [[ "$2" =~ ^[0-9]+$ && "$2" -ge "$3" ]] || die "$1 must be an integer >= $3, got '$2'"
}

# RUN_DIR holds private keys (certs/) and the SuperLink database: make it, and keep it
# out of version control even when it lies inside the repository.
ensure_run_dir() {
    mkdir -p "$RUN_DIR/logs"
    [[ -f "$RUN_DIR/.gitignore" ]] || echo '*' > "$RUN_DIR/.gitignore"
}

# Pid files hold "PID START" where START is the process start time (field 22 of
# /proc/PID/stat): a pid the kernel has since reused for another process does not
# match, so nothing but the process we started is ever signalled. The command name
# (field 2) may contain spaces, so count the fields after its closing parenthesis.
start_time() { sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | awk '{print $20}'; }

# pid_of PIDFILE -> the pid if the file names a live process we started, else nothing
pid_of() {
    local pid start
    [[ -f "$1" ]] || return 1
    read -r pid start < "$1" || true
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    is_alive "$pid" || return 1
    [[ -z "$start" || "$(start_time "$pid")" == "$start" ]] || return 1
    echo "$pid"
}

# pid_alive PIDFILE -> 0 if the pid file names a running process we started
pid_alive() { pid_of "$1" >/dev/null; }

# start_detached NAME LOGFILE CMD... : run CMD in its own session (pid = process group id)
# and write RUN_DIR/NAME.pid. Refuses if that pid file names a live process.
# The background child of a non-interactive shell is never a process-group leader, so
# setsid(1) calls setsid() in place instead of forking: $! is the command's own pid.
start_detached() {
    local name="$1" log="$2"; shift 2
    local pidfile="$RUN_DIR/$name.pid"
    if pid_alive "$pidfile"; then
        die "$name is already running (pid $(pid_of "$pidfile")); run scripts/stop_all.sh first"
    fi
    mkdir -p "$(dirname "$log")" "$RUN_DIR"
    # Append: the log of an earlier instance (e.g. before a restart) is kept for diagnosis.
    echo "===== $(date -u +%FT%TZ) starting $name: $*" >> "$log"
    if [[ -n "${OWNER_PID:-}" ]]; then
        require_int OWNER_PID "$OWNER_PID" 1
        # The watchdog runs from the repository (REPO_ROOT on PYTHONPATH) with the venv's Python.
        set -- env "PYTHONPATH=$REPO_ROOT${PYTHONPATH:+:$PYTHONPATH}" "$PYTHON" -m flexmoe_core.watchdog \
            --owner "$OWNER_PID" --grace "$STOP_TIMEOUT" -- "$@"
    fi
    setsid "$@" >>"$log" 2>&1 < /dev/null &
    local pid=$!
    echo "$pid $(start_time "$pid")" > "$pidfile"
}

# wait_for NAME PIDFILE LOGFILE TIMEOUT TEST-CMD... : poll TEST-CMD until it succeeds,
# failing early (with the log tail) if the process died.
wait_for() {
    local name="$1" pidfile="$2" log="$3" timeout="$4"; shift 4
    local deadline=$((SECONDS + timeout))
    while ((SECONDS < deadline)); do
        if ! pid_alive "$pidfile"; then
            echo "$name exited during start-up; last log lines ($log):" >&2
            tail -n 30 "$log" >&2 || true
            return 1
        fi
        if "$@"; then return 0; fi
        sleep 0.5
    done
    echo "$name not ready after ${timeout}s; last log lines ($log):" >&2
    tail -n 30 "$log" >&2 || true
    return 1
}

# URL of the SuperLink as the CLI and the nodes see it, and a bounded health probe.
superlink_url() {
    if [[ "$MODE" == tls ]]; then echo "https://$SUPERLINK_ADDRESS"; else echo "http://$SUPERLINK_ADDRESS"; fi
}
superlink_healthy() {
    # urllib rather than curl: python is always there (the venv), curl not in every image.
    "$PYTHON" - "$(superlink_url)/health" "${MODE}" "$CERTS_DIR/ca.crt" <<'PY'
import ssl, sys, urllib.request
url, mode, ca = sys.argv[1:4]
ctx = ssl.create_default_context(cafile=ca) if mode == "tls" else None
try:
    with urllib.request.urlopen(url, timeout=2, context=ctx) as r:
        sys.exit(0 if r.status == 200 else 1)
except Exception:
    sys.exit(1)
PY
}

descendants() {  # all descendants of pid $1, children before grandchildren
    local kids
    kids=$(ps -e -o pid=,ppid= | awk -v p="$1" '$2 == p {print $1}')
    for k in $kids; do echo "$k"; descendants "$k"; done
}

# A zombie (exited, not yet reaped: here PID 1 may never reap) counts as stopped.
is_alive() { kill -0 "$1" 2>/dev/null && [[ "$(ps -o stat= -p "$1" 2>/dev/null)" != Z* ]]; }
alive_any() { for p in "$@"; do is_alive "$p" && return 0; done; return 1; }

# stop_pidfile PIDFILE: stop the process named by PIDFILE, its process group and every
# descendant (SIGTERM, STOP_TIMEOUT seconds, SIGKILL), then remove PIDFILE.
# The descendants are listed before the first signal: once their parent is gone they
# are re-parented and could no longer be told apart from other people's processes.
stop_pidfile() {
    local pidfile="$1" name pid family
    name=$(basename "$pidfile" .pid)
    if ! pid=$(pid_of "$pidfile"); then
        rm -f "$pidfile"; return 0
    fi
    mapfile -t family < <(echo "$pid"; descendants "$pid")
    # SIGTERM exactly once per process: Flower's handler restores the default action
    # after the first signal, so a second one would cut its graceful exit short -- e.g.
    # a SuperNode's deactivation at the SuperLink, without which the SuperLink refuses
    # the restarted node until two heartbeat intervals (about 60 s) have passed.
    # So: the group started by setsid (pid = pgid), then each descendant in a group of
    # its own (Flower starts some in new sessions). `|| true`: some may have exited
    # already, and callers may run with `set -e`.
    kill -TERM -- "-$pid" 2>/dev/null || true
    local p
    for p in $(ps -o pid=,pgid= -p "$(IFS=,; echo "${family[*]}")" 2>/dev/null | awk -v g="$pid" '$2 != g {print $1}'); do
        kill -TERM "$p" 2>/dev/null || true
    done
    local deadline=$((SECONDS + STOP_TIMEOUT))
    while alive_any "${family[@]}" && ((SECONDS < deadline)); do sleep 0.3; done
    if alive_any "${family[@]}"; then
        echo "$name: still running after ${STOP_TIMEOUT}s, sending SIGKILL to $(
            for p in "${family[@]}"; do is_alive "$p" && ps -o comm= -p "$p"; done | sort | uniq -c | xargs)" >&2
        kill -KILL -- "-$pid" 2>/dev/null || true
        kill -KILL "${family[@]}" 2>/dev/null || true
    fi
    rm -f "$pidfile"
    echo "stopped $name (pid $pid)"
}
