"""Task statuses, the one transition table every status change goes through, and task ids."""
import os
import time
NOT_RUN_YET = "NOT RUN YET"
IN_FLIGHT = "IN FLIGHT"
DONE = "DONE"
FAILED = "FAILED"
CANCELLED = "CANCELLED"

STATUSES = (NOT_RUN_YET, IN_FLIGHT, DONE, FAILED, CANCELLED)
END_STATUSES = frozenset([DONE, FAILED, CANCELLED])

# event -> (from status, to status). The store applies an event only where the
# row still has the from-status and the expected attempt, so a stale or illegal
# change (a late result of an old attempt, a result after a cancel) is a no-op.
TRANSITIONS = {
    "dispatch": (NOT_RUN_YET, IN_FLIGHT),      # leased to a runner; attempts + 1
    "succeed": (IN_FLIGHT, DONE),
    "fail": (IN_FLIGHT, FAILED),               # the function raised, crashed, timed out, or its runner was lost too often
    "requeue": (IN_FLIGHT, NOT_RUN_YET),       # runner lost, refused, or a retry after an error
    "expire": (NOT_RUN_YET, FAILED),           # WorkerUnavailable
    "cancel_queued": (NOT_RUN_YET, CANCELLED),
    "cancel_running": (IN_FLIGHT, CANCELLED),
}

# Failure types the supervisor itself produces
WORKER_UNAVAILABLE = "WorkerUnavailable"
RUNNER_LOST = "RunnerLost"


def is_final(status: str) -> bool:
    return status in END_STATUSES


def new_id() -> str:
    """32 hex digits: 48 bits of milliseconds since the epoch, then 80 random bits (like a UUIDv7).

    Ids that grow with time are appended at the end of the id index instead of landing on random pages of it,
    which keeps submissions as fast with a million stored tasks as with none.
    """
    global _random
    if len(_random) < 20:
        _random = os.urandom(20 * 1024).hex()  # one system call per thousand ids
    tail, _random = _random[:20], _random[20:]
    return f"{int(time.time() * 1000):012x}{tail}"


_random = ""
