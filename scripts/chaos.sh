#!/usr/bin/env bash
# The long chaos scenarios (tests/e2e/chaos, marked `long`): 20 SIGKILLs over 100 k events,
# 10-minute Seg outages (refused, 503, hanging), a 60 s broker outage, two instances with one
# restarted every 30 s for 5 minutes, and a 10-minute broker outage on the embedded mock
# cluster (tests/send_stage.rs). About 65 minutes on the 2-core machine. Each test prints
# a `FIGURES` line (README.md, Tests, "Chaos"). The short versions run in scripts/test.sh.
#   bash scripts/chaos.sh                 # all of them
#   bash scripts/chaos.sh -k kills        # one (pytest -k; skips the mock broker outage)
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH" EVENTRELAY_REQUIRE_TANSU=1
python3 -m pytest tests/e2e/chaos -m long -s "$@" | grep -E '^(PASS|FAIL) |^FIGURES|^kill |^cycle |passed|failed|xfail|XFAIL'
# The broker down for 10 minutes, its data kept (librdkafka's mock cluster, broker_down/up):
# the same test the test command runs for 5 s. Only in a full run (no -k).
if [ $# -eq 0 ]; then
  EVENTRELAY_OUTAGE_SECS=600 cargo test --release --test send_stage a_broker_outage_loses_nothing \
    -- --nocapture 2>&1 | grep -E '^broker (down|outage)|test result|panicked'
fi
