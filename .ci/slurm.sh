#!/usr/bin/env bash
# CI step: bring up the local single-node Slurm cluster the integration tests run on.
# Installs the Debian packages on first use, then starts the daemons (a no-op if they are up);
# tests/integration/conftest.py finds the cluster through the env file printed below.
set -euo pipefail
cd "$(dirname "$0")/.."

t0=$(date +%s.%N)
bash slurm/local/start.sh
prefix=${HOLSTEIN_SLURM_PREFIX:-/tmp/holstein-slurm}
echo "slurm: ready after $(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }') s; env file: $prefix/env.sh"
