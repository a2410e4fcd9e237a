"""Bad input gets a JSON error with a fitting 4xx; nothing a client sends crashes the supervisor."""
import base64

import pytest


def assert_error(r, status, code=None):
    assert r.status == status, (r.status, r.body[:300])
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    assert body["error"]["message"]
    if code:
        assert body["error"]["code"] == code, body
    return body["error"]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_a_pickle_made_by_python_3_8_is_refused_for_py36_naming_both_versions(client, pickles):
    err = assert_error(client.post("/api/v1/tasks", {"worker": "py36", "function": b64(pickles["py38"]["add"])}),
                       422, "python_mismatch")
    assert "3.8" in err["message"] and "3.6" in err["message"]


def test_a_pickle_made_by_python_3_11_is_refused_for_py36_and_py38(client, pickles):
    for worker, version in (("py36", "3.6"), ("py38", "3.8")):
        err = assert_error(client.post("/api/v1/tasks", {"worker": worker, "function": b64(pickles["py311"]["add"])}),
                           422, "python_mismatch")
        assert version in err["message"] and "3.11" in err["message"], err


def test_a_mismatch_is_refused_in_multipart_batch_and_function_id_submits_too(client, pickles):
    assert_error(client.multipart("/api/v1/tasks", {"worker": "py36"}, {"function": pickles["py38"]["add"]}),
                 422, "python_mismatch")
    err = assert_error(client.post("/api/v1/tasks/batch", {"tasks": [
        {"worker": "py38", "function": b64(pickles["py38"]["add"])},
        {"worker": "py36", "function": b64(pickles["py38"]["add"])}]}), 422, "python_mismatch")
    assert "tasks[1]" in err["message"]
    fid = client.post("/api/v1/functions", {"function": b64(pickles["py38"]["add"])}).json()["function_id"]
    assert_error(client.post("/api/v1/tasks", {"worker": "py36", "function_id": fid}), 422, "python_mismatch")


def test_the_python_field_is_checked_against_the_worker(client, pickles):
    err = assert_error(client.post("/api/v1/tasks", {"worker": "py36", "python": "3.8",
                                                     "function": b64(pickles["py36"]["add"])}), 422)
    assert "3.8" in err["message"] and "3.6" in err["message"]
    ok = client.post("/api/v1/tasks", {"worker": "py36", "python": "3.6", "function": b64(pickles["py36"]["add"]),
                                       "kwargs": {"x": 1, "y": 2, "z": 3}})
    assert ok.status == 202
    assert client.wait_result(ok.json()["task_id"])["result"] == 6


def test_a_pickle_whose_python_cannot_be_told_is_accepted(client):
    import pickle
    # a protocol-2 pickle of a plain value carries no version evidence; the runner will fail to call it
    r = client.post("/api/v1/tasks", {"worker": "py36", "function": b64(pickle.dumps(42, protocol=2))})
    assert r.status == 202
    out = client.wait_result(r.json()["task_id"])
    assert out["status"] == "FAILED" and out["error"]["type"] == "TypeError"


def test_an_unknown_worker_is_422_listing_the_known_workers(client, pickles):
    err = assert_error(client.post("/api/v1/tasks", {"worker": "py27", "function": b64(pickles["py36"]["add"])}),
                       422, "unknown_worker")
    for name in ("py36", "py38", "py38_gpu"):
        assert name in err["message"]


@pytest.mark.parametrize("data, code", [
    (b"{not json", "invalid_json"),
    (b"[1, 2]", "invalid_body"),
    (b'"text"', "invalid_body"),
    (b"", "invalid_body"),
])
def test_a_body_that_is_not_a_json_object_is_400(client, data, code):
    assert_error(client.request("POST", "/api/v1/tasks", data=data), 400, code)


@pytest.mark.parametrize("spec, field", [
    ({"function": "AAAA"}, "worker"),
    ({"worker": 36, "function": "AAAA"}, "worker"),
    ({"worker": "py36"}, "function"),
    ({"worker": "py36", "function": "not base64!!"}, "base64"),
    ({"worker": "py36", "function": b64(b"these bytes are no pickle")}, "pickle"),
    ({"worker": "py36", "function": "", "kwargs": {}}, "function"),
    ({"worker": "py36", "kwargs": [1, 2]}, "kwargs"),
    ({"worker": "py36", "priority": "high"}, "priority"),
    ({"worker": "py36", "priority": True}, "priority"),
    ({"worker": "py36", "timeout_s": -1}, "timeout_s"),
    ({"worker": "py36", "max_retries": 1.5}, "max_retries"),
    ({"worker": "py36", "retry_on_error": "yes"}, "retry_on_error"),
    ({"worker": "py36", "labels": {"a": 1}}, "labels"),
    ({"worker": "py36", "python": 3.6}, "python"),
    ({"worker": "py36", "callback_url": "ftp://x"}, "callback_url"),
    ({"worker": "py36", "surprise": 1}, "surprise"),
    ({"worker": "py36", "function": "AAAA", "function_id": "sha256:00"}, "function"),
])
def test_each_wrong_field_is_a_400_naming_the_field(client, pickles, spec, field):
    if "function" not in spec and "function_id" not in spec and field != "function":
        spec = dict(spec, function=b64(pickles["py36"]["add"]))
    err = assert_error(client.post("/api/v1/tasks", spec), 400)
    assert field in err["message"], err


def test_an_oversize_body_is_413_with_the_limit(client):
    err = assert_error(client.request("POST", "/api/v1/tasks", data=b"x" * (3 * 1024 * 1024)), 413,
                       "payload_too_large")
    assert str(2 * 1024 * 1024) in err["message"]


@pytest.mark.parametrize("method, path, body", [
    ("POST", "/api/v1/tasks/status", {"task_id": "nope"}),
    ("POST", "/api/v1/tasks/result", {"task_id": "nope"}),
    ("GET", "/api/v1/tasks/nope", None),
    ("GET", "/api/v1/tasks/nope/result", None),
    ("GET", "/api/v1/tasks/nope/logs", None),
    ("DELETE", "/api/v1/tasks/nope", None),
])
def test_an_unknown_task_id_is_404(client, method, path, body):
    assert_error(client.request(method, path, body), 404, "task_not_found")


def test_unknown_routes_and_methods_are_json_404_and_405(client):
    assert_error(client.get("/api/v1/nothing-here"), 404, "not_found")
    assert_error(client.request("PUT", "/api/v1/tasks", {}), 405, "method_not_allowed")


def test_status_without_a_task_id_and_bad_wait_s_are_400(client):
    assert_error(client.post("/api/v1/tasks/status", {}), 400, "missing_task_id")
    assert_error(client.post("/api/v1/tasks/result", {"task_id": "x", "wait_s": "soon"}), 400, "invalid_field")
    assert_error(client.post("/api/v1/tasks/result", {"task_id": "x", "wait_s": -1}), 400, "invalid_field")
    assert_error(client.get("/api/v1/tasks?limit=0"), 400, "invalid_field")
    assert_error(client.get("/api/v1/tasks?status=DONEISH"), 400, "invalid_field")
    assert_error(client.get("/api/v1/tasks?before=unknown"), 400, "invalid_field")


def test_an_empty_or_bad_batch_is_400(client):
    assert_error(client.post("/api/v1/tasks/batch", {"tasks": []}), 400)
    assert_error(client.post("/api/v1/tasks/batch", {"tasks": "all"}), 400)
    assert_error(client.post("/api/v1/tasks/batch", {"tasks": [1]}), 400)


def test_the_supervisor_is_still_healthy_after_all_the_bad_input(client, pickles):
    assert client.get("/readyz").status == 200
    task_id = client.submit("py38", pickles["py38"]["add"], kwargs={"x": 1, "y": 2, "z": 3})
    assert client.wait_result(task_id)["result"] == 6
