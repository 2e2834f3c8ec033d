#!/usr/bin/env bash
# The whole suite, as `make test` and CI run it. pytest's exit 5 ("no tests ran") is a failure.
set -uo pipefail
cd "$(dirname "$0")/.."
mkdir -p test-artifacts
# As root, the tests' sessions run as users' own Unix accounts and must reach this checkout
# (its .venv and src/). A checkout under a private folder (e.g. /root) is opened to
# traversal (o+x, not reading) on the way down, saying so.
if [ "$(id -u)" = 0 ] && ! runuser -u nobody -- test -r "$PWD/pyproject.toml" 2>/dev/null; then
  dir="$PWD"
  while [ "$dir" != / ]; do
    if ! runuser -u nobody -- test -x "$dir" 2>/dev/null; then
      echo "tests/run.sh: chmod o+x $dir (sessions must reach the checkout)" >&2
      chmod o+x "$dir"
    fi
    dir="$(dirname "$dir")"
  done
fi
# Two workers side by side: most of a test's time is spent waiting for a hub, a Lab, a
# browser or Slurm, not computing. tests/conftest.py keeps each module on one worker and
# the Slurm modules one after another. `-n 0` after these runs it all in one process.
# The slowest tests, so that a CI log shows where its minutes went.
.venv/bin/python -m pytest -n 2 --durations=30 "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests: failing on purpose" >&2
  exit 1
fi
exit "$rc"
