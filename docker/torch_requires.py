"""Print the installed torch's requirements whose names start with one of the given prefixes, one per line, for
`pip install -r`. docker/Dockerfile installs torch's CUDA libraries in layers of their own with it, and its train
stage puts the Triton compiler back. Reads torch's metadata only: torch need not be importable yet.

    python docker/torch_requires.py cuda-toolkit > /tmp/cuda-toolkit.txt
"""

import importlib.metadata
import sys

if len(sys.argv) < 2:
    sys.exit("usage: python docker/torch_requires.py PREFIX [PREFIX ...]")
print("\n".join(r for r in importlib.metadata.requires("torch") or [] if r.startswith(tuple(sys.argv[1:]))))
