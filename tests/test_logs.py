"""Logs: one line per task transition (task id, attempt, worker, runner, reason) and per runner join/loss."""
import json
import os
import signal

from tests.helpers import PYTHONS, Supervisor, wait_until

PY38 = {"py38": {"python": "3.8", "interpreter": PYTHONS["py38"], "concurrency": 1}}


def json_lines(sup):
    return [json.loads(line) for line in sup.log().splitlines() if line.startswith("{")]


def test_json_logs_have_one_line_per_transition_and_per_runner_join_and_loss(tmp_path, pickles):
    with Supervisor(tmp_path, workers=PY38, log_format="json") as sup:
        c = sup.client
        ok = c.submit("py38", pickles["py38"]["add"], kwargs={"x": 1, "y": 1, "z": 1})
        bad = c.submit("py38", pickles["py38"]["boom"], kwargs={"x": 1})
        c.wait_result(ok)
        c.wait_result(bad)
        lines = json_lines(sup)
        ok_events = [(r["event"], r["status"], r["attempt"]) for r in lines if r.get("task_id") == ok]
        assert ok_events == [("submit", "NOT RUN YET", 0), ("dispatch", "IN FLIGHT", 1), ("succeed", "DONE", 1)]
        (failed,) = [r for r in lines if r.get("task_id") == bad and r["event"] == "fail"]
        assert failed["reason"] == "ValueError" and failed["worker"] == "py38" and failed["runner"].startswith("py38-")
        (joined,) = [r for r in lines if r.get("event") == "runner_joined"]
        os.kill(c.live_runners("py38")[0]["pid"], signal.SIGKILL)
        wait_until(lambda: [r for r in json_lines(sup) if r.get("event") == "runner_lost"], what="a runner_lost line")
        (lost,) = [r for r in json_lines(sup) if r.get("event") == "runner_lost"]
        assert lost["runner"] == joined["runner"] and lost["worker"] == "py38"


def test_text_logs_name_the_task_attempt_worker_and_runner(tmp_path, pickles):
    with Supervisor(tmp_path, workers=PY38) as sup:
        task_id = sup.client.submit("py38", pickles["py38"]["add"], kwargs={"x": 1, "y": 1, "z": 1})
        sup.client.wait_result(task_id)
        line = next(ln for ln in sup.log().splitlines() if f"task {task_id}" in ln and "(succeed)" in ln)
        assert "attempt 1 worker py38 runner py38-" in line and "-> DONE" in line
