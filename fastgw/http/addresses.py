"""Client addresses: CIDR sets and the real client behind trusted proxies."""

from __future__ import annotations

import ipaddress
from typing import Any

from ..config.fields import Errors, describe

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def network(value: Any, path: str, errors: Errors) -> Any:
    """A CIDR (`10.0.0.0/8`, `2001:db8::/32`) or a single address, v4 or v6."""
    if isinstance(value, str):
        try:
            return ipaddress.ip_network(value.strip(), strict=False)
        except ValueError:
            pass
    return errors.add(
        path,
        f"expected a network such as 10.0.0.0/8, 2001:db8::/32 or 192.0.2.7, got {describe(value)}",
    )


def parse_address(text: bytes | str) -> Address | None:
    """The address in `text` (IPv4-mapped IPv6 as IPv4), or None when it is not one."""
    try:
        address = ipaddress.ip_address(text.decode("latin-1") if isinstance(text, bytes) else text)
    except ValueError:
        return None
    if address.version == 6 and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


class Networks:
    """A fixed set of networks; membership is a few integer operations per network."""

    __slots__ = ("v4", "v6")

    def __init__(self, networks: tuple[Network, ...] | list[Network]) -> None:
        # PERF: (network, mask) as ints; `address in IPv4Network` costs ~10x more.
        self.v4 = [(int(n.network_address), int(n.netmask)) for n in networks if n.version == 4]
        self.v6 = [(int(n.network_address), int(n.netmask)) for n in networks if n.version == 6]

    def __contains__(self, address: Address) -> bool:
        value = int(address)
        for net, mask in self.v4 if address.version == 4 else self.v6:
            if value & mask == net:
                return True
        return False

    def __bool__(self) -> bool:
        return bool(self.v4 or self.v6)


def real_client(peer: Address | None, xff: bytes | None, trusted: Networks) -> Address | None:
    """The peer, or, when the peer is a trusted proxy, the right-most X-Forwarded-For address
    that is not one (as nginx's `real_ip_recursive on`). An entry that is not an address
    stops the walk: the last trusted hop is then taken as the client."""
    if peer is None or xff is None or not trusted or peer not in trusted:
        return peer
    address = peer
    for item in reversed(xff.split(b",")):
        candidate = parse_address(item.strip())
        if candidate is None:
            return address
        if candidate not in trusted:
            return candidate
        address = candidate
    return address
