"""The aiohttp app in the test's own event loop (pytest-aiohttp): durable acceptance and dispatch wiring."""
import base64

import pytest

from supervisor import config
from supervisor.__main__ import build_app
from supervisor.broker import Broker
from supervisor.dispatch import Dispatcher
from supervisor.store import Store


@pytest.fixture
async def app_parts(tmp_path):
    settings = config.load(None, env={}, db=str(tmp_path / "t.db"), zmq_bind="tcp://127.0.0.1:*", spawn="none")
    store = Store(settings.db_path, settings.sqlite_synchronous)
    await store.open()
    broker = Broker(settings)
    dispatcher = Dispatcher(settings, store)
    dispatcher.attach(broker)
    await dispatcher.load()
    await broker.start(dispatcher)
    yield settings, store, dispatcher, broker
    await broker.stop()
    await store.close()


async def test_a_202_means_the_task_is_already_in_the_sqlite_file(aiohttp_client, app_parts, pickles):
    settings, store, dispatcher, broker = app_parts
    client = await aiohttp_client(build_app(settings, store, dispatcher, broker, {}))
    r = await client.post("/api/v1/tasks", json={"worker": "py38", "kwargs": {"x": 1, "y": 2, "z": 3},
                                                 "function": base64.b64encode(pickles["py38"]["add"]).decode()})
    assert r.status == 202
    task_id = (await r.json())["task_id"]
    # a second connection to the file sees it: it was committed before the reply
    other = Store(settings.db_path, settings.sqlite_synchronous)
    await other.open()
    try:
        assert (await other.get_task(task_id))["status"] == "NOT RUN YET"
    finally:
        await other.close()
    assert dispatcher.queued("py38") == 1


async def test_readiness_names_the_bound_zeromq_endpoint(aiohttp_client, app_parts):
    settings, store, dispatcher, broker = app_parts
    client = await aiohttp_client(build_app(settings, store, dispatcher, broker, {}))
    body = await (await client.get("/readyz")).json()
    assert body["ready"] is True and body["zmq_endpoint"] == broker.endpoint
    assert broker.endpoint.startswith("tcp://127.0.0.1:") and not broker.endpoint.endswith(":*")
