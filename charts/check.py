"""Offline checks of the Autopilot chart (run by charts/test.sh inside its venv).

No cluster is reachable where this runs, so everything is checked from the chart itself: Helm's
strict lint, a render for every values file in charts/autopilot/ci/, every rendered object
against the Kubernetes schemas of the oldest and newest supported versions, the values files
against values.schema.json (and unknown keys rejected), security and availability policies,
`promtool check rules` on the rendered alert rules, and the dashboards' queries against the
metrics Autopilot exports. Each failure is printed with what failed; the exit status is 1 if
any check failed.
"""

from __future__ import annotations

import copy
import json
import pathlib
import re
import subprocess
import sys
import tempfile
from typing import Any, Callable, Iterator

import helm_python as helm
import kubernetes_validate
import yaml

CHARTS = pathlib.Path(__file__).resolve().parent
CHART = CHARTS / "autopilot"
CI_VALUES = sorted((CHART / "ci").glob("*.yaml"))
RELEASE, NAMESPACE = "ap", "autopilot"

# The oldest and newest Kubernetes versions the chart supports (Chart.yaml's kubeVersion is the
# floor: native sidecars, restartPolicy Always on init containers, are on by default from 1.29).
KUBE_VERSIONS = ("1.29.0", "1.37.0")

# Custom resources: no schema in kubernetes-validate; checked structurally below.
CUSTOM_KINDS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
    ("keda.sh/v1alpha1", "ScaledObject"),
}

# What Autopilot exports (README.md, "Metrics"), Prometheus names. Histograms add _bucket, _sum
# and _count. Every query of a dashboard or an alert may name only these.
COUNTERS_AND_GAUGES = {
    "autopilot_runs_created_total",
    "autopilot_runs_finished_total",
    "autopilot_tokens_total",
    "autopilot_cost_usd_total",
    "autopilot_webhook_deliveries_total",
    "autopilot_queue_runs",
    "autopilot_queue_oldest_age_seconds",
    "autopilot_scheduler_leader",
    "autopilot_bus_publish_errors_total",
    "autopilot_errors_total",
    "autopilot_worker_slots",
    "autopilot_fires_missed_total",
}
HISTOGRAMS = {
    "autopilot_run_duration_seconds",
    "autopilot_job_run_duration_seconds",
    "autopilot_fire_lateness_seconds",
    "autopilot_dispatch_latency_seconds",
}
EXPORTED = COUNTERS_AND_GAUGES | {
    f"{name}{suffix}" for name in HISTOGRAMS for suffix in ("_bucket", "_sum", "_count")
}

# The engine sidecars of the run-container modes, exempt from the hardened context by design.
ENGINE_SIDECARS = {"dind": "dind", "rootless-engine": "rootless"}

# check-jsonschema from the same venv as this interpreter.
CHECK_JSONSCHEMA = str(pathlib.Path(sys.executable).parent / "check-jsonschema")

failures: list[str] = []


def fail(what: str) -> None:
    failures.append(what)
    print(f"FAIL: {what}", flush=True)


def ok(what: str) -> None:
    print(f"ok: {what}", flush=True)


def load_values(path: pathlib.Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text()) or {}


def render(values: dict[str, Any]) -> list[dict[str, Any]]:
    """Every object the chart renders with these values (hooks included), in template order."""
    with helm.Chart.load(CHART) as chart:
        chart.validate_schema(values)
        manifests = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    objects = []
    for template, text in sorted(manifests.items()):
        if template.endswith("NOTES.txt"):
            continue
        for document in yaml.safe_load_all(text):
            if document:
                document["__template"] = template
                objects.append(document)
    return objects


def strip(obj: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in obj.items() if key != "__template"}


def name_of(obj: dict[str, Any]) -> str:
    return f"{obj['kind']}/{obj['metadata']['name']} ({obj['__template']})"


# --- lint ---------------------------------------------------------------------------------


def check_lint(values_file: pathlib.Path) -> None:
    values = load_values(values_file)
    for version in KUBE_VERSIONS:
        report = helm.lint(CHART, values, strict=True, namespace=NAMESPACE, kube_version=f"v{version}")
        problems = [m for m in report["messages"] if m["severity"] >= 2] + [
            {"path": "", "error": e} for e in report["errors"]
        ]
        # Helm recommends an icon (severity 1, info); anything above info fails.
        if problems:
            for problem in problems:
                fail(f"helm lint --strict {values_file.name} (Kubernetes {version}): {problem['path']} {problem['error']}")
        else:
            ok(f"helm lint --strict {values_file.name} (Kubernetes {version})")


# --- Kubernetes schemas -------------------------------------------------------------------


def check_kubernetes_schemas(values_file: pathlib.Path, objects: list[dict[str, Any]]) -> None:
    for obj in objects:
        if (obj["apiVersion"], obj["kind"]) in CUSTOM_KINDS:
            continue
        for version in KUBE_VERSIONS:
            try:
                kubernetes_validate.validate(strip(obj), version, strict=True)
            except kubernetes_validate.ValidationError as err:
                path = "/".join(str(p) for p in err.path)
                fail(f"{values_file.name}: {name_of(obj)} is not a valid Kubernetes {version} object at {path}: {err.message}")
            except kubernetes_validate.SchemaNotFoundError:
                fail(f"{values_file.name}: {name_of(obj)}: Kubernetes {version} has no {obj['apiVersion']} {obj['kind']}")


def check_custom_resources(values_file: pathlib.Path, objects: list[dict[str, Any]]) -> None:
    for obj in objects:
        key = (obj["apiVersion"], obj["kind"])
        if key not in CUSTOM_KINDS:
            continue
        spec = obj.get("spec") or {}
        where = f"{values_file.name}: {name_of(obj)}"
        if obj["kind"] == "ServiceMonitor":
            endpoints = spec.get("endpoints") or []
            if not spec.get("selector", {}).get("matchLabels") or not endpoints:
                fail(f"{where}: needs a selector and endpoints")
            for endpoint in endpoints:
                if endpoint.get("path") != "/metrics" or endpoint.get("port") not in ("http", "metrics"):
                    fail(f"{where}: endpoint {endpoint} does not scrape /metrics on http or metrics")
                if endpoint.get("honorLabels") is not True:
                    fail(f"{where}: honorLabels must be true (Autopilot's `job` label)")
            service = find(objects, "Service", lambda s: labels_match(spec["selector"]["matchLabels"], s["metadata"]["labels"]))
            if not service:
                fail(f"{where}: selects no Service of the release")
        elif obj["kind"] == "PrometheusRule":
            groups = spec.get("groups") or []
            if not groups or any(not g.get("rules") for g in groups):
                fail(f"{where}: needs groups with rules")
            for rule in (r for g in groups for r in g["rules"]):
                if not rule.get("alert") or not rule.get("expr") or "severity" not in rule.get("labels", {}):
                    fail(f"{where}: rule {rule.get('alert')} needs alert, expr and a severity label")
        elif obj["kind"] == "ScaledObject":
            target = spec.get("scaleTargetRef", {}).get("name")
            if not find(objects, "Deployment", lambda d: d["metadata"]["name"] == target):
                fail(f"{where}: scales {target}, which is not rendered")
            for trigger in spec.get("triggers") or []:
                meta = trigger.get("metadata", {})
                if trigger.get("type") != "nats-jetstream":
                    fail(f"{where}: trigger type {trigger.get('type')}, not nats-jetstream")
                missing = {"natsServerMonitoringEndpoint", "account", "stream", "consumer", "lagThreshold"} - set(meta)
                if missing or not all(isinstance(v, str) for v in meta.values()):
                    fail(f"{where}: trigger metadata needs string values for {sorted(missing) or 'every key'}")
                if not meta.get("consumer", "").startswith("pool-") or not meta.get("stream", "").endswith("-runs"):
                    fail(f"{where}: stream {meta.get('stream')} / consumer {meta.get('consumer')} are not <prefix>-runs / pool-<pool>")
            if not spec.get("triggers"):
                fail(f"{where}: no triggers")


def labels_match(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def find(objects: list[dict[str, Any]], kind: str, pred: Callable[[dict[str, Any]], bool]) -> dict[str, Any] | None:
    return next((o for o in objects if o["kind"] == kind and pred(o)), None)


# --- values schema ------------------------------------------------------------------------


def check_values_schema() -> None:
    schema = CHART / "values.schema.json"
    files = [CHART / "values.yaml", *CI_VALUES]
    result = subprocess.run(
        [CHECK_JSONSCHEMA, "--schemafile", str(schema), *map(str, files)],
        capture_output=True, text=True,
    )
    if result.returncode != 0:
        fail(f"check-jsonschema rejects a values file:\n{result.stdout}{result.stderr}")
    else:
        ok(f"check-jsonschema: {len(files)} values files match values.schema.json")
    # Mistakes the schema must refuse, through both check-jsonschema and Helm.
    defaults = load_values(CHART / "values.yaml")
    wrong: list[tuple[str, Callable[[dict[str, Any]], None]]] = [
        ("an unknown top-level key", lambda v: v.update(replicas=3)),
        ("an unknown key in controlPlane", lambda v: v["controlPlane"].update(replica=3)),
        ("an unknown key in worker.runContainers", lambda v: v["worker"]["runContainers"].update(privileged=True)),
        ("an unknown key in networkPolicy", lambda v: v["networkPolicy"].update(allowAll=True)),
        ("an unknown key in alerts", lambda v: v["alerts"].update(spendPerDayUsd=3)),
        ("run-container mode `docker`", lambda v: v["worker"]["runContainers"].update(mode="docker")),
        ("worker concurrency 0", lambda v: v["worker"].update(concurrency=0)),
        ("worker concurrency 1025", lambda v: v["worker"].update(concurrency=1025)),
        ("lostAfterSecs 14", lambda v: v["controlPlane"].update(lostAfterSecs=14)),
        ("a pool name with a space", lambda v: v["worker"].update(pools=["gpu pool"])),
        ("replicas as a string", lambda v: v["controlPlane"].update(replicas="2")),
    ]
    with tempfile.TemporaryDirectory() as tmp:
        for what, change in wrong:
            values = copy.deepcopy(defaults)
            change(values)
            path = pathlib.Path(tmp) / "wrong.json"
            path.write_text(json.dumps(values))
            refused = subprocess.run(
                [CHECK_JSONSCHEMA, "--schemafile", str(schema), str(path)], capture_output=True
            ).returncode != 0
            try:
                with helm.Chart.load(CHART) as chart:
                    chart.validate_schema(values)
                helm_refused = False
            except helm.HelmError:
                helm_refused = True
            if refused and helm_refused:
                ok(f"values.schema.json refuses {what}")
            else:
                fail(f"values.schema.json accepts {what} (check-jsonschema refused: {refused}, helm refused: {helm_refused})")


def check_render_refusals() -> None:
    """Values the schema cannot judge alone, which the templates refuse with a message saying
    what to set."""
    cases = [
        ({"postgresql": {"enabled": False}}, "externalDatabase"),
        ({"nats": {"enabled": False}}, "externalNats"),
        ({"nats": {"enabled": False}, "externalNats": {"url": "nats://n:4222"}, "keda": {"enabled": True}},
         "externalNats.monitoringEndpoint"),
    ]
    for values, expected in cases:
        try:
            render(values)
            fail(f"the chart renders {values}, which it must refuse naming {expected}")
        except helm.HelmError as err:
            if expected in str(err):
                ok(f"the chart refuses {values}, naming {expected}")
            else:
                fail(f"the chart refuses {values} without naming {expected}: {err}")


# --- policies -----------------------------------------------------------------------------


def pod_specs(objects: list[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    for obj in objects:
        if obj["kind"] in ("Deployment", "StatefulSet"):
            yield obj, obj["spec"]["template"]["spec"]
        elif obj["kind"] == "Pod":
            yield obj, obj["spec"]


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e for e in container.get("env", [])}


def check_policies(values_file: pathlib.Path, values: dict[str, Any], objects: list[dict[str, Any]]) -> None:
    mode = values.get("worker", {}).get("runContainers", {}).get("mode", "dind")
    where = values_file.name
    for obj, spec in pod_specs(objects):
        owner = name_of(obj)
        is_test = obj["kind"] == "Pod"
        pod_sc = spec.get("securityContext", {})
        if pod_sc.get("runAsNonRoot") is not True or pod_sc.get("seccompProfile", {}).get("type") != "RuntimeDefault":
            fail(f"{where}: {owner}: the pod must run as non-root with the RuntimeDefault seccomp profile")
        if spec.get("automountServiceAccountToken") is not False:
            fail(f"{where}: {owner}: automountServiceAccountToken must be false")
        if spec.get("hostNetwork") or spec.get("hostPID") or spec.get("hostIPC"):
            fail(f"{where}: {owner}: shares a host namespace")
        for container in spec.get("initContainers", []) + spec.get("containers", []):
            cname = f"{owner} container {container['name']}"
            sc = container.get("securityContext", {})
            engine = ENGINE_SIDECARS.get(container["name"])
            if sc.get("privileged"):
                if not (engine == "dind" and mode == "dind"):
                    fail(f"{where}: {cname} is privileged; only the DinD sidecar in dind mode may be")
            if engine:
                if engine != mode:
                    fail(f"{where}: {cname}: the {engine} engine is rendered in mode {mode}")
                if container.get("restartPolicy") != "Always":
                    fail(f"{where}: {cname}: the engine must be a native sidecar (restartPolicy Always)")
                if engine == "rootless" and (sc.get("privileged") or sc.get("runAsNonRoot") is not True):
                    fail(f"{where}: {cname}: the rootless engine must run unprivileged and non-root")
            else:
                hardened = (
                    sc.get("allowPrivilegeEscalation") is False
                    and sc.get("readOnlyRootFilesystem") is True
                    and "ALL" in sc.get("capabilities", {}).get("drop", [])
                    and not sc.get("capabilities", {}).get("add")
                    and sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is True
                    and sc.get("seccompProfile", pod_sc.get("seccompProfile", {})).get("type") == "RuntimeDefault"
                    and sc.get("runAsUser", pod_sc.get("runAsUser", 0)) != 0
                )
                if not hardened:
                    fail(f"{where}: {cname}: securityContext not hardened: {sc}")
            serves = bool(container.get("ports")) or engine
            if serves and not is_test and not container.get("livenessProbe"):
                fail(f"{where}: {cname}: serves but has no liveness probe")
            if any(p.get("name") == "http" for p in container.get("ports", [])) and not container.get("readinessProbe"):
                fail(f"{where}: {cname}: serves http but has no readiness probe")
            if not container.get("resources", {}).get("requests"):
                fail(f"{where}: {cname}: no resource requests")
        component = obj["metadata"]["labels"].get("app.kubernetes.io/component")
        if component == "worker":
            check_worker(where, owner, values, spec)
        for volume in spec.get("volumes", []):
            if "hostPath" in volume and not (component == "worker" and mode == "hostSocket"):
                fail(f"{where}: {owner}: hostPath volume {volume['name']} outside hostSocket mode")
    check_disruption_budgets(where, objects)


def check_worker(where: str, owner: str, values: dict[str, Any], spec: dict[str, Any]) -> None:
    worker = next(c for c in spec["containers"] if c["name"] == "worker")
    env = env_of(worker)
    for forbidden in ("AUTOPILOT_DATABASE_URL", "PGPASSWORD", "AUTOPILOT_SECRET_KEY", "AUTOPILOT_ADMIN_TOKEN"):
        if forbidden in env:
            fail(f"{where}: {owner}: the worker gets {forbidden}; workers never hold database credentials or the installation's keys")
    grace = int(env["AUTOPILOT_SHUTDOWN_GRACE_SECS"]["value"])
    if spec.get("terminationGracePeriodSeconds", 30) <= grace:
        fail(f"{where}: {owner}: terminationGracePeriodSeconds {spec.get('terminationGracePeriodSeconds')} is not above AUTOPILOT_SHUTDOWN_GRACE_SECS {grace}")
    if env.get("AUTOPILOT_METRICS_BIND", {}).get("value", "").split(":")[-1] != str(
        next(p["containerPort"] for p in worker["ports"] if p["name"] == "metrics")
    ):
        fail(f"{where}: {owner}: AUTOPILOT_METRICS_BIND does not match the metrics port")
    mode = values.get("worker", {}).get("runContainers", {}).get("mode", "dind")
    executor = env["AUTOPILOT_EXECUTOR"]["value"]
    if (mode == "none") != (executor == "local"):
        fail(f"{where}: {owner}: mode {mode} with AUTOPILOT_EXECUTOR={executor}")
    if mode in ("dind", "rootless"):
        # The engine mounts workspaces and the model proxy's socket by the worker's paths.
        engine = next(c for c in spec["initContainers"] if c["name"] in ENGINE_SIDECARS)
        engine_mounts = {m["name"]: m["mountPath"] for m in engine["volumeMounts"]}
        worker_mounts = {m["name"]: m["mountPath"] for m in worker["volumeMounts"]}
        for variable in ("AUTOPILOT_DATA_DIR", "TMPDIR"):
            path = env[variable]["value"]
            volume = next((n for n, p in worker_mounts.items() if p == path), None)
            if volume is None or engine_mounts.get(volume) != path:
                fail(f"{where}: {owner}: {variable}={path} is not shared with the engine at the same path")


def check_disruption_budgets(where: str, objects: list[dict[str, Any]]) -> None:
    for pdb in (o for o in objects if o["kind"] == "PodDisruptionBudget"):
        selector = pdb["spec"]["selector"]["matchLabels"]
        target = find(objects, "Deployment", lambda d: labels_match(selector, d["spec"]["template"]["metadata"]["labels"]))
        if target is None:
            fail(f"{where}: {name_of(pdb)} selects no Deployment")
            continue
        hpa = find(objects, "HorizontalPodAutoscaler", lambda h: h["spec"]["scaleTargetRef"]["name"] == target["metadata"]["name"])
        replicas = hpa["spec"]["minReplicas"] if hpa else target["spec"].get("replicas", 1)
        if replicas < 2:
            fail(f"{where}: {name_of(pdb)} with {replicas} replica(s): a PDB needs 2 or more")
    for deployment in (o for o in objects if o["kind"] == "Deployment"):
        if deployment["metadata"]["labels"].get("app.kubernetes.io/component") != "control-plane":
            continue
        hpa = find(objects, "HorizontalPodAutoscaler", lambda h: h["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"])
        replicas = hpa["spec"]["minReplicas"] if hpa else deployment["spec"].get("replicas", 1)
        has_pdb = find(objects, "PodDisruptionBudget", lambda p: p["metadata"]["name"] == deployment["metadata"]["name"])
        if replicas >= 2 and not has_pdb:
            fail(f"{where}: {name_of(deployment)} has {replicas} replicas but no PodDisruptionBudget")


def check_network_policies(where: str, values: dict[str, Any], objects: list[dict[str, Any]]) -> None:
    if not values.get("networkPolicy", {}).get("enabled", True):
        return
    policies = [o for o in objects if o["kind"] == "NetworkPolicy"]
    deny = [p for p in policies if not p["spec"].get("ingress") and not p["spec"].get("egress")
            and set(p["spec"]["policyTypes"]) == {"Ingress", "Egress"}
            and "app.kubernetes.io/component" not in p["spec"]["podSelector"]["matchLabels"]]
    if not deny:
        fail(f"{where}: no default-deny NetworkPolicy")
    for obj, _ in pod_specs(objects):
        labels = obj["spec"]["template"]["metadata"]["labels"] if obj["kind"] != "Pod" else obj["metadata"]["labels"]
        own = [p for p in policies if "app.kubernetes.io/component" in p["spec"]["podSelector"]["matchLabels"]
               and labels_match(p["spec"]["podSelector"]["matchLabels"], labels)]
        if not own:
            fail(f"{where}: {name_of(obj)} has no NetworkPolicy of its own")


# --- alerts and dashboards ----------------------------------------------------------------

PROMQL_WORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
    "offset", "inf", "nan",
}


def metrics_named(expr: str) -> set[str]:
    """The metric names a PromQL expression reads: what is left once strings, label matchers,
    ranges, grouping clauses, functions and keywords are taken out."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        word = match.group(0)
        following = text[match.end():].lstrip()
        if following.startswith("(") or word.lower() in PROMQL_WORDS:
            continue
        if re.fullmatch(r"\d+[smhdwy]", word):
            continue
        names.add(word)
    return names


def check_queries(source: str, expr: str) -> None:
    names = metrics_named(expr)
    if not names:
        fail(f"{source}: the query names no metric: {expr}")
    unknown = names - EXPORTED
    if unknown:
        fail(f"{source}: names {sorted(unknown)}, which Autopilot does not export: {expr}")


def check_alerts(promtool: str) -> None:
    """The PrometheusRule rendered with the default values: promtool's syntax check, then the
    cases of charts/alerts.test.yaml (`promtool test rules`)."""
    objects = render({"prometheusRule": {"enabled": True}})
    rule = find(objects, "PrometheusRule", lambda _: True)
    if rule is None:
        fail("no PrometheusRule rendered with prometheusRule.enabled true")
        return
    groups = rule["spec"]["groups"]
    for group in groups:
        for alert in group["rules"]:
            check_queries(f"alert {alert['alert']}", alert["expr"])
    with tempfile.TemporaryDirectory() as tmp:
        rules = pathlib.Path(tmp) / "rules.yaml"
        rules.write_text(yaml.safe_dump({"groups": groups}))
        result = subprocess.run([promtool, "check", "rules", str(rules)], capture_output=True, text=True)
        if result.returncode != 0:
            fail(f"promtool check rules on the rendered PrometheusRule:\n{result.stdout}{result.stderr}")
        else:
            count = sum(len(g["rules"]) for g in groups)
            ok(f"promtool check rules: {count} rules in {len(groups)} groups")
        cases = yaml.safe_load((CHARTS / "alerts.test.yaml").read_text())
        cases["rule_files"] = [str(rules)]
        tested = {t["alertname"] for case in cases["tests"] for t in case["alert_rule_test"]}
        untested = {r["alert"] for g in groups for r in g["rules"]} - tested
        if untested:
            fail(f"alerts.test.yaml has no case for {sorted(untested)}")
        test_file = pathlib.Path(tmp) / "alerts.test.yaml"
        test_file.write_text(yaml.safe_dump(cases))
        result = subprocess.run([promtool, "test", "rules", str(test_file)], capture_output=True, text=True)
        if result.returncode != 0:
            fail(f"promtool test rules (charts/alerts.test.yaml):\n{result.stdout}{result.stderr}")
        else:
            ok(f"promtool test rules: {len(cases['tests'])} cases of charts/alerts.test.yaml")
    # Thresholds come from values: a changed value shows in the rendered rule.
    values = load_values(CHART / "ci" / "production.yaml")
    spend = values["alerts"]["spendPerHourUsd"]
    with helm.Chart.load(CHART) as chart:
        text = chart.render(values, name=RELEASE, namespace=NAMESPACE)["autopilot/templates/monitoring.yaml"]
    if f"> {spend}\n" not in text:
        fail(f"alerts: spendPerHourUsd {spend} from ci/production.yaml is not in the rendered rule")


def check_dashboards() -> None:
    uids = set()
    for path in sorted((CHART / "files" / "dashboards").glob("*.json")):
        source = f"dashboard {path.name}"
        try:
            board = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            fail(f"{source} is not JSON: {err}")
            continue
        for key in ("uid", "title", "panels", "templating", "schemaVersion"):
            if key not in board:
                fail(f"{source}: no {key}")
        if board.get("uid") in uids:
            fail(f"{source}: uid {board.get('uid')} is used twice")
        uids.add(board.get("uid"))
        ids = [p["id"] for p in board.get("panels", [])]
        if len(ids) != len(set(ids)):
            fail(f"{source}: panel ids repeat")
        variables = {v["name"]: v for v in board.get("templating", {}).get("list", [])}
        if variables.get("datasource", {}).get("query") != "prometheus":
            fail(f"{source}: no Prometheus datasource variable")
        for variable in variables.values():
            query = variable.get("query")
            if variable.get("type") == "query":
                text = query["query"] if isinstance(query, dict) else query
                found = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", text)
                if not found or found.group(1) not in EXPORTED:
                    fail(f"{source}: variable {variable['name']} reads {text}")
        queries = 0
        for panel in board.get("panels", []):
            for target in panel.get("targets", []):
                datasource = target.get("datasource", panel.get("datasource", {}))
                if "expr" in target:
                    if datasource.get("type") != "prometheus":
                        fail(f"{source}: panel {panel['title']}: a PromQL target on {datasource}")
                    check_queries(f"{source} panel {panel['title']!r}", target["expr"])
                    queries += 1
                elif datasource.get("type") == "tempo":
                    if "tempo" not in variables or target.get("queryType") != "traceql" or not target.get("query", "").startswith("{"):
                        fail(f"{source}: panel {panel['title']}: a Tempo target needs the tempo variable and a TraceQL query")
                    queries += 1
                else:
                    fail(f"{source}: panel {panel['title']}: a target with neither a PromQL expr nor a TraceQL query")
        ok(f"{source}: {queries} queries")
    expected = {"autopilot-fleet", "autopilot-jobs", "autopilot-cost", "autopilot-webhooks", "autopilot-traces"}
    if expected - uids:
        fail(f"dashboards missing: {sorted(expected - uids)}")


def check_metric_scanner() -> None:
    """The scanner itself: a query naming an unknown metric must be caught."""
    cases = {
        'sum by (job) (rate(autopilot_runs_finished_total{status="lost"}[5m])) > 0': {"autopilot_runs_finished_total"},
        "histogram_quantile(0.9, sum by (le) (rate(autopilot_run_duration_seconds_bucket[$__rate_interval])))": {"autopilot_run_duration_seconds_bucket"},
        "up == 0 or absent(process_cpu_seconds_total)": {"up", "process_cpu_seconds_total"},
    }
    for expr, expected in cases.items():
        if metrics_named(expr) != expected:
            fail(f"the metric scanner reads {metrics_named(expr)} in {expr}, not {expected}")


# --- main ---------------------------------------------------------------------------------


def main() -> int:
    promtool = sys.argv[1] if len(sys.argv) > 1 else "promtool"
    if not CI_VALUES:
        fail(f"no values files in {CHART / 'ci'}")
    check_metric_scanner()
    check_values_schema()
    check_render_refusals()
    for values_file in CI_VALUES:
        values = load_values(values_file)
        check_lint(values_file)
        try:
            objects = render(values)
        except helm.HelmError as err:
            fail(f"{values_file.name}: the chart does not render: {err}")
            continue
        kinds = sorted({o["kind"] for o in objects})
        check_kubernetes_schemas(values_file, objects)
        check_custom_resources(values_file, objects)
        check_policies(values_file, values, objects)
        check_network_policies(values_file.name, values, objects)
        ok(f"{values_file.name}: {len(objects)} objects ({', '.join(kinds)}) checked against Kubernetes {' and '.join(KUBE_VERSIONS)}")
    check_alerts(promtool)
    check_dashboards()
    if failures:
        print(f"\n{len(failures)} chart check(s) failed:", file=sys.stderr)
        for what in failures:
            print(f"  - {what.splitlines()[0]}", file=sys.stderr)
        return 1
    print("\nall chart checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
