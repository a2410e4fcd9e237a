"""The real Prometheus scrapes a live supervisor running real tasks; every PromQL expression of the Grafana
dashboard and of the alert rules must be valid and return data. promtool checks the config and the rules."""
import json
import os
import shutil
import signal
import subprocess
import threading
import urllib.parse

import pytest

from tests.helpers import PYTHONS, REPO, Client, Supervisor, free_port, wait_until

CONF = os.path.join(REPO, "conf")
WORKERS = {"py36": {"python": "3.6", "interpreter": PYTHONS["py36"], "concurrency": 2},
           "py38": {"python": "3.8", "interpreter": PYTHONS["py38"], "concurrency": 2},
           "py38_gpu": {"python": "3.8", "concurrency": 1}}  # never gets a runner: its queue only grows

pytestmark = pytest.mark.skipif(shutil.which("prometheus") is None,
                                reason="needs Prometheus: apt-get install prometheus (.ci/run installs it)")


def dashboard_exprs() -> list[str]:
    with open(os.path.join(CONF, "grafana", "dashboards", "supervisor.json")) as f:
        dash = json.load(f)
    return [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]


def alert_rules() -> dict[str, str]:
    """{alert name: expr} read from the rules file with promtool's own YAML → JSON view."""
    out = subprocess.run(["promtool", "check", "rules", "--lint=none", os.path.join(CONF, "prometheus", "alerts.yml")],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    rules, name = {}, None
    with open(os.path.join(CONF, "prometheus", "alerts.yml")) as f:
        lines = f.read().splitlines()
    i = 0
    while i < len(lines):
        s = lines[i].strip()
        if s.startswith("- alert:"):
            name = s.split(":", 1)[1].strip()
        elif s.startswith("expr:") and name:
            expr = s.split(":", 1)[1].strip()
            if expr in (">", "|"):  # a folded block: the more-indented lines that follow
                indent = len(lines[i + 1]) - len(lines[i + 1].lstrip())
                parts = []
                while i + 1 < len(lines) and (len(lines[i + 1]) - len(lines[i + 1].lstrip())) >= indent \
                        and lines[i + 1].strip():
                    i += 1
                    parts.append(lines[i].strip())
                expr = " ".join(parts)
            rules[name] = expr
            name = None
        i += 1
    return rules


def test_promtool_accepts_the_config_and_the_rules():
    for args in (["check", "config", os.path.join(CONF, "prometheus.yml")],
                 ["check", "rules", os.path.join(CONF, "prometheus", "alerts.yml")]):
        r = subprocess.run(["promtool", *args], capture_output=True, text=True)
        assert r.returncode == 0, r.stdout + r.stderr


class Prometheus:
    def __init__(self, tmp_path, target_port: int):
        with open(os.path.join(CONF, "prometheus.yml")) as f:
            text = f.read()
        for old, new in (('"127.0.0.1:8081"', f'"127.0.0.1:{target_port}"'), ("15s", "1s"),
                         ("prometheus/alerts.yml", os.path.join(CONF, "prometheus", "alerts.yml"))):
            assert old in text, f"conf/prometheus.yml no longer has {old}"
            text = text.replace(old, new)
        self.config = tmp_path / "prometheus.yml"
        self.config.write_text(text)
        self.port = free_port()
        self.log = open(tmp_path / "prometheus.log", "wb")
        self.proc = subprocess.Popen(["prometheus", f"--config.file={self.config}",
                                      f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                                      f"--web.listen-address=127.0.0.1:{self.port}"],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        self.api = Client(f"http://127.0.0.1:{self.port}")
        wait_until(self._ready, 60, 0.2, what="Prometheus /-/ready")

    def _ready(self):
        if self.proc.poll() is not None:
            raise AssertionError(f"prometheus exited with {self.proc.returncode}")
        try:
            return self.api.get("/-/ready").status == 200
        except OSError:
            return False

    def query(self, expr: str) -> dict:
        r = self.api.get("/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
        return r.json()

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(30)
        self.log.close()


def test_every_dashboard_and_alert_expression_returns_data_from_a_real_prometheus(tmp_path, pickles):
    sup = Supervisor(tmp_path, workers=WORKERS, spawn="py36,py38", unavailable_timeout_s=3600).start()
    prom = Prometheus(tmp_path, sup.port)
    stop = threading.Event()
    c = sup.client

    def load():  # a steady mix: successes, failures, and tasks for the runnerless worker
        i = 0
        while not stop.is_set():
            if sup.proc.poll() is not None:
                return
            c.submit("py38", pickles["py38"]["add"], kwargs={"x": i, "y": 1, "z": 1})
            c.submit("py36", pickles["py36"]["boom" if i % 2 else "add"],
                     kwargs={"x": i} if i % 2 else {"x": i, "y": 1, "z": 1})
            c.submit("py38_gpu", pickles["py38"]["add"], kwargs={"x": i, "y": 1, "z": 1})
            c.post("/api/v1/tasks", {"worker": "py27"})  # a rejected submission
            i += 1
            stop.wait(0.3)

    loader = threading.Thread(target=load, daemon=True)
    loader.start()
    try:
        wait_until(lambda: prom.query('up{job="supervisor"} == 1')["data"]["result"], 60, 0.5,
                   what="Prometheus to scrape the supervisor")
        os.kill(c.live_runners("py36")[0]["pid"], signal.SIGKILL)  # a lost runner and a re-queue
        rules = alert_rules()
        assert set(rules) == {"SupervisorDown", "SupervisorWorkerWithoutRunners", "SupervisorQueueGrowing",
                              "SupervisorHighFailureRatio", "SupervisorRunnersLost"}
        exprs = dashboard_exprs() + [e for n, e in rules.items() if n != "SupervisorDown"]
        assert len(exprs) >= 20
        for expr in exprs:
            answer = wait_until(lambda: (lambda a: a if a["status"] != "success" or a["data"]["result"] else None)(
                prom.query(expr)), 90, 0.5, what=f"data for {expr}")
            assert answer["status"] == "success", (expr, answer)
        rule_state = prom.api.get("/api/v1/rules").json()["data"]["groups"][0]["rules"]
        assert all(r["health"] in ("ok", "unknown") and not r.get("lastError") for r in rule_state), rule_state
        firing = wait_until(lambda: {a["labels"]["alertname"] for a in prom.api.get("/api/v1/alerts").json()
                                     ["data"]["alerts"]} >= {"SupervisorRunnersLost", "SupervisorWorkerWithoutRunners",
                                                             "SupervisorHighFailureRatio", "SupervisorQueueGrowing"},
                            60, 0.5, what="every alert but SupervisorDown to be pending or firing")
        assert firing
        stop.set()
        loader.join(30)
        sup.stop()
        wait_until(lambda: prom.query(rules["SupervisorDown"])["data"]["result"], 60, 0.5,
                   what="up == 0 once the supervisor is gone")
    finally:
        stop.set()
        sup.stop()
        prom.stop()
