#!/usr/bin/env bash
# Start the PostgreSQL server of Debian's package for the tests, reachable at
# postgresql://postgres:postgres@127.0.0.1:5432 (the default of LILYPAD_TEST_POSTGRES_URL): the
# newest installed version's `main` cluster, made when missing. `make system` installs the package.
set -euo pipefail
if ! command -v pg_ctlcluster >/dev/null || [ -z "$(ls /usr/lib/postgresql 2>/dev/null)" ]; then
    echo "PostgreSQL is not installed: \`make system\` (as root) installs it" >&2
    exit 1
fi
version=$(ls /usr/lib/postgresql | sort -V | tail -n 1)
if ! pg_lsclusters -h | awk '{print $1" "$2}' | grep -q "^$version main$"; then
    pg_createcluster "$version" main
fi
# Its socket folder lives on /run, which is empty after a boot without systemd to make it.
install -d -o postgres -g postgres -m 2775 /var/run/postgresql
pg_ctlcluster "$version" main status >/dev/null 2>&1 || pg_ctlcluster "$version" main start
# Debian gives a new cluster the next free port when 5432 is taken.
port=$(pg_lsclusters -h | awk -v v="$version" '$1 == v && $2 == "main" {print $3}')
for _ in $(seq 1 30); do
    runuser -u postgres -- pg_isready -q -h 127.0.0.1 -p "$port" && break
    sleep 1
done
runuser -u postgres -- psql -q -h /var/run/postgresql -p "$port" \
    -c "ALTER USER postgres PASSWORD 'postgres'"
if [ "$port" != 5432 ]; then
    url=postgresql+psycopg://postgres:postgres@127.0.0.1:$port/postgres
    echo "PostgreSQL $version/main listens on port $port, not 5432; for the tests set" \
        "LILYPAD_TEST_POSTGRES_URL=$url" >&2
fi
