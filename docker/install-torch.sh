#!/bin/sh
# Install torch and torchvision (pyproject.toml's ranges) from TORCH_INDEX_URL, the PyTorch CPU wheel index by
# default, when it answers within seconds; else from pip's own index (the package registry, whose Linux torch
# wheels are the CUDA build: about 5 GB more). docker/Dockerfile and the Makefile's venv rule both run it, so the
# image and `make test` get torch the same way; it prints the index it used and writes it to RECORD when given.
#   sh docker/install-torch.sh PYTHON PYPROJECT [RECORD [--no-deps]]
# TORCH_INDEX_URL set but empty: straight to pip's own index. --no-deps: torch and torchvision alone, without the
# packages they require (the image installs those in later layers, to keep each layer small: docker/Dockerfile).
set -eu
python=$1
pyproject=$2
record=${3:-}
no_deps=${4:-}
[ -z "$no_deps" ] || [ "$no_deps" = --no-deps ] || { echo "install-torch: unknown option $no_deps" >&2; exit 2; }
preferred=${TORCH_INDEX_URL-https://download.pytorch.org/whl/cpu}

requirements=$(grep -oE '"(torch|torchvision)[<>=~!][^"]*"' "$pyproject" | tr -d '"' | tr '\n' ' ')
[ -n "$requirements" ] || { echo "install-torch: no torch requirement found in $pyproject" >&2; exit 1; }

# The probe reads the index page itself: `pip index versions` would also list pip.conf's extra indexes and
# find-links, and pip's own retries take minutes to give up on a host that does not resolve.
reachable=no
if [ -n "$preferred" ] && "$python" -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1].rstrip('/') + '/torch/', timeout=5)" "$preferred" 2>/dev/null; then
    reachable=yes
fi
if [ $reachable = yes ]; then
    source=$preferred
    # shellcheck disable=SC2086  # one word per requirement
    "$python" -m pip install $no_deps --index-url "$preferred" $requirements
else
    source=registry
    echo "install-torch: ${preferred:-no preferred index} did not answer within 5 s: torch from pip's own index" >&2
    # shellcheck disable=SC2086
    "$python" -m pip install $no_deps $requirements
fi
# torch/version.py, read without importing torch, which cannot be imported yet after --no-deps
build=$("$python" -c "import importlib.util as u, os, runpy; v = runpy.run_path(os.path.join(u.find_spec('torch').submodule_search_locations[0], 'version.py')); print(v['__version__'], 'cuda', v['cuda'] or 'none')")
echo "install-torch: source=$source torch=$build"
if [ -n "$record" ]; then
    printf 'source=%s\ntorch=%s\n' "$source" "$build" > "$record"
fi
