"""A network namespace joined to the root namespace by a veth pair, to cut and heal a runner's link for real.

Runners run *inside* the namespace and connect out to the supervisor on the root side's veth address, so no
traffic is ever routed to another address. While the link is down the root side keeps its connected route
(marked linkdown, packets dropped), and a blackhole route for the subnet backs it up.
"""
import os
import random
import shutil
import subprocess


def available() -> str | None:
    """None if namespaces can be made here, else why not."""
    if os.geteuid() != 0:
        return "needs root for ip netns"
    if shutil.which("ip") is None:
        return "needs iproute2 (ip)"
    probe = f"probe{os.getpid()}"
    r = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if r.returncode != 0:
        return f"ip netns add failed: {r.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def ip(*args, ns=None):
    cmd = (["ip", "netns", "exec", ns, "ip"] if ns else ["ip"]) + list(args)
    subprocess.run(cmd, check=True, capture_output=True, text=True)


class Namespace:
    def __init__(self):
        tag = f"{os.getpid() % 10000}{random.randrange(100):02d}"
        self.name = f"supns{tag}"
        self.root_if, self.ns_if = f"vs{tag}", f"vr{tag}"
        net = random.randrange(1, 250)
        self.subnet = f"10.213.{net}.0/24"
        self.root_addr, self.ns_addr = f"10.213.{net}.1", f"10.213.{net}.2"

    def __enter__(self):
        ip("netns", "add", self.name)
        try:
            ip("link", "add", self.root_if, "type", "veth", "peer", "name", self.ns_if)
            ip("link", "set", self.ns_if, "netns", self.name)
            ip("addr", "add", f"{self.root_addr}/24", "dev", self.root_if)
            ip("link", "set", self.root_if, "up")
            ip("route", "add", "blackhole", self.subnet, "metric", "4000")
            ip("link", "set", "lo", "up", ns=self.name)
            ip("addr", "add", f"{self.ns_addr}/24", "dev", self.ns_if, ns=self.name)
            ip("link", "set", self.ns_if, "up", ns=self.name)
        except Exception:
            self.__exit__()
            raise
        return self

    def prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.name]

    def cut(self):
        ip("link", "set", self.ns_if, "down", ns=self.name)

    def heal(self):
        ip("link", "set", self.ns_if, "up", ns=self.name)

    def __exit__(self, *exc):
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True)
        subprocess.run(["ip", "link", "del", self.root_if], capture_output=True)
        subprocess.run(["ip", "route", "del", "blackhole", self.subnet], capture_output=True)
