"""python -m supervisor serve [--config F] [--port P] [--db PATH] [--spawn all|none|py36,...]

Wires the parts together: store, broker, dispatcher, spawner and the aiohttp app.
"""
import argparse
import asyncio
import json
import logging
import signal
import sys
import time

import zmq
from aiohttp import web

from supervisor import api, config, keys
from supervisor.broker import Broker
from supervisor.callbacks import Callbacks
from supervisor.dispatch import Dispatcher
from supervisor.events import Events
from supervisor.metrics import Metrics
from supervisor.translog import transitions
from supervisor.spawner import Spawner
from supervisor.store import Store

log = logging.getLogger("supervisor")
LOG_EXTRAS = ("task_id", "attempt", "worker", "runner", "event", "status", "reason")


class JsonFormatter(logging.Formatter):
    """One JSON object per line, with the task/runner fields a transition log line carries."""

    def format(self, record: logging.LogRecord) -> str:
        out = {"ts": round(record.created, 3), "level": record.levelname, "logger": record.name,
               "message": record.getMessage()}
        out.update({k: getattr(record, k) for k in LOG_EXTRAS if getattr(record, k, None) is not None})
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out)


def setup_logging(fmt: str) -> None:
    transitions.configure(fmt, sys.stderr)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else
                         logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def build_app(settings, store, dispatcher, broker, state: dict, metrics: Metrics | None = None) -> web.Application:
    middlewares = (([metrics.middleware()] if metrics else []) + [api.errors_as_json]
                   + [api.token_check(settings.tokens(), settings.metrics_auth)])
    app = web.Application(client_max_size=settings.max_body_bytes, middlewares=middlewares)
    app[api.SETTINGS], app[api.STORE], app[api.DISPATCHER], app[api.BROKER] = settings, store, dispatcher, broker
    app[api.STATE] = state
    app.add_routes(api.routes)
    if metrics:
        app.router.add_get("/metrics", metrics.handler)
    return app


def warn_if_open(settings: config.Settings, endpoint: str) -> None:
    """Loud warnings when anyone on the network could submit code or pose as a runner."""
    loopback = ("127.", "localhost", "::1")
    if not settings.tokens() and not settings.host.startswith(loopback):
        log.warning("!!! NO API TOKEN: the HTTP API on %s:%s accepts pickled code from anyone who can reach it. "
                    "Set api_tokens / SUPERVISOR_API_TOKENS (see docs/deployment.md) !!!", settings.host, settings.port)
    if not settings.curve_secret_key and "://127." not in endpoint and "://localhost" not in endpoint:
        log.warning("!!! PLAIN ZeroMQ on %s: any process that can reach it may register as a runner. Set "
                    "curve_secret_key and curve_authorized_keys (python -m supervisor keys) !!!", endpoint)


async def serve(settings: config.Settings) -> int:
    store = Store(settings.db_path, settings.sqlite_synchronous)
    await store.open()
    events = Events()
    metrics = Metrics(settings)
    events.subscribe(metrics.on_event)
    broker = Broker(settings)
    broker.events = events
    dispatcher = Dispatcher(settings, store, events=events)
    dispatcher.attach(broker)
    await dispatcher.load()
    try:
        await broker.start(dispatcher)
    except (RuntimeError, zmq.ZMQError) as exc:
        log.error("cannot start the ZeroMQ side: %s", exc)
        await store.close()
        return 1
    metrics.attach(dispatcher, broker, store)
    await metrics.load(store)
    callbacks = Callbacks(store)
    events.subscribe(callbacks.on_event)
    await callbacks.start()
    state: dict = {"events": events}
    app = build_app(settings, store, dispatcher, broker, state, metrics)
    http = web.AppRunner(app, access_log=None, handle_signals=False)
    await http.setup()
    try:
        await web.TCPSite(http, settings.host, settings.port).start()
    except OSError as exc:
        log.error("cannot listen on %s:%s: %s (is another supervisor running? use --port)",
                  settings.host, settings.port, exc.strerror)
        await callbacks.stop()
        await broker.stop()
        await store.close()
        return 1
    spawner = Spawner(settings, broker.endpoint)
    try:
        spawner.start(settings.spawn_workers())
    except FileNotFoundError as exc:
        log.error("%s", exc)
        await http.cleanup()
        await callbacks.stop()
        await broker.stop()
        await store.close()
        return 1
    dispatching = asyncio.create_task(dispatcher.run(), name="dispatch")
    log.info("supervisor ready: http://%s:%s, runners connect to %s, database %s", settings.host, settings.port,
             broker.endpoint, store.path)
    warn_if_open(settings, broker.endpoint)

    signals = asyncio.Queue()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, signals.put_nowait, sig)
    sig = await signals.get()
    log.info("%s: stopping intake; letting running tasks finish (up to %ss)", sig.name, settings.drain_s)
    state["draining"] = True
    dispatcher.stop_dispatching()
    deadline = time.monotonic() + settings.drain_s
    while dispatcher.leased() and time.monotonic() < deadline and signals.empty():
        await asyncio.sleep(0.05)
    if dispatcher.leased():
        log.warning("%d tasks still running; they stay IN FLIGHT and are recovered at the next start",
                    dispatcher.leased())
    await spawner.stop()
    dispatching.cancel()
    await asyncio.gather(dispatching, return_exceptions=True)
    await http.cleanup()
    await callbacks.stop()
    await broker.stop()
    await store.close()
    transitions.write()  # the last transition lines, if their turn of the loop did not come
    log.info("supervisor stopped")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m supervisor", description=__doc__.split("\n\n")[1])
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="run the supervisor")
    s.add_argument("--config", help="TOML settings file (default conf/supervisor.toml)")
    s.add_argument("--host", help="HTTP bind address (default 127.0.0.1)")
    s.add_argument("--port", type=int, help="HTTP port (default 8081)")
    s.add_argument("--db", help="SQLite file (default var/supervisor.db)")
    s.add_argument("--zmq-bind", help="ZeroMQ ROUTER endpoint (default tcp://127.0.0.1:5555)")
    s.add_argument("--spawn", help="local runners: all, none, or worker names like py36,py38 (default all)")
    s.add_argument("--log-format", choices=("text", "json"), help="log line format (default text)")
    k = sub.add_parser("keys", help="generate ZeroMQ CURVE key pairs for the supervisor and its runners")
    k.add_argument("--out", default="var/keys", help="directory to write them to (default var/keys)")
    k.add_argument("--runners", default="py36,py38",
                   help="names of the runner key pairs to make, comma-separated (default py36,py38)")
    args = parser.parse_args(argv)
    if args.command == "keys":
        return keys.generate(args.out, [n.strip() for n in args.runners.split(",") if n.strip()])
    try:
        settings = config.load(args.config, host=args.host, port=args.port, db=args.db, zmq_bind=args.zmq_bind,
                               spawn=args.spawn, log_format=args.log_format)
    except config.ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    setup_logging(settings.log_format)
    try:
        import uvloop  # a faster event loop when installed (it is, from requirements.txt)
    except ImportError:
        return asyncio.run(serve(settings))
    return uvloop.run(serve(settings))


if __name__ == "__main__":
    sys.exit(main())
