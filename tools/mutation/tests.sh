#!/bin/sh
# The test command for one mutant: the unit, service and store tests (seconds) and, only if
# they all pass, the real-socket chat tests (about a minute). -x stops at the first failure:
# one red test is enough to kill a mutant.
set -e
PY=.venv/bin/pytest
ARGS="-q -x -p no:cacheprovider --no-cov"
$PY $ARGS tests/chat tests/service tests/store
exec $PY $ARGS tests/integration/test_chat.py tests/integration/test_hardening.py tests/integration/test_guards.py
