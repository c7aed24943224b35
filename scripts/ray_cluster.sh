#!/usr/bin/env bash
# A multi-node Ray cluster for Flower's simulation engine. Every Ray node is one
# `ray start --block` process of its own, started in its own session with a pid file,
# so that `stop` ends exactly the processes this script started. It never runs
# `ray stop`: that kills every Ray process of the user on the machine, including other
# people's clusters.
#
#   scripts/ray_cluster.sh start           # head + RAY_NUM_WORKERS local workers; waits until all joined
#   scripts/ray_cluster.sh join HOST:PORT  # one worker on this machine joins a head elsewhere
#   scripts/ray_cluster.sh address         # prints the address to export as RAY_ADDRESS
#   scripts/ray_cluster.sh status          # the cluster's nodes and their CPUs/GPUs
#   scripts/ray_cluster.sh report [FILE]   # where Flower's ClientApps ran (JSON), from Ray's GCS
#   scripts/ray_cluster.sh stop            # stops the nodes started from this RAY_RUN_DIR
#
# Settings (environment, plus those of scripts/_common.sh):
#   RAY_RUN_DIR      pid files, logs and the address file                [$RUN_DIR/ray]
#   RAY_TEMP_DIR     Ray's session dir (head only; workers on the same machine share it).
#                    Ray puts UNIX sockets there, whose paths must stay under 108 bytes,
#                    so keep it short                                   [/tmp/ray-flexmoe-$UID]
#   RAY_HEAD_IP      address the head binds and advertises; on a real cluster the head's
#                    LAN address                                         [127.0.0.1]
#   RAY_NODE_IP      address a `join`ed worker advertises                 [Ray's choice]
#   RAY_PORT         head (GCS) port                                     [6380]
#   RAY_NUM_WORKERS  worker nodes `start` runs on this machine           [1]
#   RAY_HEAD_CPUS / RAY_WORKER_CPUS  CPUs each node offers               [1 / 1]
#   RAY_HEAD_GPUS / RAY_WORKER_GPUS  GPUs each node offers               [Ray detects them]
#   RAY_OBJECT_STORE_BYTES  object store per node                        [200000000]
#   RAY_STARTUP_TIMEOUT     seconds to wait for the nodes                [$STARTUP_TIMEOUT]
#   RAY_STOP_TIMEOUT        seconds between SIGTERM and SIGKILL at stop  [5]
#
# On one machine Ray replaces 127.0.0.1 by the machine's own network address (it wants
# an address other machines can reach); scripts/ray_demo.sh --netns runs everything in
# a network namespace that has only loopback, so that all traffic stays on 127.0.0.1.
# See docs/ray-cluster.md.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

RAY_RUN_DIR="${RAY_RUN_DIR:-$RUN_DIR/ray}"
RAY_TEMP_DIR="${RAY_TEMP_DIR:-/tmp/ray-flexmoe-$(id -u)}"
RAY_HEAD_IP="${RAY_HEAD_IP:-127.0.0.1}"
RAY_NODE_IP="${RAY_NODE_IP:-}"
RAY_PORT="${RAY_PORT:-6380}"
RAY_NUM_WORKERS="${RAY_NUM_WORKERS:-1}"
RAY_HEAD_CPUS="${RAY_HEAD_CPUS:-1}"
RAY_WORKER_CPUS="${RAY_WORKER_CPUS:-1}"
RAY_HEAD_GPUS="${RAY_HEAD_GPUS:-}"
RAY_WORKER_GPUS="${RAY_WORKER_GPUS:-}"
RAY_OBJECT_STORE_BYTES="${RAY_OBJECT_STORE_BYTES:-200000000}"
RAY_STARTUP_TIMEOUT="${RAY_STARTUP_TIMEOUT:-$STARTUP_TIMEOUT}"
RAY_STOP_TIMEOUT="${RAY_STOP_TIMEOUT:-5}"
HEAD_ADDRESS="$RAY_HEAD_IP:$RAY_PORT"

# Ray's own ports that would otherwise be fixed defaults (ray client server 10001,
# dashboard agent 52365) and clash between two nodes on one machine, or with someone
# else's cluster: picked free at start. The other ports Ray picks free by itself.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# node_args CPUS GPUS: what every node gets. --num-gpus only when set: otherwise Ray
# counts the node's GPUs itself. The dashboard agent's port would be a fixed default.
node_args() {
    NODE_ARGS=(--block --disable-usage-stats --num-cpus "$1" --object-store-memory "$RAY_OBJECT_STORE_BYTES"
               --dashboard-agent-listen-port "$(free_port)")
    [[ -z "$2" ]] || NODE_ARGS+=(--num-gpus "$2")
}

# A stop that never aborts half-way: with `set -e`, a kill of a process that has just
# exited (Ray's daemons exit as soon as their parent does) would end the caller.
stop_node() { (set +e; STOP_TIMEOUT="$RAY_STOP_TIMEOUT" stop_pidfile "$1"); }

# wait_nodes ADDRESS N TIMEOUT: one driver polls the GCS until N nodes are alive.
wait_nodes() {
    RAY_ADDRESS="$1" timeout "$(($3 + 30))" python3 -W ignore - "$2" "$3" <<'PY'
import sys, time
import ray

want, timeout = int(sys.argv[1]), float(sys.argv[2])
deadline = time.monotonic() + timeout
ray.init(logging_level="ERROR", log_to_driver=False)
alive = 0
while time.monotonic() < deadline:
    alive = sum(1 for n in ray.nodes() if n["Alive"])
    if alive >= want:
        sys.exit(0)
    time.sleep(1)
print(f"only {alive} of {want} Ray nodes alive after {timeout:.0f}s", file=sys.stderr)
sys.exit(1)
PY
}

require_ray() {
    command -v ray >/dev/null || die "ray not found: install flwr[simulation], or set FLWR_VENV to its environment"
}

# ray start prints this line once the node is up and `--block` takes over.
node_up() { grep -q "block forever" "$1"; }

start() {
    require_ray
    require_int RAY_NUM_WORKERS "$RAY_NUM_WORKERS" 0
    require_int RAY_PORT "$RAY_PORT" 1
    # Ray appends about 62 bytes (session_<date>_<pid>/sockets/plasma_store) to it.
    ((${#RAY_TEMP_DIR} <= 44)) ||
        die "RAY_TEMP_DIR '$RAY_TEMP_DIR' is too long for Ray's socket paths (max 44 characters):" \
            "set a shorter one, e.g. RAY_TEMP_DIR=/tmp/ray-flexmoe"
    mkdir -p "$RAY_RUN_DIR/logs" "$RAY_TEMP_DIR"
    trap 'stop; exit 130' INT  # interrupted half-way: leave no node behind
    trap 'stop; exit 143' TERM
    local NODE_ARGS
    node_args "$RAY_HEAD_CPUS" "$RAY_HEAD_GPUS"
    RUN_DIR="$RAY_RUN_DIR" start_detached ray_head "$RAY_RUN_DIR/logs/head.log" \
        ray start --head --node-ip-address "$RAY_HEAD_IP" --port "$RAY_PORT" --temp-dir "$RAY_TEMP_DIR" \
        --include-dashboard false --ray-client-server-port "$(free_port)" "${NODE_ARGS[@]}"
    if ! RUN_DIR="$RAY_RUN_DIR" wait_for "Ray head" "$RAY_RUN_DIR/ray_head.pid" "$RAY_RUN_DIR/logs/head.log" \
            "$RAY_STARTUP_TIMEOUT" node_up "$RAY_RUN_DIR/logs/head.log"; then
        stop; exit 1
    fi
    for ((w = 1; w <= RAY_NUM_WORKERS; w++)); do
        node_args "$RAY_WORKER_CPUS" "$RAY_WORKER_GPUS"
        RUN_DIR="$RAY_RUN_DIR" start_detached "ray_worker_$w" "$RAY_RUN_DIR/logs/worker_$w.log" \
            ray start --address "$HEAD_ADDRESS" --node-ip-address "$RAY_HEAD_IP" "${NODE_ARGS[@]}"
    done
    if ! wait_nodes "$HEAD_ADDRESS" $((RAY_NUM_WORKERS + 1)) "$RAY_STARTUP_TIMEOUT"; then
        echo "Ray nodes did not all join; logs in $RAY_RUN_DIR/logs and $RAY_TEMP_DIR/session_latest/logs" >&2
        tail -n 20 "$RAY_RUN_DIR"/logs/*.log >&2 || true
        stop; exit 1
    fi
    trap - INT TERM
    echo "$HEAD_ADDRESS" > "$RAY_RUN_DIR/address"
    echo "Ray cluster up: $((RAY_NUM_WORKERS + 1)) nodes; export RAY_ADDRESS=$HEAD_ADDRESS"
}

join() {  # a worker on this machine for a head started elsewhere
    local address="${1:-}"
    [[ "$address" =~ ^[^:]+:[0-9]+$ ]] || die "usage: $(basename "$0") join HEAD_HOST:PORT"
    require_ray
    mkdir -p "$RAY_RUN_DIR/logs"
    local NODE_ARGS
    node_args "$RAY_WORKER_CPUS" "$RAY_WORKER_GPUS"
    [[ -z "$RAY_NODE_IP" ]] || NODE_ARGS+=(--node-ip-address "$RAY_NODE_IP")
    RUN_DIR="$RAY_RUN_DIR" start_detached ray_worker_joined "$RAY_RUN_DIR/logs/worker_joined.log" \
        ray start --address "$address" "${NODE_ARGS[@]}"
    if ! RUN_DIR="$RAY_RUN_DIR" wait_for "Ray worker" "$RAY_RUN_DIR/ray_worker_joined.pid" \
            "$RAY_RUN_DIR/logs/worker_joined.log" "$RAY_STARTUP_TIMEOUT" \
            node_up "$RAY_RUN_DIR/logs/worker_joined.log"; then
        stop_node "$RAY_RUN_DIR/ray_worker_joined.pid"; exit 1
    fi
    echo "Ray worker joined $address (log: $RAY_RUN_DIR/logs/worker_joined.log)"
}

stop() {
    # Workers first: a worker whose head is gone keeps retrying the GCS until it gives up.
    shopt -s nullglob
    local f
    for f in "$RAY_RUN_DIR"/ray_worker_*.pid "$RAY_RUN_DIR"/ray_head.pid; do stop_node "$f"; done
    rm -f "$RAY_RUN_DIR/address"
}

address() {
    [[ -f "$RAY_RUN_DIR/address" ]] || die "no cluster started from $RAY_RUN_DIR (run: $(basename "$0") start)"
    cat "$RAY_RUN_DIR/address"
}

status() {
    RAY_ADDRESS="${RAY_ADDRESS:-$(address)}" timeout 60 python3 -W ignore - <<'PY'
import ray
ray.init(logging_level="ERROR", log_to_driver=False)
for n in ray.nodes():
    r = n["Resources"]
    print(n["NodeID"][:12], "alive" if n["Alive"] else "dead", n["NodeManagerAddress"],
          f'{r.get("CPU", 0):g} CPU', f'{r.get("GPU", 0):g} GPU', "(head)" if "node:__internal_head__" in r else "")
PY
}

# Where did Flower's ClientApps run? Flower's Ray backend runs every ClientApp call as a
# `ClientAppActor.run` actor task. The GCS keeps the actor table and the task events
# (with the node and worker process that executed each task) after the actors are gone,
# until the cluster stops. (ray.util.state would say the same, but it needs the Ray
# dashboard, which flwr[simulation]'s Ray install does not include.)
report() {
    local out="${1:-/dev/stdout}"
    RAY_ADDRESS="${RAY_ADDRESS:-$(address)}" timeout 120 python3 -W ignore - "$out" <<'PY'
import collections, json, sys, time
import ray
from ray._private.state import state
from ray.core.generated import common_pb2, gcs_pb2

ray.init(logging_level="ERROR", log_to_driver=False)
time.sleep(2)  # workers flush task events to the GCS every second
nodes = [{"node-id": n["NodeID"], "alive": n["Alive"], "address": n["NodeManagerAddress"],
          "cpus": n["Resources"].get("CPU", 0), "gpus": n["Resources"].get("GPU", 0)} for n in ray.nodes()]
actors = [{"actor-id": a["ActorID"], "node-id": a["Address"]["NodeID"], "pid": a["Pid"], "state": a["State"]}
          for a in ray._private.state.actors().values() if a["ActorClassName"] == "ClientAppActor"]

# One task's events arrive in several messages (its owner reports the task info, the
# executing worker the state updates): merge them by (task id, attempt).
tasks = collections.defaultdict(lambda: {"name": "", "node-id": "", "pid": 0, "finished": False})
for raw in state._connect_and_get_accessor().get_task_events():
    event = gcs_pb2.TaskEvents.FromString(raw)
    task = tasks[(event.task_id, event.attempt_number)]
    if event.HasField("task_info"):
        task["name"] = task["name"] or event.task_info.name or event.task_info.func_or_class_name
    if event.HasField("state_updates"):
        update = event.state_updates
        if update.node_id:
            task["node-id"] = update.node_id.hex()
        if update.worker_pid:
            task["pid"] = update.worker_pid
        task["finished"] |= common_pb2.TaskStatus.FINISHED in update.state_ts_ns
runs = [t for t in tasks.values() if t["name"] == "ClientAppActor.run"]
per_node = collections.Counter(t["node-id"] for t in runs if t["finished"])
report = {"nodes": nodes, "client-actors": actors,
          "client-app-calls": len(runs), "client-app-calls-finished-per-node": dict(per_node)}
with open(sys.argv[1], "w") as f:
    json.dump(report, f, indent=2)
    f.write("\n")
print(f"{len(nodes)} Ray nodes; ClientApp actors on {len({a['node-id'] for a in actors})} of them; "
      f"finished ClientApp calls per node: {sorted(per_node.values())} of {len(runs)}", file=sys.stderr)
PY
}

case "${1:-}" in
    start) start ;;
    join) join "${2:-}" ;;
    stop) stop ;;
    address) address ;;
    status) status ;;
    report) report "${2:-}" ;;
    *) die "usage: $(basename "$0") start | join HOST:PORT | stop | status | address | report [FILE]" ;;
esac
