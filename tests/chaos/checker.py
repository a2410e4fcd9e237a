"""A total-queue checker in the spirit of Jepsen's: submit N tasks while kill -9-ing runners and the supervisor.

Every task that got a 202 is then classified from the outside:
- done once: it ended DONE with its own token as result, and its end was recorded once;
- failed: it ended FAILED (e.g. RunnerLost after max_retries) — an end state, reported apart;
- lost: unknown to the supervisor, or never reaching an end state before the deadline;
- recorded twice: the supervisor's transition log shows two ends for it, or its final record changed
  between two full reads separated by one more kill -9 and restart;
- wrong result: DONE with another value than its token.
Executions are counted too (each run appends its token to a file): at-least-once allows more than one.

    .venvs/supervisor/bin/python -m tests.chaos.checker --tasks 5000 --runner-kills 20 --supervisor-kills 20 --netcut
"""
import argparse
import base64
import collections
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid

from tests import netns
from tests.functions import SOURCES
from tests.helpers import PYTHONS, REPO, Supervisor, free_port, make_pickles, wait_until

WORKERS = {
    "py36": {"python": "3.6", "interpreter": PYTHONS["py36"], "concurrency": 2},
    "py38": {"python": "3.8", "interpreter": PYTHONS["py38"], "concurrency": 2},
}
RUNNERS_PER_WORKER = 2
SETTINGS = {"heartbeat_s": 0.2, "liveness": 3, "max_retries": 50, "retry_backoff_s": 0.05,
            "retry_backoff_max_s": 0.5, "unavailable_timeout_s": 600, "log_format": "json", "drain_s": 5.0}
END_EVENTS = {"succeed", "fail", "expire", "cancel_queued", "cancel_running"}


class Cluster:
    """One supervisor (spawn none) and runners kept alive by the harness, as Kubernetes would."""

    def __init__(self, workdir: str, netcut: bool):
        self.dir = workdir
        self.zmq_port = free_port()
        self.ns = netns.Namespace().__enter__() if netcut else None
        host = self.ns.root_addr if self.ns else "127.0.0.1"
        self.endpoint = f"tcp://{host}:{self.zmq_port}"
        self.sup = Supervisor(workdir, workers=WORKERS, spawn="none", zmq_bind=self.endpoint, **SETTINGS)
        self.runners: dict[str, subprocess.Popen] = {}
        self.lock = threading.Lock()

    def start(self):
        self.sup.start(wait_runners=False)
        for worker in WORKERS:
            for i in range(RUNNERS_PER_WORKER):
                self._start_runner(f"{worker}-{i}", worker)
        if self.ns:
            self._start_runner("py38-far", "py38", far=True)
        return self

    def _start_runner(self, key: str, worker: str, far: bool = False):
        log = open(os.path.join(self.dir, f"runner-{key}.log"), "ab")
        cmd = [PYTHONS[worker], "runners/run.py", "--worker", worker, "--connect", self.endpoint,
               "--concurrency", str(WORKERS[worker]["concurrency"]), "--heartbeat-s", "0.2", "--liveness", "3"]
        self.runners[key] = subprocess.Popen((self.ns.prefix() if far else []) + cmd, cwd=REPO, stdout=log,
                                             stderr=subprocess.STDOUT)
        log.close()

    def kill_runner(self, rng: random.Random) -> str:
        with self.lock:
            key = rng.choice(sorted(k for k in self.runners if k != "py38-far"))
            proc = self.runners[key]
            proc.kill()
            proc.wait()
            self._start_runner(key, key.split("-")[0])
            return key

    def kill_supervisor(self):
        with self.lock:
            self.sup.kill9()
            self.sup.start(wait_runners=False)

    def stop(self):
        for proc in self.runners.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
            proc.wait()
        if self.sup.proc and self.sup.proc.poll() is None:
            self.sup.stop()
        if self.ns:
            self.ns.__exit__()


def classify(accepted: dict, first: dict, second: dict, ends: collections.Counter):
    """(class counts, FAILED error types, example ids per class) for every accepted task.

    first/second: the task's GET /api/v1/tasks/{id} response before and after one more supervisor crash;
    ends: how many end transitions the supervisor's log shows per task id.
    """
    classes = collections.Counter()
    failed_types = collections.Counter()
    examples = collections.defaultdict(list)
    for task_id, token in accepted.items():
        a, b = first[task_id], second[task_id]
        if a.status != 200 or b.status != 200:
            kind = "lost"
        else:
            ra, rb = a.json(), b.json()
            stable = {k: ra.get(k) for k in ("status", "attempts", "finished_at", "result", "error")} == \
                     {k: rb.get(k) for k in ("status", "attempts", "finished_at", "result", "error")}
            if ra["status"] not in ("DONE", "FAILED", "CANCELLED"):
                kind = "lost"
            elif ends[task_id] > 1 or not stable:
                kind = "recorded_twice"
            elif ra["status"] == "DONE" and ra["result"] != token:
                kind = "wrong_result"
            elif ra["status"] == "DONE":
                kind = "done_once"
            else:
                kind = "failed"
                failed_types[ra["error"]["type"]] += 1
        classes[kind] += 1
        if len(examples[kind]) < 5 and kind != "done_once":
            examples[kind].append(task_id)
    return classes, failed_types, {k: v for k, v in examples.items() if v}


def run_check(tasks: int, runner_kills: int, supervisor_kills: int, netcut: bool = False, seed: int | None = None,
              workdir: str | None = None, rate: float = 40.0, settle_s: float = 300.0, out=sys.stderr) -> dict:
    seed = seed if seed is not None else random.randrange(1 << 30)
    rng = random.Random(seed)
    workdir = workdir or tempfile.mkdtemp(prefix="chaos-")
    runs_file = os.path.join(workdir, "executions.txt")
    fns = {w: base64.b64encode(make_pickles({"token": SOURCES["token"]}, w)["token"]).decode() for w in WORKERS}
    cluster = Cluster(workdir, netcut).start()
    client = cluster.sup.client
    accepted: dict[str, str] = {}          # task id -> token
    not_accepted = collections.Counter()   # why a submit got no 202 (the supervisor was down, ...)
    lock = threading.Lock()
    t0 = time.monotonic()

    def submitter(count: int, sub_seed: int):
        local = random.Random(sub_seed)
        done = 0
        while done < count:
            token = uuid.uuid4().hex
            worker = local.choice(sorted(WORKERS))
            spec = {"worker": worker, "function": fns[worker],
                    "kwargs": {"token": token, "sleep_s": local.uniform(0, 0.05), "path": runs_file}}
            try:
                r = client.post("/api/v1/tasks", spec, timeout=10)
                reason = None if r.status == 202 else f"HTTP {r.status}"
            except OSError as exc:
                reason = type(exc).__name__
            if reason is None:
                with lock:
                    accepted[r.json()["task_id"]] = token
                done += 1
                time.sleep(local.expovariate(rate / 4))
            else:
                with lock:
                    not_accepted[reason] += 1
                time.sleep(0.05)

    share = [tasks // 4 + (1 if i < tasks % 4 else 0) for i in range(4)]
    threads = [threading.Thread(target=submitter, args=(n, seed + i), daemon=True) for i, n in enumerate(share)]
    for t in threads:
        t.start()

    # the faults, spread over the expected submission time
    kills = ["runner"] * runner_kills + ["supervisor"] * supervisor_kills
    rng.shuffle(kills)
    if netcut:
        kills.insert(len(kills) // 3, "short_cut")
        kills.insert(2 * len(kills) // 3, "long_cut")
    interval = max(tasks / rate / (len(kills) + 1), 0.3)
    done_kills = collections.Counter()
    for kind in kills:
        time.sleep(rng.uniform(0.5, 1.5) * interval)
        if kind == "runner":
            cluster.kill_runner(rng)
        elif kind == "supervisor":
            cluster.kill_supervisor()
        else:
            cluster.ns.cut()
            time.sleep(0.3 if kind == "short_cut" else 3.0)  # the length of the cut is the fault itself
            cluster.ns.heal()
        done_kills[kind] += 1
        print(f"[{time.monotonic() - t0:6.1f}s] {kind} fault {done_kills[kind]}; accepted {len(accepted)}",
              file=out, flush=True)
    for t in threads:
        t.join()
    submitted_s = time.monotonic() - t0

    # settle: every accepted task should reach an end state
    def unfinished():
        pending = set()
        for status in ("NOT RUN YET", "IN FLIGHT"):
            before = None
            while True:
                q = f"/api/v1/tasks?status={status.replace(' ', '%20')}&limit=1000" + (f"&before={before}" if before else "")
                page = client.get(q).json()
                pending |= {t["id"] for t in page["tasks"]}
                before = page["next_before"]
                if not before:
                    break
        return pending & set(accepted)

    try:
        wait_until(lambda: not unfinished(), settle_s, interval=0.5, what="every accepted task to end")
    except AssertionError:
        pass
    settled_s = time.monotonic() - t0

    first = {t: client.get(f"/api/v1/tasks/{t}") for t in accepted}
    cluster.kill_supervisor()  # one more crash: ended records must not change across it
    second = {t: client.get(f"/api/v1/tasks/{t}") for t in accepted}
    cluster.stop()

    ends = collections.Counter()
    with open(cluster.sup.log_path) as f:
        for line in f:
            if line.startswith("{"):
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue
                if rec.get("event") in END_EVENTS and rec.get("task_id"):
                    ends[rec["task_id"]] += 1
    executions = collections.Counter()
    if os.path.exists(runs_file):
        with open(runs_file) as f:
            executions.update(line.strip() for line in f if line.strip())

    classes, failed_types, examples = classify(accepted, first, second, ends)
    tokens = set(accepted.values())
    report = {
        "seed": seed, "tasks_accepted": len(accepted), "submissions_refused": dict(not_accepted),
        "faults": dict(done_kills), "submit_seconds": round(submitted_s, 1), "settle_seconds": round(settled_s, 1),
        "done_once": classes["done_once"], "failed": classes["failed"], "failed_types": dict(failed_types),
        "lost": classes["lost"], "recorded_twice": classes["recorded_twice"], "wrong_result": classes["wrong_result"],
        "executed_more_than_once": sum(1 for t in tokens if executions[t] > 1),
        "never_executed_but_done": sum(1 for t, tok in accepted.items()
                                       if first[t].status == 200 and first[t].json()["status"] == "DONE"
                                       and executions[tok] == 0),
        "end_log_lines": sum(ends.values()), "examples": examples, "workdir": workdir,
    }
    return report


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", type=int, default=5000)
    p.add_argument("--runner-kills", type=int, default=20)
    p.add_argument("--supervisor-kills", type=int, default=20)
    p.add_argument("--netcut", action="store_true", help="add a runner in a network namespace and cut its link")
    p.add_argument("--rate", type=float, default=40.0, help="submissions per second to aim for")
    p.add_argument("--seed", type=int)
    p.add_argument("--json", help="also write the report to this file")
    args = p.parse_args(argv)
    if args.netcut and netns.available():
        print(f"--netcut: {netns.available()}", file=sys.stderr)
        return 2
    report = run_check(args.tasks, args.runner_kills, args.supervisor_kills, args.netcut, args.seed, rate=args.rate)
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            f.write(text + "\n")
    ok = report["lost"] == 0 and report["recorded_twice"] == 0 and report["wrong_result"] == 0
    print("PASS" if ok else "FAIL", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
