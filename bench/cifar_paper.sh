#!/usr/bin/env bash
# The paper's CIFAR-10 study (Table 6, Fig. 6, Fig. 7) in one bounded run; see bench/cifar_paper.py.
#   bench/cifar_paper.sh OUTDIR [--smoke] [--budget SECONDS] [--data PATH] [--models ...] [--prefer ...]
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec "${PYTHON:-$(command -v python || command -v python3)}" -m bench.cifar_paper "$@"
