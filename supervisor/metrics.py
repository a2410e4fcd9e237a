"""Prometheus metrics: fed by lifecycle events (supervisor.events) and read from live state at scrape time.

Nothing else in the code touches a metric: the dispatcher, broker and API emit events, this module counts
them. Counters that describe the task history (submitted, finished, failures) start from the SQLite file,
so they survive a restart; gauges (queues, runners, slots, runner resources) are computed when scraped.
"""
import time

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from supervisor import tasks

# seconds: from sub-millisecond no-op tasks to hour-long training steps
TIME_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)
FAST_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1)
RESOURCE_FIGURES = (
    ("cpu_percent", "supervisor_runner_host_cpu_percent", "CPU use of the runner's host, percent"),
    ("load1", "supervisor_runner_host_load1", "1-minute load average of the runner's host"),
    ("memory_used_bytes", "supervisor_runner_host_memory_used_bytes", "memory in use on the runner's host"),
    ("memory_total_bytes", "supervisor_runner_host_memory_total_bytes", "memory of the runner's host"),
    ("disk_used_bytes", "supervisor_runner_host_disk_used_bytes", "disk in use on the runner's host (/)"),
    ("disk_total_bytes", "supervisor_runner_host_disk_total_bytes", "disk size of the runner's host (/)"),
    ("rss_bytes", "supervisor_runner_rss_bytes", "resident memory of the runner process"),
    ("children_rss_bytes", "supervisor_runner_children_rss_bytes", "resident memory of the runner's task processes"),
)
GPU_FIGURES = (
    ("utilization_percent", "supervisor_runner_gpu_utilization_percent", "GPU utilisation, percent"),
    ("memory_used_bytes", "supervisor_runner_gpu_memory_used_bytes", "GPU memory in use"),
    ("memory_total_bytes", "supervisor_runner_gpu_memory_total_bytes", "GPU memory size"),
)


HTTP_METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"))


class Metrics:
    def __init__(self, settings):
        self.settings = settings
        self.registry = CollectorRegistry()
        r = self.registry
        ProcessCollector(registry=r)
        self.submitted = Counter("supervisor_tasks_submitted", "Tasks accepted (202), by worker", ["worker"],
                                 registry=r)
        self.finished = Counter("supervisor_tasks_finished", "Tasks that reached an end status, by worker and status",
                                ["worker", "status"], registry=r)
        self.failures = Counter("supervisor_task_failures", "FAILED tasks by worker and error type",
                                ["worker", "error_type"], registry=r)
        self.requeued = Counter("supervisor_tasks_requeued", "Attempts given back to the queue (runner lost, crash, "
                                "retry_on_error), by worker", ["worker"], registry=r)
        self.runners_lost = Counter("supervisor_runners_lost", "Runners declared lost, by worker", ["worker"],
                                    registry=r)
        self.runners_joined = Counter("supervisor_runners_joined", "Runner registrations, by worker", ["worker"],
                                      registry=r)
        self.stale = Counter("supervisor_stale_results", "Results of superseded attempts, dropped", registry=r)
        self.rejected = Counter("supervisor_submissions_rejected", "Submissions refused, by error code", ["reason"],
                                registry=r)
        self.wait = Histogram("supervisor_task_wait_seconds", "Time from (re)queueing to start of an attempt",
                              ["worker"], buckets=TIME_BUCKETS, registry=r)
        self.run = Histogram("supervisor_task_run_seconds", "Run time of the function, as measured by the runner",
                             ["worker"], buckets=TIME_BUCKETS, registry=r)
        self.latency = Histogram("supervisor_task_latency_seconds", "Time from submit to end status",
                                 ["worker"], buckets=TIME_BUCKETS, registry=r)
        self.http = Histogram("supervisor_http_request_duration_seconds", "HTTP request handling time",
                              ["route", "method", "status"], buckets=FAST_BUCKETS, registry=r)
        self.sqlite_write = Histogram("supervisor_sqlite_write_seconds", "Duration of one SQLite write transaction",
                                      buckets=FAST_BUCKETS, registry=r)
        for worker in settings.workers:  # every worker's series exist from the start, at zero
            self.submitted.labels(worker)
            self.requeued.labels(worker)
            self.runners_lost.labels(worker)
            for status in sorted(tasks.END_STATUSES):
                self.finished.labels(worker, status)
        self.dispatcher = self.broker = None
        self._children: dict = {}
        r.register(_LiveState(self))

    def attach(self, dispatcher, broker, store) -> None:
        self.dispatcher, self.broker = dispatcher, broker
        store.on_write = self.sqlite_write.observe

    async def load(self, store) -> None:
        """Start the history counters from what the SQLite file holds."""
        by_status, by_error = await store.counts()
        for row in by_status:
            self.submitted.labels(row["worker"]).inc(row["n"])
            if row["status"] in tasks.END_STATUSES:
                self.finished.labels(row["worker"], row["status"]).inc(row["n"])
        for row in by_error:
            self.failures.labels(row["worker"], row["error_type"] or "unknown").inc(row["n"])

    # -- events ------------------------------------------------------------
    def on_event(self, name: str, task=None, **data) -> None:
        if name == "submitted":
            self._child(self.submitted, data["worker"]).inc()
        elif name == "rejected":
            self.rejected.labels(data["reason"]).inc()
        elif name == "dispatched":
            self._child(self.wait, task.worker).observe(max(data["wait_s"], 0.0))
        elif name == "requeued":
            self.requeued.labels(task.worker).inc()
        elif name == "finished":
            self._child(self.finished, task.worker, data["status"]).inc()
            if data["status"] == tasks.FAILED:
                self.failures.labels(task.worker, data.get("error_type") or "unknown").inc()
            if data.get("run_s") is not None:
                self._child(self.run, task.worker).observe(data["run_s"])
            if data.get("latency_s") is not None:
                self._child(self.latency, task.worker).observe(max(data["latency_s"], 0.0))
        elif name == "stale_result":
            self.stale.inc()
        elif name == "runner_joined":
            self.runners_joined.labels(data["runner"].worker).inc()
        elif name == "runner_lost":
            self.runners_lost.labels(data["runner"].worker).inc()

    def _child(self, metric, *labels):
        """metric.labels(*labels), remembered: the per-task events hit the same few children every time."""
        key = (id(metric), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    # -- HTTP ---------------------------------------------------------------
    def middleware(self):
        @web.middleware
        async def timed(request: web.Request, handler):
            t0 = time.perf_counter()
            status = 500
            try:
                response = await handler(request)
                status = response.status
                return response
            except web.HTTPException as exc:
                status = exc.status
                raise
            finally:
                route = request.match_info.route.resource
                name = route.canonical if route is not None else "unmatched"
                method = request.method if request.method in HTTP_METHODS else "other"  # labels stay bounded
                self._child(self.http, name, method, str(status)).observe(time.perf_counter() - t0)
        return timed

    async def handler(self, request: web.Request) -> web.Response:
        body = generate_latest(self.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


class _LiveState:
    """Gauges read from the dispatcher and broker at scrape time."""

    def __init__(self, metrics: Metrics):
        self.m = metrics

    def describe(self):
        return []

    def collect(self):
        m = self.m
        queued = GaugeMetricFamily("supervisor_tasks_queued", "Tasks NOT RUN YET, by worker", labels=["worker"])
        in_flight = GaugeMetricFamily("supervisor_tasks_in_flight", "Tasks IN FLIGHT, by worker", labels=["worker"])
        runners = GaugeMetricFamily("supervisor_runners", "Runners known, by worker and state (idle, busy, lost)",
                                    labels=["worker", "state"])
        slots = GaugeMetricFamily("supervisor_runner_slots", "Task slots of live runners, by worker",
                                  labels=["worker"])
        busy = GaugeMetricFamily("supervisor_runner_slots_busy", "Slots running a task, by worker", labels=["worker"])
        heartbeat = GaugeMetricFamily("supervisor_runner_heartbeat_age_seconds", "Seconds since a runner was heard",
                                      labels=["worker", "runner", "host"])
        figures = {key: GaugeMetricFamily(name, doc, labels=["worker", "runner", "host"])
                   for key, name, doc in RESOURCE_FIGURES}
        gpus = {key: GaugeMetricFamily(name, doc, labels=["worker", "runner", "host", "gpu"])
                for key, name, doc in GPU_FIGURES}
        if m.dispatcher is None or m.broker is None:
            return
        counts = m.dispatcher.counts()
        now = m.broker.clock()
        for worker in m.settings.workers:
            q, f = counts.get(worker, (0, 0))
            queued.add_metric([worker], q)
            in_flight.add_metric([worker], f)
            states = {"idle": 0, "busy": 0, "lost": 0}
            total = used = 0
            for r in m.broker.runners.values():
                if r.worker != worker:
                    continue
                states[r.state] += 1
                if r.lost:
                    continue
                total += r.slots
                used += min(len(r.leases), r.slots)
                labels = [worker, r.id, r.host]
                heartbeat.add_metric(labels, now - r.last_seen)
                for key, _, _ in RESOURCE_FIGURES:
                    if r.resources.get(key) is not None:
                        figures[key].add_metric(labels, r.resources[key])
                for i, gpu in enumerate(r.resources.get("gpus") or []):
                    for key, _, _ in GPU_FIGURES:
                        if gpu.get(key) is not None:
                            gpus[key].add_metric(labels + [str(gpu.get("index", i))], gpu[key])
            for state, n in states.items():
                runners.add_metric([worker, state], n)
            slots.add_metric([worker], total)
            busy.add_metric([worker], used)
        yield from (queued, in_flight, runners, slots, busy, heartbeat, *figures.values(), *gpus.values())
