"""The wire protocol between the supervisor (ROUTER) and its runners (DEALER).

Stdlib only and valid on Python 3.6: the supervisor and every runner import
this one file, so the two ends cannot drift apart.

A message is a list of frames: [VERSION, command, header, *blobs] where the
header is UTF-8 JSON and blobs are opaque bytes (function pickles, result
pickles). The ROUTER side sees the runner's identity frame in front.
"""
import json

VERSION = b"SUP1"

# runner -> supervisor
READY = b"READY"          # {runner_id, worker, python, host, pid, slots, running: [[task_id, attempt]]}
RESULT = b"RESULT"        # {results: [{task_id, attempt, outcome, ..., logs, blob}]}; blobs: result pickles,
                          # each result's "blob" (when present) is the index of its own; no "logs": it printed
                          # nothing
# supervisor -> runner
TASK = b"TASK"            # {tasks: [{task_id, attempt, function_hash, kwargs, timeout_s, blob}]}; blobs: the
                          # distinct function bodies, each task's "blob" is the index of its own
ACK = b"ACK"              # {acks: [[task_id, attempt], ...]}: these results are stored, forget them
CANCEL = b"CANCEL"        # {task_id, attempt}: kill the task's process
DISCONNECT = b"DISCONNECT"  # {reason}: the supervisor does not know you; register again
STOP = b"STOP"            # {}: finish running tasks, then exit
# both ways
HEARTBEAT = b"HEARTBEAT"  # runner: {draining, resources}; supervisor: {}

COMMANDS = frozenset([READY, RESULT, TASK, ACK, CANCEL, DISCONNECT, STOP, HEARTBEAT])

# RESULT outcomes
OK = "ok"                 # header has "result" (JSON) or "result_repr" + blob
ERROR = "error"           # header has "error": {type, message, traceback}
CANCELLED = "cancelled"   # the task was killed after a CANCEL
REFUSED = "refused"       # the runner is stopping and did not start the task: re-queue it

# Failure types produced by the runner itself (beyond the function's own exception class)
PROCESS_DIED = "ProcessDied"
TIMEOUT = "TimeoutError"
UNPICKLING = "UnpicklingError"


class ProtocolError(ValueError):
    """A message that does not follow this protocol."""


def encode(command, header=None, blobs=()):
    """Frames for one message (without the ROUTER identity frame)."""
    if command not in COMMANDS:
        raise ProtocolError("unknown command %r" % (command,))
    body = json.dumps(header or {}, separators=(",", ":")).encode("utf-8")
    return [VERSION, command, body] + list(blobs)


def encode_tasks(tasks, blobs):
    """TASK frames for task headers {task_id, attempt, function_hash, kwargs, timeout_s, blob} whose kwargs is JSON
    text already: it goes in as is, never decoded. Ids and hashes are the supervisor's own (no quoting needed)."""
    parts = ['{"task_id":"%s","attempt":%d,"function_hash":"%s","timeout_s":%s,"blob":%d,"kwargs":%s}' % (
        t["task_id"], t["attempt"], t["function_hash"], json.dumps(t["timeout_s"]), t["blob"], t["kwargs"])
        for t in tasks]
    body = '{"tasks":[' + ",".join(parts) + "]}"
    return [VERSION, TASK, body.encode("utf-8")] + list(blobs)


def decode(frames):
    """(command, header dict, blobs) from frames (without the identity frame)."""
    if len(frames) < 3:
        raise ProtocolError("expected at least 3 frames, got %d" % len(frames))
    version, command, body = frames[0], frames[1], frames[2]
    if version != VERSION:
        raise ProtocolError("protocol version %r, expected %r" % (bytes(version), VERSION))
    command = bytes(command)
    if command not in COMMANDS:
        raise ProtocolError("unknown command %r" % (command,))
    try:
        header = json.loads(bytes(body).decode("utf-8"))
    except ValueError as exc:
        raise ProtocolError("header is not JSON: %s" % exc)
    if not isinstance(header, dict):
        raise ProtocolError("header must be a JSON object")
    return command, header, [bytes(b) for b in frames[3:]]
