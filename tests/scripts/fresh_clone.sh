#!/usr/bin/env bash
# The README's "Set-up" on a fresh clone, in a new virtual environment:
#   bash tests/scripts/fresh_clone.sh [demo|test|docs]   (default: demo)
# Clones the committed HEAD of this repository into a temporary directory, makes a virtual
# environment there, and runs `make demo` (install + the quickstart run), `make test`, or
# (docs) `make install` and the fast documentation tests. Exits with their status.
# Minutes (an install); not part of the test suite.
set -euo pipefail
target="${1:-demo}"
repo="$(cd "$(dirname "$0")/../.." && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
git clone --quiet "$repo" "$work/clone"
cd "$work/clone"
python3 -m venv .venv && . .venv/bin/activate
if [ "$target" = docs ]; then
  make install
  MPLBACKEND=Agg python -m pytest -q -m "not slow" tests/test_docs.py
else
  make "$target"
fi
echo "fresh clone: $target passed"
