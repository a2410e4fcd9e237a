"""A runner: serves one worker, running its tasks in supervised child processes.

    python runners/run.py --worker py36 --connect tcp://127.0.0.1:5555 [--concurrency N]

Valid on Python 3.6 and newer (no asyncio: one blocking zmq poll loop). The
runner heartbeats to the supervisor, reconnects by itself when the supervisor
goes away, and keeps every result until the supervisor acknowledges it.
"""
import argparse
import collections
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import zmq  # noqa: E402

from runners import child, protocol  # noqa: E402
from runners.resources import ResourceProbe  # noqa: E402

log = logging.getLogger("runner")
BATCH_MAX = 32                 # tasks given to one child in one write (only tasks of functions known to be short)
SHORT_RUN_S = 0.002            # a function whose recent runs averaged less than this counts as short
RESULTS_PER_MESSAGE = 256      # RESULTs sent together in one message
RESULT_LINGER_S = 0.001        # while tasks still run, a result waits this long for others to share its message
HOUSEKEEPING_S = 0.05          # how often the loop checks its parent, resends and heartbeats
ACK_GRACE_S = 10.0             # after SIGTERM, how long an idle runner waits for its results' acks
ORPHAN_ACK_GRACE_S = 3600.0    # the same for a runner whose supervisor died: wait for a new one


class Entry(object):
    """A task given to a slot's child: its TASK header, function bytes, place in the batch, and whether it was
    cancelled before it started."""
    __slots__ = ("header", "function_bytes", "index", "cancelled")

    def __init__(self, header, function_bytes, index):
        self.header, self.function_bytes, self.index, self.cancelled = header, function_bytes, index, False

    @property
    def key(self):
        return (self.header["task_id"], self.header["attempt"])


class Slot(object):
    """One long-lived child process and the tasks it was given (the first one is running)."""

    def __init__(self, index, mp, log_dir):
        self.index = index
        self.mp = mp
        self.log_path = os.path.join(log_dir, "slot-%d.log" % index)
        self.proc = self.tasks_out = self.results_in = self.claims = None
        self.loaded = set()    # function hashes this slot's child has been sent
        self.queue = collections.deque()  # Entry objects, in the order the child runs them
        self.deadline = None   # monotonic time the running task must end by, or None

    @property
    def task(self):
        """The TASK header of the task running (or about to run) in the child, or None."""
        return self.queue[0].header if self.queue else None

    @property
    def fd(self):
        return self.results_in.fd if self.results_in is not None else None

    def start(self):
        task_r, task_w = os.pipe()
        result_r, result_w = os.pipe()
        self.loaded = set()
        self.claims = child.Claims(self.mp, BATCH_MAX)
        self.proc = self.mp.Process(target=child.child_main, daemon=True, args=(
            task_r, result_w, self.log_path, self.claims, os.getpid(), (task_w, result_r)))
        self.proc.start()
        os.close(task_r)
        os.close(result_w)
        os.set_blocking(result_r, False)  # the runner takes whatever results are whole and never waits for more
        self.tasks_out, self.results_in = child.Pipe(task_w), child.Pipe(result_r)

    def assign(self, items, now):
        """Give the child a batch of (header, function bytes) in one write; it runs them in order."""
        if self.proc is None:
            self.start()
        self.claims.reset(len(items))
        if len(self.loaded) > child.FUNCTION_CACHE_SIZE:
            self.loaded = set()  # the child may have evicted some: send bytes again (it ignores what it has)
        batch = []
        for index, (header, function_bytes) in enumerate(items):
            fh = header["function_hash"]
            # the child caches loaded functions: send the bytes only the first time (it asks again if it evicted one)
            batch.append((fh, None if fh in self.loaded else function_bytes, header.get("kwargs") or {}))
            self.loaded.add(fh)
            self.queue.append(Entry(header, function_bytes, index))
        try:
            self.tasks_out.send(batch)
        except OSError:  # its child died while idle (nothing of it to report): start a new one
            self.collect_death()
            self.start()
            self.claims.reset(len(items))
            batch = [(fh, function_bytes if fb is None else fb, kw)
                     for (fh, fb, kw), (_, function_bytes) in zip(batch, items)]
            self.loaded = set(fh for fh, _, _ in batch)
            self.tasks_out.send(batch)
        self.next_deadline(now)

    def next_deadline(self, now):
        """The first task in the queue is running: it must end by its timeout from now."""
        timeout = self.queue[0].header.get("timeout_s") if self.queue else None
        self.deadline = now + timeout if timeout else None

    def started(self, entry):
        return self.claims is not None and self.claims.started.value >= entry.index

    def kill(self):
        """SIGKILL the child and its process group; returns its exit code."""
        if self.proc is None:
            return None
        for kill in (os.killpg, os.kill):
            try:
                kill(self.proc.pid, signal.SIGKILL)
            except OSError:
                pass
        self.proc.join(5)
        return self._reap()

    def _reap(self):
        code = self.proc.exitcode
        for fd in (self.tasks_out.fd, self.results_in.fd):
            try:
                os.close(fd)
            except OSError:
                pass
        self.proc = self.tasks_out = self.results_in = None
        return code

    def collect_death(self):
        self.proc.join(5)
        return self._reap()

    def read_logs(self):
        """The tail of the log file of a child that died or was killed (a live child reports its own)."""
        try:
            fd = os.open(self.log_path, os.O_RDONLY)
        except OSError:
            return "", False
        try:
            return child.read_tail(fd, os.fstat(fd).st_size)
        except OSError:
            return "", False
        finally:
            os.close(fd)

    def take_unstarted(self):
        """After the child is gone: the queued tasks behind the one that was running, to be given out again."""
        rest = [(e.header, e.function_bytes) for e in list(self.queue)[1:] if not e.cancelled]
        self.queue.clear()
        self.deadline = None
        return rest


def load_curve(key_path, server_key_path):
    """(public, secret, server public) for a CURVE link, or None for a plain one."""
    if not key_path and not server_key_path:
        return None
    if not (key_path and server_key_path):
        raise SystemExit("error: --curve-key and --curve-server-key go together")
    import zmq.auth
    public, secret = zmq.auth.load_certificate(key_path)
    if not secret:
        raise SystemExit("error: --curve-key %s holds no secret key (use the runner's .key_secret file)" % key_path)
    server, _ = zmq.auth.load_certificate(server_key_path)
    return public, secret, server


def describe_exit(code):
    if code is None:
        return "the task's process vanished"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = "signal %d" % -code
        return "the task's process was killed by %s" % name
    return "the task's process exited with code %d" % code


class Runner(object):
    """The DEALER loop: registration, heartbeats, tasks, results, acknowledgements."""

    def __init__(self, args):
        self.worker = args.worker
        self.endpoint = args.connect
        self.heartbeat_s = args.heartbeat_s
        self.liveness = args.liveness
        self.exit_when_orphaned = args.exit_when_orphaned
        self.host = socket.gethostname()
        self.runner_id = "%s-%s-%d-%s" % (self.worker, self.host, os.getpid(), uuid.uuid4().hex[:6])
        self.ctx = zmq.Context.instance()
        self.sock = None
        # fork, not forkserver: the children are then the runner's own, so their exit status is exact
        # (Python 3.6's forkserver reports 255 for any os._exit), and the child never touches ZeroMQ
        self.mp = multiprocessing.get_context("fork")
        self.log_dir = tempfile.mkdtemp(prefix="runner-")
        self.slots = [Slot(i, self.mp, self.log_dir) for i in range(args.concurrency)]
        self.pending = collections.deque()         # (TASK header, function bytes) not given to a slot yet
        self.unacked = collections.OrderedDict()   # (task_id, attempt) -> (RESULT fields, blob) until acknowledged
        self.outbox = []                           # RESULTs to send at the end of this turn of the loop
        self.run_s = {}                            # function hash -> recent run time (moving average)
        self.poller = zmq.Poller()
        self.probe = ResourceProbe()
        self.parent_pid = os.getppid()
        self.draining = False
        self.drain_requested = None    # set by signal handlers; acted on by the loop
        self.ack_grace_s = ACK_GRACE_S
        self.idle_since = None
        self.last_heard = self.next_heartbeat = self.next_resend = self.next_housekeeping = self.flush_at = 0.0
        self.slot_by_fd = {}                       # result pipe fd -> slot, for the poller
        self.in_slots = set()                      # (task_id, attempt) of every task given to a slot's child
        self.reconnect_after = self.heartbeat_s * self.liveness
        self.curve = load_curve(args.curve_key, args.curve_server_key)
        self.health_file = args.health_file
        self.prefetch = args.prefetch
        self.health_at = 0.0

    # -- connection -------------------------------------------------------
    def connect(self):
        if self.sock is not None:
            self.poller.unregister(self.sock)
            self.sock.close(0)
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt_string(zmq.IDENTITY, self.runner_id)
        if self.curve is not None:
            public, secret, server = self.curve
            self.sock.curve_publickey, self.sock.curve_secretkey, self.sock.curve_serverkey = public, secret, server
        self.sock.connect(self.endpoint)
        self.poller.register(self.sock, zmq.POLLIN)
        self.register()
        self.last_heard = time.monotonic()

    def register(self):
        running = [list(e.key) for s in self.slots for e in s.queue if not e.cancelled]
        running += [[h["task_id"], h["attempt"]] for h, _ in self.pending]
        self.send(protocol.READY, {
            "runner_id": self.runner_id, "worker": self.worker,
            "python": "%d.%d" % sys.version_info[:2], "python_full": sys.version.split()[0],
            "host": self.host, "pid": os.getpid(), "slots": len(self.slots), "prefetch": self.prefetch,
            "running": running, "unacked": [list(k) for k in self.unacked], "draining": self.draining})
        self.resend_results()

    def send(self, command, header=None, blobs=()):
        try:
            self.sock.send_multipart(protocol.encode(command, header, blobs), zmq.NOBLOCK)
        except zmq.Again:
            pass  # nobody to deliver to right now; heartbeats and resends cover it

    def resend_results(self):
        self.outbox = list(self.unacked.values()) + [r for r in self.outbox if r[0]["outcome"] == protocol.REFUSED]
        self.flush_results()
        self.next_resend = time.monotonic() + 5 * self.heartbeat_s

    def flush_results(self):
        """Send the RESULTs of this turn of the loop, many to a message."""
        while self.outbox:
            chunk, self.outbox = self.outbox[:RESULTS_PER_MESSAGE], self.outbox[RESULTS_PER_MESSAGE:]
            results, blobs = [], []
            for fields, blob in chunk:
                if blob is not None:
                    fields = dict(fields, blob=len(blobs))
                    blobs.append(blob)
                results.append(fields)
            self.send(protocol.RESULT, {"results": results}, blobs)

    # -- messages from the supervisor --------------------------------------
    def on_message(self, frames):
        try:
            command, header, blobs = protocol.decode(frames)
        except protocol.ProtocolError as exc:
            log.warning("dropping a malformed message: %s", exc)
            return
        self.reconnect_after = self.heartbeat_s * self.liveness
        self.touch_health()
        if command == protocol.TASK:
            for task in header.get("tasks") or []:
                index = task.get("blob", 0)
                self.on_task(task, blobs[index] if index < len(blobs) else b"")
            self.start_pending()
        elif command == protocol.ACK:
            for task_id, attempt in header.get("acks") or []:
                self.unacked.pop((task_id, attempt), None)
        elif command == protocol.CANCEL:
            self.on_cancel(header.get("task_id"), header.get("attempt"))
        elif command == protocol.DISCONNECT:
            log.info("supervisor does not know this runner (%s); registering again", header.get("reason"))
            self.register()
        elif command == protocol.STOP:
            self.start_draining("the supervisor asked this runner to stop")

    def touch_health(self):
        """Mark the health file: the supervisor was heard from (at most once a second)."""
        now = time.monotonic()
        if self.health_file and now - self.health_at >= 1.0:
            self.health_at = now
            try:
                with open(self.health_file, "a"):
                    os.utime(self.health_file, None)
            except OSError as exc:
                log.warning("cannot touch health file %s: %s", self.health_file, exc)

    def on_task(self, header, function_bytes):
        key = (header.get("task_id"), header.get("attempt"))
        if key in self.unacked:
            self.outbox.append(self.unacked[key])
            return
        if key in self.in_slots:
            return  # a duplicate dispatch of what we are running: ignore
        if self.draining:
            self.finish(header, {"outcome": protocol.REFUSED, "reason": "runner is stopping"})
            return
        self.pending.append((header, function_bytes))

    def is_short(self, function_hash):
        return self.run_s.get(function_hash, SHORT_RUN_S) < SHORT_RUN_S

    def start_pending(self):
        """Give queued tasks to idle slots: one at a time, or a batch of short ones (a share of what is queued)."""
        for slot in self.slots:
            if not self.pending:
                return
            if slot.queue:
                continue
            take = 1
            if self.is_short(self.pending[0][0]["function_hash"]):
                take = min(BATCH_MAX, -(-len(self.pending) // len(self.slots)))
            items = [self.pending.popleft()]
            while self.pending and len(items) < take and self.is_short(self.pending[0][0]["function_hash"]):
                items.append(self.pending.popleft())
            slot.assign(items, time.monotonic())
            self.in_slots.update((h["task_id"], h["attempt"]) for h, _ in items)
            self.watch(slot)
            if len(items) > 1:
                log.debug("slot %d: %d short tasks given to its process in one batch", slot.index, len(items))

    def watch(self, slot):
        """Poll the result pipe of the slot's current child (and no older one)."""
        for fd in [fd for fd, s in self.slot_by_fd.items() if s is slot and fd != slot.fd]:
            self.poller.unregister(fd)
            del self.slot_by_fd[fd]
        if slot.fd is not None and slot.fd not in self.slot_by_fd:
            self.slot_by_fd[slot.fd] = slot
            self.poller.register(slot.fd, zmq.POLLIN)

    def on_cancel(self, task_id, attempt):
        key = (task_id, attempt)
        for slot in self.slots:
            if any(e.key == key for e in slot.queue):
                self.read_results(slot)  # what already ended is reported as it ended
        for header, blob in list(self.pending):
            if (header["task_id"], header["attempt"]) == key:
                self.pending.remove((header, blob))
                self.finish(header, {"outcome": protocol.CANCELLED}, start=False)
        for slot in self.slots:
            entry = next((e for e in slot.queue if e.key == key and not e.cancelled), None)
            if entry is None:
                continue
            if entry is not slot.queue[0] and slot.claims.cancel(entry.index):
                entry.cancelled = True  # its child will skip it
                self.finish(entry.header, {"outcome": protocol.CANCELLED})
                continue
            self.read_results(slot)
            if slot.queue and slot.queue[0] is entry:  # running: kill its process (group)
                self.end_child(slot, {"outcome": protocol.CANCELLED})

    # -- children ----------------------------------------------------------
    def read_results(self, slot):
        """Take every result the slot's child has written; notice if it died."""
        if slot.results_in is None:
            return
        try:
            results = slot.results_in.recv_all()
        except (EOFError, OSError):
            results = None
        now = time.monotonic()
        for fields, blob in results or ():
            entry = slot.queue.popleft()
            self.in_slots.discard(entry.key)
            slot.next_deadline(now)
            if fields.get("skipped"):
                continue  # cancelled before it started; already reported
            if "need_function" in fields:  # the child evicted it: send it again, bytes included
                slot.loaded.discard(fields["need_function"])
                self.pending.appendleft((entry.header, entry.function_bytes))
                continue
            if fields.get("run_s") is not None:
                fh = entry.header["function_hash"]
                self.run_s[fh] = (self.run_s.get(fh, fields["run_s"]) + fields["run_s"]) / 2
            self.finish(entry.header, fields, blob, start=False)
        if results is None:
            self.end_child(slot, None, died=True)
        self.start_pending()

    def end_child(self, slot, fields, died=False):
        """The slot's child is gone (died) or must go (killed): report its running task, give the rest back."""
        code = slot.collect_death() if died else slot.kill()
        self.watch(slot)
        for entry in slot.queue:  # each leaves the slot: reported, or back to the runner's queue
            self.in_slots.discard(entry.key)
        logs, truncated = slot.read_logs()
        running = slot.queue[0] if slot.queue else None
        if running is not None and not running.cancelled and (not died or slot.started(running)):
            if fields is None:
                fields = {"outcome": protocol.ERROR, "exit_code": code, "error": {
                    "type": protocol.PROCESS_DIED, "message": describe_exit(code), "traceback": ""}}
            elif fields["outcome"] == protocol.CANCELLED:
                fields["message"] = describe_exit(code)
            fields.update(logs=logs, logs_truncated=truncated)
            self.finish(running.header, fields, start=False)
            rest = slot.take_unstarted()
        else:  # it died between two tasks: nothing of the queue had started
            rest = [(e.header, e.function_bytes) for e in slot.queue if not e.cancelled]
            slot.queue.clear()
            slot.deadline = None
        self.pending.extendleft(reversed(rest))
        self.start_pending()

    def check_deadlines(self, now):
        for slot in self.slots:
            if slot.queue and slot.deadline is not None and now >= slot.deadline:
                self.read_results(slot)  # it may have ended just now
                if slot.queue and slot.deadline is not None and now >= slot.deadline:
                    timeout = slot.task.get("timeout_s")
                    self.end_child(slot, {"outcome": protocol.ERROR, "error": {
                        "type": protocol.TIMEOUT, "traceback": "",
                        "message": "the task ran past its timeout_s of %ss and was killed" % timeout}})

    def finish(self, header, fields, blob=None, start=True):
        """Queue a task's RESULT for sending and keep it until acknowledged."""
        fields.update(task_id=header["task_id"], attempt=header["attempt"])  # the supervisor knows who sent it
        result = (fields, blob)
        if fields["outcome"] != protocol.REFUSED:
            self.unacked[(header["task_id"], header["attempt"])] = result
        if not self.outbox:
            self.flush_at = time.monotonic() + RESULT_LINGER_S
        self.outbox.append(result)
        if start:
            self.start_pending()

    # -- housekeeping ------------------------------------------------------
    def start_draining(self, why):
        if not self.draining:
            log.info("draining: %s", why)
            self.draining = True
            self.heartbeat(time.monotonic())

    def busy(self):
        return sum(len(s.queue) for s in self.slots) + len(self.pending)

    def heartbeat(self, now):
        pids = [s.proc.pid for s in self.slots if s.proc is not None]
        self.send(protocol.HEARTBEAT, {"draining": self.draining, "resources": self.probe.sample(pids)})
        self.next_heartbeat = now + self.heartbeat_s

    def housekeeping(self, now):
        self.check_deadlines(now)
        if self.drain_requested:
            self.start_draining(self.drain_requested)
        if now < self.next_housekeeping and now < self.next_heartbeat:
            return  # the rest needs doing a few times a second at most, not on every message
        self.next_housekeeping = now + HOUSEKEEPING_S
        if now >= self.next_heartbeat:
            self.heartbeat(now)
        if now - self.last_heard > self.reconnect_after:
            log.warning("no word from the supervisor for %.1fs; reconnecting to %s", now - self.last_heard, self.endpoint)
            self.connect()
            self.reconnect_after = min(self.reconnect_after * 2, 30.0)  # back off while it stays away
        if self.unacked and now >= self.next_resend:
            self.resend_results()
        if self.exit_when_orphaned and not self.draining and os.getppid() != self.parent_pid:
            self.ack_grace_s = ORPHAN_ACK_GRACE_S
            self.start_draining("the process that started this runner is gone")

    def done_draining(self, now):
        """True once a draining runner has no task left and its results are acknowledged (or waited on long enough)."""
        if not self.draining or self.busy():
            return False
        if not self.unacked:
            return True
        if self.idle_since is None:
            self.idle_since = now
        return now - self.idle_since > self.ack_grace_s

    def timeout_ms(self, now):
        wake = [min(self.next_heartbeat, self.next_housekeeping)]
        wake += [s.deadline for s in self.slots if s.queue and s.deadline is not None]
        if self.outbox:
            wake.append(self.flush_at)
        return max(0, int(1000 * (min(wake) - now))) + 1

    def serve(self):
        """Run until drained (SIGTERM, STOP, or orphaned); returns the exit code."""
        self.connect()
        while True:
            now = time.monotonic()
            if self.outbox and (now >= self.flush_at or not any(s.queue for s in self.slots)):
                self.flush_results()  # at once when idle; under load, several results to a message
            if self.done_draining(now):
                log.info("drained; exiting")
                return 0
            try:
                events = dict(self.poller.poll(self.timeout_ms(now)))
            except zmq.ZMQError as exc:
                if exc.errno == getattr(zmq, "EINTR", 4):
                    continue
                raise
            if self.sock in events:
                self.last_heard = time.monotonic()
                while True:
                    try:
                        frames = self.sock.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    self.on_message(frames)
            for fd in [fd for fd in events if fd in self.slot_by_fd]:
                slot = self.slot_by_fd.get(fd)
                if slot is not None:
                    self.read_results(slot)
            self.housekeeping(time.monotonic())

    def close(self):
        for slot in self.slots:
            if slot.proc is not None:
                slot.kill()
        if self.sock is not None:
            self.sock.close(0)
        shutil.rmtree(self.log_dir, ignore_errors=True)


def parse_args(argv):
    p = argparse.ArgumentParser(description="Run tasks for one worker of the supervisor.")
    p.add_argument("--worker", required=True, help="the worker this runner serves, e.g. py36")
    p.add_argument("--connect", required=True, help="the supervisor's ZeroMQ endpoint, e.g. tcp://127.0.0.1:5555")
    p.add_argument("--concurrency", type=int, default=1, help="task slots (child processes); default 1")
    p.add_argument("--prefetch", type=int, default=0,
                   help="tasks to hold queued beyond the slots, so slots never wait for the next task (default 0: "
                        "a task is only sent to a free slot, best for long tasks)")
    p.add_argument("--heartbeat-s", type=float, default=1.0, help="seconds between heartbeats; default 1")
    p.add_argument("--liveness", type=int, default=3, help="missed heartbeats before reconnecting; default 3")
    p.add_argument("--exit-when-orphaned", action="store_true",
                   help="drain and exit when the process that started this runner dies (used by local spawn)")
    p.add_argument("--curve-key", default=os.environ.get("RUNNER_CURVE_KEY"),
                   help="this runner's CURVE secret certificate (python -m supervisor keys); env RUNNER_CURVE_KEY")
    p.add_argument("--curve-server-key", default=os.environ.get("RUNNER_CURVE_SERVER_KEY"),
                   help="the supervisor's CURVE public certificate; env RUNNER_CURVE_SERVER_KEY")
    p.add_argument("--health-file", default=os.environ.get("RUNNER_HEALTH_FILE"),
                   help="touched whenever the supervisor is heard from (for container health checks)")
    p.add_argument("--log-level", default=os.environ.get("RUNNER_LOG_LEVEL", "INFO"))
    args = p.parse_args(argv)
    if args.concurrency < 1:
        p.error("--concurrency must be at least 1")
    if args.prefetch < 0:
        p.error("--prefetch must be 0 or more")
    return args


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s runner[" + args.worker + "] %(levelname)s %(message)s")
    runner = Runner(args)
    def request_drain(signum, _frame):
        runner.drain_requested = signal.Signals(signum).name

    signal.signal(signal.SIGTERM, request_drain)
    signal.signal(signal.SIGINT, request_drain)
    log.info("runner %s (Python %s, %d slots) connecting to %s", runner.runner_id,
             sys.version.split()[0], len(runner.slots), runner.endpoint)
    try:
        return runner.serve()
    finally:
        runner.close()


if __name__ == "__main__":
    sys.exit(main())
