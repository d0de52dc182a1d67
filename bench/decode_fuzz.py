"""The decoder fuzzer of tests/test_decode_fuzz.py run longer than `make test` runs it (issue 24): the same
derandomized hypothesis mutations of valid files of every accepted format, N of them; a finding is written to
tests/decode_regressions/ and fails the run.

    python -m bench.decode_fuzz --examples 20000
"""

import argparse
import os
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=20000, help="Mutated inputs per format (default: 20000).")
    args = parser.parse_args(argv)
    if args.examples < 1:
        parser.error("--examples must be at least 1")
    import pytest  # the dev extra, only when the fuzzer runs

    os.environ["RESDET_FUZZ_EXAMPLES"] = str(args.examples)
    return pytest.main(["-q", "-p", "no:cacheprovider", str(REPO_ROOT / "tests" / "test_decode_fuzz.py")])


if __name__ == "__main__":
    sys.exit(main())
