"""Dashboards and alerts against the real tools: promtool, a Prometheus server, a Pushgateway.

- Every metric the Grafana dashboard and the alert rules name exists in
  ``amnst.ops.metrics`` (or is a worker metric as Ray exports it).
- ``promtool check config`` / ``check rules`` accept ``deploy/prometheus/``, and
  ``promtool test rules`` shows each alert firing when it should and not otherwise.
- A real Prometheus, configured from ``deploy/prometheus/prometheus.yml`` with
  the test's ports swapped in, scrapes a running ``amnst run`` driver (a
  subprocess on a local Ray that the test starts with its dashboard, so Ray
  writes its real file_sd list), a Pushgateway and Ray's nodes; every PromQL
  expression of the dashboard and the rules is evaluated through its HTTP API
  and must return data.
- The Pushgateway receives the batch's outcome, and a batch with a failed pair
  does not erase the previous success's time.

Programs come from Debian's ``prometheus`` and ``prometheus-pushgateway``
packages; ``make test`` installs them with apt-get when run as root. Without
them these tests skip and say so (fail, in CI: see ``system_program``).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from amnst.ops import metrics
from tests.conftest import local_ray_instance, system_program
from tests.s3_server import aws_endpoint, aws_environment, free_port
from tests.servers import background, stop

REPO = Path(__file__).resolve().parents[1]
PROMETHEUS_DIR = REPO / "deploy" / "prometheus"
RULE_FILES = sorted((PROMETHEUS_DIR / "rules").glob("*.yml"))
DASHBOARD = REPO / "deploy" / "grafana" / "dashboards" / "amnst.json"
PACKAGES = {"prometheus": "prometheus", "promtool": "prometheus",
            "prometheus-pushgateway": "prometheus-pushgateway"}
# What Grafana substitutes before a query reaches Prometheus.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "${__rate_interval}": "1m", "$__interval": "15s",
                     "${__interval}": "15s", "$__range": "1h", "${__range}": "1h"}
# ray.util.metrics names as Ray 2.60's exporter writes them: a `ray_` prefix and,
# for counters (all of ours), `_total` (seen on a node's metrics export port).
RAY_EXPORTED = {f"ray_{name}_total" for name in metrics.WORKER_METRICS}
BATCH_JOB = "amnst_monitoring_test"


def need(program: str) -> str:
    return system_program(program, PACKAGES[program])


# --- the expressions ---------------------------------------------------------

def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) of every query in the dashboard, rows' nested panels included."""
    queries = []

    def walk(panels: list[dict]) -> None:
        for panel in panels:
            for target in panel.get("targets", []):
                queries.append((panel["title"], grafana_to_promql(target["expr"])))
            walk(panel.get("panels", []))
    walk(json.loads(DASHBOARD.read_text())["panels"])
    return queries


def grafana_to_promql(expr: str) -> str:
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    assert "$" not in expr, f"a Grafana variable this test does not substitute: {expr}"
    return expr


def rules() -> list[dict]:
    return [rule for path in RULE_FILES for group in yaml.safe_load(path.read_text())["groups"]
            for rule in group["rules"]]


def alerts() -> dict[str, str]:
    return {rule["alert"]: " ".join(rule["expr"].split()) for rule in rules() if "alert" in rule}


_STRINGS = re.compile(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_LABEL_LISTS = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_OURS = re.compile(r"(?<![\w:])(?:ray_)?amnst_[A-Za-z0-9_:]*")


def metric_names_in(expr: str) -> set[str]:
    """The amnst_/ray_amnst_ metric names an expression selects (not label names or values)."""
    assert "__name__" not in expr, f"select metrics by name, not through __name__: {expr}"
    text = _STRINGS.sub('""', expr)          # label values: "amnst_batch" is a job, not a metric
    text = _MATCHERS.sub("{}", text)         # label names inside {...}
    text = _LABEL_LISTS.sub("()", text)      # label names in by (...), on (...), ...
    return set(_OURS.findall(text))


def left_of_comparison(expr: str) -> str | None:
    """``A`` of an expression ``A > B`` (the last comparison outside brackets), else None."""
    depth, cut = 0, None
    text = _STRINGS.sub(lambda m: "_" * len(m.group()), expr)
    for index, char in enumerate(text):
        if char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        elif depth == 0 and (char in "<>" or text[index:index + 2] in ("==", "!=")):
            cut = index
    return expr[:cut].strip() if cut else None


def watched_value(expr: str) -> str | None:
    """What must have data while the alert ``expr`` is healthy (empty): ``X`` of ``absent(X)``, else ``A``
    of ``A > B``."""
    inner = re.fullmatch(r"absent\((.*)\)", expr.strip(), flags=re.DOTALL)
    return inner.group(1).strip() if inner else left_of_comparison(expr)


def test_the_expression_parser_picks_metric_names_only():
    expr = ('sum by (job, amnst_label) (rate(amnst_pairs_total{status="failed", amnst_x=~"amnst_y"}[1m])) '
            '/ on (job) group_left (amnst_z) max(ray_amnst_worker_nst_iterations_total) > 0.05')
    assert metric_names_in(expr) == {"amnst_pairs_total", "ray_amnst_worker_nst_iterations_total"}
    assert left_of_comparison("time() - max by (job) (x{a=\">\"} > 0) > 26 * 3600") == \
        'time() - max by (job) (x{a=">"} > 0)'
    assert left_of_comparison("absent(x > 0)") is None
    assert watched_value("absent(x > 0)") == "x > 0" and watched_value("a - b > 3") == "a - b"


def test_every_metric_in_the_dashboard_and_the_rules_exists():
    known = metrics.metric_names() | RAY_EXPORTED
    queries = dashboard_queries() + [(f"rule {name}", expr) for name, expr in alerts().items()]
    assert len(queries) > 20
    for where, expr in queries:
        names = metric_names_in(expr)
        assert names, f"{where}: no amnst metric in {expr}"
        assert names <= known, f"{where}: unknown metrics {sorted(names - known)} in {expr}"
    used = set().union(*(metric_names_in(expr) for _, expr in queries))
    # The dashboard covers what the issue asks of it.
    for name in ("amnst_pairs_total", "amnst_audio_seconds_total", "amnst_segments_total",
                 "amnst_stage_seconds_bucket", "amnst_tasks_in_flight", "amnst_batch_pairs",
                 "amnst_last_successful_batch_timestamp_seconds", "amnst_train_epoch_loss",
                 "amnst_train_epoch_accuracy", "ray_amnst_worker_nst_iterations_total"):
        assert name in used, f"the dashboard and rules do not use {name}"


def test_the_dashboard_is_provisionable():
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and 36 <= dashboard["schemaVersion"] <= 41
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
            assert all(t["datasource"]["uid"] == "${datasource}" for t in panel["targets"]), panel["title"]
    provider = yaml.safe_load((REPO / "deploy/grafana/provisioning/dashboards/amnst.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
    source = yaml.safe_load((REPO / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text())
    assert source["datasources"][0]["type"] == "prometheus"


# --- promtool ----------------------------------------------------------------

def test_promtool_accepts_the_configuration_and_the_rules(tmp_path):
    promtool = need("promtool")
    # A copy whose Ray file_sd path names a file in Ray's format (the real one,
    # under /tmp/ray, exists only while a Ray head runs).
    shutil.copytree(PROMETHEUS_DIR, tmp_path / "prometheus")
    config = tmp_path / "prometheus" / "prometheus.yml"
    sd_file = tmp_path / "prom_metrics_service_discovery.json"
    sd_file.write_text(json.dumps([{"labels": {"job": "ray"}, "targets": ["127.0.0.1:44217"]}]))
    text = config.read_text()
    assert "/tmp/ray/prom_metrics_service_discovery.json" in text
    config.write_text(text.replace("/tmp/ray/prom_metrics_service_discovery.json", str(sd_file)))
    checked = subprocess.run([promtool, "check", "config", str(config)], capture_output=True, text=True,
                             timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"{len(RULE_FILES)} rule files found" in checked.stdout + checked.stderr
    assert "WARNING" not in checked.stdout + checked.stderr
    checked = subprocess.run([promtool, "check", "rules", *map(str, RULE_FILES)], capture_output=True,
                             text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def _annotations(alert: str, labels: dict[str, str], value: str) -> dict[str, str]:
    """The alert's annotations rendered for promtool (which compares them exactly)."""
    rule = next(r for r in rules() if r.get("alert") == alert)

    def render(template: str) -> str:
        template = re.sub(r"\{\{\s*\$labels\.(\w+)\s*\}\}", lambda m: labels[m.group(1)], template)
        return re.sub(r"\{\{\s*\$value\s*\|\s*humanize\w*\s*\}\}", value, template)
    return {key: render(text) for key, text in rule.get("annotations", {}).items()}


def _expect(alert: str, value: str = "", **labels: str) -> dict[str, Any]:
    severity = next(r for r in rules() if r.get("alert") == alert)["labels"]["severity"]
    return {"exp_labels": {**labels, "severity": severity},
            "exp_annotations": _annotations(alert, labels, value)}


def test_promtool_unit_tests_fire_each_alert_only_when_it_should(tmp_path):
    promtool = need("promtool")
    minutes = 30 * 60
    driver = 'job="amnst-driver", instance="driver:9464"'
    cases = {
        "rule_files": [str(path) for path in RULE_FILES],
        "evaluation_interval": "1m",
        "tests": [
            {   # Staleness: one job's last success 27 h ago, one fresh, and a running
                # driver whose own gauge reads 0 (no success of its own yet).
                "interval": "1m",
                "input_series": [
                    {"series": 'amnst_last_successful_batch_timestamp_seconds{job="stale"}',
                     "values": f"3600+0x{minutes}"},
                    {"series": 'amnst_last_successful_batch_timestamp_seconds{job="fresh"}',
                     "values": f"0+60x{minutes}"},
                    {"series": f"amnst_last_successful_batch_timestamp_seconds{{{driver}}}",
                     "values": f"0x{minutes}"},
                ],
                "alert_rule_test": [
                    {"eval_time": "20h", "alertname": "AmnstNightlyBatchStale", "exp_alerts": []},
                    {"eval_time": "28h", "alertname": "AmnstNightlyBatchStale",
                     "exp_alerts": [_expect("AmnstNightlyBatchStale", "1d 3h 0m 0s", job="stale")]},
                    {"eval_time": "2h", "alertname": "AmnstNightlyBatchNeverSucceeded", "exp_alerts": []},
                ],
            },
            {   # No success anywhere: only a driver's 0.
                "interval": "1m",
                "input_series": [{"series": f"amnst_last_successful_batch_timestamp_seconds{{{driver}}}",
                                  "values": "0x180"}],
                "alert_rule_test": [
                    {"eval_time": "30m", "alertname": "AmnstNightlyBatchNeverSucceeded", "exp_alerts": []},
                    {"eval_time": "2h", "alertname": "AmnstNightlyBatchNeverSucceeded",
                     "exp_alerts": [_expect("AmnstNightlyBatchNeverSucceeded")]},
                ],
            },
            {   # Failed ratios: last pushed batches (10 %, 1 %, all skipped) and running drivers.
                "interval": "1m",
                "input_series": [
                    {"series": 'amnst_batch_pairs{job="bad", status="ok"}', "values": "90x60"},
                    {"series": 'amnst_batch_pairs{job="bad", status="failed"}', "values": "10x60"},
                    {"series": 'amnst_batch_pairs{job="bad", status="skipped"}', "values": "7x60"},
                    {"series": 'amnst_batch_pairs{job="good", status="ok"}', "values": "99x60"},
                    {"series": 'amnst_batch_pairs{job="good", status="failed"}', "values": "1x60"},
                    {"series": 'amnst_batch_pairs{job="resumed", status="ok"}', "values": "0x60"},
                    {"series": 'amnst_batch_pairs{job="resumed", status="failed"}', "values": "0x60"},
                    {"series": 'amnst_batch_pairs{job="resumed", status="skipped"}', "values": "50x60"},
                    {"series": f'amnst_pairs_total{{{driver}, status="ok"}}', "values": "0+9x60"},
                    {"series": f'amnst_pairs_total{{{driver}, status="failed"}}', "values": "0+1x60"},
                    {"series": 'amnst_pairs_total{job="amnst-driver", instance="healthy:9464", status="ok"}',
                     "values": "0+100x60"},
                    {"series": 'amnst_pairs_total{job="amnst-driver", instance="healthy:9464", status="failed"}',
                     "values": "0x60"},
                ],
                "alert_rule_test": [
                    {"eval_time": "2m", "alertname": "AmnstBatchFailedPairRatioHigh", "exp_alerts": []},
                    {"eval_time": "10m", "alertname": "AmnstBatchFailedPairRatioHigh",
                     "exp_alerts": [_expect("AmnstBatchFailedPairRatioHigh", "10%", job="bad")]},
                    {"eval_time": "5m", "alertname": "AmnstRunningBatchFailedPairRatioHigh", "exp_alerts": []},
                    {"eval_time": "30m", "alertname": "AmnstRunningBatchFailedPairRatioHigh",
                     "exp_alerts": [_expect("AmnstRunningBatchFailedPairRatioHigh", "10%", job="amnst-driver",
                                            instance="driver:9464")]},
                ],
            },
        ],
    }
    tested = {case["alertname"] for group in cases["tests"] for case in group["alert_rule_test"]}
    assert tested == set(alerts()), "every alert needs a promtool case here"
    path = tmp_path / "alerts_test.yml"
    path.write_text(yaml.safe_dump(cases, sort_keys=False))
    done = subprocess.run([promtool, "test", "rules", str(path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


# --- a live driver, Ray, a Pushgateway and Prometheus ------------------------

def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as reply:
        return reply.read().decode()


@dataclass
class Seen:
    """What one expression returned over the polls."""

    polls: int = 0
    errors: list[str] = field(default_factory=list)
    with_data: int = 0
    finite: bool = False
    last: list = field(default_factory=list)  # the latest poll's result, empty or not


@dataclass
class Observations:
    seen: dict[str, Seen]
    alerts_seen: set[str]
    alerts_before_push: set[str]
    never_succeeded_before_push: list
    driver: subprocess.CompletedProcess
    gateway_before: str
    gateway_after: str
    pushed_job_in_prometheus: list
    rules_health: list[tuple[str, str, str]]
    targets: list[dict]


class Prometheus:
    def __init__(self, base: str) -> None:
        self.base = base

    def query(self, expr: str) -> tuple[str | None, list]:
        """(error or None, result) of an instant query."""
        url = f"{self.base}/api/v1/query?{urllib.parse.urlencode({'query': expr})}"
        try:
            reply = json.loads(get(url))
        except urllib.error.HTTPError as error:
            return f"HTTP {error.code}: {error.read().decode()[:300]}", []
        if reply["status"] != "success":
            return f"{reply.get('errorType')}: {reply.get('error')}", []
        return None, reply["data"]["result"]

    def active_alerts(self) -> set[str]:
        return {a["labels"]["alertname"] for a in json.loads(get(f"{self.base}/api/v1/alerts"))["data"]["alerts"]}

    def wait_until(self, expr: str, seconds: float, what: str) -> list:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            error, result = self.query(expr)
            if not error and result:
                return result
            time.sleep(0.5)
        raise AssertionError(f"Prometheus: {what} ({expr}) not within {seconds} s")


def put_inputs(endpoint: str, bucket: str) -> str:
    """Three pairs of synthesized music and ambience, one pair whose content is missing."""
    import boto3

    from amnst.engine import audio
    from amnst import synth

    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing")
    client.create_bucket(Bucket=bucket)

    def put(key: str, data: bytes) -> None:
        client.put_object(Bucket=bucket, Key=key, Body=data)
    put("in/rain.wav", audio.encode(synth.rain(5.0, seed=1), 22050, "wav"))
    put("in/drone.wav", audio.encode(synth.STYLES["drone"](5.0, seed=1), 22050, "wav"))
    rows = []
    for index in range(3):
        put(f"in/music{index}.wav", audio.encode(synth.music(6.0, seed=index), 22050, "wav"))
        rows.append(f"p{index},music{index}.wav,{('rain', 'drone')[index % 2]}.wav")
    rows.append("missing,nothing.wav,rain.wav")
    put("in/manifest.csv", ("pair_id,content,style\n" + "\n".join(rows) + "\n").encode())
    return f"s3://{bucket}/in/manifest.csv"


def scrape_config_for_test(ports: dict[str, int], ray_sd_file: Path) -> dict:
    """deploy/prometheus/prometheus.yml with the test's ports, 1 s intervals and absolute rule paths."""
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    config["rule_files"] = [str(path) for path in RULE_FILES]
    swap = {f"localhost:{port}": f"127.0.0.1:{ours}" for port, ours in
            ((9464, ports["driver"]), (9465, ports["train"]), (9091, ports["gateway"]))}
    for job in config["scrape_configs"]:
        job.pop("scrape_interval", None)
        for group in job.get("static_configs", []):
            group["targets"] = [swap[target] for target in group["targets"]]
        for sd in job.get("file_sd_configs", []):
            assert sd["files"] == ["/tmp/ray/prom_metrics_service_discovery.json"]
            sd["files"], sd["refresh_interval"] = [str(ray_sd_file)], "1s"
    return config


# Stands in for the training driver (not part of `amnst run`): the registry's
# training gauges, served the way a driver serves them.
TRAINING_STAND_IN = """
import sys, time
from amnst.ops import metrics
for epoch, (loss, val_loss, acc, val_acc) in enumerate([(2.1, 2.2, 0.3, 0.28), (1.4, 1.6, 0.55, 0.5)], 1):
    metrics.TRAIN_EPOCH.set(epoch)
    metrics.TRAIN_LOSS.labels("train").set(loss); metrics.TRAIN_LOSS.labels("validation").set(val_loss)
    metrics.TRAIN_ACCURACY.labels("train").set(acc); metrics.TRAIN_ACCURACY.labels("validation").set(val_acc)
metrics.serve(int(sys.argv[1]))
time.sleep(900)
"""


@pytest.fixture(scope="session")
def servers() -> tuple[str, str]:
    """The Prometheus and Pushgateway programs (checked before anything else starts)."""
    return need("prometheus"), need("prometheus-pushgateway")


@pytest.fixture(scope="module")
def observed(servers, moto_server, tmp_path_factory) -> Iterator[Observations]:
    """Run one batch with the whole monitoring stack watching; record what Prometheus saw."""
    prometheus_bin, gateway_bin = servers
    import ray

    work = tmp_path_factory.mktemp("monitoring")
    ports = {name: free_port() for name in ("driver", "train", "gateway", "prometheus")}
    gateway = f"127.0.0.1:{ports['gateway']}"
    manifest = put_inputs(moto_server, "amnst-monitoring")

    with contextlib.ExitStack() as stack, aws_endpoint(moto_server):
        stack.enter_context(background(
            [gateway_bin, f"--web.listen-address={gateway}", f"--persistence.file={work / 'gateway.data'}"],
            work / "pushgateway.log", f"http://{gateway}/-/ready", cwd=REPO))
        stack.enter_context(background(
            [sys.executable, "-c", TRAINING_STAND_IN, str(ports["train"])], work / "train.log",
            f"http://127.0.0.1:{ports['train']}/metrics", cwd=REPO))
        # A local Ray with its dashboard: the dashboard head writes Ray's file_sd
        # list. A short temp dir of our own (Ray's socket paths are length-capped).
        ray_dir = Path(tempfile.mkdtemp(prefix="amnst-ray-"))
        stack.callback(shutil.rmtree, ray_dir, ignore_errors=True)
        stack.enter_context(local_ray_instance(
            include_dashboard=True, dashboard_host="127.0.0.1", dashboard_port=free_port(), _temp_dir=str(ray_dir),
            _system_config={"metrics_report_interval_ms": 1000}))
        sd_file = ray_dir / "prom_metrics_service_discovery.json"
        deadline = time.monotonic() + 60
        while not (sd_file.exists() and json.loads(sd_file.read_text() or "[]")):
            assert time.monotonic() < deadline, f"Ray wrote no {sd_file}: {sorted(os.listdir(ray_dir))}"
            time.sleep(0.5)
        assert sd_file.is_symlink() and Path(os.readlink(sd_file)).parent.name.startswith("session_")

        config = work / "prometheus.yml"
        config.write_text(yaml.safe_dump(scrape_config_for_test(ports, sd_file)))
        base = f"http://127.0.0.1:{ports['prometheus']}"
        stack.enter_context(background(
            [prometheus_bin, f"--config.file={config}", f"--storage.tsdb.path={work / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{ports['prometheus']}"],
            work / "prometheus.log", f"{base}/-/ready", cwd=REPO))
        prom = Prometheus(base)
        for job in ("pushgateway", "ray"):
            prom.wait_until(f'up{{job="{job}"}} == 1', 30, f"the {job} target is up")
        prom.wait_until('up{job="amnst-driver", role="train"} == 1', 30, "the training stand-in is up")

        # No success recorded anywhere yet: the "never succeeded" condition holds.
        alert_exprs = alerts()
        _, never_before = prom.query(alert_exprs["AmnstNightlyBatchNeverSucceeded"])
        deadline = time.monotonic() + 15
        while "AmnstNightlyBatchNeverSucceeded" not in prom.active_alerts() and time.monotonic() < deadline:
            time.sleep(0.5)
        alerts_before_push = prom.active_alerts()

        # The previous night: a batch with no failed pair.
        metrics.push_batch_outcome(gateway, BATCH_JOB, ok=5, failed=0, skipped=0, seconds=42.0)
        gateway_before = get(f"http://{gateway}/metrics")

        expressions = [expr for _, expr in dashboard_queries()] + list(alert_exprs.values())
        expressions += [value for value in map(watched_value, alert_exprs.values()) if value]
        seen = {expr: Seen() for expr in expressions}
        alerts_seen: set[str] = set()

        def poll() -> None:
            for expr, record in seen.items():
                error, result = prom.query(expr)
                record.polls += 1
                record.last = result
                if error:
                    record.errors.append(error)
                elif result:
                    record.with_data += 1
                    record.finite |= any(math.isfinite(float(r["value"][1])) for r in result)
            alerts_seen.update(prom.active_alerts())

        # Tonight: `amnst run` as its own process, on the test's Ray, serving
        # /metrics and pushing its outcome at the end. Its pairs take long enough to
        # finish scrapes apart: a rate needs a counter seen rising.
        driver_env = {**os.environ, **aws_environment(moto_server), "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
        with (work / "driver.out").open("w") as out, (work / "driver.err").open("w") as err:
            driver = subprocess.Popen(
                [sys.executable, "-m", "amnst.cli", "run", manifest, "--output", "s3://amnst-monitoring/out",
                 "--iterations", "40", "--max-in-flight", "2", "--metrics-port", str(ports["driver"]),
                 "--pushgateway", gateway, "--metrics-job", BATCH_JOB],
                stdout=out, stderr=err, env=driver_env, cwd=REPO)
        stack.callback(stop, driver)
        dashboard = [seen[expr] for _, expr in dashboard_queries()]
        pushed = seen[alert_exprs["AmnstBatchFailedPairRatioHigh"]]
        deadline = time.monotonic() + 240
        ended, settled = None, 0
        while time.monotonic() < deadline:
            poll()
            if driver.poll() is not None:
                ended = ended or time.monotonic()
                # After the push: two more polls once Prometheus has it and every
                # panel has had data (the rules evaluate every second); at most 20 s.
                if pushed.last and all(s.with_data and s.finite for s in dashboard):
                    settled += 1
                if settled > 2 or time.monotonic() - ended > 20:
                    break
            time.sleep(1.0)
        assert driver.poll() is not None, "amnst run did not finish in time"
        finished = subprocess.CompletedProcess(driver.args, driver.returncode, (work / "driver.out").read_text(),
                                               (work / "driver.err").read_text())
        _, pushed_job = prom.query(f'amnst_batch_pairs{{job="{BATCH_JOB}"}}')
        groups = json.loads(get(f"{base}/api/v1/rules"))["data"]["groups"]
        yield Observations(
            seen=seen, alerts_seen=alerts_seen, alerts_before_push=alerts_before_push,
            never_succeeded_before_push=never_before, driver=finished, gateway_before=gateway_before,
            gateway_after=get(f"http://{gateway}/metrics"), pushed_job_in_prometheus=pushed_job,
            rules_health=[(r["name"], r["health"], r.get("lastError", "")) for g in groups for r in g["rules"]],
            targets=json.loads(get(f"{base}/api/v1/targets"))["data"]["activeTargets"])


def test_the_driver_ran_its_batch_under_observation(observed):
    driver = observed.driver
    assert driver.returncode == 3, driver.stderr[-3000:]  # one pair's input is missing
    assert "3 ok, 0 skipped, 1 failed of 4 pairs" in driver.stdout, driver.stdout + driver.stderr[-2000:]
    jobs = {(t["labels"]["job"], t["health"]) for t in observed.targets}
    assert ("ray", "up") in jobs, observed.targets  # found through Ray's own file_sd list


def test_every_dashboard_query_returns_data(observed):
    empty = {f"{title}: {expr}": observed.seen[expr] for title, expr in dashboard_queries()
             if observed.seen[expr].errors or not observed.seen[expr].with_data
             or not observed.seen[expr].finite}
    assert not empty, "\n".join(f"{where} -> {seen}" for where, seen in empty.items())


def test_every_alert_expression_evaluates_and_its_condition_has_data(observed):
    for name, expr in alerts().items():
        record = observed.seen[expr]
        assert not record.errors and record.polls, f"{name}: {record.errors[:3]}"
        value = watched_value(expr)
        # Healthy = empty (staleness, absence): then the watched value itself must have data.
        assert record.with_data or (value and observed.seen[value].with_data and observed.seen[value].finite), \
            f"{name}: neither {expr} nor {value} returned data"
    assert all(health == "ok" for _, health, _ in observed.rules_health), observed.rules_health


def test_alerts_follow_the_batch(observed):
    exprs = alerts()
    # Before any push nothing had succeeded; after it, something has.
    assert observed.never_succeeded_before_push
    assert "AmnstNightlyBatchNeverSucceeded" in observed.alerts_before_push
    assert not observed.seen[exprs["AmnstNightlyBatchNeverSucceeded"]].last
    # The last success is minutes old, not 26 hours.
    stale = observed.seen[left_of_comparison(exprs["AmnstNightlyBatchStale"])].last
    assert stale and all(float(r["value"][1]) < 600 for r in stale), stale
    assert not observed.seen[exprs["AmnstNightlyBatchStale"]].with_data
    assert "AmnstNightlyBatchStale" not in observed.alerts_seen
    # 1 of 4 pairs failed: both failed-ratio conditions hold (pending, their `for` not yet over).
    assert {"AmnstBatchFailedPairRatioHigh", "AmnstRunningBatchFailedPairRatioHigh"} <= observed.alerts_seen
    ratio = observed.seen[exprs["AmnstBatchFailedPairRatioHigh"]].last
    assert [(r["metric"]["job"], float(r["value"][1])) for r in ratio] == [(BATCH_JOB, 0.25)]


def _gateway_samples(text: str) -> dict[tuple[str, tuple], float]:
    from prometheus_client.parser import text_string_to_metric_families

    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_the_pushgateway_keeps_the_last_success_through_a_failed_batch(observed):
    before, after = _gateway_samples(observed.gateway_before), _gateway_samples(observed.gateway_after)
    job = (("instance", ""), ("job", BATCH_JOB))

    def pairs(samples: dict, status: str) -> float:
        return samples[("amnst_batch_pairs", tuple(sorted((*job, ("status", status)))))]

    assert (pairs(before, "ok"), pairs(before, "failed")) == (5, 0)
    assert (pairs(after, "ok"), pairs(after, "failed"), pairs(after, "skipped")) == (3, 1, 0)
    success = ("amnst_last_successful_batch_timestamp_seconds", job)
    finished = ("amnst_batch_finished_timestamp_seconds", job)
    assert after[success] == before[success] > time.time() - 600  # not erased by the failed batch
    assert after[finished] > before[finished]
    assert after[("amnst_batch_duration_seconds", job)] > 0
    # Scraped with honor_labels: the pushed job label survives in Prometheus.
    assert {r["metric"]["job"] for r in observed.pushed_job_in_prometheus} == {BATCH_JOB}
