"""Queues per worker, leases on runners, retries and deadlines.

The dispatcher keeps the not-yet-ended tasks in memory (reloaded from the
store at start) and changes a task's status only through Store.transition,
under one lock, so memory and the SQLite file agree. `tick(now)` does the
time-driven work (retry backoff, WorkerUnavailable, leases left over from a
previous supervisor) and can be called with any clock.
"""
import asyncio
import dataclasses
import heapq
import itertools
import json
import logging
import signal
import time
from collections import OrderedDict

from runners import protocol
from supervisor import tasks
from supervisor.store import Store
from supervisor.translog import transitions

log = logging.getLogger("supervisor.dispatch")
FUNCTION_CACHE = 256  # function bodies kept in memory for dispatch
RECENT_RESULTS = 1024  # outcomes kept in memory for long-polls that were waiting when their task ended
EXPIRY_SCAN_S = 1.0   # how often queues of workers without runners are checked for WorkerUnavailable
TICK_S = 0.1          # how often time-driven work (backoff, WorkerUnavailable, orphan leases) runs
DISPATCH_LINGER_S = 0.001  # under load, dispatch rounds are this far apart so each leases more tasks at once


@dataclasses.dataclass(eq=False)
class Active:
    """A task that has not ended: queued (NOT RUN YET) or leased to a runner (IN FLIGHT)."""
    id: str
    worker: str
    priority: int
    order: int
    status: str
    attempts: int
    function_hash: str
    kwargs: str                    # JSON text, passed through untouched
    timeout_s: float | None
    max_retries: int
    retry_on_error: bool
    unavailable_timeout_s: float
    queued_at: float
    submitted_at: float = 0.0
    not_before: float | None = None
    callback_url: str | None = None
    runner: str | None = None      # the runner holding the lease
    lease_deadline: float | None = None  # only for leases inherited from a previous supervisor
    crashes: list = dataclasses.field(default_factory=list)
    planned: bool = False          # a transition for it is waiting in the current plan


def signal_name(exit_code) -> str | None:
    """SIGSEGV for a process killed by signal 11 (exit code -11); None for a plain exit."""
    if exit_code is None or exit_code >= 0:
        return None
    try:
        return signal.Signals(-exit_code).name
    except ValueError:
        return f"signal {-exit_code}"


class Plan:
    """Transitions to commit in one transaction, each with what to do once it has (or has not) applied."""

    def __init__(self):
        self.items: list[tuple[Active, str, dict, object, object]] = []
        self.after: list = []  # coroutines to await once everything is committed (CANCEL sends)
        self.tasks: dict = {}  # runner -> [(TASK header, function body)] to send once committed

    def add(self, task: Active, event: str, fields: dict, applied, stale=None) -> None:
        task.planned = True
        self.items.append((task, event, fields, applied, stale))


class Dispatcher:
    """Assigns queued tasks to runners with free slots and records what comes back."""

    def __init__(self, settings, store: Store, events=None, clock=time.time):
        self.settings = settings
        self.store = store
        self.events = events          # optional sink for lifecycle events (metrics)
        self.clock = clock
        self.broker = None            # set by attach(); sends TASK/ACK/CANCEL
        self.active: dict[str, Active] = {}
        self.ready: dict[str, list] = {w: [] for w in settings.workers}  # heaps of (-priority, order, id)
        self.delayed: list = []       # heap of (not_before, order, id)
        self.no_runner_since: dict[str, float] = {}
        self.orphan_leases = 0        # IN FLIGHT tasks inherited from a previous supervisor, not yet claimed
        self.next_tick = 0.0
        self.next_expiry_scan = 0.0
        self.waiters: dict[str, asyncio.Event] = {}
        self._counts: dict[str, list[int]] = {}  # worker -> [queued, in flight]
        self.recent: OrderedDict[str, dict] = OrderedDict()  # outcome of recently ended tasks (long-poll replies)
        self.functions: OrderedDict[str, bytes] = OrderedDict()
        self.accepting = True         # False while draining: nothing new is dispatched
        self._order = itertools.count()
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()

    def attach(self, broker) -> None:
        self.broker = broker
        now = self.clock()
        for worker in self.settings.workers:
            self.no_runner_since[worker] = now

    # -- intake ------------------------------------------------------------
    async def load(self) -> None:
        """Rebuild the queues from the store after a (re)start."""
        grace = self.settings.heartbeat_s * self.settings.liveness * 3
        now = self.clock()
        for row in await self.store.active_tasks():
            task = self._active_from_row(row)
            if task.status == tasks.IN_FLIGHT:
                task.runner = row["runner"]
                task.lease_deadline = now + grace  # its runner has this long to reconnect and claim it
                self.orphan_leases += 1
            self._track(task)
        log.info("loaded %d unfinished tasks from %s", len(self.active), self.store.path)

    def _active_from_row(self, row: dict) -> Active:
        return Active(
            id=row["id"], worker=row["worker"], priority=row["priority"], order=next(self._order),
            status=row["status"], attempts=row["attempts"], function_hash=row["function_hash"],
            kwargs=row["kwargs"], timeout_s=row["timeout_s"], max_retries=row["max_retries"],
            retry_on_error=bool(row["retry_on_error"]), unavailable_timeout_s=row["unavailable_timeout_s"],
            queued_at=row["queued_at"], submitted_at=row["submitted_at"], not_before=row["not_before"],
            callback_url=row["callback_url"],
            crashes=json.loads(row["crashes"]) if row.get("crashes") else [])

    def add(self, rows: list[dict]) -> None:
        """Queue tasks the store has just made durable."""
        for row in rows:
            self._track(self._active_from_row(row))
        self._wake.set()

    def _track(self, task: Active) -> None:
        self.active[task.id] = task
        self._count(task.worker, task.status, +1)
        if task.status == tasks.NOT_RUN_YET:
            self._enqueue(task)

    def _enqueue(self, task: Active) -> None:
        if task.not_before and task.not_before > self.clock():
            heapq.heappush(self.delayed, (task.not_before, task.order, task.id))
        else:
            heapq.heappush(self.ready.setdefault(task.worker, []), (-task.priority, task.order, task.id))

    def _count(self, worker: str, status: str, delta: int) -> None:
        """Keep the per-worker counts of queued and in-flight tasks (read on every /workers and scrape)."""
        pair = self._counts.setdefault(worker, [0, 0])
        pair[status == tasks.IN_FLIGHT] += delta

    def queued(self, worker: str) -> int:
        return self._counts.get(worker, [0, 0])[0]

    def in_flight(self, worker: str) -> int:
        return self._counts.get(worker, [0, 0])[1]

    def counts(self) -> dict[str, tuple[int, int]]:
        """{worker: (queued, in flight)}."""
        return {w: (q, f) for w, (q, f) in self._counts.items()}

    # -- the loop ----------------------------------------------------------
    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        """Dispatch whenever something changed; do the time-driven work a few times a second."""
        loop = asyncio.get_running_loop()

        def tick():  # a timer, not a timeout per wait: waking up costs no task or timer of its own
            self._wake.set()
            self._ticker = loop.call_later(TICK_S, tick)

        tick()
        last = 0.0
        try:
            while True:
                await self._wake.wait()
                wait = last + DISPATCH_LINGER_S - loop.time()
                if wait > 0:  # the last round leased tasks just now: let more arrive (when idle, no wait)
                    await asyncio.sleep(wait)
                self._wake.clear()
                try:
                    now = self.clock()
                    if now >= self.next_tick:
                        self.next_tick = now + TICK_S
                        await self.tick(now)
                    if await self.pump():
                        last = loop.time()
                except Exception:  # keep dispatching; the failure is logged with its traceback
                    log.exception("dispatch loop iteration failed")
        finally:
            self._ticker.cancel()

    async def _commit(self, plan: Plan) -> None:
        """Commit every planned transition in one transaction, then apply each in memory (caller holds the lock)."""
        if plan.items:
            items, plan.items = plan.items, []
            try:
                applied = await self.store.transitions([(t.id, event, t.attempts, fields)
                                                        for t, event, fields, _, _ in items])
            except Exception:  # the transaction failed: nothing of the plan happened
                for task, event, _, _, on_stale in items:
                    task.planned = False
                    if on_stale is not None:
                        on_stale()
                    if event == "dispatch":
                        self._enqueue(task)  # it was taken off its queue for this plan
                raise
            for (task, event, _, on_applied, on_stale), ok in zip(items, applied):
                task.planned = False
                if ok:
                    on_applied()
                else:
                    log.warning("task %s: %s found the row changed; leaving it", task.id, event)
                    if on_stale is not None:
                        on_stale()
            transitions.write()  # now, before the long-polls these transitions woke can answer

    async def _after(self, plan: Plan) -> None:
        """What waits for the commit: messages to runners (one TASK message per runner)."""
        for runner, items in plan.tasks.items():
            await self.broker.send_tasks(runner, items)
        plan.tasks = {}
        for send in plan.after:
            await send
        plan.after = []

    async def pump(self) -> int:
        """Lease ready tasks to the runners with the most free slots, highest priority first; one commit.
        Returns how many transitions were planned."""
        plan = Plan()
        async with self._lock:
            await self._plan_ready(plan)
            planned = len(plan.items)
            await self._commit(plan)
        await self._after(plan)
        return planned

    async def _plan_ready(self, plan: Plan) -> None:
        """Plan leases of ready tasks to runners with credit (caller holds the lock)."""
        if not self.accepting or self.broker is None:
            return
        now = self.clock()
        for worker, heap in self.ready.items():
            while heap:
                runner = self.broker.best_runner(worker)
                if runner is None:
                    break
                _, _, task_id = heapq.heappop(heap)
                task = self.active.get(task_id)
                if task is None or task.status != tasks.NOT_RUN_YET or task.planned:
                    continue  # cancelled or ended while queued
                body = await self._function_body(task.function_hash)
                self._plan_dispatch(plan, task, runner, body, now)

    def _plan_dispatch(self, plan: Plan, task: Active, runner, body: bytes, now: float) -> None:
        attempt = task.attempts + 1
        lease = (task.id, attempt)
        runner.leases.add(lease)  # reserve the slot now so the next pick sees it taken

        def applied():
            task.attempts = attempt
            self._count(task.worker, tasks.NOT_RUN_YET, -1)
            self._count(task.worker, tasks.IN_FLIGHT, +1)
            task.status, task.runner, task.lease_deadline = tasks.IN_FLIGHT, runner.id, None
            self._log(task, "dispatch", runner=runner.id)
            self._emit("dispatched", task, wait_s=now - task.queued_at)
            plan.tasks.setdefault(runner, []).append(({
                "task_id": task.id, "attempt": attempt, "function_hash": task.function_hash,
                "kwargs": task.kwargs, "timeout_s": task.timeout_s}, body))

        def stale():
            runner.leases.discard(lease)

        plan.add(task, "dispatch", {"attempts": attempt, "started_at": now, "runner": runner.id, "not_before": None},
                 applied, stale)

    async def _function_body(self, function_hash: str) -> bytes:
        body = self.functions.get(function_hash)
        if body is None:
            body = await self.store.function_body(function_hash)
            if body is None:
                return b""  # not stored (cannot happen for a stored task): the runner reports UnpicklingError
            self.functions[function_hash] = body
            if len(self.functions) > FUNCTION_CACHE:
                self.functions.popitem(last=False)
        else:
            self.functions.move_to_end(function_hash)
        return body

    async def tick(self, now: float) -> None:
        """Time-driven work: due retries become ready, tasks with no runner expire, orphan leases end."""
        while self.delayed and self.delayed[0][0] <= now:
            _, _, task_id = heapq.heappop(self.delayed)
            task = self.active.get(task_id)
            if task is not None and task.status == tasks.NOT_RUN_YET:
                heapq.heappush(self.ready.setdefault(task.worker, []), (-task.priority, task.order, task.id))
                self._wake.set()
        if self.broker is not None:
            for worker in self.settings.workers:
                if self.broker.live_runner_count(worker):
                    self.no_runner_since.pop(worker, None)
                else:
                    self.no_runner_since.setdefault(worker, now)
        scan_expiry = bool(self.no_runner_since) and now >= self.next_expiry_scan
        if not scan_expiry and not self.orphan_leases:
            return
        plan = Plan()
        async with self._lock:
            if scan_expiry:  # once a second: a runnerless worker's queue may be long
                self.next_expiry_scan = now + EXPIRY_SCAN_S
            for worker, since in (self.no_runner_since.items() if scan_expiry else ()):
                for task in self._queued_of(worker):
                    waited_from = max(task.queued_at, since)
                    if now - waited_from >= task.unavailable_timeout_s:
                        self._plan_expire(plan, task, now - waited_from)
            if self.orphan_leases:
                for task in list(self.active.values()):
                    if (task.status == tasks.IN_FLIGHT and task.lease_deadline is not None
                            and now >= task.lease_deadline and not task.planned):
                        self.orphan_leases -= 1
                        task.lease_deadline = None
                        self._lost(plan, task, "its runner did not come back after the supervisor restarted")
            await self._commit(plan)
        await self._after(plan)

    def _queued_of(self, worker: str):
        """The NOT RUN YET tasks of a worker (ready or waiting for their backoff)."""
        seen = set()
        for _, _, task_id in list(self.ready.get(worker, ())) + [e for e in self.delayed]:
            task = self.active.get(task_id)
            if (task is not None and task.worker == worker and task.status == tasks.NOT_RUN_YET
                    and not task.planned and task_id not in seen):
                seen.add(task_id)
                yield task

    def _plan_expire(self, plan: Plan, task: Active, waited: float) -> None:
        error = {"type": tasks.WORKER_UNAVAILABLE, "traceback": "",
                 "message": f"no live runner of worker {task.worker!r} for {waited:.1f}s "
                            f"(unavailable_timeout_s={task.unavailable_timeout_s:g}); start a runner "
                            f"for it or raise unavailable_timeout_s"}
        self._end(plan, task, "expire", error=json.dumps(error))

    # -- what runners tell us ---------------------------------------------
    async def on_results(self, results: list[tuple]) -> None:
        """Record RESULTs that belong to their task's current attempt (one commit); acknowledge every one."""
        plan = Plan()
        acks = []
        async with self._lock:
            for runner, header, blob in results:
                task_id, attempt = header.get("task_id"), header.get("attempt")
                runner_id = runner.id if runner else header.get("runner_id")
                acks.append((runner_id, task_id, attempt))
                if runner is not None:
                    runner.leases.discard((task_id, attempt))
                task = self.active.get(task_id)
                if task is None or task.status != tasks.IN_FLIGHT or task.attempts != attempt or task.planned:
                    log.info("task %s attempt %s: dropping a stale %s result from runner %s",
                             task_id, attempt, header.get("outcome"), runner_id)
                    self._emit("stale_result", None)
                else:
                    self._record(plan, task, runner, header, blob)
            await self._plan_ready(plan)  # the slots these results freed: leased in the same commit
            await self._commit(plan)
        await self._after(plan)
        if self.broker is not None:
            by_runner: dict[str, list] = {}
            for runner_id, task_id, attempt in acks:
                by_runner.setdefault(runner_id, []).append([task_id, attempt])
            for runner_id, items in by_runner.items():
                await self.broker.send_acks(runner_id, items)
        self._wake.set()

    def _record(self, plan: Plan, task: Active, runner, header: dict, blob: bytes | None) -> None:
        outcome = header.get("outcome")
        now = self.clock()
        common = {"finished_at": now, "run_s": header.get("run_s"), "logs": header.get("logs", ""),
                  "logs_truncated": int(bool(header.get("logs_truncated")))}
        if header.get("started_at"):  # when the child really started it (the runner may have queued it)
            common["started_at"] = header["started_at"]
        if outcome == protocol.OK:
            if runner is not None:
                runner.tasks_done += 1
            self._end(plan, task, "succeed", result=header.get("result_json", "null"),
                      result_repr=header.get("result_repr"), result_dill=blob, **common)
        elif outcome == protocol.REFUSED:
            # the runner never started it: give the attempt back
            self._requeue(plan, task, "refused by a stopping runner", delay=0.0, refund=True)
        elif outcome == protocol.CANCELLED:
            self._end(plan, task, "cancel_running", **common)
        else:
            if runner is not None:
                runner.tasks_failed += 1
            error = header.get("error") or {"type": "Error", "message": "no error details", "traceback": ""}
            self._failed(plan, task, error, common, runner, header.get("exit_code"))

    def _failed(self, plan: Plan, task: Active, error: dict, common: dict, runner, exit_code=None) -> None:
        kind = error.get("type")
        if kind == protocol.PROCESS_DIED:
            crashes = task.crashes + [{"attempt": task.attempts, "runner": runner.id if runner else None,
                                       "at": self.clock(), "message": error.get("message"),
                                       "exit_code": exit_code, "signal": signal_name(exit_code)}]
            task.crashes = crashes
            if len(crashes) < self.settings.poison_crashes:
                self._requeue(plan, task, f"its process crashed: {error.get('message')}", crashes=json.dumps(crashes))
                return
            error = dict(error, message=f"{error.get('message')}; quarantined after {len(crashes)} crashes "
                                        f"(poison_crashes={self.settings.poison_crashes})")
            common["crashes"] = json.dumps(crashes)
        elif task.retry_on_error and kind != protocol.UNPICKLING and task.attempts <= task.max_retries:
            self._requeue(plan, task, f"{kind}: {error.get('message')} (retry_on_error)")
            return
        self._end(plan, task, "fail", error=json.dumps(error), **common)

    async def on_runner_ready(self, runner, running: list, unacked: list) -> None:
        """A runner (re)registered: adopt the leases it still holds, cancel stale ones, requeue what it lost."""
        claimed = {tuple(x) for x in running} | {tuple(x) for x in unacked}
        plan = Plan()
        async with self._lock:
            for task_id, attempt in claimed:
                task = self.active.get(task_id)
                if task is not None and task.status == tasks.IN_FLIGHT and task.attempts == attempt:
                    if task.runner != runner.id:
                        log.info("task %s attempt %s: adopted by runner %s", task_id, attempt, runner.id)
                    if task.lease_deadline is not None:
                        self.orphan_leases -= 1
                    task.runner, task.lease_deadline = runner.id, None
                    runner.leases.add((task_id, attempt))
                elif [task_id, attempt] in running:
                    runner.leases.add((task_id, attempt))  # busy until its cancel is confirmed
                    plan.after.append(self.broker.send_cancel(runner, task_id, attempt))
            for task in list(self.active.values()):
                if (task.status == tasks.IN_FLIGHT and task.runner == runner.id and not task.planned
                        and (task.id, task.attempts) not in claimed and task.lease_deadline is None):
                    self._lost(plan, task, "its runner re-registered without it")
            await self._commit(plan)
        await self._after(plan)
        self._wake.set()

    async def on_runner_lost(self, runner) -> None:
        plan = Plan()
        async with self._lock:
            for task_id, attempt in list(runner.leases):
                task = self.active.get(task_id)
                if (task is not None and task.status == tasks.IN_FLIGHT and task.attempts == attempt
                        and not task.planned):
                    self._lost(plan, task, f"runner {runner.id} was lost")
            runner.leases.clear()
            await self._commit(plan)
        self._wake.set()

    def _lost(self, plan: Plan, task: Active, why: str) -> None:
        """The task's runner is gone: run it again, or fail it once retries are used up."""
        self._emit("runner_lost_task", task)
        if task.attempts > task.max_retries:
            error = {"type": tasks.RUNNER_LOST, "traceback": "",
                     "message": f"{why}; {task.attempts} attempts made (max_retries={task.max_retries})"}
            self._end(plan, task, "fail", error=json.dumps(error), finished_at=self.clock())
        else:
            self._requeue(plan, task, why)

    # -- transitions -------------------------------------------------------
    def _requeue(self, plan: Plan, task: Active, why: str, delay: float | None = None, refund: bool = False,
                 **fields) -> None:
        now = self.clock()
        if delay is None:
            delay = min(self.settings.retry_backoff_s * 2 ** max(task.attempts - 1, 0),
                        self.settings.retry_backoff_max_s)
        attempts = task.attempts - 1 if refund else task.attempts

        def applied():
            self._count(task.worker, task.status, -1)
            self._count(task.worker, tasks.NOT_RUN_YET, +1)
            task.status, task.runner, task.attempts = tasks.NOT_RUN_YET, None, attempts
            task.queued_at, task.not_before, task.lease_deadline = now, (now + delay if delay else None), None
            self._enqueue(task)
            self._log(task, "requeue", reason=why, delay_s=round(delay, 3))
            self._emit("requeued", task)

        plan.add(task, "requeue", dict(queued_at=now, not_before=now + delay if delay else None, attempts=attempts,
                                       **fields), applied)

    def _end(self, plan: Plan, task: Active, event: str, **fields) -> None:
        fields.setdefault("finished_at", self.clock())

        def applied():
            self._count(task.worker, task.status, -1)
            task.status = tasks.TRANSITIONS[event][1]
            self.active.pop(task.id, None)
            reason = json.loads(fields["error"])["type"] if fields.get("error") else None
            self._log(task, event, reason=reason)
            self._emit("finished", task, status=task.status, error_type=reason, run_s=fields.get("run_s"),
                       latency_s=fields["finished_at"] - task.submitted_at if task.submitted_at else None)
            waiter = self.waiters.pop(task.id, None)
            if waiter is not None:
                self.recent[task.id] = {"id": task.id, "status": task.status, "result": fields.get("result"),
                                        "result_repr": fields.get("result_repr"),
                                        "result_dill": fields.get("result_dill"), "error": fields.get("error")}
                if len(self.recent) > RECENT_RESULTS:
                    self.recent.popitem(last=False)
                waiter.set()

        plan.add(task, event, fields, applied)

    async def cancel(self, task_id: str) -> str | None:
        """Cancel a task that has not ended; returns its new status, or None if it had already ended."""
        plan = Plan()
        async with self._lock:
            task = self.active.get(task_id)
            if task is None or task.planned:
                return None
            if task.status == tasks.NOT_RUN_YET:
                self._end(plan, task, "cancel_queued")
            else:
                runner_id, attempt = task.runner, task.attempts
                self._end(plan, task, "cancel_running")
                runner = self.broker.runners.get(runner_id) if self.broker else None
                if runner is not None:
                    plan.after.append(self.broker.send_cancel(runner, task_id, attempt))
            await self._commit(plan)
        await self._after(plan)
        return task.status if task.status in tasks.END_STATUSES else None

    async def wait_finished(self, task_id: str, timeout: float) -> None:
        """Return when the task has ended or timeout seconds have passed."""
        if task_id not in self.active or timeout <= 0:
            return
        event = self.waiters.setdefault(task_id, asyncio.Event())
        try:
            async with asyncio.timeout(timeout):  # no task of its own, unlike wait_for: woken a turn sooner
                await event.wait()
        except TimeoutError:
            pass

    def stop_dispatching(self) -> None:
        self.accepting = False

    def leased(self) -> int:
        return sum(1 for t in self.active.values() if t.status == tasks.IN_FLIGHT)

    # -- logging and events ------------------------------------------------
    def _log(self, task: Active, event: str, **extra) -> None:
        _, to_status = tasks.TRANSITIONS[event] if event in tasks.TRANSITIONS else (None, task.status)
        details = " ".join(f"{k}={v}" for k, v in extra.items() if v is not None) if extra else ""
        fields = ({"task_id": task.id, "attempt": task.attempts, "worker": task.worker, "runner": task.runner,
                   "event": event, "status": to_status, **extra} if transitions.json else None)  # JSON lines only
        transitions.line(log, f"task {task.id} attempt {task.attempts} worker {task.worker} runner "
                              f"{task.runner or '-'} -> {to_status} ({event}) {details}", fields)

    def _emit(self, name: str, task: Active | None, **data) -> None:
        if self.events is not None:
            self.events(name, task, **data)
