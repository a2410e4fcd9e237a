"""All SQL: tasks and content-addressed functions in one SQLite file (aiosqlite).

One writer connection (every write transaction goes through `_write`), one
reader connection and one checkpointer; WAL lets them work side by side.
Payloads are opaque blobs: nothing here unpickles anything.

Write transactions run on the event loop's thread: a commit in WAL mode
without fsync (synchronous=NORMAL) takes tens of microseconds, less than the
two thread switches aiosqlite's worker thread costs per call (measured: T3
p50 1.95 -> 1.46 ms). What can take milliseconds stays off the loop: reads go
through aiosqlite's thread, and the WAL is checkpointed (with its fsync) by a
separate connection in its own aiosqlite thread instead of by whichever
commit crosses the auto-checkpoint threshold.
"""
import asyncio
import json
import logging
import operator
import os
import sqlite3
import time
from typing import Any, Iterable

import aiosqlite

from supervisor import tasks

log = logging.getLogger("supervisor.store")

SCHEMA = """
CREATE TABLE IF NOT EXISTS functions (
    hash TEXT PRIMARY KEY,          -- "sha256:<hex>" of body
    body BLOB NOT NULL,
    python TEXT,                    -- Pythons that could have made it, e.g. "3.6,3.7"; NULL if unknown
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS tasks (
    seq INTEGER PRIMARY KEY,        -- submission order (FIFO within a priority)
    id TEXT NOT NULL UNIQUE,
    worker TEXT NOT NULL,
    status TEXT NOT NULL,
    priority INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    function_hash TEXT NOT NULL REFERENCES functions(hash),
    kwargs TEXT NOT NULL,           -- JSON text
    labels TEXT,                    -- JSON text
    python TEXT,
    timeout_s REAL,
    max_retries INTEGER NOT NULL,
    retry_on_error INTEGER NOT NULL,
    unavailable_timeout_s REAL NOT NULL,
    callback_url TEXT,
    submitted_at REAL NOT NULL,
    queued_at REAL NOT NULL,        -- when it last became NOT RUN YET
    not_before REAL,                -- retry backoff: not dispatched before this time
    started_at REAL,
    finished_at REAL,
    runner TEXT,
    run_s REAL,
    result TEXT,                    -- JSON text
    result_repr TEXT,
    result_dill BLOB,
    error TEXT,                     -- JSON {type, message, traceback}
    logs TEXT,
    logs_truncated INTEGER NOT NULL DEFAULT 0,
    crashes TEXT,                   -- JSON list of {attempt, runner, at, message, exit_code, signal}
    callback_sent_at REAL,          -- when callback_url answered 2xx (NULL: not yet, or no callback)
    callback_error TEXT             -- the last delivery error, once delivery gave up
);
CREATE INDEX IF NOT EXISTS tasks_by_status ON tasks(status, seq);
CREATE INDEX IF NOT EXISTS tasks_by_worker ON tasks(worker, seq);
CREATE INDEX IF NOT EXISTS tasks_callback_pending ON tasks(seq)
    WHERE callback_url IS NOT NULL AND callback_sent_at IS NULL AND callback_error IS NULL;
"""

TASK_COLUMNS = (
    "id", "worker", "status", "priority", "attempts", "function_hash", "kwargs", "labels", "python",
    "timeout_s", "max_retries", "retry_on_error", "unavailable_timeout_s", "callback_url",
    "submitted_at", "queued_at", "not_before",
)
INSERT_TASK = f"INSERT INTO tasks({', '.join(TASK_COLUMNS)}) VALUES ({', '.join('?' for _ in TASK_COLUMNS)})"
TASK_VALUES = operator.itemgetter(*TASK_COLUMNS)  # a row dict's values in TASK_COLUMNS order
SUMMARY_COLUMNS = "seq, id, worker, status, priority, attempts, labels, submitted_at, started_at, finished_at, runner"


# page caches (SQLite's default is 2 MiB): the index pages a million-task history touches stay in memory
WRITER_CACHE_KIB = 32 * 1024
READER_CACHE_KIB = 16 * 1024
FUNCTIONS_KNOWN = 4096  # stored functions whose info is kept in memory
CHECKPOINT_EVERY_S = 0.5  # how often the WAL is copied back into the database file (off the loop)


class Store:
    """The SQLite file behind every task and function."""

    def __init__(self, path: str, synchronous: str = "NORMAL"):
        self.path = path
        self.synchronous = synchronous
        self._writer: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        self._checkpointer: aiosqlite.Connection | None = None
        self._checkpoints: asyncio.Task | None = None
        self._pending: list[tuple[list, asyncio.Future]] = []
        self._flush_scheduled = False
        self.on_write = None  # called with each write transaction's duration in seconds (metrics)
        self._stored: dict[str, dict | None] = {}  # hashes of functions known stored (never deleted): their info

    async def open(self) -> None:
        if self.path != ":memory:":
            os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        self._writer = await aiosqlite.connect(self.path, isolation_level=None, check_same_thread=False)
        for pragma in ("journal_mode=WAL", f"synchronous={self.synchronous}", "busy_timeout=5000",
                       "foreign_keys=ON", f"cache_size=-{WRITER_CACHE_KIB}"):
            await self._writer.execute(f"PRAGMA {pragma}")
        await self._writer.executescript(SCHEMA)
        self._writer_conn = self._writer._conn  # the sqlite3 connection, used only in aiosqlite's thread
        self._reader = await aiosqlite.connect(self.path, isolation_level=None)
        await self._reader.execute("PRAGMA busy_timeout=5000")
        await self._reader.execute(f"PRAGMA cache_size=-{READER_CACHE_KIB}")
        self._reader.row_factory = sqlite3.Row

    async def close(self) -> None:
        self._flush()
        if self._checkpoints is not None:
            self._checkpoints.cancel()
            await asyncio.gather(self._checkpoints, return_exceptions=True)
        for conn in (self._reader, self._checkpointer, self._writer):  # the last one to close checkpoints the WAL
            if conn is not None:
                await conn.close()
        self._reader = self._checkpointer = self._writer = None

    async def _checkpoint_loop(self) -> None:
        """Copy committed pages from the WAL into the database file now and then, in aiosqlite's thread."""
        while True:
            await asyncio.sleep(CHECKPOINT_EVERY_S)
            try:
                await self._checkpointer.execute("PRAGMA wal_checkpoint(PASSIVE)")
            except sqlite3.Error as exc:
                log.warning("WAL checkpoint failed (will retry): %s", exc)

    @property
    def is_open(self) -> bool:
        return self._writer is not None

    async def _write(self, statements: Iterable[tuple[str, Any]]) -> list[int]:
        """Run statements in one transaction, committed before this returns; returns each one's rowcount.

        Group commit: every write asked for during one turn of the event loop goes into one transaction,
        each inside its own SAVEPOINT so one failing write never undoes another.
        """
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._pending.append((list(statements), future))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush)  # after the callbacks already due: they may add writes
        return await future

    def _flush(self) -> None:
        self._flush_scheduled = False
        jobs, self._pending = self._pending, []
        if not jobs:
            return
        t0 = time.perf_counter()
        try:
            outcomes = self._run_jobs([j for j, _ in jobs])
        except Exception as exc:  # the transaction itself failed: every job in it failed
            outcomes = [exc] * len(jobs)
        if self.on_write is not None:
            self.on_write(time.perf_counter() - t0)
        for (_, future), outcome in zip(jobs, outcomes):
            if future.done():
                continue
            if isinstance(outcome, Exception):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)

    def _run_jobs(self, jobs: list[list[tuple[str, Any]]]) -> list:
        """One transaction, a savepoint per job; a job's outcome is its rowcounts or error."""
        db = self._writer_conn
        db.execute("BEGIN IMMEDIATE")
        outcomes = []
        try:
            for statements in jobs:
                db.execute("SAVEPOINT job")
                try:
                    outcomes.append([db.execute(sql, params).rowcount for sql, params in statements])
                    db.execute("RELEASE job")
                except sqlite3.Error as exc:
                    db.execute("ROLLBACK TO job")
                    db.execute("RELEASE job")
                    outcomes.append(exc)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return outcomes

    # -- functions ---------------------------------------------------------
    @staticmethod
    def _put_function_sql(function_hash: str, body: bytes, python: str | None):
        return ("INSERT OR IGNORE INTO functions(hash, body, python, created_at) VALUES (?, ?, ?, ?)",
                (function_hash, body, python, time.time()))

    def _known(self, function_hash: str, info: dict | None) -> None:
        """Remember a function is stored, with its info once read back (None until then)."""
        self._stored[function_hash] = info
        if len(self._stored) > FUNCTIONS_KNOWN:
            self._stored.pop(next(iter(self._stored)))

    async def put_function(self, function_hash: str, body: bytes, python: str | None) -> bool:
        """Store a function once per hash; True if it was new."""
        (count,) = await self._write([self._put_function_sql(function_hash, body, python)])
        return count == 1

    async def function_info(self, function_hash: str) -> dict | None:
        """{hash, python, size} of a stored function, or None; looked up once per hash."""
        info = self._stored.get(function_hash)
        if info is None:
            async with self._reader.execute("SELECT hash, python, length(body) AS size FROM functions WHERE hash=?",
                                            (function_hash,)) as cur:
                row = await cur.fetchone()
            if row is None:
                return None
            info = dict(row)
            self._known(function_hash, info)
        return info

    async def function_body(self, function_hash: str) -> bytes | None:
        async with self._reader.execute("SELECT body FROM functions WHERE hash=?", (function_hash,)) as cur:
            row = await cur.fetchone()
        return row[0] if row else None

    # -- tasks -------------------------------------------------------------
    async def insert_tasks(self, rows: list[dict], functions: list[tuple[str, bytes, str | None]]) -> None:
        """Store new tasks (and any new functions) in one transaction: after this returns they are durable."""
        functions = [f for f in functions if f[0] not in self._stored]  # stored already: no INSERT again
        statements = [self._put_function_sql(*f) for f in functions]
        statements += [(INSERT_TASK, TASK_VALUES(row)) for row in rows]
        await self._write(statements)
        for function_hash, _, _ in functions:
            self._known(function_hash, None)  # stored now (or before: INSERT OR IGNORE keeps the first row)

    @staticmethod
    def _transition_sql(task_id: str, event: str, attempt: int, fields: dict) -> tuple[str, tuple]:
        from_status, to_status = tasks.TRANSITIONS[event]
        for key in ("error", "crashes"):
            if key in fields and not isinstance(fields[key], (str, type(None))):
                fields[key] = json.dumps(fields[key])
        sets = ", ".join(["status=?"] + [f"{k}=?" for k in fields])
        return (f"UPDATE tasks SET {sets} WHERE id=? AND status=? AND attempts=?",
                (to_status, *fields.values(), task_id, from_status, attempt))

    async def transitions(self, items: list[tuple[str, str, int, dict]]) -> list[bool]:
        """Apply many (task_id, event, attempt, fields) in one transaction; True for each that applied."""
        counts = await self._write([self._transition_sql(*item) for item in items])
        return [c == 1 for c in counts]

    async def get_task(self, task_id: str) -> dict | None:
        async with self._reader.execute("SELECT * FROM tasks WHERE id=?", (task_id,)) as cur:
            row = await cur.fetchone()
        return dict(row) if row else None

    async def get_status(self, task_id: str) -> str | None:
        async with self._reader.execute("SELECT status FROM tasks WHERE id=?", (task_id,)) as cur:
            row = await cur.fetchone()
        return row[0] if row else None

    async def list_tasks(self, status: str | None, worker: str | None, limit: int,
                         before: str | None) -> list[dict]:
        where, params = [], []
        if status:
            where.append("status=?")
            params.append(status)
        if worker:
            where.append("worker=?")
            params.append(worker)
        if before:
            where.append("seq < (SELECT seq FROM tasks WHERE id=?)")
            params.append(before)
        sql = f"SELECT {SUMMARY_COLUMNS} FROM tasks"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY seq DESC LIMIT ?"
        async with self._reader.execute(sql, (*params, limit)) as cur:
            return [dict(r) for r in await cur.fetchall()]

    async def pending_callbacks(self) -> list[str]:
        """Ended tasks whose callback has neither been delivered nor given up on."""
        sql = ("SELECT id FROM tasks WHERE callback_url IS NOT NULL AND callback_sent_at IS NULL "
               "AND callback_error IS NULL AND status NOT IN (?, ?) ORDER BY seq")
        async with self._reader.execute(sql, (tasks.NOT_RUN_YET, tasks.IN_FLIGHT)) as cur:
            return [r[0] for r in await cur.fetchall()]

    async def mark_callback(self, task_id: str, error: str | None) -> None:
        if error is None:
            await self._write([("UPDATE tasks SET callback_sent_at=? WHERE id=?", (time.time(), task_id))])
        else:
            await self._write([("UPDATE tasks SET callback_error=? WHERE id=?", (error, task_id))])

    async def counts(self) -> tuple[list[dict], list[dict]]:
        """Tasks per (worker, status), and per FAILED error type: what metrics counters start from."""
        async with self._reader.execute("SELECT worker, status, count(*) AS n FROM tasks GROUP BY worker, status") as cur:
            by_status = [dict(r) for r in await cur.fetchall()]
        sql = ("SELECT worker, json_extract(error, '$.type') AS error_type, count(*) AS n FROM tasks "
               "WHERE status=? GROUP BY worker, error_type")
        async with self._reader.execute(sql, (tasks.FAILED,)) as cur:
            by_error = [dict(r) for r in await cur.fetchall()]
        return by_status, by_error

    async def task_exists(self, task_id: str) -> bool:
        async with self._reader.execute("SELECT 1 FROM tasks WHERE id=?", (task_id,)) as cur:
            return await cur.fetchone() is not None

    async def active_tasks(self) -> list[dict]:
        """Every task not yet ended, oldest first: what the dispatcher reloads after a restart."""
        cols = ", ".join(("seq",) + TASK_COLUMNS + ("runner", "started_at", "crashes"))  # submitted_at included
        sql = f"SELECT {cols} FROM tasks WHERE status IN (?, ?) ORDER BY seq"
        async with self._reader.execute(sql, (tasks.NOT_RUN_YET, tasks.IN_FLIGHT)) as cur:
            return [dict(r) for r in await cur.fetchall()]
