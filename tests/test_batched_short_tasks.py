"""A runner gives a slot's process several short tasks in one batch; each still ends on its own.

Once a function's runs have been short, the runner hands a free slot a share of its queued tasks of that
function in one write. These tests make such a batch (one slot, prefetch 8, a function seen to be short, three
tasks in one batch submit) and check that a cancel, a crash or a timeout inside it touches one task only.
"""
import base64

import pytest

from tests.helpers import PYTHONS, Supervisor, wait_until

BATCH_LOG = "3 short tasks given to its process in one batch"


def one_slot(worker):
    return {worker: {"python": worker[2] + "." + worker[3:], "interpreter": PYTHONS[worker], "concurrency": 1,
                     "prefetch": 8}}


def batch_of_three(sup, worker, step: bytes, path: str, specs: list[dict]) -> list[str]:
    """Run `step` once (so the runner sees it is short), then submit three steps in one call."""
    c = sup.client
    assert c.wait_result(c.submit(worker, step, kwargs={"path": path, "name": "warm-up"}))["status"] == "DONE"
    fn = base64.b64encode(step).decode()
    r = c.post("/api/v1/tasks/batch", {"tasks": [
        {"worker": worker, "function": fn, "kwargs": {"path": path, **spec.pop("kwargs")}, **spec} for spec in specs]})
    assert r.status == 202, r.body
    return r.json()["task_ids"]


@pytest.fixture
def runner_debug_log(monkeypatch):
    monkeypatch.setenv("RUNNER_LOG_LEVEL", "DEBUG")  # the spawned runner says when it gives out a batch


def test_a_cancelled_task_in_a_batch_never_starts_and_the_others_run(tmp_path, pickles, runner_debug_log):
    order = str(tmp_path / "order")
    with Supervisor(tmp_path, workers=one_slot("py38")) as sup:
        c = sup.client
        first, second, third = batch_of_three(sup, "py38", pickles["py38"]["step"], order, [
            {"kwargs": {"name": "first", "sleep_s": 1.5}}, {"kwargs": {"name": "second"}},
            {"kwargs": {"name": "third"}}])
        wait_until(lambda: BATCH_LOG in sup.log(), what="the runner to give out the batch")
        assert c.request("DELETE", f"/api/v1/tasks/{second}").json()["status"] == "CANCELLED"
        assert c.wait_result(first)["result"] == "first"
        assert c.wait_result(third)["result"] == "third"
        assert open(order).read().split() == ["warm-up", "first", "third"], "the cancelled task never ran"
        assert c.status(second) == "CANCELLED"


def test_a_crash_in_a_batch_fails_that_task_only_and_the_rest_run_once(tmp_path, pickles, runner_debug_log):
    order = str(tmp_path / "order")
    with Supervisor(tmp_path, workers=one_slot("py36"), poison_crashes=1) as sup:
        c = sup.client
        pid = c.live_runners("py36")[0]["pid"]
        crash, after1, after2 = batch_of_three(sup, "py36", pickles["py36"]["step"], order, [
            {"kwargs": {"name": "crash", "exit_code": 3}}, {"kwargs": {"name": "after1"}},
            {"kwargs": {"name": "after2"}}])
        out = c.wait_result(crash)
        assert out["status"] == "FAILED" and out["error"]["type"] == "ProcessDied", out
        assert "exited with code 3" in out["error"]["message"]
        for task_id, name in ((after1, "after1"), (after2, "after2")):
            assert c.wait_result(task_id)["result"] == name
            assert c.task(task_id)["attempts"] == 1, "given to the next process by the runner, not re-dispatched"
        assert BATCH_LOG in sup.log()
        assert open(order).read().split() == ["warm-up", "after1", "after2"]
        assert c.live_runners("py36")[0]["pid"] == pid


def test_a_timeout_in_a_batch_kills_that_task_only(tmp_path, pickles, runner_debug_log):
    order = str(tmp_path / "order")
    with Supervisor(tmp_path, workers=one_slot("py38")) as sup:
        c = sup.client
        slow, quick, last = batch_of_three(sup, "py38", pickles["py38"]["step"], order, [
            {"kwargs": {"name": "slow", "sleep_s": 60}, "timeout_s": 0.5}, {"kwargs": {"name": "quick"}},
            {"kwargs": {"name": "last"}}])
        out = c.wait_result(slow)
        assert out["status"] == "FAILED" and out["error"]["type"] == "TimeoutError", out
        assert c.wait_result(quick)["result"] == "quick" and c.wait_result(last)["result"] == "last"
        assert BATCH_LOG in sup.log()
        assert open(order).read().split() == ["warm-up", "quick", "last"]
