"""The chaos checker in `make test`: 300 tasks, 6 runner and 6 supervisor kill -9s; nothing lost or doubled."""
import collections
import json

from tests.chaos.checker import classify, run_check
from tests.helpers import Response


def test_no_accepted_task_is_lost_or_recorded_twice_while_runners_and_the_supervisor_are_killed(tmp_path, capsys):
    report = run_check(tasks=300, runner_kills=6, supervisor_kills=6, workdir=str(tmp_path), rate=40)
    print(json.dumps(report, indent=2))
    assert report["tasks_accepted"] == 300
    assert report["faults"] == {"runner": 6, "supervisor": 6}
    assert report["end_log_lines"] >= 300, "the transition log the duplicate check reads is there"
    assert report["lost"] == 0, report["examples"]
    assert report["recorded_twice"] == 0, report["examples"]
    assert report["wrong_result"] == 0, report["examples"]
    assert report["done_once"] + report["failed"] == 300


def record(status, result=None, finished="2026-01-01T00:00:00.000Z", attempts=1):
    return Response(200, json.dumps({"status": status, "result": result, "finished_at": finished,
                                     "attempts": attempts}).encode(), {})


def test_the_classifier_flags_lost_doubled_changed_and_wrong_tasks():
    missing = Response(404, b"{}", {})
    accepted = {"ok": "t1", "gone": "t2", "stuck": "t3", "twice": "t4", "changed": "t5", "wrong": "t6"}
    first = {"ok": record("DONE", "t1"), "gone": missing, "stuck": record("IN FLIGHT"), "twice": record("DONE", "t4"),
             "changed": record("DONE", "t5"), "wrong": record("DONE", "t1")}
    second = dict(first, changed=record("DONE", "t5", attempts=2))
    classes, _, examples = classify(accepted, first, second, collections.Counter({"twice": 2, "ok": 1}))
    assert classes == {"done_once": 1, "lost": 2, "recorded_twice": 2, "wrong_result": 1}
    assert sorted(examples["lost"]) == ["gone", "stuck"] and sorted(examples["recorded_twice"]) == ["changed", "twice"]
