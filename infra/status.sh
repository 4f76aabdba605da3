#!/usr/bin/env bash
# make status: one line per component of the stack (health, endpoint, pid, backing store).
# Exit status 0 when every component is healthy, 1 otherwise. Starts and stops nothing.
set -euo pipefail
# shellcheck source=infra/lib.sh
source "$(dirname "$0")/lib.sh"
# the replicas the last `make up` started, unless LLMOPT_INFRA_REPLICAS (REPLICAS=N) says
if [[ -z ${LLMOPT_INFRA_REPLICAS:-} && -f $RUN_DIR/replicas ]]; then REPLICAS=$(<"$RUN_DIR/replicas"); fi
stack_env

bad=0
row() {  # row COMPONENT OK(0/1) ENDPOINT PID BACKING
  local state=up
  if [[ $2 != 0 ]]; then state=DOWN; bad=1; fi
  printf '%-18s %-5s %-34s %-8s %s\n' "$1" "$state" "$3" "$4" "$5"
}
pid_of() {  # the pid if this stack started NAME and it still runs, "shared" / "-" otherwise
  if alive "$1"; then cat "$(pid_file "$1")"; elif [[ -n ${2:-} ]]; then echo "$2"; else echo -; fi
}
ok() { if "$@"; then echo 0; else echo 1; fi; }
owner() { if [[ -f $RUN_DIR/$1.started ]]; then echo "started by up"; else echo shared; fi; }

printf '%-18s %-5s %-34s %-8s %s\n' COMPONENT STATE ENDPOINT PID "BACKING STORE / NOTE"
row postgres "$(ok check_postgres)" "$PG_HOST:$PG_PORT" "$(owner postgres)" \
  "databases $DB_EVENTS $DB_MLFLOW $DB_PREFECT $DB_OPTUNA"
row redis "$(ok check_redis)" "$REDIS_HOST:$REDIS_PORT/$REDIS_DB" "$(owner redis)" \
  "Feast online store; serving state ($LLMOPT_SERVING_SHARED_STATE)"
row mlflow "$(ok check_mlflow)" "http://127.0.0.1:$MLFLOW_PORT" "$(pid_of mlflow)" \
  "postgres/$DB_MLFLOW, artifacts $INFRA_HOME/mlartifacts"
row prefect-server "$(ok check_prefect)" "http://127.0.0.1:$PREFECT_PORT" \
  "$(pid_of prefect-server)" "postgres/$DB_PREFECT"
prefect_up=$(ok check_prefect)
online=0
deployments=0
if [[ $prefect_up == 0 ]]; then
  online=$(online_workers)
  deployments=$(deployment_count)
fi
for ((i = 1; i <= WORKERS; i++)); do
  row "prefect-worker-$i" "$(ok alive "prefect-worker-$i")" "pool $POOL" \
    "$(pid_of "prefect-worker-$i")" "$online of $WORKERS workers online"
done
deploy_ok=0
if [[ $DEPLOY == 1 && $deployments -lt 1 ]]; then deploy_ok=1; fi
row deployments "$deploy_ok" "$PREFECT_API_URL" - "$deployments deployments (prefect.yaml)"
projects=$(feast_projects)
row feast "$(ok test -n "$projects")" "registry postgres/$DB_EVENTS" - \
  "projects: ${projects:-none}; online store redis db $REDIS_DB"
# every replica the last `make up` started, and any other that still has a pid file
for i in $( (seq 1 "$REPLICAS"; started_replicas) | sort -nu); do
  row "$(replica_name "$i")" "$(ok check_replica "$i")" "$(replica_url "$i")" \
    "$(pid_of "$(replica_name "$i")")" "replica $i of $REPLICAS; event log postgres/$DB_EVENTS (readyz)"
done
exit "$bad"
