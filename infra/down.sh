#!/usr/bin/env bash
# make down: stop what `make up` started, newest first (every service replica, workers, servers),
# by pid file and process group. PostgreSQL and Redis are stopped only if `make up` started them
# (a marker in run/); shared ones are left alone. Databases and state under $LLMOPT_INFRA_HOME are
# kept.
# Idempotent: nothing running, nothing to do.
set -euo pipefail
# shellcheck source=infra/lib.sh
source "$(dirname "$0")/lib.sh"
mkdir -p "$RUN_DIR"

for i in $(started_replicas); do  # every replica of the decision service (`make up REPLICAS=N`)
  stop_pid_file "$(replica_name "$i")" 30
done
# Workers before the API server: a worker whose server is gone retries instead of exiting.
for f in "$RUN_DIR"/prefect-worker-*.pid; do
  [[ -e $f ]] || continue
  name=$(basename "$f" .pid)
  stop_pid_file "$name" 20
done
stop_pid_file prefect-server 30
stop_pid_file mlflow 20

if [[ -f $RUN_DIR/redis.started ]]; then
  redis-cli -h "$REDIS_HOST" -p "$REDIS_PORT" shutdown nosave >/dev/null 2>&1 || true
  stop_pid_file redis 10
  rm -f "$RUN_DIR/redis.started"
  say "stopped Redis (started by up)"
fi
if [[ -f $RUN_DIR/postgres.started ]]; then
  pg_ctlcluster --skip-systemctl-redirect "$(pg_cluster_version)" main stop || true
  rm -f "$RUN_DIR/postgres.started"
  say "stopped PostgreSQL (started by up)"
fi
say "down (logs kept in $LOG_DIR)"
