#!/usr/bin/env bash
# Static checks of the deployment and operations files (deploy/, docker-compose.yml,
# .dockerignore): Prometheus rules, config and rule unit tests with promtool; every YAML file
# parses; the Grafana dashboard is valid JSON whose queries use only eventrelay's metrics;
# every path docker-compose.yml, kustomization.yaml and prometheus.yml refer to exists; the
# Kubernetes manifests carry the probes, security settings and labels the runbook relies on;
# the TOML configs parse (and load in eventrelay itself when a built binary is present).
# Needs no Docker, no Kafka and no cargo. Installs promtool (Debian `prometheus`) and PyYAML
# when missing.
set -euo pipefail
cd "$(dirname "$0")/../.."

pass=0
fail=0
failures=()
# VERBOSE=1 lists every passing check too; by default only failures and the summary print.
ok() {
  pass=$((pass + 1))
  if [ "${VERBOSE:-0}" = 1 ]; then echo "  ok   $1"; fi
}
bad() { fail=$((fail + 1)); failures+=("$1"); echo "  FAIL $1"; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

echo "== tools"
if ! command -v promtool >/dev/null 2>&1; then
  echo "  installing promtool (Debian package prometheus)"
  log=$(mktemp)
  if ! { $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq \
        --no-install-recommends prometheus; } >"$log" 2>&1; then
    tail -20 "$log"
    echo "cannot install promtool" >&2
    exit 1
  fi
  rm -f "$log"
fi
if ! python3 -c 'import yaml' >/dev/null 2>&1; then
  echo "  installing PyYAML"
  python3 -m pip install -q pyyaml >/dev/null 2>&1 || python3 -m pip install -q --user pyyaml
fi
echo "  $(promtool --version 2>&1 | head -1)"

echo "== promtool"
run_promtool() {
  local what=$1
  shift
  local out
  if out=$(promtool "$@" 2>&1); then
    ok "$what"
  else
    echo "$out" | sed 's/^/       /'
    bad "$what"
  fi
}
run_promtool "promtool check rules deploy/prometheus/alerts.yml" check rules deploy/prometheus/alerts.yml
run_promtool "promtool check config deploy/prometheus/prometheus.yml" check config deploy/prometheus/prometheus.yml
run_promtool "promtool test rules deploy/prometheus/alerts_test.yml" test rules deploy/prometheus/alerts_test.yml

echo "== structure"
set +e
WORK="$work" python3 - <<'PY'
import json, os, re, shlex, sys, tomllib
import yaml

passed = failed = 0
VERBOSE = os.environ.get("VERBOSE") == "1"
def ok(msg):
    global passed
    passed += 1
    if VERBOSE:
        print(f"  ok   {msg}")
def bad(msg):
    global failed
    failed += 1
    print(f"  FAIL {msg}")
def check(cond, msg):
    ok(msg) if cond else bad(msg)
    return cond

HIST = {"eventrelay_delivery_duration_seconds", "eventrelay_end_to_end_latency_seconds"}
METRICS = {
    "eventrelay_events_consumed_total", "eventrelay_events_invalid_total",
    "eventrelay_records_produced_total", "eventrelay_events_skipped_total",
    "eventrelay_events_rejected_total", "eventrelay_deliveries_total",
    "eventrelay_delivery_attempts_total", "eventrelay_consumer_lag", "eventrelay_group_lag",
    "eventrelay_dead_letters_total", "eventrelay_circuit_state",
    "eventrelay_invalid_headers_total", "up",
} | {h + s for h in HIST for s in ("_bucket", "_sum", "_count")}
TOPICS = ["segment.events", "segment.events.dlq", "dest.owneriq", "dest.seg",
          "dest.owneriq.dlq", "dest.seg.dlq"] + [
          f"dest.{d}.retry.{t}" for d in ("owneriq", "seg") for t in ("10s", "1m", "5m", "30m")]
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or",
            "unless", "bool", "offset", "inf", "nan", "atan2"}

def metric_names(expr):
    """Metric names a PromQL expression selects (functions, labels, keywords removed)."""
    e = re.sub(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`', '""', expr)
    e = re.sub(r"\{[^}]*\}", " ", e)          # label matchers
    e = re.sub(r"\[[^\]]*\]", " ", e)         # ranges, subqueries
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", e)
    names = set()
    for m in re.finditer(r"(?<![\w.$])[A-Za-z_:][\w:]*", e):
        word = m.group(0)
        rest = e[m.end():].lstrip()
        if rest.startswith("(") or word.lower() in KEYWORDS:
            continue
        names.add(word)
    return names

def load_yaml(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]

# --- every YAML file parses -------------------------------------------------------------
yaml_files = ["docker-compose.yml"] + sorted(
    os.path.join(d, f) for d, _, fs in os.walk("deploy") for f in fs
    if f.endswith((".yml", ".yaml")))
docs = {}
for p in yaml_files:
    try:
        docs[p] = load_yaml(p)
        ok(f"YAML parses: {p} ({len(docs[p])} document(s))")
    except Exception as e:
        bad(f"YAML parses: {p}: {e}")

# --- Dockerfile and .dockerignore ------------------------------------------------------
df = open("deploy/Dockerfile").read()
for needle in ["FROM rust:1-bookworm", "cargo build --release --locked", "FROM debian:bookworm-slim",
               "ca-certificates", "10001", "EXPOSE 9464", 'ENTRYPOINT ["eventrelay"]',
               "/usr/local/bin/eventrelay", "/etc/eventrelay/eventrelay.toml"]:
    check(needle in df, f"Dockerfile contains {needle!r}")
for src in re.findall(r"^COPY\s+(?!--from)(\S+)\s", df, re.M):
    check(os.path.exists(src), f"Dockerfile COPY source exists in context: {src}")
check(re.search(r"^USER\s+(10001|eventrelay)", df, re.M) is not None, "Dockerfile runs as non-root")
di = open(".dockerignore").read().split()
check("target/" in di and ".git/" in di, ".dockerignore excludes target/ and .git/")

# --- docker-compose.yml: paths, services, topics ----------------------------------------
compose = docs.get("docker-compose.yml", [{}])[0]
services = compose.get("services", {})
for name in ["kafka", "topics", "stub", "eventrelay-map", "eventrelay-send", "prometheus", "grafana"]:
    check(name in services, f"compose service {name}")
mounts = {}   # service -> [(container path, host path)]
for name, svc in services.items():
    b = svc.get("build")
    if b is not None:
        ctx = b if isinstance(b, str) else b.get("context", ".")
        check(os.path.isdir(ctx), f"compose {name}: build context {ctx} exists")
        if isinstance(b, dict) and "dockerfile" in b:
            dfp = os.path.join(ctx, b["dockerfile"])
            check(os.path.isfile(dfp), f"compose {name}: dockerfile {dfp} exists")
    for v in svc.get("volumes", []):
        host, _, rest = (v if isinstance(v, str) else f"{v['source']}:{v['target']}").partition(":")
        target = rest.split(":")[0]
        if host.startswith(("./", "../", "/")):
            check(os.path.exists(host), f"compose {name}: mounted path {host} exists")
            mounts.setdefault(name, []).append((target, os.path.normpath(host)))

def to_host(service, cpath):
    """Map a path inside a compose service's container back to the repository."""
    best = None
    for target, host in mounts.get(service, []):
        if cpath == target or cpath.startswith(target.rstrip("/") + "/"):
            if best is None or len(target) > len(best[0]):
                best = (target, host)
    if best is None:
        return None
    return os.path.normpath(os.path.join(best[1], os.path.relpath(cpath, best[0])))

for name in ["stub", "eventrelay-map", "eventrelay-send"]:
    svc = services.get(name, {})
    check(svc.get("image") == services.get("stub", {}).get("image") and "build" in svc,
          f"compose {name}: eventrelay image built from deploy/Dockerfile")
for name, role in [("eventrelay-map", "map"), ("eventrelay-send", "send")]:
    svc = services.get(name, {})
    cmd = svc.get("command", [])
    cmd = shlex.split(cmd) if isinstance(cmd, str) else cmd
    check(cmd[:1] == ["run"] and cmd[-2:] == ["--role", role], f"compose {name}: run --role {role}")
    if "--config" in cmd:
        cfg = cmd[cmd.index("--config") + 1]
        host = to_host(name, cfg)
        check(host is not None and os.path.isfile(host),
              f"compose {name}: --config {cfg} is mounted from a repo file ({host})")
    dep = svc.get("depends_on", {})
    check(isinstance(dep, dict) and dep.get("topics", {}).get("condition") == "service_completed_successfully"
          and "stub" in dep, f"compose {name}: waits for topics (completed) and stub")
stub_cmd = services.get("stub", {}).get("command", [])
check(stub_cmd[:1] == ["stub"] and "--listen" in stub_cmd, "compose stub: stub --listen")
kafka = services.get("kafka", {})
kenv = kafka.get("environment", {})
check(kafka.get("image") == "apache/kafka:3.8.0", "compose kafka: apache/kafka:3.8.0")
for k in ["KAFKA_NODE_ID", "KAFKA_PROCESS_ROLES", "KAFKA_LISTENERS", "KAFKA_ADVERTISED_LISTENERS",
          "KAFKA_CONTROLLER_QUORUM_VOTERS", "KAFKA_CONTROLLER_LISTENER_NAMES",
          "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR", "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR",
          "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR"]:
    check(k in kenv, f"compose kafka: {k} set")
check("kafka-topics.sh" in json.dumps(kafka.get("healthcheck", {})), "compose kafka: healthcheck with kafka-topics.sh")
tcmd = json.dumps(services.get("topics", {}))
check(services.get("topics", {}).get("depends_on", {}).get("kafka", {}).get("condition") == "service_healthy",
      "compose topics: waits for kafka healthy")
check(all(re.search(r"(?<![\w.])" + re.escape(t) + r"(?![\w.])", tcmd) for t in TOPICS)
      and "--partitions 4" in tcmd, "compose topics: creates all 8 topics with 4 partitions")

# Prometheus in compose: --config.file -> repo file; its rule_files exist next to it.
pcmd = services.get("prometheus", {}).get("command", [])
pcfg = next((a.split("=", 1)[1] for a in pcmd if a.startswith("--config.file=")),
            "/etc/prometheus/prometheus.yml")
phost = to_host("prometheus", pcfg)
check(phost == os.path.normpath("deploy/prometheus/prometheus.yml"),
      f"compose prometheus: {pcfg} is deploy/prometheus/prometheus.yml ({phost})")
prom = docs.get("deploy/prometheus/prometheus.yml", [{}])[0]
for rf in prom.get("rule_files", []):
    cpath = rf if rf.startswith("/") else os.path.join(os.path.dirname(pcfg), rf)
    host = to_host("prometheus", cpath) or os.path.join("deploy/prometheus", rf)
    check(os.path.isfile(host), f"prometheus rule_files {rf} exists ({host})")
targets = {t for sc in prom.get("scrape_configs", []) for st in sc.get("static_configs", [])
           for t in st.get("targets", [])}
check({"eventrelay-map:9464", "eventrelay-send:9464"} <= targets,
      "prometheus scrapes eventrelay-map:9464 and eventrelay-send:9464")
for svc in ["eventrelay-map", "eventrelay-send"]:
    check(svc in services, f"prometheus target {svc} is a compose service")
pt = docs.get("deploy/prometheus/alerts_test.yml", [{}])[0]
for rf in pt.get("rule_files", []):
    check(os.path.isfile(os.path.join("deploy/prometheus", rf)), f"alerts_test rule_files {rf} exists")
check(len(pt.get("tests", [])) >= 2, f"alerts_test has {len(pt.get('tests', []))} test groups (>= 2)")

# Alert rules: labels, annotations, metric names.
alerts = docs.get("deploy/prometheus/alerts.yml", [{}])[0]
rules = [r for g in alerts.get("groups", []) for r in g.get("rules", []) if "alert" in r]
names = {r["alert"] for r in rules}
check(len(rules) >= 5, f"alerts.yml has {len(rules)} alerts")
for r in rules:
    a, ann = r["alert"], r.get("annotations", {})
    check(r.get("labels", {}).get("severity") in ("info", "warning", "critical")
          and ann.get("summary") and ann.get("description")
          and "README.md#runbook" in ann.get("runbook_url", ""),
          f"alert {a}: severity, summary, description, runbook")
    unknown = metric_names(r["expr"]) - METRICS
    check(not unknown, f"alert {a}: metrics known{' (unknown: ' + ', '.join(sorted(unknown)) + ')' if unknown else ''}")
tested = set(re.findall(r"alertname:\s*(\S+)", open("deploy/prometheus/alerts_test.yml").read()))
check(len(tested & names) >= 2 and tested <= names, f"alerts_test covers {len(tested & names)} of {len(names)} alerts")

# --- Grafana dashboard ---------------------------------------------------------------------
dpath = "deploy/grafana/dashboards/eventrelay.json"
try:
    dash = json.load(open(dpath))
    ok(f"JSON parses: {dpath}")
except Exception as e:
    dash = {}
    bad(f"JSON parses: {dpath}: {e}")
check(isinstance(dash.get("schemaVersion"), int) and dash.get("schemaVersion", 0) >= 36,
      f"dashboard schemaVersion {dash.get('schemaVersion')}")
check(bool(dash.get("uid")) and bool(dash.get("title")), "dashboard has uid and title")
flat = []
for p in dash.get("panels", []):
    flat.append(p)
    flat.extend(p.get("panels", []))
ids = [p.get("id") for p in flat]
check(len(ids) == len(set(ids)) and None not in ids, "dashboard panel ids unique")
exprs_all = []
for p in flat:
    if p.get("type") == "row":
        continue
    t = p.get("title", "?")
    tg = p.get("targets", [])
    dsok = all((x.get("datasource") or p.get("datasource") or {}).get("uid") == "prometheus" for x in tg)
    exprs = [x.get("expr", "") for x in tg]
    exprs_all += exprs
    unknown = set().union(*[metric_names(e) for e in exprs]) - METRICS if exprs else set()
    check(tg and all(exprs) and dsok and not unknown and "gridPos" in p,
          f"panel {t!r}: {len(tg)} target(s), datasource prometheus, metrics known"
          + (f" (unknown: {', '.join(sorted(unknown))})" if unknown else ""))
for v in dash.get("templating", {}).get("list", []):
    q = v.get("query")
    q = q.get("query", "") if isinstance(q, dict) else (q or "")
    m = re.match(r"label_values\((\w+)", q)
    check(m is None or m.group(1) in METRICS, f"dashboard variable {v.get('name')}: metric known")
joined = "\n".join(exprs_all)
for need, why in [("eventrelay_events_consumed_total", "consumed/s"),
                  ("eventrelay_records_produced_total", "produced/s"),
                  ("by (destination, outcome)", "deliveries by destination & outcome"),
                  ("by (group, topic)", "lag by group/topic"),
                  ("eventrelay_delivery_duration_seconds_bucket", "delivery latency"),
                  ("eventrelay_end_to_end_latency_seconds_bucket", "end-to-end latency"),
                  ('outcome="retry"', "retries/s"),
                  ("eventrelay_events_invalid_total", "invalid by reason"),
                  ("eventrelay_events_rejected_total", "rejected"),
                  ('outcome="dead_letter"', "dead letters"),
                  ("eventrelay_events_skipped_total", "skipped")]:
    check(need in joined, f"dashboard shows {why}")
check("histogram_quantile(0.5" in joined and "histogram_quantile(0.99" in joined, "dashboard shows p50 and p99")
gds = docs.get("deploy/grafana/provisioning/datasources/prometheus.yml", [{}])[0]
ds0 = (gds.get("datasources") or [{}])[0]
check(ds0.get("uid") == "prometheus" and ds0.get("url") == "http://prometheus:9090",
      "grafana datasource uid prometheus at http://prometheus:9090")
gdb = docs.get("deploy/grafana/provisioning/dashboards/eventrelay.yml", [{}])[0]
gpath = ((gdb.get("providers") or [{}])[0].get("options") or {}).get("path", "")
ghost = to_host("grafana", gpath)
check(ghost is not None and os.path.isfile(os.path.join(ghost, "eventrelay.json")),
      f"grafana dashboard provider path {gpath} is mounted from {ghost} holding eventrelay.json")
check(to_host("grafana", "/etc/grafana/provisioning/datasources/prometheus.yml")
      == os.path.normpath("deploy/grafana/provisioning/datasources/prometheus.yml"),
      "grafana provisioning directory mounted")

# --- Kubernetes manifests --------------------------------------------------------------------
kdir = "deploy/kubernetes"
kust = docs.get(f"{kdir}/kustomization.yaml", [{}])[0]
res = kust.get("resources", [])
for r in res:
    check(os.path.isfile(os.path.join(kdir, r)), f"kustomization resource {r} exists")
for f in ["configmap.yaml", "deployment-map.yaml", "deployment-send.yaml", "service-metrics.yaml", "pdb.yaml"]:
    check(f in res, f"kustomization lists {f}")
objs = [o for r in res for o in docs.get(f"{kdir}/{r}", [])]
check(all("namespace" not in o.get("metadata", {}) for o in objs), "manifests are namespace-less")
cms = {o["metadata"]["name"]: o for o in objs if o.get("kind") == "ConfigMap"}
deps = {o["metadata"]["name"]: o for o in objs if o.get("kind") == "StatefulSet"}
pdbs = [o for o in objs if o.get("kind") == "PodDisruptionBudget"]
svcs = [o for o in objs if o.get("kind") == "Service"]
for name, role in [("eventrelay-map", "map"), ("eventrelay-send", "send")]:
    d = deps.get(name)
    if not check(d is not None, f"k8s StatefulSet {name} (stable pod names for static membership)"):
        continue
    spec = d["spec"]
    pod = spec["template"]
    labels = pod["metadata"].get("labels", {})
    ann = pod["metadata"].get("annotations", {})
    ps = pod["spec"]
    c = ps["containers"][0]
    args = c.get("args", []) + c.get("command", [])
    check(all(labels.get(k) == v for k, v in spec["selector"]["matchLabels"].items()),
          f"{name}: selector matches pod labels")
    check(args[-2:] == ["--role", role] and "run" in args and "--config" in args, f"{name}: run --role {role}")
    lp, rp = c.get("livenessProbe", {}).get("httpGet", {}), c.get("readinessProbe", {}).get("httpGet", {})
    ports = {p.get("name"): p["containerPort"] for p in c.get("ports", [])}
    port = lambda p: ports.get(p, p)
    check(lp.get("path") == "/healthz" and port(lp.get("port")) == 9464, f"{name}: liveness /healthz on 9464")
    check(rp.get("path") == "/readyz" and port(rp.get("port")) == 9464, f"{name}: readiness /readyz on 9464")
    check(ps.get("terminationGracePeriodSeconds") == 60, f"{name}: terminationGracePeriodSeconds 60")
    sc = c.get("securityContext", {})
    check(sc.get("readOnlyRootFilesystem") is True and sc.get("allowPrivilegeEscalation") is False
          and (sc.get("runAsNonRoot") or ps.get("securityContext", {}).get("runAsNonRoot")),
          f"{name}: non-root, read-only root filesystem")
    check(bool(c.get("resources", {}).get("requests")) and bool(c.get("resources", {}).get("limits")),
          f"{name}: resources")
    check(ann.get("prometheus.io/scrape") == "true" and ann.get("prometheus.io/port") == "9464",
          f"{name}: prometheus scrape annotations")
    inst = [e for e in c.get("env", []) if e.get("name") == "EVENTRELAY_KAFKA__INSTANCE_ID"]
    check(inst and inst[0].get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "metadata.name",
          f"{name}: EVENTRELAY_KAFKA__INSTANCE_ID from metadata.name")
    vols = {v["name"]: v for v in ps.get("volumes", [])}
    cfgs = [vols.get(m["name"], {}).get("configMap", {}).get("name") for m in c.get("volumeMounts", [])
            if m.get("mountPath") == "/etc/eventrelay"]
    check(cfgs and cfgs[0] in cms and "eventrelay.toml" in cms[cfgs[0]].get("data", {}),
          f"{name}: mounts ConfigMap with eventrelay.toml at /etc/eventrelay")
    check(any(all(labels.get(k) == v for k, v in p["spec"]["selector"]["matchLabels"].items()) for p in pdbs),
          f"{name}: covered by a PodDisruptionBudget")
    check(any(all(labels.get(k) == v for k, v in s["spec"]["selector"].items())
              and any(p.get("port") == 9464 for p in s["spec"].get("ports", [])) for s in svcs),
          f"{name}: selected by the metrics Service on 9464")

# --- TOML configs ------------------------------------------------------------------------------
tomls = {"deploy/compose/eventrelay.toml": open("deploy/compose/eventrelay.toml").read()}
for n, cm in cms.items():
    tomls[f"{kdir}/configmap.yaml:{n}"] = cm["data"]["eventrelay.toml"]
for where, text in tomls.items():
    try:
        t = tomllib.loads(text)
        ok(f"TOML parses: {where}")
    except Exception as e:
        bad(f"TOML parses: {where}: {e}")
        continue
    check(t.get("metrics", {}).get("listen", "").endswith(":9464")
          and t["metrics"]["listen"].startswith("0.0.0.0"), f"{where}: metrics.listen 0.0.0.0:9464")
    check({"owneriq", "seg"} <= set(t.get("destinations", {})), f"{where}: both destinations configured")
c = tomllib.loads(tomls["deploy/compose/eventrelay.toml"])
check(c["kafka"].get("bootstrap_servers") == "kafka:9092", "compose config: bootstrap kafka:9092")
check(all(d.get("endpoint") == "http://stub:9000" for d in c["destinations"].values()),
      "compose config: destinations point at http://stub:9000")
work = os.environ["WORK"]
for i, (where, text) in enumerate(tomls.items()):
    open(f"{work}/config{i}.toml", "w").write(text)
    open(f"{work}/config{i}.where", "w").write(where)
open(f"{work}/counts", "w").write(f"{passed} {failed}\n")
sys.exit(1 if failed else 0)
PY
py_rc=$?
set -e
# The Python part counts its own checks; fold them into the totals.
if [ -s "$work/counts" ]; then
  read -r p f <"$work/counts"
  echo "  $p passed, $f failed"
  pass=$((pass + p))
  fail=$((fail + f))
  if [ "$f" -ne 0 ]; then failures+=("$f structure check(s), see FAIL lines above"); fi
fi
if [ "$py_rc" -ne 0 ] && [ ! -s "$work/counts" ]; then bad "structure checks crashed (exit $py_rc)"; fi

echo "== configs load in eventrelay"
bin=""
for b in target/release/eventrelay target/debug/eventrelay; do
  if [ -x "$b" ]; then bin=$b; break; fi
done
if [ -z "$bin" ]; then
  echo "  skip no built eventrelay binary (target/release/eventrelay); TOML syntax was checked above"
else
  for f in "$work"/config*.toml; do
    [ -e "$f" ] || continue
    where=$(cat "${f%.toml}.where")
    # `map` loads and validates the whole config (unknown keys, bad values) and sends nothing.
    if out=$(env -u EVENTRELAY_KAFKA__BOOTSTRAP_SERVERS "$bin" map --config "$f" </dev/null 2>&1); then
      ok "$bin map --config $where"
    else
      echo "$out" | sed 's/^/       /'
      bad "$bin map --config $where"
    fi
  done
fi

echo "== summary"
echo "deploy files: $pass passed, $fail failed"
if [ "$fail" -ne 0 ]; then
  printf '  failed: %s\n' "${failures[@]}"
  exit 1
fi
echo "deploy files OK"
