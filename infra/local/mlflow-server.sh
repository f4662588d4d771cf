#!/usr/bin/env bash
# Start or stop a local MLflow tracking server on 127.0.0.1: sqlite backend and
# artifacts on disk under STATE_DIR, one worker (four take ~3x longer to start).
#   infra/local/mlflow-server.sh start [STATE_DIR]   -> prints the tracking URI
#   infra/local/mlflow-server.sh stop  [STATE_DIR]
# Stopped by the PID in STATE_DIR/mlflow-server.pid and its process group.
# Env: MLFLOW_PORT (5000), MLFLOW_HOST (127.0.0.1).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
# shellcheck source=infra/local/lib.sh
. "$here/lib.sh"
state="$(mkdir -p "${2:-$repo/out/services}" && cd "${2:-$repo/out/services}" && pwd)"
pidfile="$state/mlflow-server.pid"
log="$state/mlflow-server.log"
mlflow_bin="${MLFLOW_BIN:-$repo/.venv/bin/mlflow}"
host="${MLFLOW_HOST:-127.0.0.1}"
port="${MLFLOW_PORT:-5000}"

case "${1:-}" in
  start)
    if [ -f "$pidfile" ] && alive "$(cat "$pidfile")"; then
      echo "mlflow server already running (pid $(cat "$pidfile"))"; exit 0
    fi
    require_free "mlflow server" "$port"
    mkdir -p "$state/mlartifacts"
    # MLflow 3's background job runner (a dozen huey consumers) serves no feature used here
    export MLFLOW_SERVER_ENABLE_JOB_EXECUTION="${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false}"
    start_detached "$pidfile" "$log" "$mlflow_bin" server --host "$host" --port "$port" --workers 1 \
      --backend-store-uri "sqlite:///$state/mlflow.db" --artifacts-destination "$state/mlartifacts"
    wait_ready "mlflow server" "$pidfile" "$log" "http://127.0.0.1:$port/health"
    echo "mlflow server: http://$host:$port  (pid $(cat "$pidfile"))"
    ;;
  stop) stop_by_pidfile "mlflow server" "$pidfile" "mlflow server" ;;
  *) echo "usage: $0 start|stop [STATE_DIR]" >&2; exit 2 ;;
esac
