"""examples/client.py, the small Python client, used from the workers' own interpreters (3.6 and 3.8)."""
import subprocess

import pytest

from tests.helpers import PYTHONS, REPO

SCRIPT = r'''
import sys, json
sys.path.insert(0, "examples")
from client import Client, TaskFailed, SupervisorError
sup = Client(sys.argv[1])
worker = sys.argv[2]

def helper(x, y):
    return x * y

def run(x, y, z):
    return helper(x, y) + z

def boom():
    raise KeyError("missing thing")

def as_set():
    return {1, 2}

out = {}
task_id = sup.submit(run, worker, kwargs={"x": 2, "y": 3, "z": 4}, labels={"via": "client"})
out["result"] = sup.result(task_id, wait_s=60)
out["status"] = sup.status(task_id)
out["labels"] = sup.task(task_id)["labels"]
out["many"] = [sup.result(t, 60) for t in sup.submit_many(run, worker, [{"x": i, "y": 1, "z": 0} for i in range(3)])]
try:
    sup.result(sup.submit(boom, worker), wait_s=60)
except TaskFailed as exc:
    out["failed"] = [exc.error["type"], "in boom" in exc.error["traceback"]]
out["set"] = sorted(sup.result(sup.submit(as_set, worker), wait_s=60))
try:
    sup.submit(run, "nope")
except SupervisorError as exc:
    out["error"] = [exc.status, exc.code]
print(json.dumps(out))
'''


@pytest.mark.parametrize("worker", ["py36", "py38"])
def test_the_python_client_runs_under_the_workers_interpreter(client, worker):
    r = subprocess.run([PYTHONS[worker], "-c", SCRIPT, client.base, worker], cwd=REPO, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    import json
    out = json.loads(r.stdout)
    assert out["result"] == 10 and out["status"] == "DONE" and out["labels"] == {"via": "client"}
    assert out["many"] == [0, 1, 2]
    assert out["failed"] == ["KeyError", True]
    assert out["set"] == [1, 2]
    assert out["error"] == [422, "unknown_worker"]
