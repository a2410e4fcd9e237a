"""Submitting tasks every way the SPEC allows, and reading their status, result, record and logs."""
import base64
import json
import os
import sqlite3
import time

from tests.helpers import pid_alive, python_eval, wait_until


def test_a_py36_task_runs_in_python_3_6_and_a_py38_task_in_python_3_8(client, pickles):
    for worker, prefix in (("py36", "3.6."), ("py38", "3.8.")):
        task_id = client.submit(worker, pickles[worker]["version"])
        out = client.wait_result(task_id)
        assert out["status"] == "DONE", out
        assert out["result"].startswith(prefix), out


def test_submit_replies_202_with_the_id_and_NOT_RUN_YET_before_the_task_runs(client, pickles):
    r = client.post("/api/v1/tasks", {"worker": "py36", "kwargs": {"x": 1, "y": 2, "z": 3},
                                      "function": base64.b64encode(pickles["py36"]["add"]).decode()})
    assert r.status == 202
    body = r.json()
    assert set(body) == {"task_id", "status", "worker", "submitted_at"}
    assert body["status"] == "NOT RUN YET" and body["worker"] == "py36"
    assert client.wait_result(body["task_id"])["result"] == 6


def test_multipart_submit_with_a_function_file_and_form_fields_runs_the_task(client, pickles):
    r = client.multipart("/api/v1/tasks", {"worker": "py38", "kwargs": json.dumps({"x": 10, "y": 20, "z": 30}),
                                           "priority": "3", "labels": json.dumps({"team": "vision"})},
                         {"function": pickles["py38"]["add"]})
    assert r.status == 202, r.body
    task_id = r.json()["task_id"]
    assert client.wait_result(task_id)["result"] == 60
    rec = client.task(task_id)
    assert rec["priority"] == 3 and rec["labels"] == {"team": "vision"} and rec["kwargs"] == {"x": 10, "y": 20, "z": 30}


def test_status_goes_from_NOT_RUN_YET_to_IN_FLIGHT_to_DONE(client, pickles, tmp_path):
    # py38_gpu is configured but has no runner: a task for it stays NOT RUN YET
    waiting = client.submit("py38_gpu", pickles["py38"]["add"], unavailable_timeout_s=60)
    assert client.status(waiting) == "NOT RUN YET"
    client.request("DELETE", f"/api/v1/tasks/{waiting}")

    gate = str(tmp_path / "gate")
    task_id = client.submit("py38", pickles["py38"]["wait_for_file"], kwargs={"path": gate})
    wait_until(lambda: client.status(task_id) == "IN FLIGHT", what="IN FLIGHT")
    assert client.post("/api/v1/tasks/result", {"task_id": task_id}).status == 202
    open(gate, "w").close()
    wait_until(lambda: client.status(task_id) == "DONE", what="DONE")
    assert client.result(task_id)["result"] is True


def test_the_task_record_has_every_field_the_spec_names(client, pickles):
    task_id = client.submit("py36", pickles["py36"]["add"], kwargs={"x": 1, "y": 1, "z": 1},
                            labels={"run": "nightly"})
    client.wait_result(task_id)
    rec = client.task(task_id)
    for field in ("id", "worker", "status", "priority", "attempts", "runner", "kwargs", "labels", "submitted_at",
                  "started_at", "finished_at", "wait_s", "run_s", "latency_s", "result"):
        assert field in rec, field
    assert rec["status"] == "DONE" and rec["attempts"] == 1 and rec["runner"]
    assert rec["latency_s"] >= rec["wait_s"] >= 0 and rec["run_s"] >= 0
    assert rec["submitted_at"] <= rec["started_at"] <= rec["finished_at"]


def test_get_result_route_matches_the_post_one(client, pickles):
    task_id = client.submit("py38", pickles["py38"]["add"], kwargs={"x": 2, "y": 2, "z": 2})
    r = client.get(f"/api/v1/tasks/{task_id}/result?wait_s=30")
    assert r.status == 200 and r.json() == {"task_id": task_id, "status": "DONE", "result": 6}
    assert client.post("/api/v1/tasks/result", {"task_id": task_id}).json() == r.json()


def test_long_poll_returns_as_soon_as_the_task_ends_and_202_when_it_has_not(client, pickles):
    task_id = client.submit("py36", pickles["py36"]["sleep"], kwargs={"s": 0.5})
    r = client.post("/api/v1/tasks/result", {"task_id": task_id, "wait_s": 30})
    assert r.status == 200 and r.json()["result"] == 0.5
    slow = client.submit("py36", pickles["py36"]["sleep"], kwargs={"s": 30})
    r = client.post("/api/v1/tasks/result", {"task_id": slow, "wait_s": 0.3})
    assert r.status == 202 and r.json()["status"] in ("NOT RUN YET", "IN FLIGHT")
    assert client.request("DELETE", f"/api/v1/tasks/{slow}").status == 200


def test_a_result_that_is_not_json_comes_back_as_repr_and_dill(client, pickles):
    task_id = client.submit("py38", pickles["py38"]["not_json"])
    out = client.wait_result(task_id)
    assert out["status"] == "DONE" and out["result"] is None
    assert out["result_repr"] == "{1, 2, 3}"
    loaded = python_eval("py38", "import sys, base64, dill; print(sorted(dill.loads(base64.b64decode(sys.stdin.read()))))",
                         out["result_dill"].encode())
    assert loaded.strip() == "[1, 2, 3]"


def test_logs_hold_what_the_function_printed_to_stdout_and_stderr(client, pickles):
    task_id = client.submit("py36", pickles["py36"]["prints"])
    assert client.wait_result(task_id)["result"] == "printed"
    r = client.get(f"/api/v1/tasks/{task_id}/logs")
    assert r.status == 200
    logs = r.json()["logs"]
    for line in ("to stdout", "to stderr", "from C level"):
        assert line in logs, logs


def test_batch_submits_all_tasks_in_one_go(client, pickles):
    fn = base64.b64encode(pickles["py38"]["add"]).decode()
    specs = [{"worker": "py38", "function": fn, "kwargs": {"x": i, "y": 0, "z": 0}} for i in range(20)]
    r = client.post("/api/v1/tasks/batch", {"tasks": specs})
    assert r.status == 202
    ids = r.json()["task_ids"]
    assert len(ids) == 20 and len(set(ids)) == 20
    assert [client.wait_result(t)["result"] for t in ids] == list(range(20))


def count_rows(db: str, sql: str, *args) -> int:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return con.execute(sql, args).fetchone()[0]
    finally:
        con.close()


def test_a_batch_with_one_bad_spec_stores_nothing(client, pickles, supervisor):
    fn = base64.b64encode(pickles["py38"]["add"]).decode()
    before = count_rows(supervisor.db, "SELECT count(*) FROM tasks")
    r = client.post("/api/v1/tasks/batch", {"tasks": [{"worker": "py38", "function": fn},
                                                      {"worker": "py38", "function": fn, "priority": "high"}]})
    assert r.status == 400
    assert r.json()["error"]["message"].startswith("tasks[1]")
    assert count_rows(supervisor.db, "SELECT count(*) FROM tasks") == before


def test_a_function_is_stored_once_whichever_way_it_arrives(client, pickles, supervisor):
    fn = pickles["py36"]["add"]
    r = client.post("/api/v1/functions", {"function": base64.b64encode(fn).decode()})
    assert r.status in (200, 201)
    fid = r.json()["function_id"]
    assert fid.startswith("sha256:") and "3.6" in r.json()["python"]
    again = client.multipart("/api/v1/functions", {}, {"function": fn})
    assert again.status == 200 and again.json()["function_id"] == fid and again.json()["created"] is False
    by_bytes = client.submit("py36", fn, kwargs={"x": 1, "y": 2, "z": 3})
    by_id = client.post("/api/v1/tasks", {"worker": "py36", "function_id": fid, "kwargs": {"x": 4, "y": 5, "z": 6}})
    assert by_id.status == 202
    assert client.wait_result(by_bytes)["result"] == 6
    assert client.wait_result(by_id.json()["task_id"])["result"] == 15
    assert client.task(by_bytes)["function_id"] == fid
    assert count_rows(supervisor.db, "SELECT count(*) FROM functions WHERE hash = ?", fid) == 1


def test_list_is_newest_first_with_filters_and_a_cursor(client, pickles):
    ids = [client.submit("py38_gpu", pickles["py38"]["add"], unavailable_timeout_s=60) for _ in range(3)]
    first = client.get("/api/v1/tasks?worker=py38_gpu&status=NOT%20RUN%20YET&limit=2").json()
    assert [t["id"] for t in first["tasks"]] == ids[::-1][:2]
    second = client.get(f"/api/v1/tasks?worker=py38_gpu&status=NOT%20RUN%20YET&limit=2&before={first['next_before']}")
    assert [t["id"] for t in second.json()["tasks"]] == [ids[0]]
    for t in ids:
        client.request("DELETE", f"/api/v1/tasks/{t}")
    cancelled = client.get("/api/v1/tasks?worker=py38_gpu&status=CANCELLED&limit=1000").json()["tasks"]
    assert set(ids) <= {t["id"] for t in cancelled}
    assert all(t["status"] == "CANCELLED" for t in cancelled)


def test_cancelling_a_queued_task_is_immediate_and_a_second_cancel_is_409(client, pickles):
    task_id = client.submit("py38_gpu", pickles["py38"]["add"], unavailable_timeout_s=60)
    r = client.request("DELETE", f"/api/v1/tasks/{task_id}")
    assert r.status == 200 and r.json()["status"] == "CANCELLED"
    assert client.status(task_id) == "CANCELLED"
    again = client.request("DELETE", f"/api/v1/tasks/{task_id}")
    assert again.status == 409 and again.json()["error"]["code"] == "already_ended"


def test_cancelling_a_running_task_kills_its_process_on_the_runner(client, pickles, tmp_path, supervisor):
    pid_file = str(tmp_path / "pid")
    runner_pids = {r["pid"] for r in client.live_runners("py38")}
    task_id = client.submit("py38", pickles["py38"]["pid_then_sleep"], kwargs={"path": pid_file, "s": 120})
    wait_until(lambda: os.path.exists(pid_file), what="the task to start")
    pid = int(open(pid_file).read())
    assert pid_alive(pid)
    r = client.request("DELETE", f"/api/v1/tasks/{task_id}")
    assert r.status == 200
    wait_until(lambda: not pid_alive(pid), what="the task's process to die")
    wait_until(lambda: client.status(task_id) == "CANCELLED", what="CANCELLED")
    assert client.result(task_id, wait_s=0)["status"] == "CANCELLED"
    # the runner itself survived and still serves tasks
    assert {r["pid"] for r in client.live_runners("py38")} == runner_pids
    assert client.wait_result(client.submit("py38", pickles["py38"]["add"], kwargs={"x": 1, "y": 1, "z": 1}))["result"] == 3


def test_workers_lists_every_configured_worker_with_runners_and_resources(client):
    workers = client.workers()
    assert set(workers) == {"py36", "py38", "py38_gpu"}
    assert workers["py38_gpu"]["runners"] == [] and workers["py38_gpu"]["live_runners"] == 0
    for name, prefix in (("py36", "3.6."), ("py38", "3.8.")):
        w = workers[name]
        assert w["python"] == prefix[:-1] and w["live_runners"] >= 1
        runner = [r for r in w["runners"] if r["state"] != "lost"][0]
        assert runner["python"].startswith(prefix) and runner["slots"] == 2
        assert runner["state"] in ("idle", "busy") and runner["pid"] > 0 and runner["host"]
        wait_until(lambda: client.live_runners(name)[0]["memory_total_bytes"], what="resource figures")
        runner = client.live_runners(name)[0]
        assert runner["rss_bytes"] > 0 and runner["disk_total_bytes"] > 0 and runner["load1"] is not None
    posted = client.post("/api/v1/workers/status").json()["workers"]
    assert [w["name"] for w in posted] == [w["name"] for w in client.get("/api/v1/workers").json()["workers"]]


def test_a_task_for_a_worker_with_no_runner_fails_WorkerUnavailable_after_its_wait(client, pickles):
    task_id = client.submit("py38_gpu", pickles["py38"]["add"], unavailable_timeout_s=0.5)
    out = client.wait_result(task_id)
    assert out["status"] == "FAILED" and out["error"]["type"] == "WorkerUnavailable"
    assert "py38_gpu" in out["error"]["message"] and "0.5" in out["error"]["message"]


def test_health_readiness_and_openapi_cover_the_spec(client):
    assert client.get("/healthz").json()["status"] == "ok"
    ready = client.get("/readyz").json()
    assert ready["ready"] is True and ready["zmq_endpoint"].startswith("tcp://127.0.0.1:")
    doc = client.get("/api/v1/openapi.json").json()
    assert doc["openapi"].startswith("3.")
    for path, method in [("/api/v1/tasks", "post"), ("/api/v1/tasks/batch", "post"), ("/api/v1/tasks/status", "post"),
                         ("/api/v1/tasks/result", "post"), ("/api/v1/tasks/{task_id}", "get"),
                         ("/api/v1/tasks/{task_id}", "delete"), ("/api/v1/tasks/{task_id}/result", "get"),
                         ("/api/v1/tasks/{task_id}/logs", "get"), ("/api/v1/tasks", "get"),
                         ("/api/v1/workers", "get"), ("/api/v1/workers/status", "post"),
                         ("/api/v1/functions", "post"), ("/healthz", "get"), ("/readyz", "get")]:
        assert method in doc["paths"].get(path, {}), (method, path)


def test_a_function_evicted_from_the_childs_cache_is_sent_again(client):
    from tests.helpers import make_pickles
    sources = {f"f{i}": f"def run():\n    return {i}\n" for i in range(135)}  # more than the child keeps (128)
    fns = make_pickles(sources, "py38")
    ids = [client.submit("py38", fns[f"f{i}"]) for i in range(135)]
    assert [client.wait_result(t)["result"] for t in ids] == list(range(135))
    again = client.submit("py38", fns["f0"])  # long evicted by now, on either slot
    assert client.wait_result(again)["result"] == 0
