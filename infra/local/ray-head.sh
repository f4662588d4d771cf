#!/usr/bin/env bash
# Start or stop a local Ray head whose dashboard (the Jobs API) binds to 127.0.0.1.
#   infra/local/ray-head.sh start [STATE_DIR]   -> prints the GCS address and the dashboard URL
#   infra/local/ray-head.sh stop  [STATE_DIR]
# The head runs under `ray start --block` in its own process group; stop signals
# that group by the PID recorded in STATE_DIR/ray-head.pid, never a blanket `ray stop`.
# Env: RAY_PORT (6379), RAY_DASHBOARD_PORT (8265), RAY_NUM_CPUS (all), RAY_AUTH_MODE (disabled).
set -euo pipefail
# alive PID: running and not a zombie waiting to be reaped
alive() { [ -n "$(ps -o stat= -p "$1" 2>/dev/null | grep -v '^Z')" ]; }
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
state="${2:-$repo/out/services}"
mkdir -p "$state"
pidfile="$state/ray-head.pid"
ray_bin="${RAY_BIN:-$repo/.venv/bin/ray}"
export RAY_AUTH_MODE="${RAY_AUTH_MODE:-disabled}"
port="${RAY_PORT:-6379}"
dashboard_port="${RAY_DASHBOARD_PORT:-8265}"

case "${1:-}" in
  start)
    if [ -f "$pidfile" ] && alive "$(cat "$pidfile")"; then
      echo "ray head already running (pid $(cat "$pidfile"))"; exit 0
    fi
    cpus=()
    [ -n "${RAY_NUM_CPUS:-}" ] && cpus=(--num-cpus "$RAY_NUM_CPUS")
    setsid "$ray_bin" start --head --block --disable-usage-stats \
      --node-ip-address 127.0.0.1 --port "$port" \
      --dashboard-host 127.0.0.1 --dashboard-port "$dashboard_port" \
      --ray-client-server-port "$((port + 1))" ${cpus[@]+"${cpus[@]}"} \
      >"$state/ray-head.log" 2>&1 &
    echo $! >"$pidfile"
    for _ in $(seq 1 120); do
      if curl -fsS "http://127.0.0.1:$dashboard_port/api/version" >/dev/null 2>&1; then
        echo "ray head: 127.0.0.1:$port  dashboard/jobs: http://127.0.0.1:$dashboard_port  (pid $(cat "$pidfile"))"
        exit 0
      fi
      if ! alive "$(cat "$pidfile")"; then
        echo "ray head exited; see $state/ray-head.log" >&2; tail -20 "$state/ray-head.log" >&2; exit 1
      fi
      sleep 0.5
    done
    echo "ray head did not become ready in 60 s; see $state/ray-head.log" >&2; exit 1
    ;;
  stop)
    [ -f "$pidfile" ] || { echo "no $pidfile: nothing to stop"; exit 0; }
    pid="$(cat "$pidfile")"
    # `ray start --block` tears down the processes it started when it alone gets
    # SIGTERM (signalling the whole group at once leaves it waiting on them).
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 40); do alive "$pid" || break; sleep 0.25; done
    # whatever is left of the group it led: its own daemons and workers, nothing else
    kill -TERM -- "-$pid" 2>/dev/null || true
    sleep 1
    kill -KILL -- "-$pid" 2>/dev/null || true
    rm -f "$pidfile"
    echo "ray head stopped (pid $pid)"
    ;;
  *) echo "usage: $0 start|stop [STATE_DIR]" >&2; exit 2 ;;
esac
