"""python -m supervisor keys: ZeroMQ CURVE key pairs for the supervisor and its runners.

Layout written under --out (default var/keys):
    supervisor.key            the supervisor's public key   -> give to every runner (--curve-server-key)
    supervisor.key_secret     the supervisor's secret key   -> curve_secret_key
    authorized/<name>.key     each runner's public key      -> curve_authorized_keys (the directory)
    runners/<name>.key_secret each runner's secret key      -> that runner's --curve-key
Add a runner later by running it again with a new name; existing files are never overwritten.
"""
import os
import sys
import tempfile

import zmq.auth


def _make(directory: str, name: str) -> tuple[str, str]:
    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        public, secret = zmq.auth.create_certificates(tmp, name)
        return open(public).read(), open(secret).read()


def _write(path: str, text: str, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def generate(out: str, runner_names: list[str]) -> int:
    for sub in ("authorized", "runners"):
        os.makedirs(os.path.join(out, sub), exist_ok=True)
    os.chmod(os.path.join(out, "runners"), 0o700)
    made = []
    wanted = [("supervisor", os.path.join(out, "supervisor.key"), os.path.join(out, "supervisor.key_secret"))]
    wanted += [(n, os.path.join(out, "authorized", f"{n}.key"), os.path.join(out, "runners", f"{n}.key_secret"))
               for n in runner_names]
    for name, public_path, secret_path in wanted:
        if os.path.exists(public_path) or os.path.exists(secret_path):
            print(f"keep existing {name} keys ({public_path})", file=sys.stderr)
            continue
        public, secret = _make(out, name)
        _write(public_path, public, 0o644)
        _write(secret_path, secret, 0o600)
        made.append(name)
    print(f"CURVE keys in {out}: made {', '.join(made) or 'none'}; "
          f"supervisor: curve_secret_key={os.path.join(out, 'supervisor.key_secret')} "
          f"curve_authorized_keys={os.path.join(out, 'authorized')}; "
          f"runner NAME: --curve-server-key {os.path.join(out, 'supervisor.key')} "
          f"--curve-key {os.path.join(out, 'runners', 'NAME.key_secret')}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(generate(sys.argv[1], sys.argv[2:]))
