"""The aiohttp app in the test's own event loop (pytest-aiohttp): durable acceptance and dispatch wiring."""
import base64
import datetime

import pytest

from supervisor import config
from supervisor.__main__ import build_app
from supervisor.broker import Broker
from supervisor.dispatch import Dispatcher
from supervisor.store import Store
from supervisor.views import iso


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


async def test_a_function_known_to_one_database_is_still_stored_in_another(aiohttp_client, tmp_path, pickles):
    """Which functions are stored is the store's knowledge: a second database gets its own copy."""
    fn = base64.b64encode(pickles["py38"]["add"]).decode()
    for name in ("first", "second"):
        settings = config.load(None, env={}, db=str(tmp_path / f"{name}.db"), zmq_bind="tcp://127.0.0.1:*",
                               spawn="none")
        store = Store(settings.db_path, settings.sqlite_synchronous)
        await store.open()
        broker = Broker(settings)
        dispatcher = Dispatcher(settings, store)
        dispatcher.attach(broker)
        await broker.start(dispatcher)
        try:
            client = await aiohttp_client(build_app(settings, store, dispatcher, broker, {}))
            for _ in range(2):  # the second submit of the same function inserts no function row
                r = await client.post("/api/v1/tasks", json={"worker": "py38", "function": fn,
                                                             "kwargs": {"x": 1, "y": 2, "z": 3}})
                assert r.status == 202, await r.text()
            task = await store.get_task((await r.json())["task_id"])
            assert (await store.function_info(task["function_hash"]))["size"] == len(pickles["py38"]["add"])
        finally:
            await broker.stop()
            await store.close()


def test_timestamps_read_as_datetime_would_write_them():
    samples = [0.0, 1.0005, 1763800000.9995, 1763800000.123456, 1763800000.9999996, 1763800059.999]
    samples += [1.7e9 + i * 0.3333337 for i in range(10000)]
    for ts in samples:
        expected = datetime.datetime.fromtimestamp(ts, datetime.timezone.utc).isoformat(timespec="milliseconds")
        assert iso(ts) == expected.replace("+00:00", "Z"), ts
    assert iso(None) is None
