#!/usr/bin/env bash
# Start a Docker Engine the way this kind of machine allows (no iptables, no default bridge, vfs
# storage), unless one already answers; wait until it does.
set -euo pipefail
if docker info >/dev/null 2>&1; then
    exit 0
fi
dockerd --iptables=false --ip6tables=false --bridge=none --storage-driver=vfs \
    >/tmp/dockerd.log 2>&1 &
for _ in $(seq 1 60); do
    docker info >/dev/null 2>&1 && exit 0
    sleep 1
done
echo "dockerd did not start:"
tail -20 /tmp/dockerd.log
exit 1
