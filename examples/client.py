"""A small Python client for the supervisor: standard library (plus dill to pickle), Python 3.6 and newer.

Use it from the interpreter your function needs, so the pickle matches its worker:

    from client import Client            # examples/client.py, copy it next to your code
    sup = Client("http://localhost:8081", token=None)

    def run(x, y, z):
        return x + y + z

    task_id = sup.submit(run, worker="py36", kwargs={"x": 1, "y": 2, "z": 3})
    print(sup.result(task_id, wait_s=60))    # -> 6, or raises TaskFailed with the remote traceback

Run it as a script for a demo:  .venvs/py36/bin/python examples/client.py http://localhost:8081 py36
"""
import base64
import json
import sys
import time
import urllib.error
import urllib.request

ENDED = ("DONE", "FAILED", "CANCELLED")


class SupervisorError(Exception):
    """The supervisor answered with an error: .status (HTTP), .code and .message from its JSON body."""

    def __init__(self, status, code, message):
        Exception.__init__(self, "%s %s: %s" % (status, code, message))
        self.status, self.code, self.message = status, code, message


class TaskFailed(Exception):
    """The task ended FAILED (or CANCELLED): .error has type, message and the remote traceback."""

    def __init__(self, task_id, status, error):
        error = error or {}
        Exception.__init__(self, "task %s %s: %s: %s\n%s" % (task_id, status, error.get("type"), error.get("message"),
                                                            error.get("traceback", "")))
        self.task_id, self.status, self.error = task_id, status, error


class Client(object):
    def __init__(self, base_url="http://localhost:8081", token=None, timeout=330.0):
        self.base = base_url.rstrip("/")
        self.token = token
        self.timeout = timeout

    # -- HTTP -------------------------------------------------------------
    def _call(self, method, path, body=None):
        data = json.dumps(body).encode("utf-8") if body is not None else None
        req = urllib.request.Request(self.base + path, data=data, method=method)
        req.add_header("Content-Type", "application/json")
        if self.token:
            req.add_header("Authorization", "Bearer " + self.token)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return resp.status, json.loads(resp.read().decode("utf-8"))
        except urllib.error.HTTPError as exc:
            try:
                err = json.loads(exc.read().decode("utf-8"))["error"]
            except (ValueError, KeyError, TypeError):
                err = {"code": "http_error", "message": str(exc)}
            raise SupervisorError(exc.code, err.get("code"), err.get("message"))

    # -- tasks ------------------------------------------------------------
    def submit(self, fn, worker, kwargs=None, **options):
        """Pickle fn with dill (recurse=True) in this interpreter and submit it; returns the task id.

        options: priority, timeout_s, max_retries, retry_on_error, unavailable_timeout_s, callback_url, labels.
        """
        import dill
        body = dict(options, worker=worker, kwargs=kwargs or {},
                    function=base64.b64encode(dill.dumps(fn, recurse=True)).decode("ascii"),
                    python="%d.%d" % sys.version_info[:2])
        return self._call("POST", "/api/v1/tasks", body)[1]["task_id"]

    def submit_many(self, fn, worker, kwargs_list, **options):
        """One task per kwargs dict, in one all-or-nothing batch; returns the task ids in order."""
        import dill
        function = base64.b64encode(dill.dumps(fn, recurse=True)).decode("ascii")
        python = "%d.%d" % sys.version_info[:2]
        specs = [dict(options, worker=worker, kwargs=kw, function=function, python=python) for kw in kwargs_list]
        return self._call("POST", "/api/v1/tasks/batch", {"tasks": specs})[1]["task_ids"]

    def status(self, task_id):
        return self._call("POST", "/api/v1/tasks/status", {"task_id": task_id})[1]["status"]

    def task(self, task_id):
        """The whole record (GET /api/v1/tasks/{id})."""
        return self._call("GET", "/api/v1/tasks/" + task_id)[1]

    def result(self, task_id, wait_s=60.0):
        """The task's result, waiting up to wait_s (long-polls of at most 300 s). Raises TaskFailed if it
        FAILED or was CANCELLED, and TimeoutError if it has not ended in time. A result that is not JSON comes
        back unpickled with dill (from result_dill), so call this from the worker's Python for those."""
        deadline = time.time() + wait_s
        while True:
            left = max(0.0, min(300.0, deadline - time.time()))
            body = self._call("POST", "/api/v1/tasks/result", {"task_id": task_id, "wait_s": left})[1]
            if body["status"] == "DONE":
                if body.get("result_dill"):
                    import dill
                    return dill.loads(base64.b64decode(body["result_dill"]))
                return body.get("result")
            if body["status"] in ENDED:
                raise TaskFailed(task_id, body["status"], body.get("error"))
            if time.time() >= deadline:
                raise TimeoutError("task %s is still %s after %ss" % (task_id, body["status"], wait_s))

    def logs(self, task_id):
        return self._call("GET", "/api/v1/tasks/%s/logs" % task_id)[1]["logs"]

    def cancel(self, task_id):
        """Cancel a queued or running task; returns its status (409 SupervisorError if it had ended)."""
        return self._call("DELETE", "/api/v1/tasks/" + task_id)[1]["status"]

    def workers(self):
        return self._call("GET", "/api/v1/workers")[1]["workers"]


def _demo(argv):
    base = argv[1] if len(argv) > 1 else "http://localhost:8081"
    worker = argv[2] if len(argv) > 2 else "py%d%d" % sys.version_info[:2]
    sup = Client(base, token=argv[3] if len(argv) > 3 else None)

    def run(x, y, z):
        import sys
        return {"sum": x + y + z, "python": "%d.%d" % sys.version_info[:2]}

    task_id = sup.submit(run, worker, kwargs={"x": 1, "y": 2, "z": 3})
    print(json.dumps(sup.result(task_id, wait_s=60)))
    return 0


if __name__ == "__main__":
    sys.exit(_demo(sys.argv))
