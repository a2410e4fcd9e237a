"""Dispatch: FIFO per worker within a priority, higher priority first, spread over runners by free slots."""
import base64
import os

from tests.helpers import PYTHONS, Supervisor, start_runner, wait_until

ONE_SLOT = {"py38": {"python": "3.8", "interpreter": PYTHONS["py38"], "concurrency": 1}}


def test_with_one_slot_tasks_run_by_priority_then_in_submission_order(tmp_path, pickles):
    gate, order = str(tmp_path / "gate"), str(tmp_path / "order")
    with Supervisor(tmp_path, workers=ONE_SLOT) as sup:
        c = sup.client
        blocker = c.submit("py38", pickles["py38"]["wait_for_file"], kwargs={"path": gate})
        wait_until(lambda: c.status(blocker) == "IN FLIGHT", what="the blocker to hold the only slot")
        plan = [("a1", 0), ("a2", 0), ("hi1", 5), ("a3", 0), ("low", -1), ("hi2", 5), ("mid", 2), ("a4", 0)]
        ids = [c.submit("py38", pickles["py38"]["mark"], kwargs={"path": order, "name": name}, priority=prio)
               for name, prio in plan]
        assert all(c.status(t) == "NOT RUN YET" for t in ids)
        open(gate, "w").close()
        for t in ids:
            assert c.wait_result(t)["status"] == "DONE"
        with open(order) as f:
            ran = f.read().split()
        assert ran == ["hi1", "hi2", "mid", "a1", "a2", "a3", "a4", "low"]


def test_tasks_spread_over_a_workers_runners_by_free_slots(tmp_path, pickles):
    gate = str(tmp_path / "gate")
    with Supervisor(tmp_path, workers=ONE_SLOT, spawn="none") as sup:
        c = sup.client
        runners = [start_runner("py38", sup.zmq_endpoint, concurrency=1) for _ in range(2)]
        try:
            wait_until(lambda: len(c.live_runners("py38")) == 2, what="two runners")
            ids = [c.submit("py38", pickles["py38"]["wait_for_file"], kwargs={"path": gate}) for _ in range(3)]
            wait_until(lambda: sum(c.status(t) == "IN FLIGHT" for t in ids) == 2, what="two tasks in flight")
            in_flight = [c.task(t) for t in ids if c.status(t) == "IN FLIGHT"]
            assert len({t["runner"] for t in in_flight}) == 2, "each runner got one task"
            assert sorted(r["busy_slots"] for r in c.live_runners("py38")) == [1, 1]
            assert c.workers()["py38"]["queued"] == 1 and c.workers()["py38"]["in_flight"] == 2
            open(gate, "w").close()
            assert all(c.wait_result(t)["result"] is True for t in ids)
        finally:
            for p in runners:
                p.terminate()
                p.wait(30)


def test_a_runner_started_by_hand_with_concurrency_runs_that_many_tasks_at_once(tmp_path, pickles):
    gate = str(tmp_path / "gate")
    with Supervisor(tmp_path, workers=ONE_SLOT, spawn="none") as sup:
        c = sup.client
        runner = start_runner("py38", sup.zmq_endpoint, concurrency=3)
        try:
            wait_until(lambda: c.live_runners("py38"), what="the runner")
            assert c.live_runners("py38")[0]["slots"] == 3
            ids = [c.submit("py38", pickles["py38"]["wait_for_file"], kwargs={"path": gate}) for _ in range(4)]
            wait_until(lambda: sum(c.status(t) == "IN FLIGHT" for t in ids) == 3, what="three tasks in flight")
            assert c.live_runners("py38")[0]["state"] == "busy"
            open(gate, "w").close()
            assert all(c.wait_result(t)["result"] is True for t in ids)
        finally:
            runner.terminate()
            runner.wait(30)


def test_with_prefetch_a_runner_holds_a_queued_task_that_cancel_removes_before_it_runs(tmp_path, pickles):
    gate, order = str(tmp_path / "gate"), str(tmp_path / "order")
    workers = {"py38": {"python": "3.8", "interpreter": PYTHONS["py38"], "concurrency": 1, "prefetch": 1}}
    with Supervisor(tmp_path, workers=workers) as sup:
        c = sup.client
        assert c.live_runners("py38")[0]["prefetch"] == 1
        blocker = c.submit("py38", pickles["py38"]["wait_for_file"], kwargs={"path": gate})
        held = c.submit("py38", pickles["py38"]["mark"], kwargs={"path": order, "name": "held"})
        third = c.submit("py38", pickles["py38"]["mark"], kwargs={"path": order, "name": "third"})
        wait_until(lambda: c.status(held) == "IN FLIGHT", what="the prefetched task to be leased")
        assert c.status(blocker) == "IN FLIGHT" and c.status(third) == "NOT RUN YET"  # credit = 1 slot + 1
        assert c.request("DELETE", f"/api/v1/tasks/{held}").json()["status"] == "CANCELLED"
        open(gate, "w").close()
        assert c.wait_result(third)["result"] == "third"
        assert open(order).read().split() == ["third"], "the cancelled prefetched task never ran"
        assert c.status(held) == "CANCELLED"
