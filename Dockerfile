# The node image: one image for every role of a network node.
#
#   docker build -t lilypad/node .
#   docker run --rm lilypad/node solver --help
#
# Roles: `lilypad solver`, `lilypad resource-provider`, `lilypad mediator`, `lilypad jobcreator`
# (and the client commands: `lilypad run`, `lilypad chain ...`). The image holds no ML runtime
# (no torch): GPU work runs in the module images (module/sdxl, module/sdv-pipeline) that the
# docker executor starts next to it on the host's Docker Engine. solver/deploy/compose.yaml runs
# a whole deployment from it.
#
# BASE is any Debian-like image with Python 3.11 (`python3` and its venv module); the default is
# the official slim one. Build args PIP_INDEX_URL / PIP_EXTRA_INDEX_URL / PIP_FIND_LINKS /
# PIP_NO_INDEX point pip at a mirror or a local wheelhouse.
ARG BASE=python:3.11-slim-bookworm

# --- build: the project and its dependencies, in a venv that is copied as a whole ----------------
FROM ${BASE} AS build
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_FIND_LINKS
ARG PIP_NO_INDEX
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python3 -m venv /opt/lilypad
WORKDIR /src
# Only what the wheel is built from (no .dockerignore at the top level: COPY names each part).
# The chain artifacts travel inside lilypad/chain/artifacts, the built-in modules (module/) are
# force-included in the wheel as lilypad/_builtin_modules.
COPY pyproject.toml README.md ./
COPY lilypad/ lilypad/
COPY resource_provider/ resource_provider/
COPY solver/ solver/
COPY module/ module/
# Not editable and without the `ml` extra: torch and diffusers stay out of the node image. The
# `postgres` extra is the solver's PostgreSQL driver.
# pip and setuptools are not needed at run time (about 25 MB).
RUN /opt/lilypad/bin/pip install '.[postgres]' \
    && /opt/lilypad/bin/python -m pip uninstall -y -q pip setuptools \
    && /opt/lilypad/bin/lilypad --help >/dev/null

# --- runtime -------------------------------------------------------------------------------------
FROM ${BASE}
# bubblewrap: the process executor's sandbox (it also needs a container started with user
# namespaces allowed; without them jobs run unsandboxed and each result says so).
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        bubblewrap ca-certificates \
    && apt-get clean \
    && rm -rf /var/lib/apt/lists/*
# A fixed uid, so host folders can be handed to it (chown 10001).
RUN groupadd --gid 10001 lilypad \
    && useradd --uid 10001 --gid lilypad --no-create-home --home-dir /var/lib/lilypad \
        --shell /usr/sbin/nologin lilypad \
    && install -d -o lilypad -g lilypad -m 0750 /var/lib/lilypad /etc/lilypad/networks
COPY --from=build /opt/lilypad /opt/lilypad
ENV PATH=/opt/lilypad/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    LILYPAD_DATA_DIR=/var/lib/lilypad \
    LILYPAD_CACHE_DIR=/var/lib/lilypad/cache \
    LILYPAD_CONFIG_DIR=/etc/lilypad
USER lilypad
WORKDIR /var/lib/lilypad
# State (solver database, provider deal state, results, caches). A provider using the host's
# Docker Engine must bind-mount the same host path here instead (see solver/deploy/compose.yaml).
VOLUME ["/var/lib/lilypad"]
# NOTE: no HEALTHCHECK: the roles differ (the solver answers /healthz, the provider and mediator
# serve /metrics, the bridge serves nothing); compose.yaml gives each service its own.
ENTRYPOINT ["lilypad"]
CMD ["--help"]
