#!/usr/bin/env bash
# `make demo`: the most complete thing that works so far, run through the installed CLI.
set -euo pipefail
cd "$(dirname "$0")/.."
lilypad=.venv/bin/lilypad
step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; "$@"; }
step "$lilypad" version
step "$lilypad" module list
step "$lilypad" module show sdv-pipeline
step "$lilypad" module render sdxl:v0.9-lilypad1 -i Prompt="beautiful view of iceland with a record player" -i Seed=24
