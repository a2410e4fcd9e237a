"""Validating what clients send: task specs (JSON or form fields) and function pickles.

Pure functions that raise ApiError with a status, a snake_case code and a
message saying what is wrong and how to fix it.
"""
import base64
import binascii
import dataclasses
import hashlib
import json
import math
import re
from typing import Any

from runners import pickleinfo

SPEC_FIELDS = ("worker", "function", "function_id", "kwargs", "priority", "timeout_s", "max_retries",
               "retry_on_error", "unavailable_timeout_s", "callback_url", "labels", "python")
FUNCTION_ID = re.compile(r"^sha256:[0-9a-f]{64}$")
PYTHON_VERSION = re.compile(r"^\d+\.\d+$")
MAX_PRIORITY = 2 ** 31


class ApiError(Exception):
    """An error answered to the client as {"error": {"code", "message"}}."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


@dataclasses.dataclass
class TaskSpec:
    worker: str
    function: bytes | None
    function_id: str | None
    kwargs: str                 # canonical JSON text
    priority: int = 0
    timeout_s: float | None = None
    max_retries: int | None = None
    retry_on_error: bool = False
    unavailable_timeout_s: float | None = None
    callback_url: str | None = None
    labels: str | None = None   # JSON text
    python: str | None = None


def function_id_of(body: bytes) -> str:
    return "sha256:" + hashlib.sha256(body).hexdigest()


def decode_base64(text: Any, field: str = "function") -> bytes:
    if not isinstance(text, str) or not text:
        raise ApiError(400, "invalid_function", f"{field} must be a non-empty base64 string of the dill bytes")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, "invalid_base64", f"{field} is not valid base64; send base64 of the dill bytes "
                                              f"(e.g. `base64 -w0 run.pkl`)") from None


def pickle_pythons(body: bytes) -> tuple[str, ...] | None:
    """Pythons that could have made this pickle (None: cannot tell); 400 if it is no pickle at all."""
    try:
        return pickleinfo.pickle_pythons(body)
    except pickleinfo.NotAPickle as exc:
        raise ApiError(400, "invalid_pickle", f"function is not a pickle ({exc}); pickle it with "
                                              f"dill.dumps(fn, recurse=True)") from None


def check_python(worker: str, worker_python: str, made_by: tuple[str, ...] | None, declared: str | None) -> None:
    """422 when the pickle (or the declared python) cannot belong to the worker's Python."""
    if declared is not None and declared != worker_python:
        raise ApiError(422, "python_mismatch", f"the task says it was pickled by Python {declared} but worker "
                                               f"{worker} runs Python {worker_python}; pickle it with Python "
                                               f"{worker_python} or choose a worker that runs {declared}")
    if made_by is not None and worker_python not in made_by:
        raise ApiError(422, "python_mismatch", f"the pickle was made by {pickleinfo.describe(made_by)} but worker "
                                               f"{worker} runs Python {worker_python}; pickle it with Python "
                                               f"{worker_python} or choose a worker that runs "
                                               f"{' or '.join(made_by)}")


def _number(raw: dict, key: str, minimum: float, integer: bool = False, exclusive: bool = False):
    value = raw.get(key)
    if value is None:
        return None
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok or (isinstance(value, float) and not math.isfinite(value)):
        kind = "an integer" if integer else "a number"
        raise ApiError(400, "invalid_field", f"{key} must be {kind}, got {json.dumps(value)[:50]}")
    if value < minimum or (exclusive and value == minimum) or abs(value) > MAX_PRIORITY * 1e3:
        bound = f"greater than {minimum}" if exclusive else f"at least {minimum}"
        raise ApiError(400, "invalid_field", f"{key} must be {bound}, got {value}")
    return value


def parse_spec(raw: Any, workers: dict, max_retries: int, unavailable_timeout_s: float,
               function_bytes: bytes | None = None) -> TaskSpec:
    """A TaskSpec from a decoded JSON object (function_bytes: a multipart file part, if any)."""
    if not isinstance(raw, dict):
        raise ApiError(400, "invalid_body", "the body must be a JSON object describing the task")
    unknown = sorted(set(raw) - set(SPEC_FIELDS))
    if unknown:
        raise ApiError(400, "unknown_field", f"unknown field(s) {unknown}; known: {list(SPEC_FIELDS)}")
    worker = raw.get("worker")
    if not isinstance(worker, str) or not worker:
        raise ApiError(400, "missing_worker", "worker is required: the name of the worker to run on, "
                                              f"one of {sorted(workers)}")
    if worker not in workers:
        raise ApiError(422, "unknown_worker", f"unknown worker {worker!r}; known workers: {sorted(workers)}")
    function_id = raw.get("function_id")
    if function_bytes is None and raw.get("function") is not None:
        function_bytes = decode_base64(raw["function"])
    if (function_bytes is None) == (function_id is None):
        raise ApiError(400, "missing_function", "send exactly one of function (base64 dill bytes, or a file part "
                                                "in multipart) and function_id (from POST /api/v1/functions)")
    if function_id is not None and (not isinstance(function_id, str) or not FUNCTION_ID.match(function_id)):
        raise ApiError(400, "invalid_function_id", "function_id must look like sha256:<64 hex digits>")
    if function_bytes is not None and not function_bytes:
        raise ApiError(400, "invalid_function", "function is empty; send the dill bytes of the function")
    kwargs = raw.get("kwargs", {})
    if kwargs is None:
        kwargs = {}
    if not isinstance(kwargs, dict):
        raise ApiError(400, "invalid_field", "kwargs must be a JSON object of keyword arguments")
    labels = raw.get("labels")
    if labels is not None and (not isinstance(labels, dict) or
                               not all(isinstance(v, str) for v in labels.values())):
        raise ApiError(400, "invalid_field", "labels must be a JSON object of strings")
    retry_on_error = raw.get("retry_on_error", False)
    if not isinstance(retry_on_error, bool):
        raise ApiError(400, "invalid_field", "retry_on_error must be true or false")
    callback_url = raw.get("callback_url")
    if callback_url is not None and (not isinstance(callback_url, str) or
                                     not re.match(r"^https?://[^\s/]+", callback_url)):
        raise ApiError(400, "invalid_field", "callback_url must be an http:// or https:// URL")
    python = raw.get("python")
    if python is not None and (not isinstance(python, str) or not PYTHON_VERSION.match(python)):
        raise ApiError(400, "invalid_field", "python must be the major.minor that made the pickle, e.g. \"3.6\"")
    priority = _number(raw, "priority", -MAX_PRIORITY, integer=True)
    if priority is not None and priority >= MAX_PRIORITY:
        raise ApiError(400, "invalid_field", f"priority must be below {MAX_PRIORITY}")
    retries = _number(raw, "max_retries", 0, integer=True)
    unavailable = _number(raw, "unavailable_timeout_s", 0)
    return TaskSpec(
        worker=worker, function=function_bytes, function_id=function_id,
        kwargs=json.dumps(kwargs, separators=(",", ":")),
        priority=priority or 0, timeout_s=_number(raw, "timeout_s", 0, exclusive=True),
        max_retries=max_retries if retries is None else retries, retry_on_error=retry_on_error,
        unavailable_timeout_s=unavailable_timeout_s if unavailable is None else unavailable,
        callback_url=callback_url, labels=json.dumps(labels) if labels is not None else None, python=python)


FORM_JSON_FIELDS = ("kwargs", "labels", "priority", "timeout_s", "max_retries", "retry_on_error",
                    "unavailable_timeout_s")


def form_to_raw(form) -> tuple[dict, bytes | None]:
    """(spec dict, function bytes) from multipart/form fields: JSON-typed fields are parsed as JSON text."""
    raw, function_bytes = {}, None
    for key in set(form.keys()):
        values = form.getall(key)
        if len(values) != 1:
            raise ApiError(400, "invalid_field", f"form field {key} appears {len(values)} times; send it once")
        value = values[0]
        if key == "function" and hasattr(value, "file"):
            function_bytes = value.file.read()
            continue
        if not isinstance(value, str):
            raise ApiError(400, "invalid_field", f"form field {key} must be text, not a file")
        if key in FORM_JSON_FIELDS:
            try:
                value = json.loads(value)
            except ValueError:
                raise ApiError(400, "invalid_field", f"form field {key} must be JSON text, got {value[:50]!r}") \
                    from None
        raw[key] = value
    return raw, function_bytes
