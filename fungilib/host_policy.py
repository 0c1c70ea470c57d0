"""Which addresses a download may reach. Photo URLs come from archives fungilib does not control, so by default
only public internet addresses are connected to; loopback, private, link-local (cloud metadata at
169.254.169.254) and other special ranges are refused unless the user allows a host by name, address, network
or ``host:port``. The check runs on the address actually connected to, for every redirect hop."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Sequence
from dataclasses import dataclass

from fungilib.errors import FungilibError


class RefusedAddress(OSError):
    """A connection the policy does not allow; its message is the recorded reason."""


def _network(entry: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    try:
        return ipaddress.ip_network(entry.strip("[]"), strict=False)
    except ValueError:
        return None


class Unresolvable(OSError):
    """The host name does not resolve: permanent, unless the resolver said to try again (EAI_AGAIN)."""

    def __init__(self, host: str, temporary: bool, detail: str) -> None:
        super().__init__(f"cannot resolve {host} ({detail})")
        self.host, self.temporary, self.detail = host, temporary, detail


@dataclass(frozen=True)
class HostPolicy:
    """``allow`` entries: a host name or address (any port), ``host:port``, or a network (``10.0.0.0/8``)."""

    allow: tuple[str, ...] = ()

    @staticmethod
    def validate(entries: Sequence[str]) -> None:
        for entry in entries:
            if not entry or any(c.isspace() for c in entry) or "/" in entry and _network(entry) is None:
                raise FungilibError(f"allow_hosts: {entry!r} is not a host, host:port or network (e.g. 10.0.0.0/8)")

    def _allowed(self, host: str, port: int, address: str) -> bool:
        ip = ipaddress.ip_address(address)
        if ip.is_global and not ip.is_multicast:
            return True
        names = {host.lower(), f"{host.lower()}:{port}", address, f"{address}:{port}", f"[{address}]:{port}"}
        for entry in self.allow:
            if entry.lower() in names:
                return True
            net = _network(entry)
            if net is not None and "/" in entry and ip.version == net.version and ip in net:
                return True
        return False

    def addresses(self, host: str, port: int) -> list[tuple[int, tuple]]:
        """The (family, sockaddr) pairs of ``host`` that may be connected to; RefusedAddress when none may."""
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise Unresolvable(host, exc.errno == socket.EAI_AGAIN, exc.strerror or str(exc)) from None
        allowed = [(family, sockaddr) for family, _, _, _, sockaddr in infos if self._allowed(host, port, sockaddr[0])]
        if not allowed:
            found = sorted({info[4][0] for info in infos})
            raise RefusedAddress(f"refused: {host} is a non-public address ({', '.join(found)}); "
                                 "allow it with allow_hosts")
        return allowed

    def create_connection(self, address: tuple[str, int], timeout: float | None = None,
                          source_address: tuple[str, int] | None = None) -> socket.socket:
        """``socket.create_connection`` that connects only to vetted addresses (no re-resolution in between)."""
        host, port = address
        last: OSError | None = None
        for family, sockaddr in self.addresses(host, port):
            sock = socket.socket(family, socket.SOCK_STREAM)
            try:
                if timeout is not None:
                    sock.settimeout(timeout)
                if source_address:
                    sock.bind(source_address)
                sock.connect(sockaddr)
                return sock
            except OSError as exc:
                sock.close()
                last = exc
        raise last or OSError(f"cannot connect to {host}:{port}")
