"""callback_url: POST a task's final record once it has ended, until one POST succeeds.

Delivery survives a supervisor restart: a task whose callback has not been
answered with 2xx (callback_sent_at IS NULL) is retried at the next start.
After `ATTEMPTS` failures the last error is stored and delivery stops.
"""
import asyncio
import logging

import aiohttp

from supervisor.views import task_view

log = logging.getLogger("supervisor.callbacks")
ATTEMPTS = 5
TIMEOUT_S = 10.0
BACKOFF_S = 1.0


class Callbacks:
    def __init__(self, store, backoff_s: float = BACKOFF_S):
        self.store = store
        self.backoff_s = backoff_s
        self.queue: asyncio.Queue[str] = asyncio.Queue()
        self.session: aiohttp.ClientSession | None = None
        self.tasks: set[asyncio.Task] = set()
        self._runner: asyncio.Task | None = None

    async def start(self) -> None:
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT_S))
        for task_id in await self.store.pending_callbacks():
            self.queue.put_nowait(task_id)
        self._runner = asyncio.create_task(self._run(), name="callbacks")

    def on_event(self, name: str, task=None, **data) -> None:
        if name == "finished" and task is not None and task.callback_url:
            self.queue.put_nowait(task.id)

    async def _run(self) -> None:
        while True:
            task_id = await self.queue.get()
            job = asyncio.create_task(self._deliver(task_id))
            self.tasks.add(job)
            job.add_done_callback(self.tasks.discard)

    async def _deliver(self, task_id: str) -> None:
        rec = await self.store.get_task(task_id)
        if rec is None or not rec["callback_url"]:
            return
        body, error = task_view(rec), None
        for attempt in range(1, ATTEMPTS + 1):
            try:
                async with self.session.post(rec["callback_url"], json=body) as resp:
                    if 200 <= resp.status < 300:
                        await self.store.mark_callback(task_id, None)
                        log.info("task %s: callback to %s answered %d", task_id, rec["callback_url"], resp.status)
                        return
                    error = f"HTTP {resp.status}"
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
                error = f"{type(exc).__name__}: {exc}"
            log.warning("task %s: callback attempt %d to %s failed: %s", task_id, attempt, rec["callback_url"], error)
            if attempt < ATTEMPTS:
                await asyncio.sleep(self.backoff_s * 2 ** (attempt - 1))
        await self.store.mark_callback(task_id, error)

    async def stop(self) -> None:
        if self._runner is not None:
            self._runner.cancel()
        for job in list(self.tasks):
            job.cancel()
        await asyncio.gather(*self.tasks, *(t for t in [self._runner] if t), return_exceptions=True)
        if self.session is not None:
            await self.session.close()
