#!/usr/bin/env bash
# make up: the production profile on this machine, as processes (no containers), health-checked.
#
#   PostgreSQL   event log, Feast registry + offline store, Optuna, MLflow and Prefect databases
#   Redis        Feast online store; the decision service's shared state
#   MLflow       tracking server + model registry (backend on PostgreSQL, artifacts proxied)
#   Prefect      server (database on PostgreSQL), a process work pool, N workers, the deployments
#   BentoML      the decision service (serving.service:DecisionService): LLMOPT_INFRA_REPLICAS
#                processes (`make up REPLICAS=N`, 1 by default) on ports SERVING_PORT (3000) ..
#                SERVING_PORT + N - 1, sharing PostgreSQL and Redis (shared state: budgets,
#                circuit breakers, rate limits)
#
# PostgreSQL and Redis that already answer are used as they are, and `make down` leaves them
# alone; only when they do not answer are they started here (and then stopped by `make down`).
# Everything else runs in its own session under $LLMOPT_INFRA_HOME (pids in run/, logs in logs/).
# Idempotent: a component that already runs is left running. Exit status non-zero, with the tail
# of the failing component's log, if a component does not become healthy within
# $LLMOPT_INFRA_TIMEOUT seconds. Configuration: the LLMOPT_INFRA_* variables of infra/lib.sh.
set -euo pipefail
# shellcheck source=infra/lib.sh
source "$(dirname "$0")/lib.sh"
cd "$REPO"
mkdir -p "$RUN_DIR" "$LOG_DIR"
stack_env
write_env_file
T0=$SECONDS

for tool in pg_isready psql redis-cli curl setsid; do
  command -v "$tool" >/dev/null || { say "$tool not found (Debian: postgresql-client, redis-tools, curl)"; exit 1; }
done
[[ -x $BIN/python ]] || { say "no $BIN/python: run 'make setup' first"; exit 1; }

# -- shared state: PostgreSQL and Redis ---------------------------------------------------------
ensure_postgres() {
  if check_postgres; then
    say "PostgreSQL answers at $PG_HOST:$PG_PORT: using it"
    return
  fi
  if [[ $PG_PORT == 5432 && -d /etc/postgresql ]] && command -v pg_ctlcluster >/dev/null; then
    say "PostgreSQL does not answer: starting the Debian cluster"
    pg_ctlcluster --skip-systemctl-redirect "$(pg_cluster_version)" main start
    touch "$RUN_DIR/postgres.started"
    wait_for postgres 60 check_postgres
  else
    say "no PostgreSQL at $PG_HOST:$PG_PORT and no Debian cluster to start: start one first"
    exit 1
  fi
}

ensure_redis() {
  if check_redis; then
    say "Redis answers at $REDIS_HOST:$REDIS_PORT: using it"
    return
  fi
  say "Redis does not answer: starting redis-server on $REDIS_HOST:$REDIS_PORT"
  redis-server --daemonize yes --bind "$REDIS_HOST" --port "$REDIS_PORT" --save "" \
    --appendonly no --dir "$INFRA_HOME" --pidfile "$(pid_file redis)" \
    --logfile "$LOG_DIR/redis.log"
  touch "$RUN_DIR/redis.started"
  wait_for redis 30 check_redis
}

ensure_database() {  # idempotent CREATE DATABASE
  local exists
  exists=$(psql -h "$PG_HOST" -p "$PG_PORT" -U "$PG_USER" -d "$PG_ADMIN_DB" -tAc \
    "SELECT 1 FROM pg_database WHERE datname = '$1'")
  if [[ -z $exists ]]; then
    psql -q -h "$PG_HOST" -p "$PG_PORT" -U "$PG_USER" -d "$PG_ADMIN_DB" \
      -c "CREATE DATABASE \"$1\"" >/dev/null
    say "created database $1"
  fi
}

# -- long-running components --------------------------------------------------------------------
start_unless_running() {  # start_unless_running NAME PORT CMD...
  local name=$1 port=$2
  shift 2
  if alive "$name"; then
    say "$name already running (pid $(<"$(pid_file "$name")"))"
    return
  fi
  if [[ -n $port ]] && port_busy "$port"; then
    say "port $port is taken by a process this stack did not start: stop it, or set the port"
    say "(LLMOPT_INFRA_*_PORT) to a free one"
    exit 1
  fi
  start_bg "$name" "$@"
  say "started $name (pid $(<"$(pid_file "$name")"), log $LOG_DIR/$name.log)"
}

ensure_postgres
ensure_redis
for db in "$DB_EVENTS" "$DB_MLFLOW" "$DB_PREFECT" "$DB_OPTUNA"; do ensure_database "$db"; done

start_unless_running mlflow "$MLFLOW_PORT" \
  "$BIN/mlflow" server --host 127.0.0.1 --port "$MLFLOW_PORT" --workers "$MLFLOW_WORKERS" \
  --backend-store-uri "$(pg_url psycopg "$DB_MLFLOW")" \
  --serve-artifacts --artifacts-destination "$INFRA_HOME/mlartifacts"

start_unless_running prefect-server "$PREFECT_PORT" \
  env PREFECT_HOME="$INFRA_HOME/prefect-server" \
  PREFECT_API_DATABASE_CONNECTION_URL="$(pg_url asyncpg "$DB_PREFECT")" \
  "$BIN/prefect" server start --host 127.0.0.1 --port "$PREFECT_PORT" --no-background

# While those two start: one-shot schema steps (both idempotent).
say "event log schema: $(pg_url psycopg "$DB_EVENTS")"
"$BIN/llmopt" db upgrade >>"$LOG_DIR/setup.log" 2>&1 || { fail "setup (llmopt db upgrade)"; exit 1; }
say "feast apply (production profile: registry + offline store on PostgreSQL, online on Redis)"
"$BIN/python" -m feature_store apply production >>"$LOG_DIR/feast.log" 2>&1 \
  || { fail "feast apply"; exit 1; }

wait_for mlflow "$TIMEOUT" check_mlflow

# The decision service: REPLICAS processes (`make up REPLICAS=N`), replica i on port
# SERVING_PORT + i - 1. They share the event log (PostgreSQL), the online store and the serving
# state (Redis: budgets, circuit breakers, rate limits) and LLMOPT_HOME (spool files are named
# by pid, and a live replica replays a dead one's); each has its own BENTOML_HOME (BentoML
# empties the Prometheus folder there when it starts, and /metrics reads it).
start_replica() {  # start_replica I
  local i=$1 cmd=(env "BENTOML_HOME=$(replica_bentoml_home "$1")")
  if ((SERVING_WORKERS > 1)); then
    # BentoML's configuration override (the service's own decorator says workers=1)
    cmd+=("BENTOML_CONFIG_OVERRIDES={\"services\": {\"llmopt-router\": {\"workers\": $SERVING_WORKERS}}}")
  fi
  cmd+=("$BIN/bentoml" serve serving.service:DecisionService --host 127.0.0.1
    --port "$(replica_port "$i")" --working-dir "$REPO")
  start_unless_running "$(replica_name "$i")" "$(replica_port "$i")" "${cmd[@]}"
}
for i in $(started_replicas); do  # a smaller REPLICAS than the last `make up`: stop the rest
  if ((i > REPLICAS)); then stop_pid_file "$(replica_name "$i")" 30; fi
done
for ((i = 1; i <= REPLICAS; i++)); do start_replica "$i"; done
echo "$REPLICAS" >"$RUN_DIR/replicas"  # what `make status` reports

wait_for prefect-server "$TIMEOUT" check_prefect
if ! prefect_api GET "/work_pools/$POOL" >/dev/null 2>&1; then
  "$BIN/prefect" work-pool create "$POOL" --type process >>"$LOG_DIR/setup.log" 2>&1 \
    || { fail "setup (prefect work-pool create $POOL)"; exit 1; }
  say "created work pool $POOL (process)"
fi
for ((i = 1; i <= WORKERS; i++)); do
  start_unless_running "prefect-worker-$i" "" \
    "$BIN/prefect" worker start --pool "$POOL" --type process --name "$POOL-worker-$i"
done
if [[ $DEPLOY == 1 ]]; then
  # prefect.yaml: every flow with its schedule, on the work pool; run from the repo root (the
  # deployments' pull step sets the flow run's working directory to it).
  say "prefect deploy --all (prefect.yaml)"
  "$BIN/prefect" --no-prompt deploy --all >>"$LOG_DIR/deploy.log" 2>&1 \
    || { fail "deploy (prefect deploy --all)"; exit 1; }
fi

for ((i = 1; i <= REPLICAS; i++)); do
  wait_for "$(replica_name "$i")" "$TIMEOUT" check_replica "$i"
done
wait_for prefect-worker-1 "$TIMEOUT" check_workers
say "up in $((SECONDS - T0)) s; shell environment: source $INFRA_HOME/env.sh"
exec bash "$(dirname "$0")/status.sh"
