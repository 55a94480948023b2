#!/usr/bin/env bash
# `make demo`: brings the local network up (chain, IPFS, solver, provider, mediator, bridge) and
# runs real jobs through it end to end with `lilypad run`, then brings it down again.
set -euo pipefail
cd "$(dirname "$0")/.."
lilypad=.venv/bin/lilypad
network=demo
step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; "$@"; }

# The provider runs modules in Docker when an engine answers and the module's image is built here
# (cowsay's builds offline: make images), else as sandboxed local processes: the GPU module images
# need a registry to build. Without real weights in MODEL_DIR the ML modules run with tiny weights.
step "$lilypad" network up --network "$network" --detach
trap '"$lilypad" network down --network "$network"' EXIT
key=$(.venv/bin/python -c "from lilypad.localnet import key_file; print(key_file('$network', 'job_creator'))")

step "$lilypad" run cowsay:v0.0.4 -i Message="hello, lilypad" --network "$network" --key-file "$key" --yes
step "$lilypad" run sdxl:v0.9-lilypad1 -i Prompt="beautiful view of iceland with a record player" \
    --network "$network" --key-file "$key" --yes
# The result CID of the newest job of a module (by name prefix, e.g. "sdxl:").
last_cid() {
    "$lilypad" jobs list --json | .venv/bin/python -c \
        'import json, sys; print([r for r in json.load(sys.stdin) if r["module"].startswith(sys.argv[1])][-1]["result_cid"])' "$1"
}
# A file input by CID: image to image on the picture the SDXL job just made.
still=$(last_cid sdxl:)
step "$lilypad" run sdxl-img2img:v1.0-lilypad1 -i Image="ipfs://$still/outputs/image-0.png" \
    -i Prompt="the same view as a watercolour painting" -i Strength=0.5 \
    --network "$network" --key-file "$key" --yes
step "$lilypad" run sdv-pipeline:v1.1-lilypad2 -i Prompt="an astronaut floating" -i Steps=5 \
    -i VideoSteps=5 --network "$network" --key-file "$key" --yes
# A workflow of three jobs chained by CID: text to image, a ControlNet from that picture's edges,
# then the result upscaled 4x.
step "$lilypad" run sd15:v1.0-lilypad1 -i Prompt="a lighthouse on a cliff at dusk" -i Seed=7 \
    --network "$network" --key-file "$key" --yes
step "$lilypad" run sd15-controlnet:v1.0-lilypad1 -i Image="ipfs://$(last_cid sd15:)/outputs/image-0.png" \
    -i Control=canny -i Prompt="the same lighthouse as a watercolour, morning light" \
    --network "$network" --key-file "$key" --yes
step "$lilypad" run upscale:v1.0-lilypad1 -i Image="ipfs://$(last_cid sd15-controlnet:)/outputs/image-0.png" \
    -i Scale=4 --network "$network" --key-file "$key" --yes
step "$lilypad" jobs list
