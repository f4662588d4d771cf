# Shared by the start/stop scripts here: services are tracked by PID file and
# stopped by that PID and its process group, never by name.

# alive PID: running and not a zombie waiting to be reaped
alive() { [ -n "$(ps -o stat= -p "$1" 2>/dev/null | grep -v '^Z')" ]; }

# listening PORT: something on this host accepts connections on 127.0.0.1:PORT
listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# require_free NAME PORT: refuse to start where another server would answer in our place
require_free() {
  if listening "$2"; then
    echo "$1: port $2 is already in use; choose another (see the script's env)" >&2; return 1
  fi
}

# start_detached PIDFILE LOG CMD...: run CMD in its own session (and process group)
start_detached() {
  local pidfile="$1" log="$2"; shift 2
  setsid "$@" >"$log" 2>&1 &
  echo $! >"$pidfile"
}

# wait_ready NAME PIDFILE LOG URL [CURL_ARGS...]: until URL answers, the process dies, or 60 s pass
wait_ready() {
  local name="$1" pidfile="$2" log="$3" url="$4"; shift 4
  for _ in $(seq 1 120); do
    if ! alive "$(cat "$pidfile")"; then
      echo "$name exited; see $log" >&2; tail -20 "$log" >&2; return 1
    fi
    curl -fsS "$@" "$url" >/dev/null 2>&1 && return 0
    sleep 0.5
  done
  echo "$name did not become ready in 60 s; see $log" >&2; return 1
}

# stop_by_pidfile NAME PIDFILE PATTERN: SIGTERM the leader, then whatever is left of its group.
# A PID file whose process is gone, or is now something else (PIDs get reused), is only removed.
stop_by_pidfile() {
  local name="$1" pidfile="$2" pattern="$3" pid
  [ -f "$pidfile" ] || { echo "no $pidfile: nothing to stop"; return 0; }
  pid="$(cat "$pidfile")"
  if ! alive "$pid" || ! ps -o args= -p "$pid" | grep -q -- "$pattern"; then
    rm -f "$pidfile"; echo "$name was not running (stale $pidfile removed)"; return 0
  fi
  # a leader that alone gets SIGTERM tears down what it started (signalling the
  # whole group at once can leave it waiting on children that are already gone)
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 40); do alive "$pid" || break; sleep 0.25; done
  kill -TERM -- "-$pid" 2>/dev/null || true
  sleep 1
  kill -KILL -- "-$pid" 2>/dev/null || true
  # SIGKILL is delivered at once but a large process takes a moment to be torn down
  for _ in $(seq 1 40); do alive "$pid" || break; sleep 0.25; done
  if alive "$pid"; then echo "$name (pid $pid) still running after SIGKILL" >&2; return 1; fi
  rm -f "$pidfile"
  echo "$name stopped (pid $pid)"
}
