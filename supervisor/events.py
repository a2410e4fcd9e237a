"""Lifecycle events, fanned out to whoever listens (metrics, callbacks).

The API, dispatcher and broker call `events(name, task, **data)`; they do not
know who listens. Names: submitted, rejected, dispatched, requeued, finished,
stale_result, runner_lost_task, runner_joined, runner_lost.
"""
import logging

log = logging.getLogger("supervisor.events")


class Events:
    def __init__(self):
        self.listeners = []

    def subscribe(self, listener) -> None:
        self.listeners.append(listener)

    def __call__(self, name: str, task=None, **data) -> None:
        for listener in self.listeners:
            try:
                listener(name, task, **data)
            except Exception:  # a listener's bug must never break a state transition
                log.exception("event listener %r failed on %s", listener, name)
