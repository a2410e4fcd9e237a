"""Task statuses and the one transition table every status change goes through."""
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
