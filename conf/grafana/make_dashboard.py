"""Writes conf/grafana/dashboards/supervisor.json (run it after editing the panels here).

    python3 conf/grafana/make_dashboard.py
"""
import json
import os

DS = {"type": "prometheus", "uid": "prometheus"}
RATE = "[5m]"

# (title, unit, [(expr, legend)], kind)
PANELS = [
    ("Throughput by worker and status", "ops", [
        (f'sum by (worker, status) (rate(supervisor_tasks_finished_total{RATE}))', "{{worker}} {{status}}")], "ts"),
    ("Submitted by worker", "ops", [
        (f'sum by (worker) (rate(supervisor_tasks_submitted_total{RATE}))', "{{worker}}")], "ts"),
    ("Queue depth (NOT RUN YET)", "short", [
        ('sum by (worker) (supervisor_tasks_queued)', "{{worker}}")], "ts"),
    ("In flight", "short", [
        ('sum by (worker) (supervisor_tasks_in_flight)', "{{worker}}")], "ts"),
    ("End-to-end latency p50 / p95 / p99", "s", [
        (f'histogram_quantile({q}, sum by (le) (rate(supervisor_task_latency_seconds_bucket{RATE})))', f"p{int(q * 100)}")
        for q in (0.5, 0.95, 0.99)], "ts"),
    ("Wait vs run time (p95, by worker)", "s", [
        (f'histogram_quantile(0.95, sum by (le, worker) (rate(supervisor_task_wait_seconds_bucket{RATE})))',
         "wait {{worker}}"),
        (f'histogram_quantile(0.95, sum by (le, worker) (rate(supervisor_task_run_seconds_bucket{RATE})))',
         "run {{worker}}")], "ts"),
    ("Runners up per worker", "short", [
        ('sum by (worker) (supervisor_runners{state!="lost"})', "{{worker}}")], "ts"),
    ("Busy slots / total slots", "short", [
        ('sum by (worker) (supervisor_runner_slots_busy)', "busy {{worker}}"),
        ('sum by (worker) (supervisor_runner_slots)', "total {{worker}}")], "ts"),
    ("Runner host CPU", "percent", [
        ('max by (worker, host) (supervisor_runner_host_cpu_percent)', "{{worker}} {{host}}")], "ts"),
    ("Runner memory (RSS of runner + its task processes)", "bytes", [
        ('sum by (worker) (supervisor_runner_rss_bytes + supervisor_runner_children_rss_bytes)', "{{worker}}"),
        ('max by (host) (supervisor_runner_host_memory_used_bytes)', "host used {{host}}")], "ts"),
    ("Re-queues and runner losses", "short", [
        (f'sum by (worker) (increase(supervisor_tasks_requeued_total{RATE}))', "re-queued {{worker}}"),
        (f'sum by (worker) (increase(supervisor_runners_lost_total{RATE}))', "runners lost {{worker}}")], "ts"),
    ("Failures by error type", "short", [
        (f'sum by (error_type) (increase(supervisor_task_failures_total{RATE}))', "{{error_type}}")], "ts"),
    ("Submissions rejected by reason", "short", [
        (f'sum by (reason) (increase(supervisor_submissions_rejected_total{RATE}))', "{{reason}}")], "ts"),
    ("HTTP p99 by route", "s", [
        (f'histogram_quantile(0.99, sum by (le, route) (rate(supervisor_http_request_duration_seconds_bucket{RATE})))',
         "{{route}}")], "ts"),
    ("SQLite write p99", "s", [
        (f'histogram_quantile(0.99, sum by (le) (rate(supervisor_sqlite_write_seconds_bucket{RATE})))', "p99")], "ts"),
    ("Supervisor resident memory", "bytes", [
        ('process_resident_memory_bytes{job="supervisor"}', "RSS")], "ts"),
]


def panel(i, title, unit, targets, kind):
    return {
        "id": i + 1, "type": "timeseries", "title": title, "datasource": DS,
        "gridPos": {"h": 8, "w": 12, "x": (i % 2) * 12, "y": (i // 2) * 8},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                    "tooltip": {"mode": "multi", "sort": "none"}},
        "targets": [{"refId": chr(65 + j), "datasource": DS, "expr": expr, "legendFormat": legend}
                    for j, (expr, legend) in enumerate(targets)],
    }


def dashboard():
    return {
        "uid": "supervisor", "title": "Supervisor", "tags": ["supervisor"], "timezone": "browser",
        "editable": True, "graphTooltip": 1, "schemaVersion": 39, "version": 1, "refresh": "10s",
        "time": {"from": "now-1h", "to": "now"}, "timepicker": {},
        "annotations": {"list": []}, "templating": {"list": []}, "links": [],
        "panels": [panel(i, *p) for i, p in enumerate(PANELS)],
    }


if __name__ == "__main__":
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "dashboards", "supervisor.json")
    with open(path, "w") as f:
        json.dump(dashboard(), f, indent=2)
        f.write("\n")
    print(path)
