"""make bench-compare: the T1-T3 workload on Celery (prefork, 2 processes, Redis broker and result backend) and
on the supervisor, in the same run on the same machine, with the ratios.

Celery side (run with .venvs/bench/bin/python, which has celery[redis]):
  T1  5,000 x add.delay(1, 2, 3) from 16 threads; end to end = until every result is in Redis
  T2  20,000 tasks sent as groups of 500
  T3  1,000 sequential add.delay(1, 2, 3).get()
The supervisor side is bench/run.py's T1-T3 (run by .venvs/supervisor/bin/python).
Rounds alternate (ours, then Celery's, --rounds times), so a noisy stretch of the shared machine hits both;
each figure is the median of the rounds (max: the largest of any round), and every round is kept in the JSON.
"""
import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HERE = os.path.dirname(os.path.abspath(__file__))

APP = """
from celery import Celery
import os
url = os.environ["BENCH_REDIS"]
app = Celery("benchapp", broker=url, backend=url)
app.conf.update(task_serializer="json", result_serializer="json", accept_content=["json"],
                worker_prefetch_multiplier=4, broker_connection_retry_on_startup=True, result_expires=3600)

@app.task
def add(x, y, z):
    return x + y + z
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def wait_for(pred, timeout, what):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return
        time.sleep(0.05)
    raise RuntimeError(f"timed out waiting for {what}")


class CeleryRig:
    def __init__(self, work: str):
        self.work = work
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        with open(os.path.join(work, "benchapp.py"), "w") as f:
            f.write(APP)
        os.environ["BENCH_REDIS"] = self.url
        sys.path.insert(0, work)

    def start(self):
        redis_server = shutil.which("redis-server")
        if redis_server is None:
            raise SystemExit("redis-server is needed: apt-get install redis-server (.ci/run and make bench-compare "
                             "install it)")
        self.redis = subprocess.Popen([redis_server, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                       "--appendonly", "no", "--dir", self.work], stdout=subprocess.DEVNULL)
        import redis
        self.r = redis.Redis(host="127.0.0.1", port=self.port)
        wait_for(lambda: self._ping(), 20, "redis")
        self.worker = subprocess.Popen([sys.executable, "-m", "celery", "-A", "benchapp", "worker", "--pool", "prefork",
                                        "-c", "2", "--loglevel", "WARNING", "--without-gossip", "--without-mingle",
                                        "--without-heartbeat"], cwd=self.work, env=dict(os.environ),
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        sys.modules.pop("benchapp", None)  # a later round's app: this round's Redis port
        import benchapp
        self.app = benchapp
        wait_for(lambda: self._worker_up(), 60, "the celery worker")
        return self

    def _ping(self):
        try:
            return self.r.ping()
        except Exception:
            return False

    def _worker_up(self):
        try:
            return self.app.add.delay(1, 2, 3).get(timeout=1) == 6
        except Exception:
            return False

    def all_done(self, ids) -> bool:
        keys = [f"celery-task-meta-{i}" for i in ids]
        n = 0
        for start in range(0, len(keys), 1000):
            n += self.r.exists(*keys[start:start + 1000])
        return n == len(keys)

    def wait_done(self, ids, timeout=600) -> float:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.all_done(ids):
                return time.perf_counter()
            time.sleep(0.01)
        raise RuntimeError("celery tasks did not finish")

    def t1(self, n=5000, threads=16) -> dict:
        ids, lock, counter = [], threading.Lock(), iter(range(n))
        durations = []

        def client():
            for _ in counter:
                t0 = time.perf_counter()
                res = self.app.add.delay(1, 2, 3)
                durations.append(time.perf_counter() - t0)
                with lock:
                    ids.append(res.id)
        t0 = time.perf_counter()
        ts = [threading.Thread(target=client) for _ in range(threads)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        submitted = time.perf_counter()
        done = self.wait_done(ids)
        return {"tasks": n, "tasks_per_s": round(n / (done - t0), 1), "submit_per_s": round(n / (submitted - t0), 1),
                "submit_p50_ms": round(pct(durations, 50) * 1e3, 2), "seconds": round(done - t0, 3)}

    def t2(self, n=20000, batch=500) -> dict:
        from celery import group
        ids = []
        t0 = time.perf_counter()
        for _ in range(n // batch):
            res = group(self.app.add.s(1, 2, 3) for _ in range(batch)).apply_async()
            ids += [r.id for r in res.results]
        submitted = time.perf_counter()
        done = self.wait_done(ids)
        return {"tasks": n, "batch": batch, "tasks_per_s": round(n / (done - t0), 1),
                "submit_per_s": round(n / (submitted - t0), 1), "seconds": round(done - t0, 3)}

    def t3(self, n=1000) -> dict:
        """Sequential delay().get(). A get() that hangs past 5 s (Celery's result-backend stalls) is counted as a
        stall; the round trip then ends when the result is seen in Redis, and that whole time is recorded."""
        from celery.exceptions import TimeoutError as CeleryTimeout
        lat, stalls = [], 0
        for _ in range(n):
            t0 = time.perf_counter()
            res = self.app.add.delay(1, 2, 3)
            try:
                assert res.get(timeout=5) == 6
            except CeleryTimeout:
                stalls += 1
                wait_for(lambda: self.r.exists(f"celery-task-meta-{res.id}"), 60, "a stalled result")
            lat.append((time.perf_counter() - t0) * 1e3)
        return {"round_trips": n, "p50_ms": round(pct(lat, 50), 3), "p90_ms": round(pct(lat, 90), 3),
                "p99_ms": round(pct(lat, 99), 3), "max_ms": round(max(lat), 3), "mean_ms": round(statistics.mean(lat), 3),
                "stalls_over_5s": stalls}

    def stop(self):
        for p in (getattr(self, "worker", None), getattr(self, "redis", None)):
            if p is not None and p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(30)
                except subprocess.TimeoutExpired:
                    p.kill()


def run_celery(args) -> dict:
    work = tempfile.mkdtemp(prefix="celery-bench-")
    rig = CeleryRig(work)
    try:
        rig.start()
        rig.t1(n=500)  # warm-up
        out = {"T1": rig.t1(n=args.t1_tasks), "T2": rig.t2(n=args.t2_tasks), "T3": rig.t3(n=args.t3_round_trips)}
    finally:
        rig.stop()
        shutil.rmtree(work, ignore_errors=True)
    return out


def run_ours(args) -> dict:
    """One round of bench/run.py's T1-T3 (a fresh supervisor), as JSON."""
    return json.loads(subprocess.run(
        [os.path.join(REPO, ".venvs", "supervisor", "bin", "python"), os.path.join(HERE, "run.py"),
         "--t1-tasks", str(args.t1_tasks), "--t2-tasks", str(args.t2_tasks), "--t3-round-trips",
         str(args.t3_round_trips), "--t4-rows", "0", "--repeat", "1", "--json-only"],
        capture_output=True, text=True, check=True).stdout)


FIGURES = [("T1 tasks/s (one call per task)", "T1", "tasks_per_s", True),
           ("T2 tasks/s (batches of 500)", "T2", "tasks_per_s", True),
           ("T3 p50 ms", "T3", "p50_ms", False),
           ("T3 p90 ms", "T3", "p90_ms", False),
           ("T3 p99 ms", "T3", "p99_ms", False),
           ("T3 max ms (of every round)", "T3", "max_ms", False)]


def summary(rounds: list[dict]) -> dict:
    """Each figure's median over the rounds (max_ms: the largest), and every round's value."""
    out = {}
    for _, test, key, _ in FIGURES:
        values = [r[test][key] for r in rounds]
        out[f"{test}_{key}"] = max(values) if key == "max_ms" else statistics.median(values)
        out[f"{test}_{key}_rounds"] = values
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--t1-tasks", type=int, default=5000)
    p.add_argument("--t2-tasks", type=int, default=20000)
    p.add_argument("--t3-round-trips", type=int, default=1000)
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds (ours, Celery's); medians reported")
    p.add_argument("--celery-only", action="store_true", help="print Celery's figures as JSON and stop")
    p.add_argument("--out", default=os.path.join(REPO, "bench", "results"))
    args = p.parse_args(argv)
    if args.celery_only:
        print(json.dumps(run_celery(args)))
        return 0
    ours, theirs = [], []
    for i in range(args.rounds):
        print(f"round {i + 1} of {args.rounds}: supervisor ...", file=sys.stderr)
        ours.append(run_ours(args))
        print(f"round {i + 1} of {args.rounds}: celery ...", file=sys.stderr)
        theirs.append(run_celery(args))
    a, b = summary(ours), summary(theirs)
    print(f"{'figure':34} {'supervisor':>12} {'celery':>12} {'ratio':>8}")
    print("-" * 70)
    for name, test, key, higher_better in FIGURES:
        x, y = a[f"{test}_{key}"], b[f"{test}_{key}"]
        ratio = x / y if higher_better else y / x
        print(f"{name:34} {x:>12,.2f} {y:>12,.2f} {ratio:>7.2f}x")
    print(f"(medians of {args.rounds} alternating rounds; ratio > 1: the supervisor is better by that factor)")
    for name, test, key, _ in FIGURES[:3]:
        print(f"  {name}: supervisor {a[f'{test}_{key}_rounds']}, celery {b[f'{test}_{key}_rounds']}")
    print("note: the supervisor commits every task to SQLite before its 202; Celery's Redis runs with no persistence "
          "(--save '' --appendonly no), as Celery deployments commonly do")
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, f"compare-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json")
    with open(path, "w") as f:
        json.dump({"supervisor": a, "celery": b, "rounds": {"supervisor": ours, "celery": theirs},
                   "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}, f, indent=2)
    print(f"written {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
