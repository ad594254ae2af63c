"""Hosts for tests: network namespaces on a private bridge, each with its own address and hostname.

The machine's side of the bridge holds two addresses: DB_HOST, where PostgreSQL listens (for the
bridge's subnet only, in pg_hba.conf), and TRACKING_HOST, where an `mlflow server` listens. Two
addresses, so a host can be cut off from the tracking server alone (a blackhole route to it in the
host's namespace) while the study stays reachable. Everything made here is removed afterwards,
also when a test fails; a failed removal fails the test that made it.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from conftest import PG_ADMIN, cluster_command, restart_postgres, why_no_cluster

MARK = "# sweep test hosts"  # our pg_hba.conf line ends with it: found and removed by it


def why_no_hosts() -> str | None:
    """Why this machine cannot make test hosts, or None when it can."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    missing = [tool for tool in ("ip", "unshare") if shutil.which(tool) is None]
    if missing:
        return f"{', '.join(missing)} not found"
    return why_no_cluster()  # PostgreSQL is restarted to listen on the bridge


def ip(*args: str, namespace: str | None = None) -> None:
    command = ["ip", "netns", "exec", namespace, "ip", *args] if namespace else ["ip", *args]
    subprocess.run(command, check=True, capture_output=True, text=True, timeout=30)


@dataclass
class Host:
    name: str  # its hostname, stamped on its trials
    namespace: str
    address: str
    link: str  # the machine's end of its veth pair, on the bridge

    def prefix(self) -> list[str]:
        """What runs the command after it on this host: in its namespace, under its own hostname."""
        return ["ip", "netns", "exec", self.namespace, "unshare", "--uts", "sh", "-c",
                'hostname "$0" && exec "$@"', self.name]

    def cut(self) -> None:
        """The cable pulled: its link down, so its packets go nowhere (no error, as on a real cut)."""
        ip("link", "set", self.link, "down")

    def reconnect(self) -> None:
        ip("link", "set", self.link, "up")

    def cut_from(self, address: str) -> None:
        """Only `address` unreachable from this host: its packets there are dropped silently."""
        ip("route", "add", "blackhole", f"{address}/32", namespace=self.namespace)

    def reconnect_to(self, address: str) -> None:
        ip("route", "del", "blackhole", f"{address}/32", namespace=self.namespace)


@dataclass
class Network:
    tag: str
    bridge: str
    db_host: str
    tracking_host: str
    hosts: list[Host]


@contextlib.contextmanager
def network(count: int) -> Iterator[Network]:
    """A bridge with the machine's two addresses, and `count` hosts on it."""
    tag = secrets.token_hex(2)
    subnet = f"10.{200 + int(tag[:2], 16) % 50}.{int(tag[2:], 16)}"
    made = Network(tag, f"swbr{tag}", f"{subnet}.1", f"{subnet}.254", [])
    try:
        ip("link", "add", made.bridge, "type", "bridge")
        for address in (made.db_host, made.tracking_host):
            ip("addr", "add", f"{address}/24", "dev", made.bridge)
        ip("link", "set", made.bridge, "up")
        for i in range(count):
            made.hosts.append(_add_host(made, f"host-{i + 1}", f"{subnet}.{i + 2}", i))
        yield made
    finally:
        _remove(made)


def _add_host(made: Network, name: str, address: str, i: int) -> Host:
    host = Host(name, f"sw{made.tag}-{name}", address, f"swv{made.tag}{i}")
    ip("netns", "add", host.namespace)
    ip("link", "add", host.link, "type", "veth", "peer", "name", f"{host.link}p")
    ip("link", "set", f"{host.link}p", "netns", host.namespace)
    ip("link", "set", f"{host.link}p", "name", "eth0", namespace=host.namespace)
    ip("addr", "add", f"{address}/24", "dev", "eth0", namespace=host.namespace)
    for link in ("lo", "eth0"):
        ip("link", "set", link, "up", namespace=host.namespace)
    ip("link", "set", host.link, "master", made.bridge)
    ip("link", "set", host.link, "up")
    return host


def _remove(made: Network) -> None:
    """Kill what still runs in the namespaces, then delete them (their veth pairs go with them)
    and the bridge; then check that nothing of ours is left."""
    for host in made.hosts:
        pids = subprocess.run(["ip", "netns", "pids", host.namespace], capture_output=True, text=True).stdout
        for pid in pids.split():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), 9)
    for host in made.hosts:
        # The pair first: deleting a namespace frees the links in it later, not by the time it returns.
        subprocess.run(["ip", "link", "del", host.link], capture_output=True)
        subprocess.run(["ip", "netns", "del", host.namespace], capture_output=True)
    subprocess.run(["ip", "link", "del", made.bridge], capture_output=True)
    left = leftovers(made.tag)
    assert not left, f"test hosts left behind: {left}"


def leftovers(tag: str) -> list[str]:
    """Namespaces and links of this network still on the machine."""
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout.splitlines()
    names = [line.split(":")[1].strip().split("@")[0] for line in links]
    return ([n for n in namespaces if n.startswith(f"sw{tag}-")]
            + [n for n in names if n.startswith((f"swbr{tag}", f"swv{tag}"))])


@contextlib.contextmanager
def postgres_on(address: str, subnet: str) -> Iterator[None]:
    """PostgreSQL listening on `address` too, and trusting the subnet; as it was afterwards."""
    import psycopg2

    hba = _hba_file()
    original = hba.read_text()
    try:
        _alter_listen(f"'localhost,{address}'")
        hba.write_text(original.rstrip("\n") + f"\nhost all all {subnet} trust {MARK}\n")
        restart_postgres(cluster_command())
        yield
    finally:
        hba.write_text("".join(line for line in original.splitlines(keepends=True) if MARK not in line))
        with contextlib.suppress(psycopg2.Error):
            _alter_listen(None)
        restart_postgres(cluster_command())


def _hba_file() -> Path:
    import psycopg2

    with contextlib.closing(psycopg2.connect(PG_ADMIN)) as connection, connection.cursor() as cursor:
        cursor.execute("SHOW hba_file")
        return Path(cursor.fetchone()[0])


def _alter_listen(value: str | None) -> None:
    import psycopg2

    connection = psycopg2.connect(PG_ADMIN)
    connection.autocommit = True
    with contextlib.closing(connection), connection.cursor() as cursor:
        cursor.execute("ALTER SYSTEM RESET listen_addresses" if value is None
                       else f"ALTER SYSTEM SET listen_addresses = {value}")
