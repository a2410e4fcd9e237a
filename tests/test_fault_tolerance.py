"""The SPEC's guarantees, one behaviour at a time, with real processes killed, stopped and restarted."""
import os
import re
import signal
import sqlite3

from tests.helpers import PYTHONS, Supervisor, free_port, pid_alive, start_runner, wait_until

PY38 = {"py38": {"python": "3.8", "interpreter": PYTHONS["py38"], "concurrency": 1}}


def runner_of(client, task_id):
    rec = client.task(task_id)
    return next(r for r in client.live_runners("py38") if r["id"] == rec["runner"])


def slow_task_in_flight(client, pickles, s: float):
    """Submit a slow task and wait until it runs; returns its id and the runner running it."""
    task_id = client.submit("py38", pickles["py38"]["slow_pid"], kwargs={"s": s})
    wait_until(lambda: client.status(task_id) == "IN FLIGHT", what="IN FLIGHT")
    return task_id, runner_of(client, task_id)


def stop_all(procs):
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait(30)


def test_a_task_for_a_worker_without_runners_waits_and_runs_when_one_connects(tmp_path, pickles):
    with Supervisor(tmp_path, workers=PY38, spawn="none") as sup:
        c = sup.client
        task_id = c.submit("py38", pickles["py38"]["add"], kwargs={"x": 1, "y": 2, "z": 3})
        w = c.workers()["py38"]
        assert w["live_runners"] == 0 and w["queued"] == 1 and c.status(task_id) == "NOT RUN YET"
        runner = start_runner("py38", sup.zmq_endpoint)
        try:
            assert c.wait_result(task_id)["result"] == 6
        finally:
            stop_all([runner])


def test_the_configured_unavailable_timeout_fails_waiting_tasks_with_WorkerUnavailable(tmp_path, pickles):
    with Supervisor(tmp_path, workers=PY38, spawn="none", unavailable_timeout_s=0.5) as sup:
        out = sup.client.wait_result(sup.client.submit("py38", pickles["py38"]["add"]))
        assert out["error"]["type"] == "WorkerUnavailable"
        assert "'py38'" in out["error"]["message"] and "unavailable_timeout_s=0.5" in out["error"]["message"]


def test_a_killed_runners_task_goes_back_to_the_queue_and_runs_on_another_runner(tmp_path, pickles):
    with Supervisor(tmp_path, workers=PY38, spawn="none") as sup:
        c = sup.client
        runners = [start_runner("py38", sup.zmq_endpoint) for _ in range(2)]
        try:
            wait_until(lambda: len(c.live_runners("py38")) == 2, what="two runners")
            task_id, first = slow_task_in_flight(c, pickles, 1.0)
            os.kill(first["pid"], signal.SIGKILL)
            out = c.wait_result(task_id)
            rec = c.task(task_id)
            assert out["status"] == "DONE" and rec["attempts"] == 2 and rec["runner"] != first["id"]
            assert re.search(rf"task {task_id} attempt 1 .*-> NOT RUN YET \(requeue\).*was lost", sup.log())
        finally:
            stop_all(runners)


def test_a_task_whose_runner_is_lost_more_than_max_retries_times_fails_RunnerLost(tmp_path, pickles):
    with Supervisor(tmp_path, workers=PY38, spawn="none") as sup:
        c = sup.client
        runner = start_runner("py38", sup.zmq_endpoint)
        try:
            task_id = c.submit("py38", pickles["py38"]["slow_pid"], kwargs={"s": 30}, max_retries=0)
            wait_until(lambda: c.status(task_id) == "IN FLIGHT", what="IN FLIGHT")
            runner.kill()
            out = c.wait_result(task_id)
            assert out["status"] == "FAILED" and out["error"]["type"] == "RunnerLost"
            assert "max_retries=0" in out["error"]["message"]
        finally:
            stop_all([runner])


def test_retry_on_error_reruns_a_raising_task_with_exponential_backoff(tmp_path, pickles):
    with Supervisor(tmp_path, workers=PY38, retry_backoff_s=0.1, retry_backoff_max_s=10) as sup:
        c = sup.client
        task_id = c.submit("py38", pickles["py38"]["boom"], kwargs={"x": 1}, retry_on_error=True, max_retries=2)
        out = c.wait_result(task_id)
        assert out["status"] == "FAILED" and out["error"]["type"] == "ValueError"
        assert c.task(task_id)["attempts"] == 3
        delays = [float(d) for d in re.findall(rf"task {task_id} .*\(requeue\).* delay_s=([0-9.]+)", sup.log())]
        assert delays == [0.1, 0.2]


def test_a_late_result_from_a_stopped_runner_is_dropped_not_recorded_over_the_new_attempt(tmp_path, pickles):
    with Supervisor(tmp_path, workers=PY38, spawn="none") as sup:
        c = sup.client
        runners = [start_runner("py38", sup.zmq_endpoint) for _ in range(2)]
        try:
            wait_until(lambda: len(c.live_runners("py38")) == 2, what="two runners")
            task_id, stopped = slow_task_in_flight(c, pickles, 1.5)
            os.kill(stopped["pid"], signal.SIGSTOP)  # its child keeps running; the runner goes silent
            try:
                out = c.wait_result(task_id)
            finally:
                os.kill(stopped["pid"], signal.SIGCONT)
            rec = c.task(task_id)
            assert out["status"] == "DONE" and rec["attempts"] == 2 and rec["runner"] != stopped["id"]
            # the stopped runner comes back and sends attempt 1's result: logged and dropped
            wait_until(lambda: f"task {task_id} attempt 1: dropping a stale" in sup.log(), what="the stale result")
            assert c.task(task_id)["result"] == out["result"] and c.task(task_id)["attempts"] == 2
            wait_until(lambda: len(c.live_runners("py38")) == 2, what="the stopped runner to re-register")
        finally:
            stop_all(runners)


def test_after_kill_9_of_the_supervisor_running_tasks_finish_once_and_are_not_dispatched_again(tmp_path, pickles):
    zmq_port = free_port()
    sup = Supervisor(tmp_path, workers=PY38, spawn="none", zmq_bind=f"tcp://127.0.0.1:{zmq_port}").start()
    runners = [start_runner("py38", sup.zmq_endpoint, concurrency=2) for _ in range(2)]
    try:
        c = sup.client
        wait_until(lambda: len(c.live_runners("py38")) == 2, what="two runners")
        running = [c.submit("py38", pickles["py38"]["slow_pid"], kwargs={"s": 1.0}) for _ in range(4)]
        queued = [c.submit("py38", pickles["py38"]["add"], kwargs={"x": i, "y": 0, "z": 0}) for i in range(6)]
        wait_until(lambda: all(c.status(t) == "IN FLIGHT" for t in running), what="four tasks in flight")
        sup.kill9()
        # the runners finish while no supervisor listens, and keep the results
        sup.start(wait_runners=False)
        for t in running:
            out = c.wait_result(t)
            assert out["status"] == "DONE" and c.task(t)["attempts"] == 1, c.task(t)
        assert [c.wait_result(t)["result"] for t in queued] == list(range(6))
        done_lines = re.findall(r"task (\w+) attempt \d+ .*-> DONE", sup.log())
        assert sorted(done_lines) == sorted(running + queued), "each task recorded DONE exactly once"
    finally:
        sup.stop()
        stop_all(runners)


def test_sigterm_stops_intake_lets_running_tasks_finish_and_exits_cleanly(tmp_path, pickles):
    gate = str(tmp_path / "gate")
    sup = Supervisor(tmp_path, workers=PY38, drain_s=60).start()
    c = sup.client
    task_id = c.submit("py38", pickles["py38"]["wait_for_file"], kwargs={"path": gate})
    wait_until(lambda: c.status(task_id) == "IN FLIGHT", what="IN FLIGHT")
    sup.proc.send_signal(signal.SIGTERM)
    refused = wait_until(lambda: (lambda r: r if r.status == 503 else None)(
        c.post("/api/v1/tasks", {"worker": "py38", "function": "AAAA"})), what="503 while draining")
    assert refused.json()["error"]["code"] == "shutting_down"
    assert c.get("/readyz").status == 503
    assert c.status(task_id) == "IN FLIGHT" and sup.proc.poll() is None
    open(gate, "w").close()
    assert sup.proc.wait(30) == 0
    con = sqlite3.connect(sup.db)
    assert con.execute("SELECT status, result FROM tasks WHERE id=?", (task_id,)).fetchone() == ("DONE", "true")
    con.close()


def test_sigterm_to_a_runner_finishes_its_current_task_then_exits_and_it_gets_no_new_ones(tmp_path, pickles):
    gate = str(tmp_path / "gate")
    with Supervisor(tmp_path, workers=PY38, spawn="none") as sup:
        c = sup.client
        runner = start_runner("py38", sup.zmq_endpoint)
        try:
            first = c.submit("py38", pickles["py38"]["wait_for_file"], kwargs={"path": gate})
            wait_until(lambda: c.status(first) == "IN FLIGHT", what="IN FLIGHT")
            runner.send_signal(signal.SIGTERM)
            wait_until(lambda: c.live_runners("py38") and c.live_runners("py38")[0]["draining"], what="draining")
            second = c.submit("py38", pickles["py38"]["add"], kwargs={"x": 1, "y": 1, "z": 1})
            assert runner.poll() is None and c.status(first) == "IN FLIGHT"
            open(gate, "w").close()
            assert runner.wait(30) == 0
            assert c.result(first, wait_s=10)["result"] is True
            assert c.status(second) == "NOT RUN YET"  # never given to the draining runner
            replacement = start_runner("py38", sup.zmq_endpoint)
            assert c.wait_result(second)["result"] == 3
            stop_all([replacement])
        finally:
            stop_all([runner])


def test_a_task_that_keeps_crashing_its_process_is_quarantined_with_every_crash_recorded(tmp_path, pickles):
    with Supervisor(tmp_path, workers=PY38) as sup:  # the default poison_crashes = 3
        c = sup.client
        runner_pid = c.live_runners("py38")[0]["pid"]
        task_id = c.submit("py38", pickles["py38"]["segfault"], max_retries=10)
        out = c.wait_result(task_id)
        assert out["error"]["type"] == "ProcessDied" and "quarantined after 3 crashes" in out["error"]["message"]
        crashes = c.task(task_id)["crashes"]
        assert [x["attempt"] for x in crashes] == [1, 2, 3]
        assert all(x["signal"] == "SIGSEGV" and x["exit_code"] == -11 and x["runner"] and x["at"] for x in crashes)
        assert pid_alive(runner_pid) and c.live_runners("py38")[0]["pid"] == runner_pid
