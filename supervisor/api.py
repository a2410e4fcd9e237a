"""HTTP routes: parse, validate, answer. No SQL and no sockets here."""
import hmac
import json
import logging
import time

from aiohttp import web

from supervisor import openapi, tasks
from supervisor.translog import transitions
from supervisor.views import iso, outcome_fields, summary_view, task_view
from supervisor.specs import (ApiError, TaskSpec, check_python, decode_base64, form_to_raw, function_id_of,
                              parse_spec, pickle_pythons)

log = logging.getLogger("supervisor.api")
routes = web.RouteTableDef()
LIST_LIMIT_MAX = 1000
PICKLE_PYTHONS: dict = {}  # function id -> what pickle_pythons() said (a bounded cache)
MISSING = object()
BATCH_MAX = 10000

# the app keys the routes need; set by supervisor.__main__
SETTINGS = web.AppKey("settings", object)
STORE = web.AppKey("store", object)
DISPATCHER = web.AppKey("dispatcher", object)
BROKER = web.AppKey("broker", object)
STATE = web.AppKey("state", dict)


def dumps_line(value) -> str:
    """JSON text plus a newline, so curl output ends its line."""
    return json.dumps(value) + "\n"


def reply(body, status: int = 200) -> web.Response:
    return web.json_response(body, status=status, dumps=dumps_line)


def error_response(status: int, code: str, message: str) -> web.Response:
    return reply({"error": {"code": code, "message": message}}, status=status)


HTTP_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
              405: "method_not_allowed", 413: "payload_too_large", 415: "unsupported_media_type"}


@web.middleware
async def errors_as_json(request: web.Request, handler):
    """Every error leaves as {"error": {"code", "message"}}; nothing a client sends crashes a handler."""
    try:
        return await handler(request)
    except ApiError as exc:
        return error_response(exc.status, exc.code, exc.message)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        message = exc.text if exc.text and not exc.text.startswith(str(exc.status)) else exc.reason
        if exc.status == 413:
            message = (f"request body too large: the limit is {request.app[SETTINGS].max_body_bytes} bytes "
                       f"(max_body_bytes); store big functions once with POST /api/v1/functions")
        if exc.status == 404:
            message = f"no route {request.method} {request.path}; see GET /api/v1/openapi.json"
        return error_response(exc.status, HTTP_CODES.get(exc.status, "http_error"), message)
    except Exception:
        log.exception("unhandled error in %s %s", request.method, request.path)
        return error_response(500, "internal_error", "the supervisor failed to handle this request; see its log")


def token_check(tokens: frozenset[str], metrics_auth: bool):
    """Middleware: with tokens configured, /api/v1 (and /metrics if metrics_auth) need a Bearer token."""
    @web.middleware
    async def require_token(request: web.Request, handler):
        path = request.path
        guarded = path.startswith("/api/v1") or (metrics_auth and path == "/metrics")
        if tokens and guarded:
            header = request.headers.get("Authorization", "")
            scheme, _, token = header.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                return error_response(401, "unauthorized", "this supervisor needs an API token: send "
                                                           "'Authorization: Bearer <token>'")
            if not any(hmac.compare_digest(token.strip().encode(), t.encode()) for t in tokens):
                return error_response(403, "forbidden", "the API token is not valid for this supervisor")
        return await handler(request)
    return require_token


# -- helpers ---------------------------------------------------------------
async def json_body(request: web.Request) -> dict:
    text = await request.text()
    try:
        body = json.loads(text) if text.strip() else None
    except ValueError as exc:
        raise ApiError(400, "invalid_json", f"the body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_body", "the body must be a JSON object")
    return body


async def spec_source(request: web.Request) -> tuple[dict, bytes | None]:
    """The raw spec and any function file, from a JSON body or multipart/form-data."""
    if request.content_type == "multipart/form-data":
        return form_to_raw(await request.post())
    return await json_body(request), None


def task_id_from(body: dict) -> str:
    task_id = body.get("task_id")
    if not isinstance(task_id, str) or not task_id:
        raise ApiError(400, "missing_task_id", "send {\"task_id\": \"<id from the submit reply>\"}")
    return task_id


def not_found(task_id: str) -> ApiError:
    return ApiError(404, "task_not_found", f"no task with id {task_id!r}")


def check_accepting(request: web.Request) -> None:
    if request.app[STATE].get("draining"):
        raise ApiError(503, "shutting_down", "the supervisor is stopping and accepts no new tasks; retry shortly")


async def resolve_function(request: web.Request, spec: TaskSpec) -> tuple[str, tuple | None]:
    """(function_id, new function row or None) for a spec, checked against its worker's Python."""
    settings = request.app[SETTINGS]
    worker_python = settings.workers[spec.worker].python
    if spec.function is not None:
        fid = function_id_of(spec.function)
        made_by = PICKLE_PYTHONS.get(fid, MISSING)
        if made_by is MISSING:  # walk the opcodes once per distinct function
            made_by = pickle_pythons(spec.function)
            PICKLE_PYTHONS[fid] = made_by
            if len(PICKLE_PYTHONS) > 4096:
                PICKLE_PYTHONS.pop(next(iter(PICKLE_PYTHONS)))
        check_python(spec.worker, worker_python, made_by, spec.python)
        return fid, (fid, spec.function, ",".join(made_by) if made_by else None)
    info = await request.app[STORE].function_info(spec.function_id)
    if info is None:
        raise ApiError(422, "unknown_function", f"no stored function {spec.function_id}; store it first with "
                                                f"POST /api/v1/functions")
    made_by = tuple(info["python"].split(",")) if info["python"] else None
    check_python(spec.worker, worker_python, made_by, spec.python)
    return spec.function_id, None


def task_row(spec: TaskSpec, function_id: str, now: float) -> dict:
    return {"id": tasks.new_id(), "worker": spec.worker, "status": tasks.NOT_RUN_YET, "priority": spec.priority,
            "attempts": 0, "function_hash": function_id, "kwargs": spec.kwargs, "labels": spec.labels,
            "python": spec.python, "timeout_s": spec.timeout_s, "max_retries": spec.max_retries,
            "retry_on_error": int(spec.retry_on_error), "unavailable_timeout_s": spec.unavailable_timeout_s,
            "callback_url": spec.callback_url, "submitted_at": now, "queued_at": now, "not_before": None}


async def accept(request: web.Request, specs: list[TaskSpec], batch: bool = False) -> list[dict]:
    """Store the tasks durably (one transaction), then queue them; returns their rows."""
    rows, functions, seen = [], [], set()
    now = time.time()
    for i, spec in enumerate(specs):
        try:
            fid, new_function = await resolve_function(request, spec)
        except ApiError as exc:
            reject(request, exc)
            if not batch:
                raise
            raise ApiError(exc.status, exc.code, f"tasks[{i}]: {exc.message} (nothing was submitted)") from None
        if new_function and fid not in seen:
            seen.add(fid)
            functions.append(new_function)
        rows.append(task_row(spec, fid, now))
    await request.app[STORE].insert_tasks(rows, functions)
    request.app[DISPATCHER].add(rows)
    for row in rows:
        transitions.line(log, f"task {row['id']} attempt 0 worker {row['worker']} runner - -> NOT RUN YET (submit)",
                         {"task_id": row["id"], "attempt": 0, "worker": row["worker"], "event": "submit",
                          "status": tasks.NOT_RUN_YET} if transitions.json else None)
    transitions.flush()
    events = request.app[STATE].get("events")
    if events is not None:
        for row in rows:
            events("submitted", None, worker=row["worker"])
    return rows


def parse(request: web.Request, raw, function_bytes=None) -> TaskSpec:
    s = request.app[SETTINGS]
    return parse_spec(raw, s.workers, s.max_retries, s.unavailable_timeout_s, function_bytes)


def reject(request: web.Request, exc: ApiError) -> None:
    events = request.app[STATE].get("events")
    if events is not None:
        events("rejected", None, reason=exc.code)


def result_response(rec: dict) -> web.Response:
    body = {"task_id": rec["id"], "status": rec["status"]}
    if not tasks.is_final(rec["status"]):
        return reply(body, status=202)
    body.update(outcome_fields(rec))
    return reply(body)


async def result_for(request: web.Request, task_id: str, wait_s) -> web.Response:
    settings = request.app[SETTINGS]
    if wait_s is not None:
        try:
            wait_s = float(wait_s)
        except (TypeError, ValueError):
            raise ApiError(400, "invalid_field", "wait_s must be a number of seconds") from None
        if not 0 <= wait_s <= settings.max_wait_s:
            raise ApiError(400, "invalid_field", f"wait_s must be between 0 and {settings.max_wait_s:g}")
        await request.app[DISPATCHER].wait_finished(task_id, wait_s)
        rec = request.app[DISPATCHER].recent.get(task_id)  # just ended while we waited: no need to read it back
        if rec is not None:
            return result_response(rec)
    rec = await request.app[STORE].get_task(task_id)
    if rec is None:
        raise not_found(task_id)
    return result_response(rec)


# -- routes ----------------------------------------------------------------
@routes.post("/api/v1/tasks")
async def submit(request: web.Request) -> web.Response:
    check_accepting(request)
    try:
        raw, function_bytes = await spec_source(request)
        spec = parse(request, raw, function_bytes)
    except ApiError as exc:
        reject(request, exc)
        raise
    (row,) = await accept(request, [spec])
    return reply({"task_id": row["id"], "status": row["status"], "worker": row["worker"],
                              "submitted_at": iso(row["submitted_at"])}, status=202)


@routes.post("/api/v1/tasks/batch")
async def submit_batch(request: web.Request) -> web.Response:
    check_accepting(request)
    body = await json_body(request)
    items = body.get("tasks")
    if not isinstance(items, list) or not items:
        raise ApiError(400, "invalid_body", "send {\"tasks\": [spec, ...]} with at least one task spec")
    if len(items) > BATCH_MAX:
        raise ApiError(400, "batch_too_large", f"at most {BATCH_MAX} tasks per batch")
    specs = []
    for i, raw in enumerate(items):
        try:
            specs.append(parse(request, raw))
        except ApiError as exc:
            reject(request, exc)
            raise ApiError(exc.status, exc.code, f"tasks[{i}]: {exc.message} (nothing was submitted)") from None
    rows = await accept(request, specs, batch=True)
    return reply({"task_ids": [r["id"] for r in rows], "status": tasks.NOT_RUN_YET}, status=202)


@routes.post("/api/v1/tasks/status")
async def task_status(request: web.Request) -> web.Response:
    task_id = task_id_from(await json_body(request))
    status = await request.app[STORE].get_status(task_id)
    if status is None:
        raise not_found(task_id)
    return reply({"task_id": task_id, "status": status})


@routes.post("/api/v1/tasks/result")
async def task_result(request: web.Request) -> web.Response:
    body = await json_body(request)
    return await result_for(request, task_id_from(body), body.get("wait_s"))


@routes.get("/api/v1/tasks")
async def list_tasks(request: web.Request) -> web.Response:
    q = request.query
    status, worker, before = q.get("status"), q.get("worker"), q.get("before")
    if status is not None and status not in tasks.STATUSES:
        raise ApiError(400, "invalid_field", f"status must be one of {list(tasks.STATUSES)}")
    if worker is not None and worker not in request.app[SETTINGS].workers:
        raise ApiError(422, "unknown_worker", f"unknown worker {worker!r}; known workers: "
                                              f"{sorted(request.app[SETTINGS].workers)}")
    try:
        limit = int(q.get("limit", "100"))
    except ValueError:
        raise ApiError(400, "invalid_field", "limit must be an integer") from None
    if not 1 <= limit <= LIST_LIMIT_MAX:
        raise ApiError(400, "invalid_field", f"limit must be between 1 and {LIST_LIMIT_MAX}")
    if before is not None and not await request.app[STORE].task_exists(before):
        raise ApiError(400, "invalid_field", f"before must be a task id from a previous page; {before!r} is unknown")
    rows = await request.app[STORE].list_tasks(status, worker, limit, before)
    items = [summary_view(r) for r in rows]
    next_before = items[-1]["id"] if len(items) == limit else None
    return reply({"tasks": items, "next_before": next_before})


@routes.get("/api/v1/tasks/{task_id}")
async def get_task(request: web.Request) -> web.Response:
    rec = await request.app[STORE].get_task(request.match_info["task_id"])
    if rec is None:
        raise not_found(request.match_info["task_id"])
    return reply(task_view(rec))


@routes.get("/api/v1/tasks/{task_id}/result")
async def get_task_result(request: web.Request) -> web.Response:
    return await result_for(request, request.match_info["task_id"], request.query.get("wait_s"))


@routes.get("/api/v1/tasks/{task_id}/logs")
async def get_task_logs(request: web.Request) -> web.Response:
    rec = await request.app[STORE].get_task(request.match_info["task_id"])
    if rec is None:
        raise not_found(request.match_info["task_id"])
    return reply({"task_id": rec["id"], "status": rec["status"], "logs": rec["logs"] or "",
                              "truncated": bool(rec["logs_truncated"])})


@routes.delete("/api/v1/tasks/{task_id}")
async def cancel_task(request: web.Request) -> web.Response:
    task_id = request.match_info["task_id"]
    status = await request.app[DISPATCHER].cancel(task_id)
    if status is None:
        current = await request.app[STORE].get_status(task_id)
        if current is None:
            raise not_found(task_id)
        raise ApiError(409, "already_ended", f"task {task_id} already ended with status {current}; "
                                             f"only NOT RUN YET or IN FLIGHT tasks can be cancelled")
    return reply({"task_id": task_id, "status": status})


def workers_view(app: web.Application) -> dict:
    settings, broker, dispatcher = app[SETTINGS], app[BROKER], app[DISPATCHER]
    now = broker.clock()
    out = []
    for name, conf in settings.workers.items():
        runners = []
        for r in broker.runners.values():
            if r.worker != name:
                continue
            runners.append({"id": r.id, "host": r.host, "pid": r.pid, "python": r.python_full, "state": r.state,
                            "draining": r.draining, "slots": r.slots, "prefetch": r.prefetch,
                            "busy_slots": min(len(r.leases), r.slots), "leased": len(r.leases),
                            "heartbeat_age_s": round(now - r.last_seen, 3), "tasks_done": r.tasks_done,
                            "tasks_failed": r.tasks_failed, **r.resources})
        out.append({"name": name, "python": conf.python, "queued": dispatcher.queued(name),
                    "in_flight": dispatcher.in_flight(name),
                    "live_runners": sum(1 for r in runners if r["state"] != "lost"), "runners": runners})
    return {"workers": out}


@routes.get("/api/v1/workers")
async def list_workers(request: web.Request) -> web.Response:
    return reply(workers_view(request.app))


@routes.post("/api/v1/workers/status")
async def workers_status(request: web.Request) -> web.Response:
    return reply(workers_view(request.app))


@routes.post("/api/v1/functions")
async def store_function(request: web.Request) -> web.Response:
    raw, body = await spec_source(request)
    unknown = sorted(set(raw) - {"function", "python"})
    if unknown:
        raise ApiError(400, "unknown_field", f"unknown field(s) {unknown}; send function (and optionally python)")
    if body is None:
        body = decode_base64(raw.get("function"))
    if not body:
        raise ApiError(400, "invalid_function", "function is empty; send the dill bytes of the function")
    made_by = pickle_pythons(body)
    declared = raw.get("python")
    if declared is not None and made_by is not None and declared not in made_by:
        raise ApiError(422, "python_mismatch", f"python says {declared} but the pickle was made by "
                                               f"{', '.join(made_by)}")
    python = ",".join(made_by) if made_by else declared
    fid = function_id_of(body)
    created = await request.app[STORE].put_function(fid, body, python)
    return reply({"function_id": fid, "size": len(body), "python": python.split(",") if python else None,
                              "created": created}, status=201 if created else 200)


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    return reply({"status": "ok"})


@routes.get("/readyz")
async def readyz(request: web.Request) -> web.Response:
    store_ok = request.app[STORE].is_open
    endpoint = request.app[BROKER].endpoint
    draining = bool(request.app[STATE].get("draining"))
    ready = store_ok and endpoint is not None and not draining
    return reply({"ready": ready, "store": "open" if store_ok else "closed",
                              "zmq_endpoint": endpoint, "draining": draining}, status=200 if ready else 503)


@routes.get("/api/v1/openapi.json")
async def openapi_document(request: web.Request) -> web.Response:
    return reply(openapi.document(sorted(request.app[SETTINGS].workers)))
