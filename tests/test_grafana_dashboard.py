"""The provisioned Grafana dashboard type-checks against Grafana's published schema (npm @grafana/schema)."""
import json
import os
import subprocess
import uuid

from tests.helpers import REPO

NODE = os.path.join(REPO, ".venvs", "node")
DASHBOARD = os.path.join(REPO, "conf", "grafana", "dashboards", "supervisor.json")


def tsc(source: str) -> subprocess.CompletedProcess:
    path = os.path.join(NODE, f"check-{uuid.uuid4().hex}.ts")
    with open(path, "w") as f:
        f.write(source)
    try:
        return subprocess.run([os.path.join(NODE, "node_modules", ".bin", "tsc"), "--noEmit", "--strict",
                               "--skipLibCheck", "--moduleResolution", "bundler", "--module", "esnext",
                               "--target", "es2020", path], cwd=NODE, capture_output=True, text=True, timeout=120)
    finally:
        os.remove(path)


def as_checked(dashboard: dict) -> str:
    return ("import type { Dashboard } from '@grafana/schema';\n"
            f"export const dashboard = ({json.dumps(dashboard, indent=1)}) satisfies Dashboard;\n")


def test_the_dashboard_satisfies_grafanas_dashboard_type():
    with open(DASHBOARD) as f:
        dashboard = json.load(f)
    r = tsc(as_checked(dashboard))
    assert r.returncode == 0, r.stdout + r.stderr


def test_the_schema_check_rejects_a_broken_dashboard():
    with open(DASHBOARD) as f:
        dashboard = json.load(f)
    dashboard["panels"][0]["gridPos"] = {"h": "tall"}  # wrong type, missing fields
    r = tsc(as_checked(dashboard))
    assert r.returncode != 0 and "error TS2322" in r.stdout + r.stderr


def test_the_dashboard_file_is_what_its_generator_writes():
    generated = subprocess.run(["python3", "-c", "import json, sys; sys.path.insert(0, 'conf/grafana'); "
                                "import make_dashboard; print(json.dumps(make_dashboard.dashboard(), indent=2))"],
                               cwd=REPO, capture_output=True, text=True, check=True).stdout
    with open(DASHBOARD) as f:
        assert json.load(f) == json.loads(generated)
