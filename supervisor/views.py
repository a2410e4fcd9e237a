"""How a stored task looks from outside: the JSON views the API and callbacks send."""
import base64
import datetime
import json

from supervisor import tasks


_SECOND = [None, ""]  # the last whole second formatted, and its text


def iso(ts: float | None) -> str | None:
    """UTC ISO 8601 with milliseconds, e.g. 2026-11-22T10:00:00.123Z (the date part formatted once a second)."""
    if ts is None:
        return None
    second, us = int(ts), round((ts - int(ts)) * 1e6)  # as datetime.fromtimestamp rounds
    if us >= 1_000_000:
        second, us = second + 1, us - 1_000_000
    if second != _SECOND[0]:
        _SECOND[:] = second, datetime.datetime.fromtimestamp(second, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{_SECOND[1]}.{us // 1000:03d}Z"


def outcome_fields(rec: dict) -> dict:
    if rec["status"] == tasks.DONE:
        out = {"result": json.loads(rec["result"]) if rec["result"] is not None else None}
        if rec["result_repr"] is not None:
            out["result_repr"] = rec["result_repr"]
            out["result_dill"] = base64.b64encode(rec["result_dill"]).decode() if rec["result_dill"] else None
        return out
    if rec["error"]:
        return {"error": json.loads(rec["error"])}
    return {}


def task_view(rec: dict) -> dict:
    started, finished, submitted = rec["started_at"], rec["finished_at"], rec["submitted_at"]
    view = {
        "id": rec["id"], "task_id": rec["id"], "worker": rec["worker"], "status": rec["status"],
        "priority": rec["priority"], "attempts": rec["attempts"], "runner": rec["runner"],
        "function_id": rec["function_hash"], "kwargs": json.loads(rec["kwargs"]),
        "labels": json.loads(rec["labels"]) if rec["labels"] else {}, "python": rec["python"],
        "timeout_s": rec["timeout_s"], "max_retries": rec["max_retries"],
        "retry_on_error": bool(rec["retry_on_error"]), "unavailable_timeout_s": rec["unavailable_timeout_s"],
        "callback_url": rec["callback_url"], "callback_sent_at": iso(rec.get("callback_sent_at")),
        "callback_error": rec.get("callback_error"),
        "submitted_at": iso(submitted), "started_at": iso(started), "finished_at": iso(finished),
        "wait_s": round(started - submitted, 6) if started else None,
        "run_s": rec["run_s"], "latency_s": round(finished - submitted, 6) if finished else None,
        "crashes": json.loads(rec["crashes"]) if rec["crashes"] else [],
    }
    view.update(outcome_fields(rec))
    return view


def summary_view(rec: dict) -> dict:
    """One line of GET /api/v1/tasks."""
    return {"id": rec["id"], "worker": rec["worker"], "status": rec["status"], "priority": rec["priority"],
            "attempts": rec["attempts"], "runner": rec["runner"],
            "labels": json.loads(rec["labels"]) if rec["labels"] else {},
            "submitted_at": iso(rec["submitted_at"]), "started_at": iso(rec["started_at"]),
            "finished_at": iso(rec["finished_at"])}
