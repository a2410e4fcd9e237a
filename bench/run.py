"""make bench: throughput, latency, scale and memory of the supervisor, measured on this machine.

Starts a real supervisor (real SQLite file, durable acceptance: a 202 only after COMMIT) with one local py38
runner of 2 slots, and measures with the no-op task run(x, y, z) -> x + y + z:

  T1  5,000 tasks, one HTTP call each, 16 concurrent keep-alive clients, until every task has ended
  T2  20,000 tasks in batches of 500
  T3  1,000 sequential submit -> long-poll result round trips: p50, p90, p99, max
  T4  T1 and status lookups again with 1,000,000 finished tasks in the database; bytes per task on disk
  T5  peak RSS of the supervisor (with 10^6 stored tasks) and of an idle runner
and the same run's baselines: a bare aiohttp JSON handler (req/s, same client) and a ZeroMQ round trip.
Prints a table and writes bench/results/bench-<time>.json.
"""
import argparse
import asyncio
import base64
import json
import os
import platform
import re
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time

import aiohttp

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from tests.helpers import PYTHONS, SUPERVISOR_PYTHON, Supervisor, free_port, make_pickles, wait_until  # noqa: E402

NOOP = "def run(x, y, z):\n    return x + y + z\n"
# one runner, 2 slots, holding 2 more tasks queued (credit-based prefetch); T1 is also run without prefetch
WORKERS = {"py38": {"python": "3.8", "interpreter": PYTHONS["py38"], "concurrency": 2, "prefetch": 128}}
NO_PREFETCH = {"py38": {"python": "3.8", "interpreter": PYTHONS["py38"], "concurrency": 2, "prefetch": 0}}
# production-like settings: default heartbeat, durable synchronous=NORMAL (a commit survives kill -9)
SETTINGS = {"heartbeat_s": 1.0, "liveness": 3, "log_format": "text"}


# T1's load generator: wrk (C, one thread, a Lua script) when installed (`make bench` installs it), else the
# aiohttp client below; the bare-handler baseline uses the same one
WRK = shutil.which("wrk")
WRK_SCRIPT = os.path.join(REPO, "bench", "post_n.lua")


def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


TICK = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a live process."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def cpu_snapshot(sup_pid: int, runner_pid: int) -> dict:
    kids = open(f"/proc/{runner_pid}/task/{runner_pid}/children").read().split()
    t = os.times()  # the bench process and the load generators it has waited for (wrk)
    return {"supervisor": cpu_s(sup_pid), "runner": cpu_s(runner_pid),
            "runner_children": sum(cpu_s(int(k)) for k in kids),
            "client": t.user + t.system + t.children_user + t.children_system}


def cpu_per_task(before: dict, after: dict, tasks: int) -> dict:
    """Microseconds of CPU per task, by process (the bench client included)."""
    return {k + "_us": round((after[k] - before[k]) / tasks * 1e6, 1) for k in before}


def rss_kb(pid: int, field: str = "VmRSS") -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


# -- load generation ---------------------------------------------------------------------------------
async def submit_many(base: str, body: bytes, n: int, concurrency: int, headers=None) -> list[float]:
    """POST body n times from `concurrency` keep-alive connections; returns per-request seconds."""
    durations = []
    counter = iter(range(n))
    conn = aiohttp.TCPConnector(limit=concurrency)
    hdrs = {"Content-Type": "application/json", **(headers or {})}
    async with aiohttp.ClientSession(connector=conn) as session:
        async def worker():
            for _ in counter:
                t0 = time.perf_counter()
                async with session.post(base, data=body, headers=hdrs) as r:
                    await r.read()
                    if r.status not in (200, 202):
                        raise RuntimeError(f"HTTP {r.status}")
                durations.append(time.perf_counter() - t0)
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return durations


async def wrk_post(url: str, body: bytes, n: int, concurrency: int) -> dict:
    """POST body n times (and at most concurrency - 1 more) over keep-alive connections with wrk."""
    with tempfile.NamedTemporaryFile("wb", suffix=".json", delete=False) as f:
        f.write(body)
    try:
        proc = await asyncio.create_subprocess_exec(
            WRK, "-t1", f"-c{concurrency}", "-d300s", "-s", WRK_SCRIPT, url, "--", str(n), f.name,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        lines = []
        while line := await proc.stdout.readline():
            lines.append(line)
            if line.startswith(b"WRK-DONE"):
                proc.send_signal(signal.SIGINT)  # wrk waits out its duration otherwise
        err = await proc.stderr.read()
        await proc.wait()
        out = b"".join(lines)
    finally:
        os.unlink(f.name)
    m = re.search(r"WRK requests=(\d+) errors=(\d+) non2xx=(\d+) p50_us=(\d+) p99_us=(\d+)", out.decode())
    if m is None:
        raise RuntimeError(f"wrk failed: {out.decode()[-500:]} {err.decode()[-500:]}")
    requests, errors, non2xx, p50_us, p99_us = map(int, m.groups())
    if errors or non2xx:
        raise RuntimeError(f"wrk: {errors} socket errors, {non2xx} non-2xx replies")
    return {"requests": requests, "p50_ms": p50_us / 1e3, "p99_ms": p99_us / 1e3}


async def post_load(url: str, body: bytes, n: int, concurrency: int) -> dict:
    """n POSTs from `concurrency` keep-alive connections: {requests, p50_ms, p99_ms, client}."""
    if WRK:
        return dict(await wrk_post(url, body, n, concurrency), client="wrk")
    durations = await submit_many(url, body, n, concurrency)
    return {"requests": n, "p50_ms": round(pct(durations, 50) * 1e3, 2), "p99_ms": round(pct(durations, 99) * 1e3, 2),
            "client": "aiohttp"}


async def wait_all_done(base: str, worker: str, expected_done: int, timeout: float = 600) -> float:
    """Poll the worker's queue (a cheap call, every 20 ms) until nothing is queued or in flight, then check the
    finished counter once; returns the time the queue was seen empty."""
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            async with session.get(base + "/api/v1/workers") as r:
                w = next(x for x in (await r.json())["workers"] if x["name"] == worker)
            if w["queued"] == 0 and w["in_flight"] == 0:
                t = time.perf_counter()
                if await finished_count(base, worker) >= expected_done:
                    return t
            await asyncio.sleep(0.02)
    raise RuntimeError(f"tasks did not finish within {timeout}s")


async def finished_count(base: str, worker: str) -> int:
    async with aiohttp.ClientSession() as session:
        async with session.get(base + "/metrics") as r:
            text = await r.text()
    return int(sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("supervisor_tasks_finished_total{") and f'worker="{worker}"' in line))


async def t1_throughput(base: str, fn_b64: str, n: int = 5000, concurrency: int = 16) -> dict:
    body = json.dumps({"worker": "py38", "function": fn_b64, "kwargs": {"x": 1, "y": 2, "z": 3}}).encode()
    before = await finished_count(base, "py38")
    t0 = time.perf_counter()
    load = await post_load(base + "/api/v1/tasks", body, n, concurrency)
    t_submitted = time.perf_counter()
    t_done = await wait_all_done(base, "py38", before + n)
    done = await finished_count(base, "py38") - before  # wrk may send up to concurrency - 1 more than n
    return {"tasks": done, "concurrency": concurrency, "client": load["client"],
            "tasks_per_s": round(done / (t_done - t0), 1), "submit_per_s": round(load["requests"] / (t_submitted - t0), 1),
            "submit_p50_ms": load["p50_ms"], "submit_p99_ms": load["p99_ms"], "seconds": round(t_done - t0, 3)}


async def t2_batch(base: str, fn_b64: str, n: int = 20000, batch: int = 500, concurrency: int = 4) -> dict:
    spec = {"worker": "py38", "function_id": None, "kwargs": {"x": 1, "y": 2, "z": 3}}
    async with aiohttp.ClientSession() as session:
        async with session.post(base + "/api/v1/functions", json={"function": fn_b64}) as r:
            spec["function_id"] = (await r.json())["function_id"]
    body = json.dumps({"tasks": [spec] * batch}).encode()
    before = await finished_count(base, "py38")
    t0 = time.perf_counter()
    await submit_many(base + "/api/v1/tasks/batch", body, n // batch, concurrency)
    t_submitted = time.perf_counter()
    t_done = await wait_all_done(base, "py38", before + n)
    return {"tasks": n, "batch": batch, "tasks_per_s": round(n / (t_done - t0), 1),
            "submit_per_s": round(n / (t_submitted - t0), 1), "seconds": round(t_done - t0, 3)}


async def t3_latency(base: str, fn_b64: str, n: int = 1000) -> dict:
    body = json.dumps({"worker": "py38", "function": fn_b64, "kwargs": {"x": 1, "y": 2, "z": 3}}).encode()
    lat = []
    async with aiohttp.ClientSession() as session:
        for _ in range(n):
            t0 = time.perf_counter()
            async with session.post(base + "/api/v1/tasks", data=body) as r:
                task_id = (await r.json())["task_id"]
            async with session.post(base + "/api/v1/tasks/result",
                                    data=json.dumps({"task_id": task_id, "wait_s": 10})) as r:
                out = await r.json()
            lat.append(time.perf_counter() - t0)
            if out.get("result") != 6:
                raise RuntimeError(f"unexpected result {out}")
    ms = [x * 1e3 for x in lat]
    return {"round_trips": n, "p50_ms": round(pct(ms, 50), 3), "p90_ms": round(pct(ms, 90), 3),
            "p99_ms": round(pct(ms, 99), 3), "max_ms": round(max(ms), 3), "mean_ms": round(statistics.mean(ms), 3)}


async def status_lookups(base: str, ids: list[str]) -> dict:
    lat = []
    async with aiohttp.ClientSession() as session:
        for task_id in ids:
            t0 = time.perf_counter()
            async with session.post(base + "/api/v1/tasks/status", data=json.dumps({"task_id": task_id})) as r:
                await r.read()
                assert r.status == 200
            lat.append((time.perf_counter() - t0) * 1e3)
    return {"lookups": len(ids), "p50_ms": round(pct(lat, 50), 3), "p99_ms": round(pct(lat, 99), 3),
            "max_ms": round(max(lat), 3)}


# -- the database with a million finished tasks ------------------------------------------------------
def fill_finished(db: str, n: int, fn_bytes: bytes) -> list[str]:
    """n DONE tasks, written through the store's own schema in big transactions; returns a sample of ids."""
    from supervisor import store as store_mod
    from supervisor.specs import function_id_of
    fid = function_id_of(fn_bytes)
    con = sqlite3.connect(db)
    con.executescript(store_mod.SCHEMA)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("INSERT OR IGNORE INTO functions(hash, body, python, created_at) VALUES (?, ?, ?, ?)",
                (fid, fn_bytes, "3.8,3.9", time.time()))
    cols = store_mod.TASK_COLUMNS + ("started_at", "finished_at", "runner", "run_s", "result")
    now = time.time() - 86400
    sample = []
    batch = 50000
    for start in range(0, n, batch):
        rows = []
        for i in range(start, min(n, start + batch)):
            tid = f"{int((now + i * 0.001) * 1000):012x}{os.urandom(10).hex()}"  # the shape of tasks.new_id()
            if i % (n // 1000 or 1) == 0:
                sample.append(tid)
            t = now + i * 0.001
            rows.append((tid, "py38", "DONE", 0, 1, fid, '{"x": 1, "y": 2, "z": 3}', None, None, None, 3, 0,
                         120.0, None, t, t, None, t + 0.0005, t + 0.001, "py38-bench-runner", 0.0001, "6"))
        con.executemany(f"INSERT INTO tasks({', '.join(cols)}) VALUES ({', '.join('?' for _ in cols)})", rows)
        con.commit()
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    return sample


def file_bytes(db: str) -> int:
    return sum(os.path.getsize(p) for p in (db, db + "-wal") if os.path.exists(p))


# -- baselines ---------------------------------------------------------------------------------------
BARE_SERVER = """
import sys
from aiohttp import web
async def h(request):
    await request.read()
    return web.json_response({"task_id": "x", "status": "NOT RUN YET"}, status=202)
app = web.Application()
app.router.add_post("/", h)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)
"""

ZMQ_PINGPONG = """
import time, zmq, statistics
ctx = zmq.Context()
router = ctx.socket(zmq.ROUTER); port = router.bind_to_random_port("tcp://127.0.0.1")
dealer = ctx.socket(zmq.DEALER); dealer.connect(f"tcp://127.0.0.1:{port}")
import threading
def echo():
    while True:
        frames = router.recv_multipart()
        if frames[-1] == b"stop": return
        router.send_multipart(frames)
t = threading.Thread(target=echo); t.start()
lat = []
for i in range(3000):
    t0 = time.perf_counter(); dealer.send_multipart([b"SUP1", b"HEARTBEAT", b"{}"]); dealer.recv_multipart()
    lat.append(time.perf_counter() - t0)
dealer.send_multipart([b"stop"]); t.join()
print(statistics.median(lat[500:]) * 1e3)
"""


async def baseline_http(n: int = 5000, concurrency: int = 16) -> float:
    port = free_port()
    proc = subprocess.Popen([SUPERVISOR_PYTHON, "-c", BARE_SERVER, str(port)])
    try:
        async def up():
            try:
                async with aiohttp.ClientSession() as s:
                    async with s.post(f"http://127.0.0.1:{port}/", data=b"{}") as r:
                        return r.status == 202
            except aiohttp.ClientError:
                return False
        for _ in range(200):
            if await up():
                break
            await asyncio.sleep(0.05)
        body = json.dumps({"worker": "py38", "function": "A" * 400, "kwargs": {"x": 1, "y": 2, "z": 3}}).encode()
        t0 = time.perf_counter()
        load = await post_load(f"http://127.0.0.1:{port}/", body, n, concurrency)
        return load["requests"] / (time.perf_counter() - t0)
    finally:
        proc.terminate()
        proc.wait()


def baseline_zmq() -> float:
    out = subprocess.run([SUPERVISOR_PYTHON, "-c", ZMQ_PINGPONG], capture_output=True, text=True, check=True)
    return float(out.stdout.strip())


def baseline_sqlite(n: int = 20000) -> float:
    d = tempfile.mkdtemp()
    con = sqlite3.connect(os.path.join(d, "b.db"), isolation_level=None)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=NORMAL")
    con.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    t0 = time.perf_counter()
    for i in range(n):
        con.execute("BEGIN")
        con.execute("INSERT INTO t(v) VALUES (?)", ("x" * 100,))
        con.execute("COMMIT")
    rate = n / (time.perf_counter() - t0)
    con.close()
    shutil.rmtree(d)
    return rate


# -- the run -----------------------------------------------------------------------------------------
def median_run(runs: list[dict], key: str) -> dict:
    """The run whose `key` is the median of the runs (the lower middle for an even count), with every run's value."""
    chosen = dict(sorted(runs, key=lambda r: r[key])[(len(runs) - 1) // 2])
    chosen["runs_" + key] = [r[key] for r in runs]
    return chosen


def start_supervisor(tmp: str, db: str, workers=None) -> Supervisor:
    return Supervisor(tmp, workers=workers or WORKERS, db=db, **SETTINGS).start()


async def measure(args) -> dict:
    fn = make_pickles({"noop": NOOP}, "py38")["noop"]
    fn_b64 = base64.b64encode(fn).decode()
    tmp = tempfile.mkdtemp(prefix="bench-")
    results = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                           "kernel": platform.release()}, "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}

    print("baselines ...", file=sys.stderr)
    results["baseline"] = {"bare_aiohttp_req_per_s": round(await baseline_http(), 1),
                           "zmq_round_trip_ms": round(baseline_zmq(), 4),
                           "sqlite_commits_per_s": round(baseline_sqlite(), 1)}

    db = os.path.join(tmp, "empty.db")
    os.makedirs(os.path.join(tmp, "a"))
    sup = start_supervisor(os.path.join(tmp, "a"), db)
    base = sup.client.base
    try:
        runner_pid = sup.client.live_runners("py38")[0]["pid"]
        await t1_throughput(base, fn_b64, n=500)  # warm-up (function cache, connections)
        t1, t2, t3 = [], [], []
        for i in range(args.repeat):  # interleaved, so a noisy stretch of the shared machine hits all three
            print(f"T1, T2, T3 (run {i + 1} of {args.repeat}) ...", file=sys.stderr)
            c0 = cpu_snapshot(sup.proc.pid, runner_pid)
            t1.append(await t1_throughput(base, fn_b64, n=args.t1_tasks))
            t1[-1]["cpu_per_task"] = cpu_per_task(c0, cpu_snapshot(sup.proc.pid, runner_pid), args.t1_tasks)
            c0 = cpu_snapshot(sup.proc.pid, runner_pid)
            t2.append(await t2_batch(base, fn_b64, n=args.t2_tasks))
            t2[-1]["cpu_per_task"] = cpu_per_task(c0, cpu_snapshot(sup.proc.pid, runner_pid), args.t2_tasks)
            t3.append(await t3_latency(base, fn_b64, n=args.t3_round_trips))
        results["T1"] = median_run(t1, "tasks_per_s")
        results["T2"] = median_run(t2, "tasks_per_s")
        results["T3"] = median_run(t3, "p50_ms")
        results["T3"]["runs_p99_ms"] = [r["p99_ms"] for r in t3]
        results["T3"]["runs_max_ms"] = [r["max_ms"] for r in t3]
        idle_wait = time.monotonic() + 2
        while time.monotonic() < idle_wait:
            await asyncio.sleep(0.2)
        results["T5"] = {"idle_runner_rss_mb": round(rss_kb(runner_pid) / 1024, 1),
                         "idle_runner_children_rss_mb": round(sum(
                             rss_kb(int(p)) for p in open(f"/proc/{runner_pid}/task/{runner_pid}/children").read().split()
                         ) / 1024, 1),
                         "supervisor_peak_rss_mb_empty_db": round(rss_kb(sup.proc.pid, "VmHWM") / 1024, 1)}
    finally:
        sup.stop()

    print("T1 without prefetch ...", file=sys.stderr)
    os.makedirs(os.path.join(tmp, "c"))
    sup = start_supervisor(os.path.join(tmp, "c"), os.path.join(tmp, "c.db"), NO_PREFETCH)
    try:
        await t1_throughput(sup.client.base, fn_b64, n=500)
        results["T1_no_prefetch"] = await t1_throughput(sup.client.base, fn_b64, n=args.t1_tasks)
    finally:
        sup.stop()

    if not args.t4_rows:
        shutil.rmtree(tmp, ignore_errors=True)
        return results

    # how the cost grows with the history: 10^3 .. 10^5 stored tasks (10^6 is T4 below)
    results["scale"] = []
    for rows in [r for r in (1_000, 10_000, 100_000) if r < args.t4_rows]:
        print(f"scale: {rows:,} stored tasks ...", file=sys.stderr)
        db = os.path.join(tmp, f"scale-{rows}.db")
        sample = fill_finished(db, rows, fn)
        os.makedirs(os.path.join(tmp, f"s{rows}"))
        sup = start_supervisor(os.path.join(tmp, f"s{rows}"), db)
        try:
            await t1_throughput(sup.client.base, fn_b64, n=300)
            lookups = await status_lookups(sup.client.base, sample[:1000])
            t1 = await t1_throughput(sup.client.base, fn_b64, n=2000)
            results["scale"].append({"stored_tasks": rows, "status_p50_ms": lookups["p50_ms"],
                                     "status_p99_ms": lookups["p99_ms"], "T1_tasks_per_s": t1["tasks_per_s"],
                                     "bytes_per_task": round(file_bytes(db) / rows, 1),
                                     "supervisor_peak_rss_mb": round(rss_kb(sup.proc.pid, "VmHWM") / 1024, 1)})
        finally:
            sup.stop()

    print(f"T4: filling {args.t4_rows:,} finished tasks ...", file=sys.stderr)
    big = os.path.join(tmp, "big.db")
    t0 = time.perf_counter()
    sample = fill_finished(big, args.t4_rows, fn)
    fill_s = time.perf_counter() - t0
    size_before = file_bytes(big)
    os.makedirs(os.path.join(tmp, "b"))
    sup = start_supervisor(os.path.join(tmp, "b"), big)
    base = sup.client.base
    try:
        await t1_throughput(base, fn_b64, n=500)
        lookups = await status_lookups(base, sample[:1000])
        t1_big = await t1_throughput(base, fn_b64, n=args.t1_tasks)
        submitted_since = 500 + args.t1_tasks
        results["T4"] = {"stored_tasks": args.t4_rows, "fill_seconds": round(fill_s, 1),
                         "status_lookup": lookups, "T1_tasks_per_s": t1_big["tasks_per_s"],
                         "T1_ratio_to_empty": round(t1_big["tasks_per_s"] / results["T1"]["tasks_per_s"], 3),
                         "bytes_per_task_on_disk": round(size_before / args.t4_rows, 1),
                         "bytes_per_task_submitted_via_api": None}
        sup_peak = rss_kb(sup.proc.pid, "VmHWM")
        results["T5"]["supervisor_peak_rss_mb_with_stored_tasks"] = round(sup_peak / 1024, 1)
        results["scale"].append({"stored_tasks": args.t4_rows, "status_p50_ms": lookups["p50_ms"],
                                 "status_p99_ms": lookups["p99_ms"], "T1_tasks_per_s": t1_big["tasks_per_s"],
                                 "bytes_per_task": results["T4"]["bytes_per_task_on_disk"],
                                 "supervisor_peak_rss_mb": round(sup_peak / 1024, 1)})
    finally:
        sup.stop()
    size_after = file_bytes(big)
    results["T4"]["bytes_per_task_submitted_via_api"] = round((size_after - size_before) / submitted_since, 1)
    shutil.rmtree(tmp, ignore_errors=True)
    return results


TARGETS = [("T1 tasks/s", lambda r: r["T1"]["tasks_per_s"], ">=", 4000),
           ("T2 tasks/s", lambda r: r["T2"]["tasks_per_s"], ">=", 10000),
           ("T3 p50 ms", lambda r: r["T3"]["p50_ms"], "<=", 1.5),
           ("T3 p99 ms", lambda r: r["T3"]["p99_ms"], "<=", 5),
           ("T3 max ms (of every run)", lambda r: max(r["T3"].get("runs_max_ms", [r["T3"]["max_ms"]])), "<=", 50),
           ("T4 status p99 ms", lambda r: r["T4"]["status_lookup"]["p99_ms"], "<=", 2),
           ("T4 T1 / empty T1", lambda r: r["T4"]["T1_ratio_to_empty"], ">=", 0.8),
           ("T4 bytes/task", lambda r: r["T4"]["bytes_per_task_submitted_via_api"], "<=", 600),
           ("T5 supervisor MB (10^6 tasks)", lambda r: r["T5"]["supervisor_peak_rss_mb_with_stored_tasks"], "<=", 120),
           ("T5 idle runner MB", lambda r: r["T5"]["idle_runner_rss_mb"], "<=", 40)]


def table(r: dict) -> str:
    b = r["baseline"]
    lines = [f"machine: {r['machine']['cpus']} CPUs, Python {r['machine']['python']}, {r['when']}",
             f"baselines (same run): bare aiohttp {b['bare_aiohttp_req_per_s']:,.0f} req/s, ZeroMQ round trip "
             f"{b['zmq_round_trip_ms']:.3f} ms, SQLite {b['sqlite_commits_per_s']:,.0f} commits/s",
             "",
             f"{'figure':32} {'measured':>12} {'target':>10}  met",
             "-" * 62]
    for name, get, op, target in TARGETS:
        v = get(r)
        met = v >= target if op == ">=" else v <= target
        lines.append(f"{name:32} {v:>12,.2f} {op + ' ' + str(target):>10}  {'yes' if met else 'NO'}")
    lines += ["",
              f"medians of {len(r['T1']['runs_tasks_per_s'])} runs; every run: T1 {r['T1']['runs_tasks_per_s']} tasks/s, "
              f"T2 {r['T2']['runs_tasks_per_s']} tasks/s, T3 p50 {r['T3']['runs_p50_ms']} ms, "
              f"p99 {r['T3']['runs_p99_ms']} ms",
              f"T1 without prefetch (a task only goes to a free slot): {r['T1_no_prefetch']['tasks_per_s']:,.0f} tasks/s",
              f"CPU per task, T1: {r['T1']['cpu_per_task']}",
              f"CPU per task, T2: {r['T2']['cpu_per_task']}",
              f"T1 as a fraction of the bare aiohttp handler: {r['T1']['tasks_per_s'] / b['bare_aiohttp_req_per_s']:.2f}",
              f"T3 p50 in ZeroMQ round trips: {r['T3']['p50_ms'] / b['zmq_round_trip_ms']:.1f}",
              f"T1 submit p50 {r['T1']['submit_p50_ms']} ms, p99 {r['T1']['submit_p99_ms']} ms; "
              f"T2 submit {r['T2']['submit_per_s']:,.0f} tasks/s",
              f"T4 status lookup p50 {r['T4']['status_lookup']['p50_ms']} ms; stored-row bytes/task "
              f"{r['T4']['bytes_per_task_on_disk']}",
              f"T5 idle runner children RSS {r['T5']['idle_runner_children_rss_mb']} MB; supervisor peak (empty db) "
              f"{r['T5']['supervisor_peak_rss_mb_empty_db']} MB",
              "",
              f"{'stored tasks':>14} {'status p50 ms':>14} {'status p99 ms':>14} {'T1 tasks/s':>11} {'bytes/task':>11} "
              f"{'sup. RSS MB':>12}"]
    for row in r.get("scale", []):
        lines.append(f"{row['stored_tasks']:>14,} {row['status_p50_ms']:>14} {row['status_p99_ms']:>14} "
                     f"{row['T1_tasks_per_s']:>11,.0f} {row['bytes_per_task']:>11} {row['supervisor_peak_rss_mb']:>12}")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--t1-tasks", type=int, default=5000)
    p.add_argument("--t2-tasks", type=int, default=20000)
    p.add_argument("--t3-round-trips", type=int, default=1000)
    p.add_argument("--t4-rows", type=int, default=1_000_000)
    p.add_argument("--repeat", type=int, default=5, help="runs of T1, T2 and T3; their medians are reported")
    p.add_argument("--out", default=os.path.join(REPO, "bench", "results"))
    p.add_argument("--json-only", action="store_true", help="print the figures as JSON on stdout, write no file")
    args = p.parse_args(argv)
    results = asyncio.run(measure(args))
    if args.json_only:
        print(json.dumps(results))
        return 0
    print(table(results))
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, f"bench-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json")
    with open(path, "w") as f:
        json.dump(results, f, indent=2)
    print(f"\nwritten {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
