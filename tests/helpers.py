"""Test helpers: start a real supervisor process, talk to it over HTTP, poll with deadlines."""
import base64
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENVS = os.path.join(REPO, ".venvs")
SUPERVISOR_PYTHON = os.path.join(VENVS, "supervisor", "bin", "python")
PYTHONS = {"py36": os.path.join(VENVS, "py36", "bin", "python"), "py38": os.path.join(VENVS, "py38", "bin", "python"),
           "py311": SUPERVISOR_PYTHON}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate, timeout: float = 20.0, interval: float = 0.02, what: str = "condition"):
    """Poll predicate until it returns a truthy value; fail the test at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


class Response:
    def __init__(self, status: int, body: bytes, headers):
        self.status, self.body, self.headers = status, body, headers

    def json(self):
        return json.loads(self.body)


class Client:
    """A small synchronous HTTP client for the supervisor's API."""

    def __init__(self, base: str, token: str | None = None):
        self.base = base
        self.token = token

    def request(self, method: str, path: str, body=None, data: bytes | None = None,
                content_type: str = "application/json", timeout: float = 60) -> Response:
        if body is not None:
            data = json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", content_type)
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return Response(r.status, r.read(), r.headers)
        except urllib.error.HTTPError as e:
            return Response(e.code, e.read(), e.headers)

    def get(self, path: str) -> Response:
        return self.request("GET", path)

    def post(self, path: str, body=None, **kw) -> Response:
        return self.request("POST", path, body, **kw)

    def multipart(self, path: str, fields: dict, files: dict) -> Response:
        boundary = uuid.uuid4().hex
        parts = []
        for name, value in fields.items():
            parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
        for name, content in files.items():
            parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{name}.pkl"\r\n'
                         f'Content-Type: application/octet-stream\r\n\r\n'.encode() + content + b"\r\n")
        data = b"".join(parts) + f"--{boundary}--\r\n".encode()
        return self.request("POST", path, data=data, content_type=f"multipart/form-data; boundary={boundary}")

    # -- task shortcuts --------------------------------------------------
    def submit(self, worker: str, function: bytes, expect: int = 202, **spec) -> str | Response:
        r = self.post("/api/v1/tasks", {"worker": worker, "function": base64.b64encode(function).decode(), **spec})
        assert r.status == expect, (r.status, r.body[:500])
        return r.json()["task_id"] if expect == 202 else r

    def result(self, task_id: str, wait_s: float = 30) -> dict:
        r = self.post("/api/v1/tasks/result", {"task_id": task_id, "wait_s": wait_s})
        assert r.status in (200, 202), (r.status, r.body)
        return r.json()

    def wait_result(self, task_id: str, timeout: float = 60) -> dict:
        return wait_until(lambda: (lambda r: r if r["status"] in ("DONE", "FAILED", "CANCELLED") else None)(
            self.result(task_id, wait_s=2)), timeout, what=f"task {task_id} to end")

    def task(self, task_id: str) -> dict:
        r = self.get(f"/api/v1/tasks/{task_id}")
        assert r.status == 200, (r.status, r.body)
        return r.json()

    def status(self, task_id: str) -> str:
        return self.post("/api/v1/tasks/status", {"task_id": task_id}).json()["status"]

    def workers(self) -> dict:
        return {w["name"]: w for w in self.get("/api/v1/workers").json()["workers"]}

    def live_runners(self, worker: str) -> list[dict]:
        return [r for r in self.workers()[worker]["runners"] if r["state"] != "lost"]


def write_config(path: str, workers: dict, **settings) -> str:
    """A TOML config with the given workers ({name: {python, interpreter, concurrency}}) and settings."""
    lines = []
    for key, value in settings.items():
        lines.append(f"{key} = {json.dumps(value)}")
    for name, conf in workers.items():
        lines.append(f"[workers.{name}]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in conf.items()]
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


DEFAULT_WORKERS = {
    "py36": {"python": "3.6", "interpreter": PYTHONS["py36"], "concurrency": 2},
    "py38": {"python": "3.8", "interpreter": PYTHONS["py38"], "concurrency": 2},
}
FAST = {"heartbeat_s": 0.2, "liveness": 3, "retry_backoff_s": 0.05, "retry_backoff_max_s": 0.5, "drain_s": 10.0}


class Supervisor:
    """One real supervisor process (python -m supervisor serve) on a free port with its own SQLite file."""

    def __init__(self, tmp_path, workers=None, spawn="all", db=None, port=None, **settings):
        self.dir = str(tmp_path)
        self.port = port or free_port()
        self.db = db or os.path.join(self.dir, "supervisor.db")
        self.config = write_config(os.path.join(self.dir, f"supervisor-{self.port}.toml"),
                                   DEFAULT_WORKERS if workers is None else workers,
                                   **{**FAST, "zmq_bind": "tcp://127.0.0.1:*", **settings})
        self.spawn = spawn
        self.log_path = os.path.join(self.dir, f"supervisor-{self.port}.log")
        self.proc = None
        token = str(settings.get("api_tokens", "")).split(",")[0] or None
        self.client = Client(f"http://127.0.0.1:{self.port}", token=token)

    def start(self, wait_runners=True, extra_args=()):
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [SUPERVISOR_PYTHON, "-m", "supervisor", "serve", "--config", self.config, "--port", str(self.port),
             "--db", self.db, "--spawn", self.spawn, *extra_args],
            cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        try:
            wait_until(self._ready, 30, what="supervisor /readyz")
            if wait_runners and self.spawn != "none":
                spawned = self.spawned_workers()
                wait_until(lambda: all(self.client.live_runners(w) for w in spawned), 30, what="spawned runners")
        except BaseException:  # never leave a half-started supervisor (and its runners) behind
            self.stop()
            raise
        return self

    def spawned_workers(self) -> list[str]:
        if self.spawn == "all":
            return [w for w in self.client.workers()]
        return self.spawn.split(",") if self.spawn != "none" else []

    def _ready(self):
        if self.proc.poll() is not None:
            raise AssertionError(f"supervisor exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
        try:
            return self.client.get("/readyz").status == 200
        except OSError:
            return False

    @property
    def zmq_endpoint(self) -> str:
        return self.client.get("/readyz").json()["zmq_endpoint"]

    def log(self) -> str:
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def stop(self, sig=signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError(f"supervisor did not stop within {timeout}s after {sig!r}")

    def kill9(self):
        self.proc.kill()
        self.proc.wait()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def start_runner(worker: str, endpoint: str, concurrency: int = 1, heartbeat_s: float = 0.2, log_path=None):
    """A runner started by hand, as the README says: python runners/run.py --worker ... --connect ..."""
    out = open(log_path, "ab") if log_path else subprocess.DEVNULL
    proc = subprocess.Popen([PYTHONS[worker], "runners/run.py", "--worker", worker, "--connect", endpoint,
                             "--concurrency", str(concurrency), "--heartbeat-s", str(heartbeat_s)],
                            cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
    if log_path:
        out.close()
    return proc


def children_of(pid: int) -> list[int]:
    """Every descendant pid of pid (from /proc)."""
    kids = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            kids.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for child in kids.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def make_pickles(sources: dict, worker: str) -> dict:
    """{name: dill bytes of run} pickled by the worker's real interpreter."""
    out = subprocess.run([PYTHONS[worker], os.path.join(REPO, "tests", "pickle_maker.py")],
                         input=json.dumps(sources).encode(), capture_output=True, check=True, timeout=60)
    return {k: base64.b64decode(v) for k, v in json.loads(out.stdout).items()}


def python_eval(worker: str, code: str, stdin: bytes = b"") -> str:
    return subprocess.run([PYTHONS[worker], "-c", code], input=stdin, capture_output=True, check=True,
                          timeout=60).stdout.decode()
