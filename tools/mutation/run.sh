#!/bin/sh
# One command for the mutation run: tools/mutation/run.sh [SIZE] [SEED]
#
# Creates a cosmic-ray session over sohbet/chat, sohbet/service and sohbet/store, keeps a
# uniform random sample of SIZE mutants (default 100, about an hour here), runs each against
# tools/mutation/tests.sh at low priority, and prints the score table. cosmic-ray writes every
# mutant into the source file in place (the editable install then imports it) and restores it
# afterwards, so this refuses to run in the main checkout: use a worktree of its own,
#   git worktree add ../sohbet-mutation HEAD && cd ../sohbet-mutation && (set up .venv) && tools/mutation/run.sh
# Set MUTATION_RESUME=1 to continue an interrupted session instead of starting a new one, and
# MUTATION_RETEST=1 with it to run the session's survivors again (after writing tests for them).
set -eu
SIZE=${1:-100}
SEED=${2:-20261201}
cd "$(git rev-parse --show-toplevel)"
if [ "$(git rev-parse --git-dir)" = "$(git rev-parse --git-common-dir)" ] && [ -z "${MUTATION_IN_PLACE_OK:-}" ]; then
    echo "refusing: this is the main checkout; mutants are written in place (MUTATION_IN_PLACE_OK=1 to insist)" >&2
    exit 2
fi
if ! git diff --quiet -- sohbet; then
    echo "refusing: sohbet/ has uncommitted changes (a leftover mutant?); see git diff sohbet" >&2
    exit 2
fi
CONFIG=tools/mutation/cosmic-ray.toml
SESSION=${MUTATION_SESSION:-.mutation/session.sqlite}
mkdir -p "$(dirname "$SESSION")"
if [ -z "${MUTATION_RESUME:-}" ]; then
    echo "baseline: the unmutated source must pass the test command" >&2
    sh tools/mutation/tests.sh >/dev/null
    .venv/bin/cosmic-ray init --force "$CONFIG" "$SESSION"
fi
.venv/bin/python tools/mutation/sample.py "$SESSION" --size "$SIZE" --seed "$SEED" ${MUTATION_RETEST:+--retest-survivors}
nice -n 5 .venv/bin/cosmic-ray exec "$CONFIG" "$SESSION"
git diff --quiet -- sohbet || { echo "a mutant was left in sohbet/: git checkout -- sohbet" >&2; exit 1; }
.venv/bin/python tools/mutation/report.py "$SESSION" --survivors
