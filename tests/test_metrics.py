"""GET /metrics: counters and histograms move as tasks run, fail and get re-queued; runner resources appear;
history counters survive a restart."""
import os
import signal

from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import PYTHONS, Supervisor, wait_until

WORKERS = {"py36": {"python": "3.6", "interpreter": PYTHONS["py36"], "concurrency": 2},
           "py38": {"python": "3.8", "interpreter": PYTHONS["py38"], "concurrency": 2}}


def scrape(client) -> dict:
    """{(sample name, frozenset(labels)): value}"""
    r = client.get("/metrics")
    assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain")
    out = {}
    for family in text_string_to_metric_families(r.body.decode()):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(samples, name, **labels):
    return samples.get((name, frozenset(labels.items())), 0.0)


def total(samples, name, **labels):
    return sum(v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= set(ls))


def test_counters_and_histograms_move_as_tasks_run_fail_and_are_rejected(tmp_path, pickles):
    with Supervisor(tmp_path, workers=WORKERS) as sup:
        c = sup.client
        before = scrape(c)
        ok = [c.submit("py38", pickles["py38"]["add"], kwargs={"x": 1, "y": 1, "z": 1}) for _ in range(3)]
        bad = c.submit("py36", pickles["py36"]["boom"], kwargs={"x": 1})
        for t in ok + [bad]:
            c.wait_result(t)
        c.submit("py36", pickles["py38"]["add"], expect=422)
        c.post("/api/v1/tasks", {"worker": "nope"})
        after = scrape(c)
        assert value(after, "supervisor_tasks_submitted_total", worker="py38") - \
            value(before, "supervisor_tasks_submitted_total", worker="py38") == 3
        assert value(after, "supervisor_tasks_finished_total", worker="py38", status="DONE") == 3
        assert value(after, "supervisor_tasks_finished_total", worker="py36", status="FAILED") == 1
        assert value(after, "supervisor_task_failures_total", worker="py36", error_type="ValueError") == 1
        assert value(after, "supervisor_submissions_rejected_total", reason="python_mismatch") == 1
        assert value(after, "supervisor_submissions_rejected_total", reason="unknown_worker") == 1
        for hist in ("supervisor_task_wait_seconds", "supervisor_task_run_seconds", "supervisor_task_latency_seconds"):
            assert value(after, f"{hist}_count", worker="py38") == 3, hist
            assert value(after, f"{hist}_sum", worker="py38") > 0, hist
        assert total(after, "supervisor_http_request_duration_seconds_count", route="/api/v1/tasks",
                     method="POST", status="202") == 4
        assert total(after, "supervisor_http_request_duration_seconds_count", route="/api/v1/tasks",
                     method="POST", status="422") == 2
        for method in ("PROPFIND", "MKCOL", "LOCK"):  # methods no route has share one label value
            assert c.request(method, "/api/v1/tasks").status == 405
        odd = scrape(c)
        assert total(odd, "supervisor_http_request_duration_seconds_count", route="unmatched",
                     method="other", status="405") == 3
        assert not [ls for (_, ls) in odd if ("method", "PROPFIND") in ls]
        assert value(after, "supervisor_sqlite_write_seconds_count") > value(before, "supervisor_sqlite_write_seconds_count")
        assert value(after, "process_resident_memory_bytes") > 0
        assert value(after, "supervisor_runners", worker="py36", state="idle") + \
            value(after, "supervisor_runners", worker="py36", state="busy") == 1
        assert value(after, "supervisor_runner_slots", worker="py38") == 2


def test_queue_in_flight_requeues_and_runner_losses_are_counted(tmp_path, pickles):
    gate = str(tmp_path / "gate")
    with Supervisor(tmp_path, workers=WORKERS) as sup:
        c = sup.client
        held = [c.submit("py38", pickles["py38"]["wait_for_file"], kwargs={"path": gate}) for _ in range(3)]
        wait_until(lambda: value(scrape(c), "supervisor_tasks_in_flight", worker="py38") == 2, what="2 in flight")
        s = scrape(c)
        assert value(s, "supervisor_tasks_queued", worker="py38") == 1
        assert value(s, "supervisor_runner_slots_busy", worker="py38") == 2
        assert value(s, "supervisor_runners", worker="py38", state="busy") == 1
        (runner,) = c.live_runners("py38")
        os.kill(runner["pid"], signal.SIGKILL)
        wait_until(lambda: value(scrape(c), "supervisor_runners_lost_total", worker="py38") == 1, what="runner lost")
        wait_until(lambda: value(scrape(c), "supervisor_tasks_requeued_total", worker="py38") == 2, what="2 requeued")
        open(gate, "w").close()
        for t in held:
            assert c.wait_result(t)["status"] == "DONE"


def test_runner_resource_figures_appear_as_metrics(tmp_path):
    with Supervisor(tmp_path, workers=WORKERS) as sup:
        c = sup.client
        names = ("supervisor_runner_host_cpu_percent", "supervisor_runner_host_load1",
                 "supervisor_runner_host_memory_used_bytes", "supervisor_runner_host_memory_total_bytes",
                 "supervisor_runner_host_disk_total_bytes", "supervisor_runner_host_disk_used_bytes",
                 "supervisor_runner_rss_bytes", "supervisor_runner_heartbeat_age_seconds")

        def all_present():
            s = scrape(c)
            return all(any(n == name and ("worker", w) in ls for (n, ls) in s) for name in names
                       for w in ("py36", "py38")) and s
        s = wait_until(all_present, what="every resource figure of both runners (CPU needs two heartbeats)")
        assert 0 <= total(s, "supervisor_runner_host_cpu_percent", worker="py38") <= 100
        rss = total(s, "supervisor_runner_rss_bytes", worker="py36")
        assert 1_000_000 < rss < 500_000_000


def test_history_counters_survive_a_restart(tmp_path, pickles):
    sup = Supervisor(tmp_path, workers=WORKERS).start()
    try:
        c = sup.client
        for t in [c.submit("py36", pickles["py36"]["add"], kwargs={"x": 1, "y": 1, "z": 1}) for _ in range(2)]:
            c.wait_result(t)
        c.wait_result(c.submit("py36", pickles["py36"]["boom"], kwargs={"x": 1}))
        sup.stop()
        sup.start()
        s = scrape(c)
        assert value(s, "supervisor_tasks_submitted_total", worker="py36") == 3
        assert value(s, "supervisor_tasks_finished_total", worker="py36", status="DONE") == 2
        assert value(s, "supervisor_task_failures_total", worker="py36", error_type="ValueError") == 1
    finally:
        sup.stop()
