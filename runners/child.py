"""The child process a runner runs tasks in: load the function, call it, report.

Valid on Python 3.6. A crash here (segfault, os._exit, MemoryError in C) only
takes this process down; the runner notices the closed pipe and reports it.
"""
import ctypes
import json
import os
import pickle
import signal
import struct
import sys
import time
import traceback

import dill

from runners import pickleinfo, protocol

FUNCTION_CACHE_SIZE = 128  # loaded functions kept per child, by content hash
REPR_LIMIT = 10000
LOG_TAIL_BYTES = 64 * 1024  # the end of a task's output kept with its result
READ_CHUNK = 1 << 16


def _die_with_parent(parent_pid):
    """Ask Linux to SIGKILL us when our parent goes away, so a killed runner leaves no orphans."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent_pid:  # the runner died between our fork and the line above: no signal will come
        os._exit(0)


class Pipe(object):
    """One direction of a runner <-> child pipe: length-prefixed pickles; reads take every whole frame waiting."""

    def __init__(self, fd):
        self.fd = fd
        self.buf = b""

    def send(self, obj):
        data = pickle.dumps(obj, 4)
        view = memoryview(struct.pack("!I", len(data)) + data)
        while view:
            view = view[os.write(self.fd, view):]

    def recv_all(self):
        """The frames made whole by reading (a blocking reader waits for at least one); EOFError once closed."""
        frames = []
        while not frames:
            try:
                chunk = os.read(self.fd, READ_CHUNK)
            except BlockingIOError:  # a non-blocking reader (the runner's side): nothing more for now
                return frames
            if not chunk:
                raise EOFError("pipe closed")
            self.buf += chunk
            while len(self.buf) >= 4:
                (size,) = struct.unpack_from("!I", self.buf)
                if len(self.buf) < 4 + size:
                    break
                frames.append(pickle.loads(self.buf[4:4 + size]))
                self.buf = self.buf[4 + size:]
        return frames


class Claims(object):
    """Which task of the batch a child was given it has started, shared between the runner and that child.

    Before starting task i the child claims it; the runner cancels task i only if it is not claimed yet. The
    lock makes the two exclusive, so a cancelled task never starts and a started one is never called unstarted.
    """

    def __init__(self, mp, size):
        self.lock = mp.Lock()
        self.started = mp.RawValue("i", -1)  # index of the task running (or last run) in the current batch
        self.cancelled = mp.RawArray("b", size)

    def reset(self, size):
        """Before the runner sends a new batch (the child is then waiting for it, touching nothing)."""
        self.started.value = -1
        for i in range(size):
            self.cancelled[i] = 0

    def claim(self, index):
        """In the child: True if task `index` may start (and is now marked started)."""
        with self.lock:
            if self.cancelled[index]:
                return False
            self.started.value = index
            return True

    def cancel(self, index):
        """In the runner: True if task `index` had not started and now never will."""
        if not self.lock.acquire(True, 1.0):  # a child killed while holding it: treat the task as started
            return False
        try:
            if self.started.value >= index:
                return False
            self.cancelled[index] = 1
            return True
        finally:
            self.lock.release()


def child_main(task_fd, result_fd, log_path, claims, parent_pid, runner_fds=()):
    """Serve batches of tasks from the runner until it closes the pipe; fds 1 and 2 write to the slot's log file.

    A result is written as soon as its task ends, so a later task of the batch that hangs or crashes never
    takes an earlier one's result with it. runner_fds: the runner's ends of the two pipes, inherited by the
    fork and closed here, so the task pipe reads as closed once the runner is gone.
    """
    _die_with_parent(parent_pid)
    for fd in runner_fds:
        os.close(fd)
    os.setsid()  # own process group: a timeout or cancel kills whatever the task started too
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C goes to the runner, which decides
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # forked from the runner: drop its drain handler
    fd = os.open(log_path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)  # read back after each task
    os.dup2(fd, 1)  # C-level writes of the task land here too
    os.dup2(fd, 2)
    os.close(fd)
    tasks, results = Pipe(task_fd), Pipe(result_fd)
    cache = {}
    while True:
        try:
            batches = tasks.recv_all()
        except (EOFError, OSError):
            return
        for batch in batches:
            for index, request in enumerate(batch):
                if not claims.claim(index):
                    results.send(({"skipped": True}, None))
                    continue
                fields, blob = run_task(cache, request)
                if "need_function" not in fields:
                    logs, truncated = _take_output()
                    if logs:  # nothing printed: nothing to send
                        fields["logs"], fields["logs_truncated"] = logs, truncated
                results.send((fields, blob))


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
    t0 = time.monotonic()
    try:
        value = fn(**kwargs)
    except BaseException as exc:  # SystemExit and KeyboardInterrupt are the task's failures too
        run_s = time.monotonic() - t0
        # skip this module's own frame: the traceback starts in the user's function
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__.tb_next))
        error = {"type": type(exc).__name__, "message": str(exc), "traceback": tb}
        return {"outcome": protocol.ERROR, "error": error, "started_at": started, "run_s": run_s}, None
    run_s = time.monotonic() - t0
    fields, blob = _encode_value(value)
    fields.update({"outcome": protocol.OK, "started_at": started, "run_s": run_s})
    return fields, blob


def _take_output():
    """(the tail of what the task wrote to fds 1 and 2, whether it was cut); empties the log file for the next task.

    fds 1 and 2 share one file offset, so the offset is the size written; nothing written costs no read.
    """
    _flush_output()
    try:
        size = os.lseek(1, 0, os.SEEK_CUR)
        tail = read_tail(1, size)
        if size:
            os.ftruncate(1, 0)
            os.lseek(1, 0, os.SEEK_SET)
    except OSError:  # the task closed or replaced fd 1
        return "", False
    return tail


def read_tail(fd, size):
    """(the last LOG_TAIL_BYTES of the size bytes of output in fd, as text; whether it was cut)."""
    if size == 0:
        return "", False
    data = os.pread(fd, LOG_TAIL_BYTES, max(0, size - LOG_TAIL_BYTES))
    return data.decode("utf-8", "replace"), size > LOG_TAIL_BYTES


def _flush_output():
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
