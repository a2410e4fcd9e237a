"""The supervisor's processes: runners restarted when they die, all stopped on SIGTERM/SIGINT, no orphans."""
import os
import signal
import subprocess

import pytest

from tests.helpers import PYTHONS, REPO, Supervisor, children_of, pid_alive, wait_until

PY36_ONLY = {"py36": {"python": "3.6", "interpreter": PYTHONS["py36"], "concurrency": 2}}


def test_a_runner_killed_with_sigkill_is_restarted_and_serves_tasks(tmp_path, pickles):
    with Supervisor(tmp_path, workers=PY36_ONLY) as sup:
        c = sup.client
        (old,) = c.live_runners("py36")
        kids = children_of(old["pid"])
        os.kill(old["pid"], signal.SIGKILL)
        wait_until(lambda: [r for r in c.live_runners("py36") if r["pid"] != old["pid"]], 30, what="a new runner")
        wait_until(lambda: not any(pid_alive(k) for k in kids), what="the dead runner's children to go")
        assert "restarting" in sup.log() and str(old["pid"]) in sup.log()
        task_id = c.submit("py36", pickles["py36"]["add"], kwargs={"x": 1, "y": 2, "z": 3})
        assert c.wait_result(task_id)["result"] == 6


def test_sigterm_and_sigint_stop_the_supervisor_and_all_its_runners_leaving_no_orphans(tmp_path, pickles):
    for sig in (signal.SIGTERM, signal.SIGINT):
        sup = Supervisor(tmp_path).start()
        c = sup.client
        # make sure the runners have started their task children too
        for w in ("py36", "py38"):
            assert c.wait_result(c.submit(w, pickles[w]["add"], kwargs={"x": 0, "y": 0, "z": 0}))["result"] == 0
        family = children_of(sup.proc.pid)
        assert len(family) >= 4, family  # two runners, each with at least one child
        assert sup.stop(sig) == 0
        wait_until(lambda: not any(pid_alive(p) for p in family), what="every runner and child to exit")
        assert "supervisor stopped" in sup.log()


def test_the_interpreter_finder_prints_one_clear_line_when_python_is_missing(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PYENV_ROOT": str(tmp_path)}
    r = subprocess.run(["scripts/find-python.sh", "3.4"], cwd=REPO, env=env, capture_output=True, text=True)
    assert r.returncode == 1 and r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Python 3.4" in lines[0] and "PYTHON34" in lines[0]
    bad = subprocess.run(["scripts/find-python.sh", "3.6"], cwd=REPO, env={**env, "PYTHON36": "/nonexistent"},
                         capture_output=True, text=True)
    assert bad.returncode == 1 and "PYTHON36=/nonexistent" in bad.stderr


def test_the_interpreter_finder_honours_the_variable_then_pyenv(tmp_path):
    r = subprocess.run(["scripts/find-python.sh", "3.8"], cwd=REPO, capture_output=True, text=True,
                       env={"PATH": "/usr/bin:/bin", "PYTHON38": PYTHONS["py38"]})
    assert r.returncode == 0 and r.stdout.strip() == PYTHONS["py38"]


def test_make_run_fails_with_one_clear_line_when_an_interpreter_is_missing(tmp_path):
    env = {"PATH": f"{os.path.dirname(PYTHONS['py311'])}:/usr/bin:/bin", "HOME": str(tmp_path),
           "PYENV_ROOT": str(tmp_path), "PYTHON36": "/nonexistent/python3.6"}
    r = subprocess.run(["make", "-s", "VENVS=" + str(tmp_path / "venvs"), f"SUPERVISOR_PYTHON={PYTHONS['py311']}",
                        str(tmp_path / "venvs" / "py36" / ".ok")], cwd=REPO, env=env, capture_output=True, text=True)
    assert r.returncode != 0
    assert "PYTHON36=/nonexistent/python3.6 is not a working Python 3.6 interpreter" in r.stderr


def test_the_interpreter_finder_falls_back_to_pyenvs_versions_without_pyenv_on_path(tmp_path):
    with open(os.path.join(REPO, ".venvs", "py36", "pyvenv.cfg")) as f:
        home = next(line.split("=", 1)[1].strip() for line in f if line.startswith("home"))
    root = os.path.dirname(os.path.dirname(os.path.dirname(home)))  # <root>/versions/3.6.x/bin
    if not os.path.isdir(os.path.join(root, "versions")):
        pytest.skip("the py36 venv was not made from a pyenv install")
    r = subprocess.run(["scripts/find-python.sh", "3.6"], cwd=REPO, capture_output=True, text=True,
                       env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PYENV_ROOT": root})
    assert r.returncode == 0 and r.stdout.strip().startswith(os.path.join(root, "versions", "3.6."))
