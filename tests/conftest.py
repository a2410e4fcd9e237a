"""Fixtures: real pickles made by real 3.6/3.8 interpreters, and one shared live supervisor."""
import pytest

from tests.functions import SOURCES
from tests.helpers import PYTHONS, Supervisor, make_pickles

SHARED_WORKERS = {
    "py36": {"python": "3.6", "interpreter": PYTHONS["py36"], "concurrency": 2},
    "py38": {"python": "3.8", "interpreter": PYTHONS["py38"], "concurrency": 2},
    # configured but never started: shows up with zero runners; its tasks wait, then expire
    "py38_gpu": {"python": "3.8", "concurrency": 1},
}


@pytest.fixture(scope="session")
def pickles():
    """{"py36"|"py38"|"py311": {name: dill bytes}} for every function in tests/functions.py."""
    return {worker: make_pickles(SOURCES, worker) for worker in ("py36", "py38", "py311")}


@pytest.fixture(scope="session")
def supervisor(tmp_path_factory):
    sup = Supervisor(tmp_path_factory.mktemp("shared"), workers=SHARED_WORKERS, spawn="py36,py38",
                     max_body_bytes=2 * 1024 * 1024, poison_crashes=2)
    sup.start()
    yield sup
    sup.stop()


@pytest.fixture
def client(supervisor):
    return supervisor.client
