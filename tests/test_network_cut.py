"""A runner behind a real cut link (network namespace + veth): short cuts heal, long cuts re-queue."""
import contextlib
import subprocess
import time

import pytest

from tests import netns
from tests.helpers import PYTHONS, REPO, Supervisor, free_port, start_runner, wait_until

WHY_NOT = netns.available()
pytestmark = pytest.mark.skipif(WHY_NOT is not None, reason=str(WHY_NOT))

PY38 = {"py38": {"python": "3.8", "interpreter": PYTHONS["py38"], "concurrency": 1}}
BEAT = {"heartbeat_s": 0.5, "liveness": 6}  # a runner is lost after 3 s of silence


def runner_in(ns, endpoint, log_path):
    with open(log_path, "ab") as log:
        return subprocess.Popen(ns.prefix() + [PYTHONS["py38"], "runners/run.py", "--worker", "py38", "--connect",
                                               endpoint, "--heartbeat-s", "0.5", "--liveness", "6"],
                                cwd=REPO, stdout=log, stderr=subprocess.STDOUT)


def hold(seconds):
    """Keep the link cut for this long: the stimulus itself, not a wait for some state."""
    time.sleep(seconds)


@contextlib.contextmanager
def far_runner_running_a_task(tmp_path, pickles):
    """A supervisor, a runner inside a fresh namespace, and a 2 s task running on it."""
    with netns.Namespace() as ns:
        endpoint = f"tcp://{ns.root_addr}:{free_port()}"
        with Supervisor(tmp_path, workers=PY38, spawn="none", zmq_bind=endpoint, **BEAT) as sup:
            far = runner_in(ns, endpoint, tmp_path / "far.log")
            try:
                c = sup.client
                wait_until(lambda: c.live_runners("py38"), what="the runner in the namespace")
                (runner,) = c.live_runners("py38")
                task_id = c.submit("py38", pickles["py38"]["slow_pid"], kwargs={"s": 2})
                wait_until(lambda: c.status(task_id) == "IN FLIGHT", what="IN FLIGHT")
                yield ns, sup, endpoint, task_id, runner
            finally:
                far.kill()
                far.wait()


def test_a_short_cut_heals_without_running_the_task_again(tmp_path, pickles):
    with far_runner_running_a_task(tmp_path, pickles) as (ns, sup, _, task_id, runner):
        c = sup.client
        ns.cut()
        hold(1.0)
        ns.heal()
        out = c.wait_result(task_id)
        rec = c.task(task_id)
        assert out["status"] == "DONE" and rec["attempts"] == 1 and rec["runner"] == runner["id"]
        assert "lost" not in sup.log()


def test_a_long_cut_requeues_the_task_elsewhere_and_drops_the_old_attempts_late_result(tmp_path, pickles):
    with far_runner_running_a_task(tmp_path, pickles) as (ns, sup, endpoint, task_id, cut_off):
        c = sup.client
        near = start_runner("py38", endpoint, heartbeat_s=0.5)
        try:
            ns.cut()
            out = c.wait_result(task_id, timeout=60)  # lost after 3 s, re-run by the near runner
            rec = c.task(task_id)
            assert out["status"] == "DONE" and rec["attempts"] == 2 and rec["runner"] != cut_off["id"]
            assert f"runner {cut_off['id']} of worker py38 lost" in sup.log()
            ns.heal()
            wait_until(lambda: f"task {task_id} attempt 1: dropping a stale" in sup.log(), 60,
                       what="the cut-off runner's late result")
            again = c.task(task_id)
            assert again["attempts"] == 2 and again["result"] == out["result"] and again["runner"] == rec["runner"]
            wait_until(lambda: len(c.live_runners("py38")) == 2, 30, what="the cut-off runner to re-register")
        finally:
            near.kill()
            near.wait()
