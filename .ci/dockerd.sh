#!/usr/bin/env bash
# Start a Docker Engine unless one already answers; wait until it does. Under systemd that is the
# docker service; elsewhere (a container, a chroot, this kind of CI machine) dockerd itself, the
# way such a machine allows: no iptables, no default bridge, vfs storage. It runs in its own
# session, so a Ctrl-C in the terminal that started it does not stop it.
set -euo pipefail
if docker version >/dev/null 2>&1; then
    exit 0
fi
if [ -d /run/systemd/system ]; then
    systemctl start docker
else
    setsid dockerd --iptables=false --ip6tables=false --bridge=none --storage-driver=vfs \
        </dev/null >/tmp/dockerd.log 2>&1 &
fi
for _ in $(seq 1 60); do
    docker version >/dev/null 2>&1 && exit 0
    sleep 1
done
echo "dockerd did not start:" >&2
if [ -d /run/systemd/system ]; then
    journalctl -u docker -n 20 --no-pager >&2
else
    tail -20 /tmp/dockerd.log >&2
fi
exit 1
