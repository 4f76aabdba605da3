# shellcheck shell=bash disable=SC2034  # the variables are read by the scripts sourcing it
# Shared by up.sh, down.sh and status.sh: the stack's configuration (every value overridable by an
# LLMOPT_INFRA_* variable), its environment, and small helpers. Sourced, never run.

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

# -- configuration ------------------------------------------------------------------------------
INFRA_HOME=${LLMOPT_INFRA_HOME:-$REPO/.llmopt/infra}
mkdir -p "$INFRA_HOME"
INFRA_HOME=$(cd "$INFRA_HOME" && pwd)
RUN_DIR=$INFRA_HOME/run     # pid files and "we started it" markers
LOG_DIR=$INFRA_HOME/logs
BIN=${LLMOPT_INFRA_BIN:-$REPO/.venv/bin}

PG_HOST=${LLMOPT_INFRA_PG_HOST:-127.0.0.1}
PG_PORT=${LLMOPT_INFRA_PG_PORT:-5432}
PG_USER=${LLMOPT_INFRA_PG_USER:-postgres}
PG_PASSWORD=${LLMOPT_INFRA_PG_PASSWORD:-}
PG_ADMIN_DB=${LLMOPT_INFRA_PG_ADMIN_DB:-postgres}
DB_PREFIX=${LLMOPT_INFRA_DB_PREFIX:-}   # a second stack on the same server: other databases
REDIS_HOST=${LLMOPT_INFRA_REDIS_HOST:-127.0.0.1}
REDIS_PORT=${LLMOPT_INFRA_REDIS_PORT:-6379}
REDIS_DB=${LLMOPT_INFRA_REDIS_DB:-0}
MLFLOW_PORT=${LLMOPT_INFRA_MLFLOW_PORT:-5000}
MLFLOW_WORKERS=${LLMOPT_INFRA_MLFLOW_WORKERS:-1}
PREFECT_PORT=${LLMOPT_INFRA_PREFECT_PORT:-4200}
POOL=${LLMOPT_INFRA_POOL:-llmopt}       # the work pool prefect.yaml's deployments name
WORKERS=${LLMOPT_INFRA_WORKERS:-1}
SERVING_PORT=${LLMOPT_INFRA_SERVING_PORT:-3000}   # replica i (1-based) listens on SERVING_PORT + i - 1
SERVING_WORKERS=${LLMOPT_INFRA_SERVING_WORKERS:-1}  # BentoML workers per replica
REPLICAS=${LLMOPT_INFRA_REPLICAS:-1}    # decision service replicas (`make up REPLICAS=N`)
if ! [[ $REPLICAS =~ ^[1-9][0-9]*$ ]]; then
  echo "LLMOPT_INFRA_REPLICAS (make up REPLICAS=N) must be a positive integer, not '$REPLICAS'" >&2
  exit 1
fi
DEPLOY=${LLMOPT_INFRA_DEPLOY:-1}        # 0: skip `prefect deploy --all`
TIMEOUT=${LLMOPT_INFRA_TIMEOUT:-240}    # seconds a component may take to become healthy

DB_EVENTS=${DB_PREFIX}llmopt   # event log, Feast registry and offline store
DB_MLFLOW=${DB_PREFIX}mlflow
DB_PREFECT=${DB_PREFIX}prefect
DB_OPTUNA=${DB_PREFIX}optuna   # its own: Optuna and the event log both keep alembic_version

# -- helpers ------------------------------------------------------------------------------------
say() { printf '[%3d s] %s\n' "$SECONDS" "$*" >&2; }

pg_url() {  # pg_url DRIVER DATABASE
  local auth=$PG_USER
  if [[ -n $PG_PASSWORD ]]; then auth="$PG_USER:$PG_PASSWORD"; fi
  printf 'postgresql+%s://%s@%s:%s/%s' "$1" "$auth" "$PG_HOST" "$PG_PORT" "$2"
}

# The environment of every process of the stack, and of a shell that talks to it
# (`source .llmopt/infra/env.sh`). Names are Settings fields (llmopt/settings.py) as LLMOPT_*.
stack_env() {
  export LLMOPT_HOME=$INFRA_HOME/home
  LLMOPT_DATABASE_URL=$(pg_url psycopg "$DB_EVENTS")
  LLMOPT_OPTUNA_STORAGE_URL=$(pg_url psycopg "$DB_OPTUNA")
  export LLMOPT_DATABASE_URL LLMOPT_OPTUNA_STORAGE_URL
  export LLMOPT_MLFLOW_TRACKING_URI=http://127.0.0.1:$MLFLOW_PORT
  export LLMOPT_MLFLOW_ARTIFACTS_URI=mlflow-artifacts:/experiments  # proxied by the server
  export LLMOPT_REDIS_URL=redis://$REDIS_HOST:$REDIS_PORT/$REDIS_DB
  export LLMOPT_PREFECT_HOME=$INFRA_HOME/prefect
  export LLMOPT_SERVING_FEATURES=production
  # budgets, circuit breakers and rate limits: one state in Redis for every worker and replica
  # (serving/shared_state.py); with one process too, so the profile is the same for every N
  export LLMOPT_SERVING_SHARED_STATE=redis
  # several processes learn each other's feedback from the shared event log (serving/README.md)
  if ((SERVING_WORKERS > 1 || REPLICAS > 1)); then
    export LLMOPT_SERVING_SYNC_LOG_S=${LLMOPT_SERVING_SYNC_LOG_S:-1}
  fi
  # feature_repo/production/feature_store.yaml
  export LLMOPT_FEAST_PG_HOST=$PG_HOST LLMOPT_FEAST_PG_PORT=$PG_PORT LLMOPT_FEAST_PG_USER=$PG_USER
  export LLMOPT_FEAST_PG_PASSWORD=$PG_PASSWORD LLMOPT_FEAST_PG_DATABASE=$DB_EVENTS
  export LLMOPT_FEAST_REDIS=$REDIS_HOST:$REDIS_PORT,db=$REDIS_DB
  export PREFECT_API_URL=http://127.0.0.1:$PREFECT_PORT/api
  export PREFECT_HOME=$INFRA_HOME/prefect
  export PREFECT_SERVER_ANALYTICS_ENABLED=false PREFECT_CLI_PROMPT=false
  export BENTOML_HOME=$INFRA_HOME/bentoml
  export BENTOML_DO_NOT_TRACK=True
  export MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR=false
  if [[ -n $PG_PASSWORD ]]; then export PGPASSWORD=$PG_PASSWORD; fi
}

write_env_file() {  # what a user sources to talk to the stack
  stack_env
  env | grep -E '^(LLMOPT_|PREFECT_API_URL=|PREFECT_HOME=|PREFECT_SERVER_ANALYTICS|BENTOML_|MLFLOW_)' \
    | grep -v '^LLMOPT_INFRA_' | sort | sed -E "s/^([^=]+)=(.*)$/export \1='\2'/" \
    >"$INFRA_HOME/env.sh"
}

pg_cluster_version() {  # the Debian cluster's version folder (/etc/postgresql/15 -> 15)
  local d
  for d in /etc/postgresql/*/; do
    basename "$d"
    return
  done
}

pid_file() { printf '%s/%s.pid' "$RUN_DIR" "$1"; }

# -- decision service replicas: replica 1 is `serving` on SERVING_PORT (as with one replica),
# replica i is `serving-i` on SERVING_PORT + i - 1, each its own process group, log and pid file
replica_name() { if (($1 == 1)); then echo serving; else echo "serving-$1"; fi; }
replica_port() { echo $((SERVING_PORT + $1 - 1)); }
replica_url() { echo "http://127.0.0.1:$(replica_port "$1")"; }
replica_bentoml_home() {  # its own: BentoML empties its Prometheus folder there at start-up
  if (($1 == 1)); then echo "$INFRA_HOME/bentoml"; else echo "$INFRA_HOME/bentoml-$1"; fi
}
started_replicas() {  # the numbers of the replicas that have a pid file, ascending
  local f n
  for f in "$RUN_DIR"/serving.pid "$RUN_DIR"/serving-*.pid; do
    [[ -e $f ]] || continue
    n=$(basename "$f" .pid)
    if [[ $n == serving ]]; then echo 1; else echo "${n#serving-}"; fi
  done | sort -n
}

alive() {  # alive NAME: its process (group) still runs
  local f pid
  f=$(pid_file "$1")
  [[ -f $f ]] || return 1
  pid=$(<"$f")
  kill -0 "$pid" 2>/dev/null
}

start_bg() {  # start_bg NAME CMD...: own session (so `down` stops the whole tree), log, pid file
  local name=$1
  shift
  mkdir -p "$RUN_DIR" "$LOG_DIR"
  printf '\n== %s %s\n' "$(date -u +%FT%TZ)" "$*" >>"$LOG_DIR/$name.log"
  # A non-interactive shell starts background commands with SIGINT and SIGQUIT ignored; Python
  # then never raises KeyboardInterrupt, and Prefect's worker, which turns SIGTERM into SIGINT,
  # would not stop. env --default-signal gives them back their default actions.
  setsid env --default-signal=INT,QUIT "$@" >>"$LOG_DIR/$name.log" 2>&1 </dev/null &
  echo $! >"$(pid_file "$name")"
}

descendants() {  # descendants PID: every process below PID (some leave its process group)
  local c
  for c in $(ps -o pid= --ppid "$1" 2>/dev/null || true); do
    echo "$c"
    descendants "$c"
  done
}

group_alive() { kill -0 -- "-$1" 2>/dev/null || kill -0 "$1" 2>/dev/null; }

stop_pid_file() {  # stop_pid_file NAME [GRACE_S]: TERM the process group, KILL after the grace
  local f pid grace=${2:-20} i tree p
  f=$(pid_file "$1")
  [[ -f $f ]] || return 0
  pid=$(<"$f")
  if kill -0 "$pid" 2>/dev/null; then
    # BentoML's workers run in sessions of their own: remember the whole tree first
    tree=$(descendants "$pid")
    # setsid made the process the leader of its own group: signal the whole group
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < grace * 5; i++)); do
      group_alive "$pid" || break
      sleep 0.2
    done
    if group_alive "$pid"; then
      say "$1 ($pid) did not stop within ${grace}s: KILL"
      kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
    fi
    for p in $tree; do  # orphans that outlived their parent
      if kill -0 "$p" 2>/dev/null; then
        say "$1: process $p outlived its parent: KILL"
        kill -KILL "$p" 2>/dev/null || true
      fi
    done
    say "stopped $1 ($pid)"
  fi
  rm -f "$f"
}

# -- health checks: each returns 0 when the component answers ---------------------------------
check_postgres() { pg_isready -q -h "$PG_HOST" -p "$PG_PORT" -t 2; }
check_redis() { [[ $(redis-cli -h "$REDIS_HOST" -p "$REDIS_PORT" ping 2>/dev/null) == PONG ]]; }
port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
http_ok() { curl -fsS -o /dev/null --max-time 3 "$1" 2>/dev/null; }
check_mlflow() { http_ok "http://127.0.0.1:$MLFLOW_PORT/health"; }
check_prefect() { http_ok "http://127.0.0.1:$PREFECT_PORT/api/health"; }
check_replica() { http_ok "$(replica_url "$1")/readyz"; }  # check_replica I
check_serving() { check_replica 1; }

prefect_api() {  # prefect_api METHOD PATH [JSON]: the server's REST API, body on stdout
  curl -fsS --max-time 5 -X "$1" -H 'Content-Type: application/json' \
    ${3:+--data "$3"} "http://127.0.0.1:$PREFECT_PORT/api$2"
}

online_workers() {  # how many of this stack's named workers the server sees ONLINE
  prefect_api POST "/work_pools/$POOL/workers/filter" '{}' 2>/dev/null | "$BIN/python" -c '
import json, sys
prefix = sys.argv[1]
workers = json.load(sys.stdin)
print(sum(1 for w in workers if w["name"].startswith(prefix) and w.get("status") == "ONLINE"))
' "$POOL-worker-" || echo 0
}
check_workers() { (($(online_workers) >= WORKERS)); }

deployment_count() {
  prefect_api POST /deployments/count '{}' 2>/dev/null || echo 0
}

feast_projects() {  # projects in the Feast SQL registry (empty before the first apply)
  psql -h "$PG_HOST" -p "$PG_PORT" -U "$PG_USER" -d "$DB_EVENTS" -tAc \
    'SELECT project_id FROM projects' 2>/dev/null | paste -sd, -
}

wait_for() {  # wait_for NAME TIMEOUT CHECK...: poll until the check passes or NAME's process dies
  local name=$1 timeout=$2 start=$SECONDS
  shift 2
  until "$@"; do
    if ((SECONDS - start >= timeout)); then
      fail "$name not healthy after ${timeout}s"
      return 1
    fi
    if [[ -f $(pid_file "$name") ]] && ! alive "$name"; then
      fail "$name exited"
      return 1
    fi
    sleep 1
  done
  say "$name healthy ($((SECONDS - start)) s)"
}

fail() {  # fail MESSAGE: the message and the tail of the component's log
  local name=${1%% *}
  say "FAILED: $1"
  if [[ -f $LOG_DIR/$name.log ]]; then
    say "---- last lines of $LOG_DIR/$name.log"
    tail -n 40 "$LOG_DIR/$name.log" >&2
    say "----"
  fi
  say "components that did start keep running: make down stops them"
}
