#!/usr/bin/env bash
# Install and start a PostgreSQL server for the tests (Debian's package), reachable at
# postgresql://postgres:postgres@127.0.0.1:5432 — the default of LILYPAD_TEST_POSTGRES_URL.
set -euo pipefail
if ! command -v pg_ctlcluster >/dev/null || [ -z "$(ls /usr/lib/postgresql 2>/dev/null)" ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql
fi
version=$(ls /usr/lib/postgresql | sort -V | tail -n 1)
if ! pg_lsclusters -h | awk '{print $1" "$2}' | grep -q "^$version main$"; then
    pg_createcluster "$version" main
fi
pg_ctlcluster "$version" main start 2>/dev/null || pg_ctlcluster "$version" main status >/dev/null
for _ in $(seq 1 30); do
    runuser -u postgres -- pg_isready -q -h 127.0.0.1 && break
    sleep 1
done
runuser -u postgres -- psql -q -h /var/run/postgresql -c "ALTER USER postgres PASSWORD 'postgres'"
