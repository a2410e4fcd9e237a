"""Container health check for a runner: healthy if the supervisor was heard from recently.

    python runners/healthcheck.py /tmp/runner-health 30
Exits 0 if the file named by --health-file was touched within the last N seconds (default 30), else 1.
Valid on Python 3.6.
"""
import os
import sys
import time


def main(argv):
    path = argv[1] if len(argv) > 1 else os.environ.get("RUNNER_HEALTH_FILE", "/tmp/runner-health")
    max_age = float(argv[2]) if len(argv) > 2 else 30.0
    try:
        age = time.time() - os.path.getmtime(path)
    except OSError:
        print("unhealthy: %s does not exist (never heard from the supervisor)" % path)
        return 1
    if age > max_age:
        print("unhealthy: last heard from the supervisor %.0fs ago" % age)
        return 1
    print("healthy: heard from the supervisor %.1fs ago" % age)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
