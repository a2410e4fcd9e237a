"""Docker, compose and Kubernetes files, checked without a Docker engine: linted, validated, consistent with the
code, and the compose wiring exercised by running each service's command locally."""
import os
import re
import shutil
import subprocess

import pytest
import yaml

from tests.helpers import PYTHONS, REPO, SUPERVISOR_PYTHON, Client, free_port, wait_until

BIN = os.path.dirname(SUPERVISOR_PYTHON)
DOCKERFILES = {"supervisor": "Dockerfile.supervisor", "py36": "runners/py36/Dockerfile",
               "py38": "runners/py38/Dockerfile"}
needs = lambda tool: pytest.mark.skipif(shutil.which(tool) is None, reason=f"needs {tool} (.ci/run installs it)")  # noqa: E731


def read(path):
    with open(os.path.join(REPO, path)) as f:
        return f.read()


def compose_config() -> dict:
    """docker-compose's own resolved view of docker-compose.yml with .env.example's values."""
    out = subprocess.run(["docker-compose", "-f", "docker-compose.yml", "--env-file", ".env.example", "config"],
                         cwd=REPO, capture_output=True, text=True, check=True)
    return yaml.safe_load(out.stdout)


def rendered_kubernetes(tmp_path) -> list[dict]:
    """kubectl kustomize of a copy of deploy/kubernetes with freshly made keys, as an operator would."""
    work = tmp_path / "kubernetes"
    shutil.copytree(os.path.join(REPO, "deploy", "kubernetes"), work)
    subprocess.run([SUPERVISOR_PYTHON, "-m", "supervisor", "keys", "--out", str(work / "keys")], cwd=REPO,
                   check=True, capture_output=True)
    (work / "keys" / "api-tokens").write_text("a-token\n")
    out = subprocess.run(["kubectl", "kustomize", str(work)], capture_output=True, text=True, check=True)
    (tmp_path / "rendered.yaml").write_text(out.stdout)
    return [d for d in yaml.safe_load_all(out.stdout) if d]


@needs("docker-compose")
def test_docker_compose_config_is_valid_and_refuses_to_start_without_a_token(tmp_path):
    ok = subprocess.run(["docker-compose", "-f", "docker-compose.yml", "--env-file", ".env.example", "config", "-q"],
                        cwd=REPO, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    def test_without_env(tmp):
        empty = tmp / "empty.env"
        empty.write_text("")
        return subprocess.run(["docker-compose", "-f", "docker-compose.yml", "--env-file", str(empty), "config", "-q"],
                              cwd=REPO, capture_output=True, text=True, env={"PATH": os.environ["PATH"]})
    bare = test_without_env(tmp_path)
    assert bare.returncode != 0 and "SUPERVISOR_API_TOKENS" in bare.stderr


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_hadolint_passes_each_dockerfile(name):
    r = subprocess.run([os.path.join(BIN, "hadolint"), DOCKERFILES[name]], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_each_image_runs_as_non_root_with_a_healthcheck_and_no_build_tools(name):
    text = read(DOCKERFILES[name])
    assert re.search(r"^USER 10001", text, re.M) and "HEALTHCHECK" in text
    assert "--only-binary=:all:" in text  # wheels only: nothing is compiled, no compiler is installed
    assert not re.search(r"apt-get|gcc|build-essential", text)
    base = re.search(r"^FROM (\S+)", text, re.M).group(1)
    assert base == {"supervisor": "python:3.11.7-slim", "py36": "python:3.6.13-slim", "py38": "python:3.8.13-slim"}[name]


@needs("kubectl")
def test_the_kubernetes_manifests_render_and_pass_kubernetes_validate_strict(tmp_path):
    docs = rendered_kubernetes(tmp_path)
    kinds = sorted((d["kind"], d["metadata"]["name"].rsplit("-", 1)[0] if d["kind"] == "Secret" else d["metadata"]["name"])
                   for d in docs)
    assert ("StatefulSet", "supervisor") in kinds and ("Deployment", "worker-py36") in kinds
    assert ("Deployment", "worker-py38") in kinds and ("Service", "supervisor") in kinds
    r = subprocess.run([os.path.join(BIN, "kubernetes-validate"), "--strict", "-k", "1.30.0",
                        str(tmp_path / "rendered.yaml")], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("passed") + r.stderr.count("passed") == len(docs)


def help_text(argv) -> str:
    return subprocess.run(argv + ["--help"], cwd=REPO, capture_output=True, text=True, check=True).stdout


@needs("docker-compose")
@needs("kubectl")
def test_compose_kubernetes_dockerfiles_and_code_agree(tmp_path):
    from supervisor import config
    settings = config.load(os.path.join(REPO, "conf", "supervisor.toml"), env={})
    workers = sorted(settings.workers)
    serve_flags = set(re.findall(r"--[a-z-]+", help_text([SUPERVISOR_PYTHON, "-m", "supervisor", "serve"])))
    runner_flags = set(re.findall(r"--[a-z-]+", help_text([PYTHONS["py38"], "runners/run.py"])))
    setting_envs = {f"SUPERVISOR_{k.upper()}" for k in config._SCALARS}
    runner_envs = set(re.findall(r"RUNNER_[A-Z_]+", read("runners/run.py")))

    compose = compose_config()["services"]
    kube = rendered_kubernetes(tmp_path)
    sup_k8s = next(d for d in kube if d["kind"] == "StatefulSet")["spec"]["template"]["spec"]["containers"][0]
    runner_cmds = {}

    # the supervisor: same command flags, ports and env names everywhere
    for cmd, env in ((compose["supervisor"]["command"], compose["supervisor"]["environment"]),
                     (sup_k8s["command"], {e["name"]: e.get("value") for e in sup_k8s["env"]})):
        assert cmd[:4] == ["python", "-m", "supervisor", "serve"]
        assert set(f for f in cmd if f.startswith("--")) <= serve_flags
        assert cmd[cmd.index("--zmq-bind") + 1] == f"tcp://0.0.0.0:{settings.zmq_bind.rsplit(':', 1)[1]}"
        assert set(env) <= setting_envs, set(env) - setting_envs
    assert compose["supervisor"]["ports"][0]["target"] == settings.port == 8081
    assert [p["containerPort"] for p in sup_k8s["ports"]] == [8081, 5555]
    service = next(d for d in kube if d["kind"] == "Service" and d["metadata"]["name"] == "supervisor")
    assert sorted(p["port"] for p in service["spec"]["ports"]) == [5555, 8081]
    assert "EXPOSE 8081 5555" in read("Dockerfile.supervisor")
    assert "5555" not in str(compose["supervisor"].get("ports")), "ZeroMQ must stay on the internal network"

    # the runners: one compose service and one Deployment per configured worker, matching Dockerfiles
    for worker in workers:
        svc = compose[f"worker_{worker[2:]}"]
        dep = next(d for d in kube if d["kind"] == "Deployment" and d["metadata"]["name"] == f"worker-{worker}")
        k8s_runner = dep["spec"]["template"]["spec"]["containers"][0]
        assert svc["build"]["dockerfile"] == DOCKERFILES[worker]
        py = settings.workers[worker].python
        assert f"FROM python:{py}." in read(DOCKERFILES[worker])
        for cmd, env in ((svc["command"], svc["environment"]),
                         (k8s_runner["command"], {e["name"]: e["value"] for e in k8s_runner["env"]})):
            assert cmd[:2] == ["python", "runners/run.py"]
            assert cmd[cmd.index("--worker") + 1] == worker
            assert cmd[cmd.index("--connect") + 1] == "tcp://supervisor:5555"
            assert set(f for f in cmd if f.startswith("--")) <= runner_flags
            assert set(env) <= runner_envs, set(env) - runner_envs
            runner_cmds[worker] = cmd
        assert svc["depends_on"]["supervisor"]["condition"] == "service_healthy"
        assert "container_name" not in svc and "ports" not in svc  # so --scale works
    assert {s for s in compose if s.startswith("worker_")} == {f"worker_{w[2:]}" for w in workers}

    # Prometheus and Grafana wiring
    prom = compose["prometheus"]
    assert any("conf/prometheus/compose.yml" in str(v) for v in prom["volumes"])
    assert '"supervisor:8081"' in read("conf/prometheus/compose.yml")
    r = subprocess.run(["promtool", "check", "config", "conf/prometheus/compose.yml"], cwd=REPO,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    graf = compose["grafana"]
    assert graf["environment"]["GF_AUTH_ANONYMOUS_ENABLED"] == "true"
    assert graf["environment"]["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    assert "/etc/grafana/dashboards" in read("conf/grafana/provisioning/dashboards/supervisor.yml")
    assert "url: http://prometheus:9090" in read("conf/grafana/provisioning/datasources/prometheus.yml")
    for name in ("supervisor", "worker_36", "worker_38", "prometheus", "grafana"):
        assert compose[name]["restart"] == "unless-stopped"
    assert any("supervisor-data:/data" in str(v) or (isinstance(v, dict) and v.get("source") == "supervisor-data")
               for v in compose["supervisor"]["volumes"])


# -- the compose smoke test ----------------------------------------------------
IMAGE_PYTHON = {"Dockerfile.supervisor": SUPERVISOR_PYTHON, "runners/py36/Dockerfile": PYTHONS["py36"],
                "runners/py38/Dockerfile": PYTHONS["py38"]}


class LocalCompose:
    """Runs compose services' commands on this machine: the image's python becomes the matching venv,
    service names and 0.0.0.0 become 127.0.0.1, fixed ports become free ones, /data and /tmp files a temp dir."""

    def __init__(self, services: dict, tmp_path):
        self.services, self.dir = services, str(tmp_path)
        self.ports = {8081: free_port(), 5555: free_port()}
        self.procs = {}

    def translate(self, value: str) -> str:
        value = value.replace("tcp://supervisor:", "tcp://127.0.0.1:").replace("0.0.0.0", "127.0.0.1")
        value = re.sub(r"(127\.0\.0\.1:|^)(8081|5555)\b",
                       lambda m: f"{m.group(1)}{self.ports[int(m.group(2))]}", value)
        for inside in ("/data/", "/tmp/"):
            if value.startswith(inside):
                return os.path.join(self.dir, inside.strip("/") + "-" + value[len(inside):])
        return value

    def command(self, name: str, argv: list[str]) -> list[str]:
        python = IMAGE_PYTHON[self.services[name]["build"]["dockerfile"]]
        assert argv[0] == "python"
        return [python] + [self.translate(a) for a in argv[1:]]

    def env(self, name: str, port_args: bool = True) -> dict:
        env = {k: self.translate(str(v)) for k, v in (self.services[name].get("environment") or {}).items()}
        if name == "supervisor":  # the container's 8081, published on a free port of this machine
            env["SUPERVISOR_PORT"] = str(self.ports[8081])
        return {"PATH": os.environ["PATH"], **env}

    def start(self, name: str, extra=()):
        argv = self.command(name, self.services[name]["command"]) + list(extra)
        log = open(os.path.join(self.dir, f"{name}.log"), "ab")
        self.procs[name] = subprocess.Popen(argv, cwd=REPO, env=self.env(name), stdout=log, stderr=subprocess.STDOUT)
        log.close()

    def healthcheck(self, name: str) -> int:
        test = self.services[name]["healthcheck"]["test"]
        assert test[0] == "CMD"
        return subprocess.run(self.command(name, test[1:]), cwd=REPO, env=self.env(name),
                              capture_output=True).returncode

    def stop(self):
        for p in self.procs.values():
            if p.poll() is None:
                p.terminate()
        for p in self.procs.values():
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()


@needs("docker-compose")
def test_compose_services_run_locally_with_their_own_commands_and_environment_and_serve_a_task_per_worker(
        tmp_path, pickles):
    services = compose_config()["services"]
    local = LocalCompose(services, tmp_path)
    token = services["supervisor"]["environment"]["SUPERVISOR_API_TOKENS"]
    assert int(services["supervisor"]["ports"][0]["published"]) == 8081
    client = Client(f"http://127.0.0.1:{local.ports[8081]}", token=token)
    try:
        local.start("supervisor")
        wait_until(lambda: local.healthcheck("supervisor") == 0, 30, 0.2, what="the supervisor's compose healthcheck")
        for name in ("worker_36", "worker_38"):
            local.start(name, extra=["--heartbeat-s", "0.2"])
        wait_until(lambda: all(local.healthcheck(n) == 0 for n in ("worker_36", "worker_38")), 30, 0.2,
                   what="the runners' compose healthchecks")
        assert Client(client.base).get("/api/v1/workers").status == 401  # the token from .env is in force
        for worker in ("py36", "py38"):
            task_id = client.submit(worker, pickles[worker]["version"])
            assert client.wait_result(task_id)["result"].startswith(worker[2] + "." + worker[3])
        assert os.path.exists(tmp_path / "data-supervisor.db")
    finally:
        local.stop()
