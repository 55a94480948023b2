#!/usr/bin/env bash
# What `make test` and `make demo` need from the machine beyond .venv/ and node_modules/: Debian
# packages, a Docker Engine and (the tests) a PostgreSQL server.
#
#   bash .ci/machine.sh all|system|services test|demo
#
# system: the packages; services: dockerd and PostgreSQL answering; all: both. As root it installs
# the packages that are missing (apt-get runs only then) and starts a service that does not answer.
# As any other user it changes nothing: it names everything that is missing and the command that
# adds it, and fails. It never writes into the checkout, so root can run it in a user's clone.
set -euo pipefail
usage="usage: machine.sh all|system|services test|demo"
part=${1:?$usage}
goal=${2:?$usage}
case "$part" in
    all | system | services) ;;
    *) echo "machine.sh: unknown part '$part'; $usage" >&2 && exit 2 ;;
esac
case "$goal" in
    test | demo) ;;
    *) echo "machine.sh: FOR=$goal: what it is for is test or demo; $usage" >&2 && exit 2 ;;
esac
ci=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$ci")
python=${PYTHON:-python3}
# The server the tests use, in SQLAlchemy's form; psql takes it without the driver name.
default_url=postgresql+psycopg://postgres:postgres@127.0.0.1:5432/postgres
postgres_url=${LILYPAD_TEST_POSTGRES_URL:-$default_url}
postgres_url=$(sed -E 's|^postgresql\+[a-z0-9_]+:|postgresql:|' <<<"$postgres_url")
shown_url=$(sed -E 's|^([a-z]+://[^:/@]*:)[^@]*@|\1***@|' <<<"$postgres_url")
[ "$(id -u)" = 0 ] && root=1 || root=0

packages=()   # the Debian packages that are missing
gives=()      # what each of them gives
problems=()   # anything else that is wrong, one line each
root_fixes=() # commands root runs to fix a problem, besides `make system services`
root_notes=() # what to do after each of them
fixes=()      # commands the user runs
needs_root=0  # whether `make system services` as root fixes something

has() { command -v "$1" >/dev/null; }

# need PACKAGE WHAT CHECK...: PACKAGE is missing unless CHECK succeeds.
need() {
    local package=$1 what=$2
    shift 2
    "$@" >/dev/null 2>&1 || { packages+=("$package") && gives+=("$what"); }
}

# 0: Python 3.11+ that makes venvs; 1: an older one (or none); 2: no ensurepip (python3-venv).
python_state() {
    "$python" -c 'import importlib.util as u, sys
sys.exit(1 if sys.version_info < (3, 11) else 0 if u.find_spec("ensurepip") else 2)' 2>/dev/null
}
docker_engine() { has docker && has dockerd; }
postgres_server() {
    has pg_ctlcluster && has psql && compgen -G "/usr/lib/postgresql/*/bin/postgres" >/dev/null
}

# The offline base image is made of it, so it must run without libraries (Debian's busybox-static).
static_busybox() {
    local exe
    for exe in /bin/busybox /usr/bin/busybox; do
        [ -x "$exe" ] || continue
        case "$(LC_ALL=C ldd "$exe" 2>&1 || true)" in
            *"not a dynamic executable"* | *"statically linked"*) return 0 ;;
        esac
    done
    return 1
}

check_packages() {
    packages=() gives=()
    [ $python_found != 2 ] || need python3-venv "$python -m venv" python_state
    # chain: node and npm run the pinned solc and anvil (contracts/package-lock.json); storage: the
    # reference UnixFS importer (tests/storage/js)
    need nodejs "node" has node
    need npm "npm" has npm
    # module runtime: the process executor's sandbox, a Docker Engine for the docker executor, and
    # a static busybox for the offline base image (`make images`)
    need bubblewrap "bwrap" has bwrap
    need docker.io "docker, dockerd" docker_engine
    need busybox-static "a static busybox" static_busybox
    [ "$goal" = test ] || return 0
    # git module sources (tests/test_sources.py), a self-signed https server (tests/test_tls.py),
    # ffprobe decodes the SDV module's MP4 (tests/ml), ipfs_cid is a second reference for file
    # CIDs (tests/storage), docker-compose checks solver/deploy/compose.yaml, ip makes the
    # cross-host test's namespace and veth link, tmux is the real terminal the progress bar of
    # `lilypad run` is checked in (tests/creator/test_terminal.py), and the solver store runs
    # on PostgreSQL
    need git "git" has git
    need openssl "openssl" has openssl
    need ffmpeg "ffprobe" has ffprobe
    need ipfs-cid "ipfs_cid" has ipfs_cid
    need docker-compose "docker-compose" has docker-compose
    need iproute2 "ip" has ip
    need tmux "tmux" has tmux
    # the dashboard of `lilypad serve` is tested in a real headless browser (tests/test_serve.py)
    need chromium "chromium" has chromium
    need chromium-driver "chromedriver" has chromedriver
    need postgresql "a PostgreSQL server" postgres_server
}

install_packages() {
    echo "Installing the Debian packages \`make $goal\` needs: ${packages[*]}"
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${packages[@]}"
    check_packages
    if [ ${#packages[@]} -gt 0 ]; then
        echo "machine.sh: apt-get did not give ${gives[*]} (packages ${packages[*]})" >&2
        exit 1
    fi
}

# The process executor's sandbox: the namespaces bubblewrap needs, here and for this user.
check_bwrap() {
    local out
    out=$(bwrap --unshare-all --unshare-user --die-with-parent --ro-bind / / --proc /proc \
        --dev /dev /bin/true 2>&1) && return 0
    problems+=("bwrap cannot create its sandbox here: ${out##*$'\n'}")
    if [ "$(cat /proc/sys/kernel/apparmor_restrict_unprivileged_userns 2>/dev/null)" = 1 ]; then
        root_fixes+=("sysctl -w kernel.apparmor_restrict_unprivileged_userns=0") root_notes+=("")
    elif [ "$(cat /proc/sys/kernel/unprivileged_userns_clone 2>/dev/null)" = 0 ]; then
        root_fixes+=("sysctl -w kernel.unprivileged_userns_clone=1") root_notes+=("")
    elif [ "$(cat /proc/sys/user/max_user_namespaces 2>/dev/null)" = 0 ]; then
        root_fixes+=("sysctl -w user.max_user_namespaces=15000") root_notes+=("")
    fi
}

# Set $problem to why the service does not answer (the first line of its client's error), or to
# nothing when it answers.
docker_problem() {
    if problem=$(timeout 20 docker version --format '{{.Server.Version}}' 2>&1 >/dev/null); then
        problem=""
    else
        problem=${problem%%$'\n'*}
        problem=${problem:-"docker version failed"}
    fi
}
postgres_problem() {
    if problem=$(PGCONNECT_TIMEOUT=5 psql "$postgres_url" -tAqc 'select 1' 2>&1 >/dev/null); then
        problem=""
    else
        problem=${problem%%$'\n'*}
        problem=${problem:-"psql failed"}
    fi
}

check_services() {
    local problem
    if docker_engine; then
        docker_problem
        if [ -n "$problem" ] && [ "$root" = 1 ]; then
            bash "$ci/dockerd.sh"
        elif [[ "$problem" == *"permission denied"* ]]; then
            problems+=("a Docker Engine runs, but $(id -un) may not use it: ${problem%%: Get *}")
            root_fixes+=("usermod -aG docker $(id -un)") root_notes+=("then log in again")
        elif [ -n "$problem" ]; then
            problems+=("a Docker Engine: $problem")
            needs_root=1
        fi
    fi
    if [ "$goal" = test ] && postgres_server; then
        postgres_problem
        if [ -n "$problem" ] && [ "$root" = 1 ]; then
            bash "$ci/postgres.sh"
            postgres_problem
            [ -z "$problem" ] || problems+=("PostgreSQL at $shown_url: $problem")
        elif [ -n "$problem" ]; then
            problems+=("PostgreSQL at $shown_url: $problem")
            needs_root=1
        fi
    fi
}

python_found=0
python_state || python_found=$?
if [ $python_found = 1 ] || { [ $python_found != 0 ] && [ "$python" != python3 ]; }; then
    version=$("$python" --version 2>/dev/null) || version="not there"
    problems+=("Python 3.11 or later: $python is $version")
    fixes+=("make $goal PYTHON=/path/to/python3.11")
elif [ $python_found != 0 ]; then
    python_found=2 # no python3 at all: python3-venv brings it
fi
check_packages
if [ "$part" != services ]; then
    [ "$root" = 1 ] && [ ${#packages[@]} -gt 0 ] && install_packages
    if has bwrap; then check_bwrap; fi
fi
[ "$part" = system ] || check_services
[ ${#packages[@]} -eq 0 ] || needs_root=1
[ $needs_root = 1 ] || [ ${#problems[@]} -gt 0 ] || exit 0

{
    echo "\`make $goal\` needs what this machine lacks:"
    if [ ${#packages[@]} -gt 0 ]; then
        for i in "${!packages[@]}"; do
            echo "  - ${gives[$i]} (Debian package ${packages[$i]})"
        done
    fi
    for problem in ${problems[@]+"${problems[@]}"}; do
        echo "  - $problem"
    done
    if [ $needs_root = 1 ]; then
        root_fixes=("make -C $repo system services$([ "$goal" = test ] || echo " FOR=$goal")"
            ${root_fixes[@]+"${root_fixes[@]}"})
        root_notes=("" ${root_notes[@]+"${root_notes[@]}"})
    fi
    commands=()
    for i in ${root_fixes[@]+"${!root_fixes[@]}"}; do
        command=${root_fixes[$i]} note=${root_notes[$i]}
        if [ "$root" = 1 ]; then
            commands+=("$command${note:+   # $note}")
        elif has sudo; then
            commands+=("sudo $command${note:+   # $note}")
        else
            commands+=("su -c '$command'   # as root${note:+; $note}")
        fi
    done
    commands+=(${fixes[@]+"${fixes[@]}"})
    if [ ${#commands[@]} -gt 0 ]; then
        echo "Run, then \`make $goal\` again:"
        printf '    %s\n' "${commands[@]}"
    fi
    if [ $needs_root = 1 ]; then
        [ "$goal" = test ] && does="starts dockerd and PostgreSQL unless they answer" ||
            does="starts dockerd unless it answers"
        [ ${#packages[@]} -eq 0 ] || does="runs \`apt-get install -y ${packages[*]}\`, then $does"
        echo "(\`make system services\` $does)"
    fi
} >&2
exit 1
