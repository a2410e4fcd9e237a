"""The child process a runner runs tasks in: load the function, call it, report.

Valid on Python 3.6. A crash here (segfault, os._exit, MemoryError in C) only
takes this process down; the runner notices the closed pipe and reports it.
"""
import ctypes
import json
import os
import signal
import sys
import time
import traceback

import dill

from runners import pickleinfo, protocol

FUNCTION_CACHE_SIZE = 128  # loaded functions kept per child, by content hash
REPR_LIMIT = 10000


def _die_with_parent():
    """Ask Linux to SIGKILL us when our parent goes away, so a killed runner leaves no orphans."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def child_main(conn, log_path):
    """Serve tasks from the runner over conn until it closes; fds 1 and 2 write to the slot's log file."""
    _die_with_parent()
    os.setsid()  # own process group: a timeout or cancel kills whatever the task started too
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C goes to the runner, which decides
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # forked from the runner: drop its drain handler
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.dup2(fd, 1)  # C-level writes of the task land here too
    os.dup2(fd, 2)
    os.close(fd)
    cache = {}
    while True:
        try:
            request = conn.recv()
        except (EOFError, OSError):
            return
        conn.send(run_task(cache, request))


class NeedFunction(Exception):
    """The runner sent no bytes for a function this child has not loaded (or has evicted)."""


def _load(cache, function_hash, function_bytes):
    fn = cache.get(function_hash)
    if fn is None:
        if function_bytes is None:
            raise NeedFunction(function_hash)
        fn = dill.loads(function_bytes)
        if len(cache) >= FUNCTION_CACHE_SIZE:
            cache.pop(next(iter(cache)))
        cache[function_hash] = fn
    return fn


def _unpickling_error(exc, function_bytes):
    try:
        made_by = pickleinfo.describe(pickleinfo.pickle_pythons(function_bytes))
    except pickleinfo.NotAPickle:
        made_by = "nothing (not a pickle)"
    here = "%d.%d" % sys.version_info[:2]
    return {
        "type": protocol.UNPICKLING,
        "message": "could not load the function (%s: %s); the pickle was made by %s, "
                   "this worker runs Python %s" % (type(exc).__name__, exc, made_by, here),
        "traceback": traceback.format_exc(),
    }


def _encode_value(value):
    """Reply fields for a return value: JSON text, or repr + dill bytes."""
    try:
        return {"result_json": json.dumps(value, allow_nan=False)}, None
    except (TypeError, ValueError, OverflowError, RecursionError):
        pass
    try:
        text = repr(value)[:REPR_LIMIT]
    except Exception as exc:  # a broken __repr__ must not lose the result
        text = "<repr failed: %s>" % exc
    try:
        blob = dill.dumps(value, protocol=min(4, dill.HIGHEST_PROTOCOL))
    except Exception:
        blob = None
    return {"result_json": "null", "result_repr": text}, blob


def run_task(cache, request):
    """(reply header fields, result blob or None) for one task request."""
    function_hash, function_bytes, kwargs = request
    started = time.time()
    try:
        fn = _load(cache, function_hash, function_bytes)
    except NeedFunction:
        return {"need_function": function_hash}, None
    except Exception as exc:
        return {"outcome": protocol.ERROR, "error": _unpickling_error(exc, function_bytes),
                "started_at": started, "run_s": 0.0}, None
    _clear_output()
    t0 = time.monotonic()
    try:
        value = fn(**kwargs)
    except BaseException as exc:  # SystemExit and KeyboardInterrupt are the task's failures too
        run_s = time.monotonic() - t0
        _flush_output()
        # skip this module's own frame: the traceback starts in the user's function
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__.tb_next))
        error = {"type": type(exc).__name__, "message": str(exc), "traceback": tb}
        return {"outcome": protocol.ERROR, "error": error, "started_at": started, "run_s": run_s}, None
    run_s = time.monotonic() - t0
    _flush_output()
    fields, blob = _encode_value(value)
    fields.update({"outcome": protocol.OK, "started_at": started, "run_s": run_s})
    return fields, blob


def _clear_output():
    """Empty the slot's log file before a task: fds 1 and 2 share one file offset, set back to 0."""
    _flush_output()
    os.ftruncate(1, 0)
    os.lseek(1, 0, os.SEEK_SET)


def _flush_output():
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
