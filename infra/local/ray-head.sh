#!/usr/bin/env bash
# Start or stop a local Ray head that listens on 127.0.0.1 only: GCS, raylet, workers, agents,
# the client server and the dashboard (the Jobs API).
#   infra/local/ray-head.sh start [STATE_DIR]   -> prints the GCS address and the dashboard URL
#   infra/local/ray-head.sh stop  [STATE_DIR]
# The head runs under `ray start --block` in its own process group; stop signals
# it by the PID recorded in STATE_DIR/ray-head.pid, never a blanket `ray stop`.
# Env: RAY_PORT (6379), RAY_DASHBOARD_PORT (8265), RAY_DASHBOARD_AGENT_PORT (52365: the job agent
# the Jobs API hands submissions to; another Ray on the host holding it means "no available agent"),
# RAY_NUM_CPUS (all), RAY_AUTH_MODE (disabled), RAY_HEAD_IP (127.0.0.1: another address lets
# other hosts join and reach the Jobs API, and is refused unless RAY_AUTH_MODE=token),
# RAY_TEMP_DIR (Ray's /tmp/ray: its sessions, and the ray_current_cluster file from which a Ray
# job's driver learns its cluster's address, which the last head started on the host rewrites.
# A second head on one host needs a folder of its own; keep it short, since Ray's socket paths
# under it must fit in 107 bytes). The client server takes RAY_PORT + 1.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
# shellcheck source=infra/local/lib.sh
. "$here/lib.sh"
state="${2:-$repo/out/services}"
mkdir -p "$state"
pidfile="$state/ray-head.pid"
log="$state/ray-head.log"
ray_bin="${RAY_BIN:-$repo/.venv/bin/ray}"
export RAY_AUTH_MODE="${RAY_AUTH_MODE:-disabled}"
port="${RAY_PORT:-6379}"
dashboard_port="${RAY_DASHBOARD_PORT:-8265}"
agent_port="${RAY_DASHBOARD_AGENT_PORT:-52365}"
head_ip="${RAY_HEAD_IP:-127.0.0.1}"
temp_dir=()
[ -n "${RAY_TEMP_DIR:-}" ] && temp_dir=(--temp-dir "$RAY_TEMP_DIR")
if [[ "$head_ip" == 127.* ]]; then
  # Ray turns a node IP of 127.0.0.1 into the host's reachable address, and its servers then
  # listen on every interface; its single-machine switch ("clusters off") keeps them on loopback.
  export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
elif [ "$RAY_AUTH_MODE" != token ]; then
  echo "ray head: RAY_HEAD_IP=$head_ip is reachable from other hosts; set RAY_AUTH_MODE=token" \
    "(and RAY_AUTH_TOKEN) to start it there" >&2
  exit 2
fi

case "${1:-}" in
  start)
    if [ -f "$pidfile" ] && alive "$(cat "$pidfile")"; then
      echo "ray head already running (pid $(cat "$pidfile"))"; exit 0
    fi
    require_free "ray head" "$dashboard_port"
    require_free "ray head" "$port"
    require_free "ray head" "$((port + 1))"
    cpus=()
    [ -n "${RAY_NUM_CPUS:-}" ] && cpus=(--num-cpus "$RAY_NUM_CPUS")
    start_detached "$pidfile" "$log" "$ray_bin" start --head --block --disable-usage-stats \
      --node-ip-address "$head_ip" --port "$port" \
      --dashboard-host "$head_ip" --dashboard-port "$dashboard_port" \
      --dashboard-agent-listen-port "$agent_port" \
      --ray-client-server-port "$((port + 1))" ${cpus[@]+"${cpus[@]}"} ${temp_dir[@]+"${temp_dir[@]}"}
    auth=()  # a token head answers nothing else, its readiness check included
    if [ "$RAY_AUTH_MODE" = token ]; then
      # from a file, not the command line, where any user of the host could read it
      (umask 077; echo "Authorization: Bearer ${RAY_AUTH_TOKEN:?RAY_AUTH_MODE=token needs RAY_AUTH_TOKEN}" >"$state/auth-header")
      auth=(-H "@$state/auth-header")
    fi
    wait_ready "ray head" "$pidfile" "$log" "http://$head_ip:$dashboard_port/api/version" ${auth[@]+"${auth[@]}"}
    echo "ray head: $head_ip:$port  dashboard/jobs: http://$head_ip:$dashboard_port  (pid $(cat "$pidfile"))"
    ;;
  stop) stop_by_pidfile "ray head" "$pidfile" "ray start --head" ;;
  *) echo "usage: $0 start|stop [STATE_DIR]" >&2; exit 2 ;;
esac
