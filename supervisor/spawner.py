"""Local runner subprocesses: start one per spawned worker, restart with backoff, stop on exit."""
import asyncio
import logging
import os
import signal
import sys
import time

from supervisor import ROOT

log = logging.getLogger("supervisor.spawner")
BACKOFF_FIRST_S, BACKOFF_MAX_S = 0.5, 30.0
STABLE_AFTER_S = 60.0  # a runner that lived this long restarts without backoff


class Spawner:
    """Keeps one local runner process alive per spawned worker."""

    def __init__(self, settings, endpoint: str):
        self.settings = settings
        self.endpoint = endpoint
        self.procs: dict[str, asyncio.subprocess.Process] = {}
        self.restarts: dict[str, int] = {}
        self._stopping = False
        self._tasks: list[asyncio.Task] = []

    def command(self, worker: str) -> list[str]:
        conf = self.settings.workers[worker]
        interpreter = conf.interpreter or sys.executable
        if not os.path.isabs(interpreter):
            interpreter = os.path.join(ROOT, interpreter)
        return [interpreter, os.path.join(ROOT, "runners", "run.py"), "--worker", worker,
                "--connect", self.endpoint, "--concurrency", str(conf.concurrency), "--prefetch", str(conf.prefetch),
                "--heartbeat-s", str(self.settings.heartbeat_s), "--liveness", str(self.settings.liveness),
                "--exit-when-orphaned"]

    def start(self, workers: list[str]) -> None:
        for worker in workers:
            conf = self.settings.workers[worker]
            interpreter = self.command(worker)[0]
            if not os.access(interpreter, os.X_OK):
                raise FileNotFoundError(f"worker {worker}: interpreter {interpreter} not found; run `make setup` "
                                        f"or set interpreter in [workers.{worker}] of the config")
            self._tasks.append(asyncio.create_task(self._keep_alive(worker), name=f"spawn-{conf.name}"))

    async def _keep_alive(self, worker: str) -> None:
        backoff = BACKOFF_FIRST_S
        while not self._stopping:
            started = time.monotonic()
            # own session: a Ctrl-C at the terminal reaches the supervisor, which stops runners in order
            proc = await asyncio.create_subprocess_exec(*self.command(worker), cwd=ROOT, start_new_session=True)
            self.procs[worker] = proc
            log.info("spawned runner for worker %s (pid %d)", worker, proc.pid)
            code = await proc.wait()
            if self._stopping:
                return
            backoff = BACKOFF_FIRST_S if time.monotonic() - started > STABLE_AFTER_S else backoff
            self.restarts[worker] = self.restarts.get(worker, 0) + 1
            log.warning("runner for worker %s (pid %d) exited with code %s; restarting in %.1fs",
                        worker, proc.pid, code, backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX_S)

    async def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM every runner (they finish what they run), SIGKILL what is left after timeout."""
        self._stopping = True
        live = [p for p in self.procs.values() if p.returncode is None]
        for p in live:
            try:
                p.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
        try:
            await asyncio.wait_for(asyncio.gather(*(p.wait() for p in live)), timeout)
        except asyncio.TimeoutError:
            for p in live:
                if p.returncode is None:
                    log.warning("runner pid %d did not stop in %.0fs; killing it", p.pid, timeout)
                    p.kill()
            await asyncio.gather(*(p.wait() for p in live))
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
