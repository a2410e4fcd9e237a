"""One frozen Settings object, from conf/supervisor.toml, SUPERVISOR_* variables and CLI flags."""
import dataclasses
import os
import tomllib
from typing import Mapping

from supervisor import ROOT

DEFAULT_CONFIG = os.path.join(ROOT, "conf", "supervisor.toml")


class ConfigError(ValueError):
    """The configuration cannot be used; the message says which key and why."""


@dataclasses.dataclass(frozen=True)
class WorkerSettings:
    name: str
    python: str            # "major.minor" the worker's runners must run; pickles are checked against it
    interpreter: str = ""  # for local spawn: the worker's Python, relative to the repository root
    concurrency: int = 1   # slots per locally spawned runner
    prefetch: int = 0      # tasks a spawned runner holds queued beyond its slots (0: only free slots get tasks)


@dataclasses.dataclass(frozen=True)
class Settings:
    """Every setting and its default, documented once.

    host, port: where the HTTP API listens (127.0.0.1:8081).
    db: the SQLite file (var/supervisor.db; relative paths are from the repository root).
    zmq_bind: the ROUTER endpoint runners connect to; "tcp://127.0.0.1:*" picks a free port.
    spawn: local runners to start: "all", "none" or a comma list of worker names.
    max_body_bytes: the largest request body accepted (16 MiB); larger gets 413.
    heartbeat_s, liveness: heartbeat period both ways, and missed beats before a runner is lost (1 s, 3).
    max_retries: default re-runs of a task after its runner is lost (3).
    unavailable_timeout_s: default wait for a live runner before WorkerUnavailable (120 s).
    retry_backoff_s, retry_backoff_max_s: delay before a retry, doubled each attempt, capped (1 s, 60 s).
    drain_s: on SIGTERM, how long running tasks may take to finish before runners are stopped (30 s).
    max_wait_s: the longest long-poll a result request may ask for (300 s).
    poison_crashes: crashes of a task's own process after which it is quarantined FAILED (3).
    sqlite_synchronous: NORMAL survives process crashes (kill -9); FULL also power loss, slower.
    log_format: "text" or "json".
    api_tokens: comma-separated bearer tokens; when any token is configured (here or in api_tokens_file),
        every /api/v1 call needs "Authorization: Bearer <token>" (none by default).
    api_tokens_file: a file with one token per line (# comments allowed).
    metrics_auth: whether /metrics needs a token too (false: Prometheus scrapes without one).
    curve_secret_key: the supervisor's ZeroMQ CURVE secret certificate (from `python -m supervisor keys`);
        when set, runners must use CURVE and be listed in curve_authorized_keys.
    curve_authorized_keys: a directory of the runners' public certificates (*.key).
    """
    workers: Mapping[str, WorkerSettings]
    host: str = "127.0.0.1"
    port: int = 8081
    db: str = "var/supervisor.db"
    zmq_bind: str = "tcp://127.0.0.1:5555"
    spawn: str = "all"
    max_body_bytes: int = 16 * 1024 * 1024
    heartbeat_s: float = 1.0
    liveness: int = 3
    max_retries: int = 3
    unavailable_timeout_s: float = 120.0
    retry_backoff_s: float = 1.0
    retry_backoff_max_s: float = 60.0
    drain_s: float = 30.0
    max_wait_s: float = 300.0
    poison_crashes: int = 3
    sqlite_synchronous: str = "NORMAL"
    log_format: str = "text"
    api_tokens: str = ""
    api_tokens_file: str = ""
    metrics_auth: bool = False
    curve_secret_key: str = ""
    curve_authorized_keys: str = ""

    def path(self, value: str) -> str:
        """A configured path, relative to the repository root unless absolute."""
        return value if os.path.isabs(value) else os.path.join(ROOT, value)

    def tokens(self) -> frozenset[str]:
        """Every accepted API token (empty: the API is open)."""
        found = {t.strip() for t in self.api_tokens.split(",") if t.strip()}
        if self.api_tokens_file:
            try:
                with open(self.path(self.api_tokens_file)) as f:
                    found |= {ln.strip() for ln in f if ln.strip() and not ln.lstrip().startswith("#")}
            except OSError as exc:
                raise ConfigError(f"cannot read api_tokens_file {self.api_tokens_file}: {exc.strerror}") from None
        return frozenset(found)

    @property
    def db_path(self) -> str:
        return self.db if os.path.isabs(self.db) or self.db == ":memory:" else os.path.join(ROOT, self.db)

    def spawn_workers(self) -> list[str]:
        """Names of the workers to spawn local runners for."""
        if self.spawn == "all":
            return list(self.workers)
        if self.spawn in ("none", ""):
            return []
        names = [n.strip() for n in self.spawn.split(",") if n.strip()]
        unknown = [n for n in names if n not in self.workers]
        if unknown:
            raise ConfigError(f"spawn names unknown workers {unknown}; known: {sorted(self.workers)}")
        return names


_SCALARS = {f.name: f.type for f in dataclasses.fields(Settings) if f.name != "workers"}


def _coerce(key: str, value, kind):
    try:
        if kind is bool:
            return value if isinstance(value, bool) else str(value).lower() in ("1", "true", "yes")
        return kind(value)
    except (TypeError, ValueError):
        raise ConfigError(f"setting {key}={value!r} is not a valid {kind.__name__}") from None


def load(path: str | None = None, env: Mapping[str, str] | None = None, **overrides) -> Settings:
    """Settings from a TOML file, then SUPERVISOR_<KEY> variables, then non-None overrides."""
    env = os.environ if env is None else env
    path = path or env.get("SUPERVISOR_CONFIG") or DEFAULT_CONFIG
    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    values = {}
    for key, kind in _SCALARS.items():
        kind = {"str": str, "int": int, "float": float, "bool": bool}.get(kind, kind) if isinstance(kind, str) else kind
        if key in raw:
            values[key] = _coerce(key, raw[key], kind)
        if f"SUPERVISOR_{key.upper()}" in env:
            values[key] = _coerce(key, env[f"SUPERVISOR_{key.upper()}"], kind)
        if overrides.get(key) is not None:
            values[key] = _coerce(key, overrides[key], kind)
    unknown = set(raw) - set(_SCALARS) - {"workers"}
    if unknown:
        raise ConfigError(f"config file {path} has unknown keys {sorted(unknown)}")
    workers = {}
    for name, spec in (raw.get("workers") or {}).items():
        if not isinstance(spec, dict) or "python" not in spec:
            raise ConfigError(f"[workers.{name}] needs at least python = \"major.minor\"")
        workers[name] = WorkerSettings(name=name, python=str(spec["python"]),
                                       interpreter=str(spec.get("interpreter", "")),
                                       concurrency=int(spec.get("concurrency", 1)),
                                       prefetch=int(spec.get("prefetch", 0)))
    if not workers:
        raise ConfigError(f"config file {path} defines no [workers.NAME] table")
    settings = Settings(workers=workers, **values)
    settings.spawn_workers()  # validates the spawn list early
    if settings.log_format not in ("text", "json"):
        raise ConfigError("log_format must be text or json")
    settings.tokens()  # an unreadable token file is a start-up error, not a 500 later
    if bool(settings.curve_secret_key) != bool(settings.curve_authorized_keys):
        raise ConfigError("curve_secret_key and curve_authorized_keys go together: set both or neither")
    return settings
