"""API tokens (401 / 403 / 202) and ZeroMQ CURVE: only runners with an authorized key ever get a task."""
import os
import subprocess

from tests.helpers import PYTHONS, REPO, SUPERVISOR_PYTHON, Client, Supervisor, wait_until

PY38 = {"py38": {"python": "3.8", "interpreter": PYTHONS["py38"], "concurrency": 1}}


def test_with_a_token_configured_api_calls_need_it_and_health_stays_open(tmp_path, pickles):
    tokens = tmp_path / "tokens"
    tokens.write_text("# one per line\nfile-token\n")
    with Supervisor(tmp_path, workers=PY38, api_tokens="env-token,other", api_tokens_file=str(tokens)) as sup:
        base = sup.client.base
        anonymous = Client(base)
        r = anonymous.post("/api/v1/tasks", {"worker": "py38"})
        assert r.status == 401 and r.json()["error"]["code"] == "unauthorized"
        assert anonymous.get("/api/v1/workers").status == 401
        assert anonymous.get("/api/v1/openapi.json").status == 401
        assert anonymous.get("/healthz").status == 200 and anonymous.get("/readyz").status == 200
        assert anonymous.get("/metrics").status == 200  # metrics_auth is off by default

        wrong = Client(base, token="nope")
        r = wrong.post("/api/v1/tasks", {"worker": "py38"})
        assert r.status == 403 and r.json()["error"]["code"] == "forbidden"

        for token in ("env-token", "file-token"):
            good = Client(base, token=token)
            task_id = good.submit("py38", pickles["py38"]["add"], kwargs={"x": 1, "y": 2, "z": 3})
            assert good.wait_result(task_id)["result"] == 6


def test_metrics_can_require_the_token_too(tmp_path):
    with Supervisor(tmp_path, workers=PY38, spawn="none", api_tokens="t", metrics_auth=True) as sup:
        assert Client(sup.client.base).get("/metrics").status == 401
        assert Client(sup.client.base, token="t").get("/metrics").status == 200


def test_a_public_bind_without_tokens_logs_a_loud_warning(tmp_path):
    with Supervisor(tmp_path, workers=PY38, spawn="none", host="0.0.0.0") as sup:
        assert "NO API TOKEN" in sup.log()
    with Supervisor(tmp_path, workers=PY38, spawn="none") as sup:
        assert "NO API TOKEN" not in sup.log()


def runner(worker, endpoint, log_path, *curve_args):
    with open(log_path, "ab") as log:
        return subprocess.Popen([PYTHONS[worker], "runners/run.py", "--worker", worker, "--connect", endpoint,
                                 "--heartbeat-s", "0.2", *curve_args], cwd=REPO, stdout=log,
                                stderr=subprocess.STDOUT)


def test_with_curve_a_runner_with_a_wrong_or_no_key_gets_no_task_and_an_authorized_one_does(tmp_path, pickles):
    keys, rogue_keys = tmp_path / "keys", tmp_path / "rogue"
    subprocess.run([SUPERVISOR_PYTHON, "-m", "supervisor", "keys", "--out", str(keys), "--runners", "py38"],
                   cwd=REPO, check=True, capture_output=True)
    subprocess.run([SUPERVISOR_PYTHON, "-m", "supervisor", "keys", "--out", str(rogue_keys), "--runners", "py38"],
                   cwd=REPO, check=True, capture_output=True)
    server_public = str(keys / "supervisor.key")
    with Supervisor(tmp_path, workers=PY38, spawn="none", curve_secret_key=str(keys / "supervisor.key_secret"),
                    curve_authorized_keys=str(keys / "authorized")) as sup:
        c = sup.client
        endpoint = sup.zmq_endpoint
        rogue = runner("py38", endpoint, tmp_path / "rogue.log", "--curve-key",
                       str(rogue_keys / "runners" / "py38.key_secret"), "--curve-server-key", server_public)
        plain = runner("py38", endpoint, tmp_path / "plain.log")
        good = None
        try:
            task_id = c.submit("py38", pickles["py38"]["add"], kwargs={"x": 1, "y": 2, "z": 3})
            # both bad runners keep trying; meanwhile nothing registers and the task stays queued
            wait_until(lambda: "reconnecting" in open(tmp_path / "rogue.log").read(), 30, what="the rogue to retry")
            assert c.workers()["py38"]["runners"] == [] and c.status(task_id) == "NOT RUN YET"
            assert rogue.poll() is None and plain.poll() is None
            good = runner("py38", endpoint, tmp_path / "good.log", "--curve-key",
                          str(keys / "runners" / "py38.key_secret"), "--curve-server-key", server_public)
            assert c.wait_result(task_id)["result"] == 6
            (only,) = c.workers()["py38"]["runners"]
            assert only["pid"] == good.pid
        finally:
            for p in (rogue, plain, good):
                if p is not None:
                    p.kill()
                    p.wait()


class Booby:
    """Unpickling this runs a shell command: the supervisor must never do it."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def test_the_supervisor_never_unpickles_a_payload(client, tmp_path):
    import base64
    import pickle
    marker = tmp_path / "unpickled"
    payload = base64.b64encode(pickle.dumps(Booby(marker), protocol=2)).decode()
    # py38_gpu has no runner: only the supervisor ever sees these bytes
    r = client.post("/api/v1/tasks", {"worker": "py38_gpu", "function": payload, "unavailable_timeout_s": 60})
    assert r.status == 202
    assert client.post("/api/v1/functions", {"function": payload}).status in (200, 201)
    client.request("DELETE", f"/api/v1/tasks/{r.json()['task_id']}")
    assert not marker.exists()


def test_no_supervisor_module_calls_an_unpickler():
    import ast
    for folder in ("supervisor", "runners"):
        for name in os.listdir(os.path.join(REPO, folder)):
            if not name.endswith(".py") or (folder == "runners" and name != "pickleinfo.py"):
                continue
            tree = ast.parse(open(os.path.join(REPO, folder, name)).read())
            for node in ast.walk(tree):
                if isinstance(node, ast.Attribute) and node.attr in ("loads", "load", "Unpickler"):
                    owner = getattr(node.value, "id", "")
                    assert owner not in ("pickle", "dill", "cPickle", "_pickle"), f"{folder}/{name} calls {owner}.{node.attr}"
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    names = [a.name for a in node.names] + [getattr(node, "module", "") or ""]
                    assert "dill" not in names and "pickle" not in names, f"{folder}/{name} imports an unpickler"
