"""The ROUTER socket: runner registry, heartbeats both ways, task/ack/cancel delivery."""
import asyncio
import dataclasses
import logging
import os
import socket
import time

import zmq
import zmq.asyncio
import zmq.auth
from zmq.auth.asyncio import AsyncioAuthenticator

from runners import protocol

log = logging.getLogger("supervisor.broker")
FORGET_LOST_AFTER_S = 300.0  # a lost runner stays listed (state "lost") this long
RECEIVE_BATCH = 512          # messages taken off the socket at once


@dataclasses.dataclass(eq=False)
class RunnerInfo:
    """What the supervisor knows of one connected runner."""
    id: str
    worker: str
    python: str
    python_full: str
    host: str
    pid: int
    slots: int
    joined_at: float
    last_seen: float
    leases: set = dataclasses.field(default_factory=set)   # {(task_id, attempt)}
    lost: bool = False
    lost_at: float | None = None
    draining: bool = False
    resources: dict = dataclasses.field(default_factory=dict)
    tasks_done: int = 0
    tasks_failed: int = 0
    prefetch: int = 0       # tasks it accepts beyond its slots, queued on the runner (credit-based prefetch)

    @property
    def free_slots(self) -> int:
        if self.lost or self.draining:
            return 0
        return self.slots - len(self.leases)

    @property
    def credit(self) -> int:
        """Tasks it may still be given: free slots plus the prefetch it asked for."""
        if self.lost or self.draining:
            return 0
        return self.slots + self.prefetch - len(self.leases)

    @property
    def state(self) -> str:
        if self.lost:
            return "lost"
        return "busy" if self.leases else "idle"


class Broker:
    """Owns the ROUTER socket; calls the dispatcher for READY, RESULT and lost runners."""

    def __init__(self, settings, clock=time.monotonic):
        self.settings = settings
        self.clock = clock
        self.dispatcher = None
        self.runners: dict[str, RunnerInfo] = {}
        self.ctx = zmq.asyncio.Context()
        self.sock = None
        self._readable = asyncio.Event()  # the socket may have messages (set from its file descriptor)
        self._waiting_sends = 0   # sends parked until the socket takes them (they keep their order)
        self.endpoint = None
        self._tasks: list[asyncio.Task] = []
        self.events = None
        self.auth = None

    async def start(self, dispatcher) -> None:
        self.dispatcher = dispatcher
        # a plain (non-asyncio) socket watched through its file descriptor: sends and receives that need no
        # wait cost no future; it shares the asyncio context the CURVE authenticator serves
        self.sock = zmq.Context.shadow(self.ctx.underlying).socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.ROUTER_HANDOVER, 1)   # a reconnecting runner takes its identity back
        self.sock.setsockopt(zmq.ROUTER_MANDATORY, 1)  # tell us when a runner is not connected
        if self.settings.curve_secret_key:
            self._start_curve()
        self.sock.bind(self.settings.zmq_bind)
        asyncio.get_running_loop().add_reader(self.sock.getsockopt(zmq.FD), self._readable.set)
        bound = self.sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self.endpoint = bound.replace("0.0.0.0", socket.gethostname())
        log.info("ZeroMQ ROUTER bound at %s", bound)
        self._tasks = [asyncio.create_task(self._receive_loop(), name="broker-receive"),
                       asyncio.create_task(self._heartbeat_loop(), name="broker-heartbeat")]

    def _start_curve(self) -> None:
        """CURVE: encrypt every runner link and admit only runners whose public key is authorized."""
        keys_dir = self.settings.path(self.settings.curve_authorized_keys)
        try:
            public, secret = zmq.auth.load_certificate(self.settings.path(self.settings.curve_secret_key))
        except (OSError, ValueError) as exc:
            raise RuntimeError(f"cannot load curve_secret_key {self.settings.curve_secret_key}: {exc}") from None
        if not secret:
            raise RuntimeError(f"{self.settings.curve_secret_key} holds no secret key (use the .key_secret file)")
        if not os.path.isdir(keys_dir):
            raise RuntimeError(f"curve_authorized_keys {keys_dir} is not a directory of runner public keys")
        self.auth = AsyncioAuthenticator(self.ctx)
        self.auth.start()
        self.auth.configure_curve(domain="*", location=keys_dir)
        self.sock.curve_secretkey, self.sock.curve_publickey, self.sock.curve_server = secret, public, True
        log.info("CURVE on: runners must hold a key listed in %s (%d keys)", keys_dir,
                 len([f for f in os.listdir(keys_dir) if f.endswith(".key")]))

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.sock is not None:
            asyncio.get_running_loop().remove_reader(self.sock.getsockopt(zmq.FD))
            self.sock.close(0)
        if self.auth is not None:
            self.auth.stop()
        self.ctx.term()

    # -- registry ----------------------------------------------------------
    def live_runners(self, worker: str) -> list[RunnerInfo]:
        return [r for r in self.runners.values() if r.worker == worker and not r.lost]

    def live_runner_count(self, worker: str) -> int:
        return sum(1 for r in self.runners.values() if r.worker == worker and not r.lost and not r.draining)

    def best_runner(self, worker: str) -> RunnerInfo | None:
        """The live runner of worker with the most free slots, or None if all are full."""
        best = None
        for r in self.runners.values():
            # runners with a free slot first (most free first), then prefetch credit
            if r.worker == worker and r.credit > 0 and (best is None or (r.free_slots, r.credit) >
                                                          (best.free_slots, best.credit)):
                best = r
        return best

    # -- sending -----------------------------------------------------------
    async def _send(self, runner_id: str, command: bytes, header: dict, blobs=(), frames=None) -> bool:
        frames = [runner_id.encode()] + (frames or protocol.encode(command, header, blobs))
        try:
            if not self._waiting_sends and self._send_now(frames):  # the common case: the socket takes it at once
                return True
            self._waiting_sends += 1
            try:  # the runner's queue is full (high-water mark): wait for room, keeping the order of sends
                while True:
                    await asyncio.sleep(0.005)
                    if self._send_now(frames):
                        return True
            finally:
                self._waiting_sends -= 1
        except zmq.ZMQError as exc:  # EHOSTUNREACH: not connected (right now); liveness decides what follows
            log.debug("cannot send %s to runner %s: %s", command.decode(), runner_id, exc)
            return False

    def _send_now(self, frames: list) -> bool:
        """Send without waiting; False if the runner's queue is full (zmq.Again)."""
        try:
            self.sock.send_multipart(frames, zmq.NOBLOCK)
            return True
        except zmq.Again:
            return False
        finally:
            self._poke()

    def _poke(self) -> None:
        """Wake the receive loop if messages are waiting. The descriptor only signals edges, and any operation
        on the socket (a send too) may consume one, so this is checked after each of them."""
        if self.sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
            self._readable.set()

    async def send_tasks(self, runner: RunnerInfo, items: list[tuple[dict, bytes]]) -> None:
        """One TASK message carrying every (header, function body) leased to this runner in one dispatch; each
        header's kwargs is the task's stored JSON text."""
        bodies: dict[bytes, int] = {}
        headers = []
        for header, body in items:
            headers.append(dict(header, blob=bodies.setdefault(body, len(bodies))))
        await self._send(runner.id, protocol.TASK, {}, frames=protocol.encode_tasks(headers, bodies))

    async def send_acks(self, runner_id: str | None, acks: list[list]) -> None:
        """One ACK message for every (task_id, attempt) whose result from this runner is stored."""
        if runner_id and acks:
            await self._send(runner_id, protocol.ACK, {"acks": acks})

    async def send_cancel(self, runner: RunnerInfo, task_id: str, attempt: int) -> None:
        await self._send(runner.id, protocol.CANCEL, {"task_id": task_id, "attempt": attempt})

    # -- receiving ---------------------------------------------------------
    async def _receive_loop(self) -> None:
        """Handle messages in arrival order; RESULTs that arrived together are recorded in one commit."""
        while True:
            batch = []
            while len(batch) < RECEIVE_BATCH:
                try:
                    batch.append(self.sock.recv_multipart(zmq.NOBLOCK))
                except zmq.Again:
                    break
            if not batch:
                self._readable.clear()
                self._poke()
                await self._readable.wait()
                continue
            results = []
            for frames in batch:
                try:
                    decoded = self._decode(frames)
                    if decoded is None:
                        continue
                    runner_id, runner, command, header, blobs = decoded
                    if command == protocol.RESULT:
                        holder = runner if runner and not runner.lost else None
                        for result in header.get("results") or ():
                            if isinstance(result, dict):
                                index = result.pop("blob", None)
                                blob = blobs[index] if isinstance(index, int) and 0 <= index < len(blobs) else None
                                result["runner_id"] = runner_id
                                results.append((holder, result, blob))
                        continue
                    if results:
                        await self.dispatcher.on_results(results)
                        results = []
                    await self._handle(runner_id, runner, command, header)
                except Exception:
                    log.exception("handling a runner message failed")
            if results:
                try:
                    await self.dispatcher.on_results(results)
                except Exception:
                    log.exception("recording results failed")

    def _decode(self, frames: list[bytes]):
        runner_id = frames[0].decode("utf-8", "replace")
        try:
            command, header, blobs = protocol.decode(frames[1:])
        except protocol.ProtocolError as exc:
            log.warning("runner %s sent a malformed message: %s", runner_id, exc)
            return None
        runner = self.runners.get(runner_id)
        if runner is not None and not runner.lost:
            runner.last_seen = self.clock()
        return runner_id, runner, command, header, blobs

    async def _handle(self, runner_id: str, runner, command: bytes, header: dict) -> None:
        if command == protocol.READY:
            await self._on_ready(runner_id, header)
        elif command == protocol.HEARTBEAT:
            if runner is None or runner.lost:
                await self._send(runner_id, protocol.DISCONNECT, {"reason": "unknown or lost runner"})
                return
            runner.resources = header.get("resources") or {}
            if header.get("draining") and not runner.draining:
                log.info("runner %s of worker %s is draining", runner.id, runner.worker)
                runner.draining = True
        else:
            log.warning("runner %s sent unexpected %s", runner_id, command.decode())

    async def _on_ready(self, runner_id: str, header: dict) -> None:
        worker, python = header.get("worker"), header.get("python")
        conf = self.settings.workers.get(worker)
        if conf is None or python != conf.python:
            why = (f"unknown worker {worker!r}; known: {sorted(self.settings.workers)}" if conf is None else
                   f"worker {worker} runs Python {conf.python}, this runner runs {python}")
            log.error("refusing runner %s: %s", runner_id, why)
            await self._send(runner_id, protocol.STOP, {"reason": why})
            return
        now = self.clock()
        old = self.runners.get(runner_id)
        runner = RunnerInfo(id=runner_id, worker=worker, python=python,
                            python_full=str(header.get("python_full", python)), host=str(header.get("host")),
                            pid=int(header.get("pid") or 0), slots=int(header.get("slots") or 1),
                            prefetch=max(0, int(header.get("prefetch") or 0)),
                            joined_at=now, last_seen=now, draining=bool(header.get("draining")))
        if old is not None and not old.lost:
            runner.leases, runner.joined_at = old.leases, old.joined_at
            runner.tasks_done, runner.tasks_failed = old.tasks_done, old.tasks_failed
        self.runners[runner_id] = runner
        log.info("runner %s joined worker %s (Python %s, host %s, pid %s, %d slots)", runner_id, worker,
                 runner.python_full, runner.host, runner.pid, runner.slots,
                 extra={"runner": runner_id, "worker": worker, "event": "runner_joined"})
        self._emit("runner_joined", runner)
        await self._send(runner_id, protocol.HEARTBEAT, {})
        await self.dispatcher.on_runner_ready(runner, header.get("running") or [], header.get("unacked") or [])

    # -- liveness ----------------------------------------------------------
    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.heartbeat_s)
            try:
                await self.tick(self.clock())
            except Exception:
                log.exception("broker tick failed")

    async def tick(self, now: float) -> None:
        """Heartbeat every live runner; mark runners silent for `liveness` periods as lost."""
        limit = self.settings.heartbeat_s * self.settings.liveness
        for runner in list(self.runners.values()):
            if runner.lost:
                if now - runner.lost_at > FORGET_LOST_AFTER_S:
                    del self.runners[runner.id]
                continue
            if now - runner.last_seen > limit:
                runner.lost, runner.lost_at = True, now
                log.warning("runner %s of worker %s lost: silent for %.1fs", runner.id, runner.worker,
                            now - runner.last_seen,
                            extra={"runner": runner.id, "worker": runner.worker, "event": "runner_lost"})
                self._emit("runner_lost", runner)
                await self.dispatcher.on_runner_lost(runner)
            else:
                await self._send(runner.id, protocol.HEARTBEAT, {})

    def _emit(self, name: str, runner: RunnerInfo) -> None:
        if self.events is not None:
            self.events(name, None, runner=runner)
