"""Scenario 3a, replay, on tansu: `eventrelay replay` refuses while the group (`run --role map`,
group e2e-replay) is live; after a stop a dry run changes nothing, `--to-earliest --execute`
moves the group to 0 and a re-run writes every dest.seg record a second time;
`--to-offset 5 --partitions 0` moves only partition 0.

tansu 0.6.0 with sqlite storage cannot describe groups, so replay cannot check liveness: it
refuses for that reason while the group runs, and `--force` is given once it is stopped."""

import re

from support.procs import tail
from support.records import generate_events

N = 100
GROUP = "e2e-replay"


def test_replay(tansu, stub, eventrelay, kafka, check):
    broker = tansu(storage="sqlite")  # the group resumes from committed offsets
    config = eventrelay.config(broker, stub(), group=GROUP)
    lines = list(generate_events(N, seed=13))
    exp = eventrelay.map(config, lines, "events")
    n_seg = exp.n_requests("seg")

    def replay(name, *args):
        return eventrelay.cmd(name, "replay", "--config", config.path, "--group", GROUP,
                              "--topic", "segment.events", *args)

    def offsets():
        return kafka.group_offsets(broker.bootstrap, GROUP, "segment.events")

    def refused_for(result, what):
        """FAIL line for a replay that exited non-zero; with the broker's own error when it
        could not describe the group."""
        msg = f"{what} exited {result.rc}: {result.error()}"
        if "describing the consumer group" in result.output:
            logged = tail(broker.proc.log, 10_000).splitlines()
            err = next((ln for ln in logged if "ERROR" in ln), "")
            err = re.sub(r"\x1b\[[0-9;]*m", "", err)
            msg += f" (tansu logged: {err[:200]})"
        return check(False, msg)

    # --- first run ---
    mapper = eventrelay.run(config, role="map")
    check(mapper.ready(60), f"eventrelay --role map ready (/readyz 200) on {broker.bootstrap}, "
                            f"group {GROUP}")
    assert mapper.alive(), f"eventrelay exited at start (exit code {mapper.popen.returncode})"
    kafka.produce(broker.bootstrap, "segment.events", lines)
    first = kafka.read(broker.bootstrap, "dest.seg", expect=n_seg, timeout=60)
    check(len(first) == n_seg, f"dest.seg holds the {n_seg} expected records (first run; "
                               f"read {len(first)})")

    live = replay("replay-live", "--to-earliest", "--execute")
    if live.rc != 0 and re.search(r"has [0-9]+ live member|cannot check that group .* has no "
                                  r"live members", live.output):
        check(True, f"replay --execute refused while the group runs (exit {live.rc}): "
                    f"{live.error()}")
    elif live.rc != 0:
        refused_for(live, "replay --execute while the group runs (expected a refusal naming "
                          "its live members)")
    else:
        check(False, "replay --execute while the group runs exited 0 (expected a refusal naming "
                     "its live members)")
    check.exits_cleanly(mapper, "eventrelay --role map (scenario 3, first run)")

    after_first = offsets()
    total = None if after_first is None else sum(v or 0 for v in after_first.values())
    check(total == N, f"group {GROUP} after the first run: committed offsets {after_first} sum to "
                      f"{total}, expected {N}")

    # --- dry run: a plan, nothing moved ---
    dry = replay("replay-dry", "--to-earliest", "--force")
    if dry.rc == 0:
        check(True, "replay --to-earliest (dry run) exited 0")
        check_dry_run_plan(check, dry.output, after_first, offsets())
    else:
        refused_for(dry, "replay --to-earliest (dry run)")

    # --- execute: the group back at 0, and a re-run writes everything again ---
    moved = replay("replay-exec", "--to-earliest", "--execute", "--force")
    if moved.rc == 0:
        check(True, "replay --to-earliest --execute exited 0: "
                    + next((ln for ln in moved.output.splitlines() if "moved" in ln.lower()), ""))
    else:
        refused_for(moved, "replay --to-earliest --execute")
    at_zero = offsets()
    check(bool(at_zero) and all(v == 0 for v in at_zero.values()),
          f"group {GROUP} after replay --to-earliest --execute: committed offsets {at_zero}, "
          f"expected 0 on every partition")

    if moved.rc == 0:
        mapper = eventrelay.run(config, role="map", name="eventrelay-rerun")
        again = kafka.read(broker.bootstrap, "dest.seg", expect=2 * n_seg, idle=3, timeout=90)
        check(len(again) == 2 * n_seg, f"dest.seg holds {len(again)} records after the re-run, "
                                       f"expected {2 * n_seg} ({n_seg} twice)")
        got = kafka.message_ids(again.records)
        want = exp.message_ids("seg")
        twice = sum(1 for m in want if got.get(m) == 2)
        other = {m: n for m, n in got.items() if n != 2 or m not in want}
        check(twice == len(want) and not other and len(want) > 0,
              f"dest.seg after the replay: each of the {len(want)} expected messageIds twice "
              f"({twice}/{len(want)}; {sum(got.values())} records; wrong counts {len(other)} "
              f"{list(other.items())[:5]})")
        check.exits_cleanly(mapper, "eventrelay --role map (scenario 3, re-run)")
        after_rerun = offsets()
        total = None if after_rerun is None else sum(v or 0 for v in after_rerun.values())
        check(total == N, f"group {GROUP} after the re-run: committed offsets {after_rerun} sum "
                          f"to {total}, expected {N}")
    else:
        check(False, "re-run after the replay not checked: replay --execute did not move the group")
        after_rerun = at_zero

    # --- one partition to an offset ---
    ends = kafka.read(broker.bootstrap, "segment.events", idle=2, timeout=30).by_partition
    p0 = replay("replay-p0", "--to-offset", "5", "--partitions", "0", "--execute", "--force")
    if p0.rc == 0:
        check(True, "replay --to-offset 5 --partitions 0 --execute exited 0")
        now = offsets()
        want = dict(after_rerun or {})
        end = ends.get("0")
        if end is not None:
            want["0"] = max(0, min(5, end))
        check(after_rerun is not None and end is not None and now == want,
              f"--to-offset 5 --partitions 0: offsets {now}, expected {want} (before "
              f"{after_rerun}; partition 0 holds {end} records)")
    else:
        refused_for(p0, "replay --to-offset 5 --partitions 0 --execute")


def parse_plan(output: str, topic: str) -> dict:
    """The rows of replay's plan table: {partition: {current, target, low, high}}."""
    rows = {}
    for ln in output.splitlines():
        f = ln.split()
        if len(f) == 6 and f[0] == topic and f[1].isdigit():
            try:
                rows[f[1]] = {"current": None if f[2] == "-" else int(f[2]), "target": int(f[3]),
                              "low": int(f[4]), "high": int(f[5])}
            except ValueError:
                pass
    return rows


def check_dry_run_plan(check, output, before, after):
    """A row per partition with target 0 and CURRENT = the committed offsets; nothing moved."""
    rows = parse_plan(output, "segment.events")
    shown = [ln for ln in output.splitlines() if " INFO " not in ln and " WARN " not in ln]
    print("\n".join(f"    | {ln}" for ln in shown[:8]))
    check(bool(rows) and before is not None and set(rows) == set(before)
          and all(r["target"] == 0 for r in rows.values()),
          f"replay dry run plan: target 0 on every partition "
          f"({ {p: r['target'] for p, r in rows.items()} }; partitions of the group "
          f"{sorted(before or {})})")
    check(bool(rows) and before is not None
          and all(r["current"] == before.get(p) for p, r in rows.items()),
          f"replay dry run plan: CURRENT column = committed offsets "
          f"({ {p: r['current'] for p, r in rows.items()} } vs {before})")
    check("dry run" in output, "replay dry run says it changed nothing ('dry run' in its output)")
    check(after is not None and after == before,
          f"group offsets unchanged by the dry run (before {before}, after {after})")
