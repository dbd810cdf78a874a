#!/usr/bin/env bash
# The long chaos scenarios (tests/e2e/chaos, marked `long`): 20 SIGKILLs over 100 k events,
# 10-minute Seg outages (refused, 503, hanging), a 60 s broker outage, two instances with one
# restarted every 30 s for 5 minutes. About 50 minutes on the 2-core machine. Each test prints
# a `FIGURES` line (README.md, Tests, "Chaos"). The short versions run in scripts/test.sh.
#   bash scripts/chaos.sh                 # all of them
#   bash scripts/chaos.sh -k kills        # one (pytest -k)
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH" EVENTRELAY_REQUIRE_TANSU=1
python3 -m pytest tests/e2e/chaos -m long -s "$@" | grep -E '^(PASS|FAIL) |^FIGURES|^kill |^cycle |passed|failed|xfail|XFAIL'
