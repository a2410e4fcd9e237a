"""The runner code runs unchanged on Python 3.6 and 3.8, and pickles are classified without unpickling."""
import os
import subprocess

import pytest

from runners import pickleinfo
from tests.helpers import PYTHONS, REPO

RUNNER_MODULES = sorted("runners." + f[:-3] for f in os.listdir(os.path.join(REPO, "runners"))
                        if f.endswith(".py") and f != "__init__.py")


@pytest.mark.parametrize("worker", ["py36", "py38"])
def test_runner_code_compiles_and_imports_under_the_workers_python(worker):
    compiled = subprocess.run([PYTHONS[worker], "-m", "compileall", "-q", "-f", "runners"], cwd=REPO,
                              capture_output=True, text=True)
    assert compiled.returncode == 0, compiled.stdout + compiled.stderr
    code = "import sys; import " + ", ".join(RUNNER_MODULES) + "; print('%d.%d' % sys.version_info[:2])"
    imported = subprocess.run([PYTHONS[worker], "-c", code], cwd=REPO, capture_output=True, text=True)
    assert imported.returncode == 0, imported.stderr
    assert imported.stdout.strip() == {"py36": "3.6", "py38": "3.8"}[worker]
    assert {"runners.run", "runners.child", "runners.protocol", "runners.healthcheck"} <= set(RUNNER_MODULES)


@pytest.mark.parametrize("worker", ["py36", "py38"])
def test_runner_prints_usage_under_the_workers_python(worker):
    out = subprocess.run([PYTHONS[worker], "runners/run.py", "--help"], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0 and "--worker" in out.stdout and "--connect" in out.stdout


@pytest.mark.parametrize("worker, expected", [("py36", ("3.6", "3.7")), ("py38", ("3.8", "3.9")),
                                              ("py311", ("3.11", "3.12", "3.13"))])
def test_pickle_inspection_tells_which_python_made_each_real_pickle(pickles, worker, expected):
    for name, data in pickles[worker].items():
        assert pickleinfo.pickle_pythons(data) == expected, name


def test_pickle_inspection_cannot_tell_plain_data_and_rejects_garbage():
    import pickle
    assert pickleinfo.pickle_pythons(pickle.dumps({"a": [1, 2]}, protocol=4)) is None
    for garbage in (b"not a pickle at all", b"\x80\x04\x95", b"\x00" * 10):
        with pytest.raises(pickleinfo.NotAPickle):
            pickleinfo.pickle_pythons(garbage)


@pytest.mark.parametrize("worker", ["py36", "py38"])
def test_protocol_round_trips_under_the_workers_python(worker):
    code = ("from runners import protocol as p; f = p.encode(p.RESULT, {'task_id': 't', 'attempt': 2}, [b'x']); "
            "c, h, b = p.decode(f); assert (c, h, b) == (p.RESULT, {'task_id': 't', 'attempt': 2}, [b'x']); "
            "print('ok')")
    out = subprocess.run([PYTHONS[worker], "-c", code], cwd=REPO, capture_output=True, text=True)
    assert out.stdout.strip() == "ok", out.stderr


ORPHAN_CHECK = """
import multiprocessing, os, sys, tempfile
from runners import child
fork = multiprocessing.get_context("fork")
log = os.path.join(tempfile.mkdtemp(), "slot.log")
def start(parent_pid):
    task_r, task_w = os.pipe()
    result_r, result_w = os.pipe()
    proc = fork.Process(target=child.child_main, args=(task_r, result_w, log, child.Claims(fork, 4), parent_pid,
                                                       (task_w, result_r)))
    proc.start()
    os.close(task_r)
    os.close(result_w)
    return proc, task_w
# a child whose runner is already gone when it starts (its parent is not the pid it was given) leaves at once
proc, _ = start(parent_pid=-1)
proc.join(10)
print("orphan at start:", proc.exitcode)
# a child sees its task pipe close when the runner lets go of it (no copy of the runner's end stays open in it)
proc, task_w = start(parent_pid=os.getpid())
os.close(task_w)
proc.join(10)
print("pipe closed:", proc.exitcode)
"""


@pytest.mark.parametrize("worker", ["py36", "py38"])
def test_a_task_process_never_outlives_its_runner_unnoticed(worker):
    out = subprocess.run([PYTHONS[worker], "-c", ORPHAN_CHECK], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.stdout.split("\n")[:2] == ["orphan at start: 0", "pipe closed: 0"], out.stdout + out.stderr
