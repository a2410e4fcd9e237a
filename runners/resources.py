"""Host and process resource figures for runner heartbeats (Linux /proc, stdlib, Python 3.6)."""
import os
import shutil
import subprocess
import time

GPU_REFRESH_S = 10.0


class ResourceProbe(object):
    """Samples CPU %, load, memory, disk, own RSS and (where nvidia-smi exists) GPU figures."""

    def __init__(self, disk_path="/"):
        self.disk_path = disk_path
        self._last_cpu = self._cpu_times()
        self._gpu_cmd = shutil.which("nvidia-smi")
        self._gpu_cache, self._gpu_at = None, 0.0

    @staticmethod
    def _cpu_times():
        try:
            with open("/proc/stat") as f:
                fields = [int(v) for v in f.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
        return sum(fields), idle

    def _cpu_percent(self):
        now = self._cpu_times()
        last, self._last_cpu = self._last_cpu, now
        if not now or not last or now[0] <= last[0]:
            return None
        total, idle = now[0] - last[0], now[1] - last[1]
        return round(100.0 * (total - idle) / total, 1)

    @staticmethod
    def _meminfo():
        out = {}
        try:
            with open("/proc/meminfo") as f:
                for line in f:
                    key, _, rest = line.partition(":")
                    out[key] = int(rest.split()[0]) * 1024
        except (OSError, ValueError, IndexError):
            pass
        return out

    @staticmethod
    def _rss_bytes(pid="self"):
        try:
            with open("/proc/%s/statm" % pid) as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            return None

    def _gpus(self):
        """GPU figures from nvidia-smi, refreshed at most every GPU_REFRESH_S (it takes ~0.1 s to run)."""
        if not self._gpu_cmd:
            return []
        now = time.monotonic()
        if self._gpu_cache is not None and now - self._gpu_at < GPU_REFRESH_S:
            return self._gpu_cache
        self._gpu_cache, self._gpu_at = self._query_gpus(), now
        return self._gpu_cache

    def _query_gpus(self):
        try:
            out = subprocess.check_output(
                [self._gpu_cmd, "--query-gpu=index,utilization.gpu,memory.used,memory.total",
                 "--format=csv,noheader,nounits"], timeout=2).decode()
        except Exception:
            return []
        gpus = []
        for line in out.strip().splitlines():
            parts = [p.strip() for p in line.split(",")]
            try:
                gpus.append({"index": int(parts[0]), "utilization_percent": float(parts[1]),
                             "memory_used_bytes": int(float(parts[2]) * 2 ** 20),
                             "memory_total_bytes": int(float(parts[3]) * 2 ** 20)})
            except (ValueError, IndexError):
                continue
        return gpus

    def sample(self, child_pids=()):
        """One dict of figures; a figure that cannot be read is None."""
        mem = self._meminfo()
        try:
            disk = shutil.disk_usage(self.disk_path)
            disk_used, disk_total = disk.used, disk.total
        except OSError:
            disk_used = disk_total = None
        try:
            load1 = os.getloadavg()[0]
        except OSError:
            load1 = None
        rss = self._rss_bytes()
        children_rss = sum(r for r in (self._rss_bytes(p) for p in child_pids) if r)
        total = mem.get("MemTotal")
        available = mem.get("MemAvailable")
        return {
            "cpu_percent": self._cpu_percent(),
            "load1": load1,
            "memory_used_bytes": (total - available) if total and available is not None else None,
            "memory_total_bytes": total,
            "disk_used_bytes": disk_used,
            "disk_total_bytes": disk_total,
            "rss_bytes": rss,
            "children_rss_bytes": children_rss,
            "gpus": self._gpus(),
        }
