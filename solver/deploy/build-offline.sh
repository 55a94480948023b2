#!/usr/bin/env bash
# Build the node image (the top-level Dockerfile) where no container registry answers, then
# smoke-test it. Usage (as root, from anywhere):
#
#   bash solver/deploy/build-offline.sh [TAG]        # default TAG: lilypad/node:local
#
# Instead of pulling python:3.11-slim-bookworm, it imports a Debian bookworm root filesystem made
# with debootstrap (bookworm's python3 is 3.11) as the BASE, and pip installs from a wheelhouse
# downloaded here (with this machine's pip configuration and certificates) and served to the
# build on 127.0.0.1 (the build runs with --network host). Needs: debootstrap, a Docker Engine,
# a Debian mirror ($DEBIAN_MIRROR) and a Python package index. On this kind of 2-core machine with
# dockerd on vfs it takes several minutes, most of it the vfs copies of each build step.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
tag="${1:-lilypad/node:local}"
base="lilypad/bookworm-python:local"
work="${LILYPAD_BUILD_DIR:-/tmp/lilypad-node-build}"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
python="${PYTHON:-$root/.venv/bin/python}"
[ -x "$python" ] || python=python3
export DOCKER_BUILDKIT=0 # the classic builder: --network host needs no buildx entitlement
step() { echo "[$(date -u +%H:%M:%S)] $*"; }
mkdir -p "$work"

if ! docker image inspect "$base" >/dev/null 2>&1; then
    step "debootstrap bookworm (python3, python3-venv) -> $base"
    rm -rf "$work/rootfs"
    debootstrap --variant=minbase --include=python3,python3-venv bookworm "$work/rootfs" \
        "$mirror" >"$work/debootstrap.log"
    rm -rf "$work"/rootfs/var/cache/apt/archives/*.deb "$work"/rootfs/var/lib/apt/lists/*
    tar -C "$work/rootfs" -c . | docker import - "$base" >/dev/null
    rm -rf "$work/rootfs"
fi

step "wheelhouse: the project's dependencies, its postgres extra and its build backend"
"$python" - >"$work/requirements.txt" <<'EOF'
import tomllib
project = tomllib.load(open("pyproject.toml", "rb"))
for spec in (
    project["project"]["dependencies"]
    + project["project"]["optional-dependencies"]["postgres"]
    + project["build-system"]["requires"]
):
    print(spec)
EOF
(cd "$root" && "$python" -m pip download -q -d "$work/wheels" -r "$work/requirements.txt") \
    2>"$work/pip.log" || { cat "$work/pip.log"; exit 1; }

port="$("$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
"$python" -m http.server "$port" --bind 127.0.0.1 -d "$work/wheels" >"$work/wheels.log" 2>&1 &
server=$!
trap 'kill "$server"' EXIT

# The context holds only what the Dockerfile copies: the classic builder would otherwise send the
# whole checkout (.venv, node_modules: gigabytes), and there is no top-level .dockerignore.
step "build context: the Dockerfile's COPY sources"
rm -rf "$work/context" && mkdir -p "$work/context"
sources="$(awk '$1 == "COPY" && $2 !~ /^--from/ { for (i = 2; i < NF; i++) print $i }' \
    "$root/Dockerfile")"
# shellcheck disable=SC2086 # one word per source
(cd "$root" && tar --exclude=__pycache__ -c Dockerfile $sources) | tar -x -C "$work/context"

step "docker build -> $tag"
docker build --network host \
    --build-arg BASE="$base" \
    --build-arg PIP_NO_INDEX=1 \
    --build-arg PIP_FIND_LINKS="http://127.0.0.1:$port/" \
    -t "$tag" "$work/context" 2>&1 | while IFS= read -r line; do echo "[$(date -u +%T)] $line"; done \
    >"$work/build.log" || { tail -30 "$work/build.log"; exit 1; }

# One container for every check: on the vfs storage driver each container start copies the image.
step "smoke test"
docker run --rm --entrypoint /bin/sh "$tag" -c '
set -e
lilypad version
for role in solver resource-provider mediator jobcreator; do lilypad "$role" --help >/dev/null; done
test "$(id -u)" != 0 || { echo "the image runs as root"; exit 1; }
bwrap --version
python3 -c "
import importlib.util
from lilypad.chain.client import CONTRACT_NAMES, load_artifact
from lilypad.modules.sources import builtin_names
assert importlib.util.find_spec(\"torch\") is None, \"torch is in the node image\"
assert all(load_artifact(name).abi for name in CONTRACT_NAMES)
print(\"modules:\", \", \".join(builtin_names()))
"
'
docker image ls "$tag" --format 'image {{.Repository}}:{{.Tag}}: {{.Size}}'
step "done"
