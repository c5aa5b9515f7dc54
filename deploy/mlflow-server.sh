#!/usr/bin/env bash
# The shared MLflow tracking server and model registry on PostgreSQL, artifacts on a file system every
# run sees or an object store. Run it on the host/pod that serves MLflow; point the pipeline at it with
# MLFLOW_TRACKING_URI=http://<host>:5000 (or give the pipeline the database URI directly, as
# tests/defs/test_postgres.py does, and keep the server for the UI only).
#
#   MLFLOW_DB_URL=postgresql+psycopg2://mlflow:***@db:5432/mlflow \
#   MLFLOW_ARTIFACTS=/mnt/unime/mlflow-artifacts   # or s3://bucket/mlflow (needs boto3 + AWS credentials)
#   deploy/mlflow-server.sh
#
# Binding: 127.0.0.1 unless MLflow's basic authentication is on. The server has no access control of
# its own (anyone who reaches it can delete runs and models), so listening on another interface
# (MLFLOW_HOST=0.0.0.0) is refused unless MLFLOW_AUTH=basic, which starts `mlflow server --app-name
# basic-auth` (needs `mlflow[auth]` and MLFLOW_FLASK_SERVER_SECRET_KEY; users and permissions in the
# auth database named by the ini file at MLFLOW_AUTH_CONFIG_PATH; change the default admin's password
# first; clients set MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD). Or keep 127.0.0.1 and put an
# authenticating reverse proxy in front (docs/operating.md, "Exposing the UIs").
#
# MLflow 3's server answers only requests addressed to localhost unless MLFLOW_ALLOWED_HOSTS lists the
# names clients use (e.g. MLFLOW_ALLOWED_HOSTS=mlflow,mlflow:5000,mlflow.internal).
# `postgresql+psycopg2://`: SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3, which is not
# installed; psycopg2-binary is (with dagster-postgres). The schema is created/migrated on first start
# (`mlflow db upgrade "$MLFLOW_DB_URL"` after an MLflow upgrade).
set -euo pipefail
: "${MLFLOW_DB_URL:?set MLFLOW_DB_URL=postgresql+psycopg2://user:password@host:5432/mlflow}"
: "${MLFLOW_ARTIFACTS:?set MLFLOW_ARTIFACTS to a shared directory or s3://bucket/prefix}"
export MLFLOW_DISABLE_TELEMETRY=true
host="${MLFLOW_HOST:-127.0.0.1}"
auth=()
if [[ "${MLFLOW_AUTH:-}" == "basic" ]]; then
  : "${MLFLOW_FLASK_SERVER_SECRET_KEY:?set MLFLOW_FLASK_SERVER_SECRET_KEY (the same on every server) for basic auth}"
  auth=(--app-name basic-auth)
elif [[ "$host" != "127.0.0.1" && "$host" != "localhost" && "$host" != "::1" ]]; then
  echo "refusing to serve MLflow on $host without authentication: set MLFLOW_AUTH=basic" \
       "(or keep 127.0.0.1 behind an authenticating proxy)" >&2
  exit 2
fi
exec mlflow server \
  --backend-store-uri "$MLFLOW_DB_URL" \
  --artifacts-destination "$MLFLOW_ARTIFACTS" \
  --serve-artifacts \
  --host "${MLFLOW_HOST:-127.0.0.1}" --port "${MLFLOW_PORT:-5000}" \
  --workers "${MLFLOW_WORKERS:-4}" \
  ${auth[@]+"${auth[@]}"} \
  ${MLFLOW_ALLOWED_HOSTS:+--allowed-hosts "$MLFLOW_ALLOWED_HOSTS"}
