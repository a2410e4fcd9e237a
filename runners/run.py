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
LOG_TAIL_BYTES = 64 * 1024
ACK_GRACE_S = 10.0             # after SIGTERM, how long an idle runner waits for its results' acks
ORPHAN_ACK_GRACE_S = 3600.0    # the same for a runner whose supervisor died: wait for a new one


class Slot(object):
    """One long-lived child process and the task it is running, if any."""

    def __init__(self, index, mp, log_dir):
        self.index = index
        self.mp = mp
        self.log_path = os.path.join(log_dir, "slot-%d.log" % index)
        self.proc = self.conn = None
        self.loaded = set()    # function hashes this slot's child has been sent
        self.task = None       # the TASK header being run
        self.function_bytes = None
        self.deadline = None   # monotonic time the task must end by, or None

    def start(self):
        parent_conn, child_conn = self.mp.Pipe()
        self.loaded = set()
        self.proc = self.mp.Process(target=child.child_main, args=(child_conn, self.log_path), daemon=True)
        self.proc.start()
        child_conn.close()
        self.conn = parent_conn

    def assign(self, header, function_bytes):
        if self.proc is None or not self.proc.is_alive():
            self.start()
        self.task = header
        timeout = header.get("timeout_s")
        self.deadline = time.monotonic() + timeout if timeout else None
        self.function_bytes = function_bytes
        fh = header["function_hash"]
        # the child caches loaded functions: send the bytes only the first time (it asks again if it evicted one)
        self.conn.send((fh, None if fh in self.loaded else function_bytes, header.get("kwargs") or {}))
        self.loaded.add(fh)

    def resend_function(self):
        self.conn.send((self.task["function_hash"], self.function_bytes, self.task.get("kwargs") or {}))

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
        self.conn.close()
        self.proc = self.conn = None
        return code

    def collect_death(self):
        self.proc.join(5)
        return self._reap()

    def read_logs(self):
        try:
            if os.stat(self.log_path).st_size == 0:
                return "", False
            with open(self.log_path, "rb") as f:
                f.seek(0, os.SEEK_END)
                size = f.tell()
                f.seek(max(0, size - LOG_TAIL_BYTES))
                data = f.read()
        except OSError:
            return "", False
        return data.decode("utf-8", "replace"), size > LOG_TAIL_BYTES

    def release(self):
        """The slot is free again (its log file is emptied by the child when the next task starts)."""
        task, self.task, self.deadline, self.function_bytes = self.task, None, None, None
        return task


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
        self.pending = collections.deque()         # TASKs received while every slot was busy
        self.unacked = collections.OrderedDict()   # (task_id, attempt) -> frames of its RESULT
        self.probe = ResourceProbe()
        self.parent_pid = os.getppid()
        self.draining = False
        self.drain_requested = None    # set by signal handlers; acted on by the loop
        self.ack_grace_s = ACK_GRACE_S
        self.idle_since = None
        self.last_heard = self.next_heartbeat = self.next_resend = 0.0
        self.reconnect_after = self.heartbeat_s * self.liveness
        self.curve = load_curve(args.curve_key, args.curve_server_key)
        self.health_file = args.health_file
        self.prefetch = args.prefetch
        self.health_at = 0.0

    # -- connection -------------------------------------------------------
    def connect(self):
        if self.sock is not None:
            self.sock.close(0)
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt_string(zmq.IDENTITY, self.runner_id)
        if self.curve is not None:
            public, secret, server = self.curve
            self.sock.curve_publickey, self.sock.curve_secretkey, self.sock.curve_serverkey = public, secret, server
        self.sock.connect(self.endpoint)
        self.register()
        self.last_heard = time.monotonic()

    def register(self):
        running = [[s.task["task_id"], s.task["attempt"]] for s in self.slots if s.task]
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
        for frames in self.unacked.values():
            try:
                self.sock.send_multipart(frames, zmq.NOBLOCK)
            except zmq.Again:
                break
        self.next_resend = time.monotonic() + 5 * self.heartbeat_s

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
        elif command == protocol.ACK:
            for task_id, attempt in header.get("acks") or [[header.get("task_id"), header.get("attempt")]]:
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
            self.sock.send_multipart(self.unacked[key], zmq.NOBLOCK)
            return
        if any(s.task and (s.task["task_id"], s.task["attempt"]) == key for s in self.slots):
            return  # a duplicate dispatch of what we are running: ignore
        if self.draining:
            self.finish(header, {"outcome": protocol.REFUSED, "reason": "runner is stopping"})
            return
        self.pending.append((header, function_bytes))
        self.start_pending()

    def start_pending(self):
        for slot in self.slots:
            if not self.pending:
                return
            if slot.task is None:
                header, function_bytes = self.pending.popleft()
                slot.assign(header, function_bytes)
                log.debug("task %s attempt %s started in slot %d", header["task_id"], header["attempt"], slot.index)

    def on_cancel(self, task_id, attempt):
        for header, blob in list(self.pending):
            if (header["task_id"], header["attempt"]) == (task_id, attempt):
                self.pending.remove((header, blob))
                self.finish(header, {"outcome": protocol.CANCELLED})
        for slot in self.slots:
            if slot.task and (slot.task["task_id"], slot.task["attempt"]) == (task_id, attempt):
                code = slot.kill()
                logs, truncated = slot.read_logs()
                header = slot.release()
                self.finish(header, {"outcome": protocol.CANCELLED, "message": describe_exit(code),
                                     "logs": logs, "logs_truncated": truncated})

    # -- children ----------------------------------------------------------
    def on_child_readable(self, slot):
        try:
            fields, blob = slot.conn.recv()
            if "need_function" in fields:
                slot.resend_function()
                return
        except (EOFError, OSError):
            code = slot.collect_death()
            fields, blob = {"outcome": protocol.ERROR, "exit_code": code, "error": {
                "type": protocol.PROCESS_DIED, "message": describe_exit(code), "traceback": ""}}, None
        logs, truncated = slot.read_logs()
        fields.update(logs=logs, logs_truncated=truncated)
        self.finish(slot.release(), fields, blob)

    def check_deadlines(self, now):
        for slot in self.slots:
            if slot.task and slot.deadline is not None and now >= slot.deadline:
                slot.kill()
                logs, truncated = slot.read_logs()
                timeout = slot.task.get("timeout_s")
                self.finish(slot.release(), {"outcome": protocol.ERROR, "logs": logs, "logs_truncated": truncated,
                                             "error": {"type": protocol.TIMEOUT, "traceback": "",
                                                       "message": "the task ran past its timeout_s of %ss "
                                                                  "and was killed" % timeout}})

    def finish(self, header, fields, blob=None):
        """Send a task's RESULT and keep it until acknowledged."""
        fields.update(task_id=header["task_id"], attempt=header["attempt"], runner_id=self.runner_id)
        frames = protocol.encode(protocol.RESULT, fields, [blob] if blob is not None else [])
        if fields["outcome"] != protocol.REFUSED:
            self.unacked[(header["task_id"], header["attempt"])] = frames
        try:
            self.sock.send_multipart(frames, zmq.NOBLOCK)
        except zmq.Again:
            pass
        log.debug("task %s attempt %s ended: %s", header["task_id"], header["attempt"], fields["outcome"])
        self.start_pending()

    # -- housekeeping ------------------------------------------------------
    def start_draining(self, why):
        if not self.draining:
            log.info("draining: %s", why)
            self.draining = True
            self.heartbeat(time.monotonic())

    def busy(self):
        return sum(1 for s in self.slots if s.task) + len(self.pending)

    def heartbeat(self, now):
        pids = [s.proc.pid for s in self.slots if s.proc is not None]
        self.send(protocol.HEARTBEAT, {"draining": self.draining, "resources": self.probe.sample(pids)})
        self.next_heartbeat = now + self.heartbeat_s

    def housekeeping(self, now):
        if now >= self.next_heartbeat:
            self.heartbeat(now)
        if now - self.last_heard > self.reconnect_after:
            log.warning("no word from the supervisor for %.1fs; reconnecting to %s", now - self.last_heard, self.endpoint)
            self.connect()
            self.reconnect_after = min(self.reconnect_after * 2, 30.0)  # back off while it stays away
        if self.unacked and now >= self.next_resend:
            self.resend_results()
        if self.drain_requested:
            self.start_draining(self.drain_requested)
        if self.exit_when_orphaned and not self.draining and os.getppid() != self.parent_pid:
            self.ack_grace_s = ORPHAN_ACK_GRACE_S
            self.start_draining("the process that started this runner is gone")
        self.check_deadlines(now)

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
        wake = [self.next_heartbeat]
        wake += [s.deadline for s in self.slots if s.task and s.deadline is not None]
        return max(0, int(1000 * (min(wake) - now))) + 1

    def serve(self):
        """Run until drained (SIGTERM, STOP, or orphaned); returns the exit code."""
        self.connect()
        while True:
            now = time.monotonic()
            if self.done_draining(now):
                log.info("drained; exiting")
                return 0
            poller = zmq.Poller()
            poller.register(self.sock, zmq.POLLIN)
            readable_slots = {}
            for slot in self.slots:
                if slot.task is not None and slot.conn is not None:
                    poller.register(slot.conn.fileno(), zmq.POLLIN)
                    readable_slots[slot.conn.fileno()] = slot
            try:
                events = dict(poller.poll(self.timeout_ms(now)))
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
            for fd, slot in readable_slots.items():
                if fd in events and slot.task is not None and slot.conn is not None:
                    self.on_child_readable(slot)
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
