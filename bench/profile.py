"""Where the supervisor's time goes during T1 (or T2 with --workload t2): py-spy samples the live supervisor, grouped by function.

    .venvs/supervisor/bin/python bench/profile.py [--tasks 5000]
Prints inclusive shares of the supervisor's samples for its main thread's busiest frames (idle excluded).
"""
import argparse
import asyncio
import base64
import collections
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

import run as bench  # noqa: E402
from tests.helpers import SUPERVISOR_PYTHON, make_pickles  # noqa: E402


def aggregate(path: str, top: int) -> list[tuple[float, str]]:
    incl, total = collections.Counter(), 0
    with open(path) as f:
        for line in f:
            stack, _, n = line.rstrip().rpartition(" ")
            if not stack:
                continue
            frames = stack.split(";")
            if any(x in frames[-1] for x in ("select (selectors.py", "_connection_worker_thread (aiosqlite",
                                             "Runner.run (asyncio/runners.py", "run (uvloop/")):
                continue  # idle: waiting in epoll (uvloop's loop is C: its wait shows as the Python frame that
                # started it), or the database thread waiting for a job
            total += int(n)
            seen = set()
            for fr in frames:
                key = fr.split(" (")[0] + " " + (fr.split("(")[1].split(":")[0] if "(" in fr else "")
                if key not in seen:
                    seen.add(key)
                    incl[key] += int(n)
    return [(v / total * 100, k) for k, v in incl.most_common(top)]


async def main_async(tasks: int, out: str, workload: str) -> None:
    fn = make_pickles({"noop": bench.NOOP}, "py38")["noop"]
    b64 = base64.b64encode(fn).decode()
    tmp = tempfile.mkdtemp(prefix="profile-")
    sup = bench.start_supervisor(tmp, os.path.join(tmp, "p.db"))
    try:
        await bench.t1_throughput(sup.client.base, b64, n=500)
        spy = subprocess.Popen([os.path.join(os.path.dirname(SUPERVISOR_PYTHON), "py-spy"), "record", "-o", out,
                                "-f", "raw", "-r", "200", "-p", str(sup.proc.pid)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1.0)  # py-spy attaching
        if workload == "t2":
            print(await bench.t2_batch(sup.client.base, b64, n=tasks), file=sys.stderr)
        else:
            print(await bench.t1_throughput(sup.client.base, b64, n=tasks), file=sys.stderr)
        spy.send_signal(2)
        spy.wait()
    finally:
        sup.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", type=int, default=5000)
    p.add_argument("--top", type=int, default=40)
    p.add_argument("--workload", choices=("t1", "t2"), default="t1", help="t1: one call per task; t2: batches")
    args = p.parse_args()
    out = os.path.join(tempfile.mkdtemp(), "supervisor.txt")
    asyncio.run(main_async(args.tasks, out, args.workload))
    for share, frame in aggregate(out, args.top):
        print(f"{share:5.1f}%  {frame}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
