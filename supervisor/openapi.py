"""The OpenAPI 3 document of the HTTP API (served at /api/v1/openapi.json)."""
from supervisor import tasks


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict, description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


ERRORS = {str(code): _json(_ref("Error"), text) for code, text in (
    (400, "malformed request"), (404, "unknown task or route"), (413, "body larger than max_body_bytes"),
    (422, "unknown worker or function, or a pickle made by another Python"), (503, "the supervisor is stopping"))}


def _op(summary: str, responses: dict, body: dict | None = None, params: list | None = None) -> dict:
    op = {"summary": summary, "responses": {**responses, **{k: v for k, v in ERRORS.items() if k not in responses}}}
    if body is not None:
        op["requestBody"] = {"required": True, "content": body}
    if params:
        op["parameters"] = params
    return op


def document(workers: list[str]) -> dict:
    task_id_body = {"application/json": {"schema": {
        "type": "object", "required": ["task_id"], "properties": {"task_id": {"type": "string"}}}}}
    result_body = {"application/json": {"schema": {
        "type": "object", "required": ["task_id"],
        "properties": {"task_id": {"type": "string"}, "wait_s": {"type": "number", "minimum": 0}}}}}
    path_id = {"name": "task_id", "in": "path", "required": True, "schema": {"type": "string"}}
    spec_body = {"application/json": {"schema": _ref("TaskSpec")},
                 "multipart/form-data": {"schema": _ref("TaskSpecForm")}}
    result_responses = {"200": _json(_ref("Result"), "the task ended"),
                        "202": _json(_ref("Status"), "not ended yet")}
    return {
        "openapi": "3.0.3",
        "info": {"title": "supervisor", "version": "1.0.0",
                 "description": "Interpreter-pinned task scheduler: submit dill-pickled functions to a worker "
                                "(a pinned Python environment) and read their status and result."},
        "servers": [{"url": "/"}],
        "paths": {
            "/api/v1/tasks": {
                "post": _op("Submit a task", {"202": _json(_ref("Accepted"), "stored durably and queued")},
                            spec_body),
                "get": _op("List tasks, newest first", {"200": _json(_ref("TaskList"), "a page of tasks")},
                           params=[
                               {"name": "status", "in": "query", "schema": {"type": "string",
                                                                            "enum": list(tasks.STATUSES)}},
                               {"name": "worker", "in": "query", "schema": {"type": "string"}},
                               {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1,
                                                                           "maximum": 1000}},
                               {"name": "before", "in": "query", "schema": {"type": "string"}}])},
            "/api/v1/tasks/batch": {"post": _op(
                "Submit many tasks, all or nothing", {"202": _json({"type": "object", "properties": {
                    "task_ids": {"type": "array", "items": {"type": "string"}}}}, "all stored")},
                {"application/json": {"schema": {"type": "object", "required": ["tasks"], "properties": {
                    "tasks": {"type": "array", "minItems": 1, "items": _ref("TaskSpec")}}}}})},
            "/api/v1/tasks/status": {"post": _op("A task's status", {"200": _json(_ref("Status"), "status")},
                                                 task_id_body)},
            "/api/v1/tasks/result": {"post": _op("A task's result, optionally long-polling", result_responses,
                                                 result_body)},
            "/api/v1/tasks/{task_id}": {
                "get": _op("The whole task record", {"200": _json(_ref("Task"), "the record")}, params=[path_id]),
                "delete": _op("Cancel a task", {"200": _json(_ref("Status"), "cancelled"),
                                                "409": _json(_ref("Error"), "already ended")}, params=[path_id])},
            "/api/v1/tasks/{task_id}/result": {"get": _op(
                "A task's result", result_responses,
                params=[path_id, {"name": "wait_s", "in": "query", "schema": {"type": "number", "minimum": 0}}])},
            "/api/v1/tasks/{task_id}/logs": {"get": _op(
                "What the task printed", {"200": _json({"type": "object", "properties": {
                    "task_id": {"type": "string"}, "logs": {"type": "string"}, "truncated": {"type": "boolean"}}},
                    "stdout and stderr, tail kept")}, params=[path_id])},
            "/api/v1/workers": {"get": _op("Workers and their runners", {"200": _json(_ref("Workers"), "all")})},
            "/api/v1/workers/status": {"post": _op("Workers and their runners",
                                                   {"200": _json(_ref("Workers"), "all")})},
            "/api/v1/functions": {"post": _op(
                "Store a function once", {"201": _json(_ref("Function"), "stored"),
                                          "200": _json(_ref("Function"), "already stored")},
                {"application/json": {"schema": {"type": "object", "required": ["function"], "properties": {
                    "function": {"type": "string", "format": "byte"}, "python": {"type": "string"}}}},
                 "multipart/form-data": {"schema": {"type": "object", "properties": {
                     "function": {"type": "string", "format": "binary"}, "python": {"type": "string"}}}}})},
            "/healthz": {"get": {"summary": "Liveness", "responses": {"200": _json({"type": "object"}, "alive")}}},
            "/readyz": {"get": {"summary": "Readiness; names the ZeroMQ endpoint", "responses": {
                "200": _json(_ref("Ready"), "ready"), "503": _json(_ref("Ready"), "not ready")}}},
            "/metrics": {"get": {"summary": "Prometheus exposition (see docs/observability.md)", "responses": {
                "200": {"description": "metrics", "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
            "/api/v1/openapi.json": {"get": {"summary": "This document",
                                             "responses": {"200": _json({"type": "object"}, "OpenAPI 3")}}},
        },
        "components": {"schemas": schemas(workers)},
    }


def schemas(workers: list[str]) -> dict:
    s, n, i, b, o = {"type": "string"}, {"type": "number"}, {"type": "integer"}, {"type": "boolean"}, {"type": "object"}
    nullable = lambda t: {**t, "nullable": True}  # noqa: E731
    status = {"type": "string", "enum": list(tasks.STATUSES)}
    spec_props = {
        "worker": {"type": "string", "enum": workers}, "function": {"type": "string", "format": "byte"},
        "function_id": {"type": "string", "pattern": "^sha256:[0-9a-f]{64}$"},
        "kwargs": {"type": "object"}, "priority": i, "timeout_s": {"type": "number", "exclusiveMinimum": True,
                                                                    "minimum": 0},
        "max_retries": {"type": "integer", "minimum": 0}, "retry_on_error": b,
        "unavailable_timeout_s": {"type": "number", "minimum": 0},
        "callback_url": {"type": "string", "format": "uri"},
        "labels": {"type": "object", "additionalProperties": s}, "python": {"type": "string",
                                                                            "pattern": r"^\d+\.\d+$"}}
    error = {"type": "object", "properties": {"type": s, "message": s, "traceback": s}}
    runner = {"type": "object", "properties": {
        "id": s, "host": s, "pid": i, "python": s, "state": {"type": "string", "enum": ["idle", "busy", "lost"]},
        "slots": i, "busy_slots": i, "heartbeat_age_s": n, "tasks_done": i, "tasks_failed": i,
        "cpu_percent": nullable(n), "load1": nullable(n), "rss_bytes": nullable(i),
        "memory_used_bytes": nullable(i), "memory_total_bytes": nullable(i), "disk_used_bytes": nullable(i),
        "disk_total_bytes": nullable(i), "gpus": {"type": "array", "items": o}}}
    return {
        "Error": {"type": "object", "required": ["error"], "properties": {"error": {
            "type": "object", "required": ["code", "message"], "properties": {"code": s, "message": s}}}},
        "TaskSpec": {"type": "object", "required": ["worker"], "additionalProperties": False,
                     "properties": spec_props},
        "TaskSpecForm": {"type": "object", "required": ["worker", "function"], "properties": {
            **{k: s for k in spec_props}, "function": {"type": "string", "format": "binary"}}},
        "Accepted": {"type": "object", "properties": {"task_id": s, "status": status, "worker": s,
                                                      "submitted_at": {"type": "string", "format": "date-time"}}},
        "Status": {"type": "object", "properties": {"task_id": s, "status": status}},
        "Result": {"type": "object", "properties": {
            "task_id": s, "status": status, "result": {}, "result_repr": s,
            "result_dill": {"type": "string", "format": "byte"}, "error": error}},
        "Task": {"type": "object", "properties": {
            "id": s, "worker": s, "status": status, "priority": i, "attempts": i, "runner": nullable(s),
            "kwargs": o, "labels": o, "submitted_at": s, "started_at": nullable(s), "finished_at": nullable(s),
            "wait_s": nullable(n), "run_s": nullable(n), "latency_s": nullable(n), "result": {}, "error": error,
            "crashes": {"type": "array", "items": o}}},
        "TaskList": {"type": "object", "properties": {"tasks": {"type": "array", "items": o},
                                                      "next_before": nullable(s)}},
        "Workers": {"type": "object", "properties": {"workers": {"type": "array", "items": {
            "type": "object", "properties": {"name": s, "python": s, "queued": i, "in_flight": i,
                                             "runners": {"type": "array", "items": runner}}}}}},
        "Function": {"type": "object", "properties": {"function_id": s, "size": i, "created": b,
                                                      "python": nullable({"type": "array", "items": s})}},
        "Ready": {"type": "object", "properties": {"ready": b, "store": s, "zmq_endpoint": nullable(s)}},
    }
