"""Which addresses the platform may connect to on a tenant's behalf (webhook receivers), and a host
name's addresses looked up within a time limit.

A webhook URL is chosen by a tenant, and the workers POST to it from inside our network. Unchecked, a
tenant could make them reach what only we can reach (SSRF): loopback services, private networks, the
cloud's metadata service and its instance credentials. ``refusal`` says why one address is refused;
``resolve`` finds a name's addresses without waiting on DNS for long. Callers check *every* address
of a name, then connect to one they checked and never look the name up again: DNS cannot swap in
another address between the check and the connection (DNS rebinding).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Cloud metadata services (instance credentials, start-up scripts): refused even where private
# addresses are allowed, since nothing a tenant needs ever lives there.
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a)
    for a in (
        "169.254.169.254",  # AWS, GCP, Azure, OCI, DigitalOcean, OpenStack, ...
        "169.254.170.2",  # AWS ECS task metadata and credentials
        "169.254.170.23",  # AWS EKS pod identity agent
        "fd00:ec2::254",  # AWS instance metadata over IPv6
        "fd00:ec2::23",  # AWS EKS pod identity agent over IPv6
        "fd20:ce::254",  # GCP metadata server over IPv6
        "100.100.100.200",  # Alibaba Cloud
        "168.63.129.16",  # Azure host services (WireServer)
    )
)
# Their names, refused without asking DNS (they may only resolve inside the cloud).
METADATA_NAMES = frozenset(
    {"metadata.google.internal", "metadata.goog", "metadata", "instance-data", "instance-data.ec2.internal"}
)
NAT64 = ipaddress.ip_network("64:ff9b::/96")  # the well-known prefix: an IPv4 address in the low 32 bits
SHARED = ipaddress.ip_network("100.64.0.0/10")  # carrier-grade NAT (RFC 6598)
PRIVATE = tuple(  # RFC 1918, and IPv6 unique local addresses
    ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7")
)

# getaddrinfo cannot be interrupted: lookups run on threads of their own, so a name whose DNS never
# answers holds one of these (never a request thread) and the caller stops waiting at its limit
_RESOLVERS = ThreadPoolExecutor(max_workers=8, thread_name_prefix="resolve")


def literal(host: str) -> IPAddress | None:
    """The address a URL's host names directly (``10.0.0.1``, ``[::1]``), or None for a name."""
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def is_metadata_name(host: str) -> bool:
    return host.lower().rstrip(".") in METADATA_NAMES


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one stands for (mapped, compatible, 6to4, Teredo, NAT64): connecting to
    it can reach that IPv4 address, so it is judged as that address."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]  # the client's address
    if ip in NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if 1 < int(ip) < 2**32:  # IPv4-compatible ::a.b.c.d (deprecated); not :: or ::1
        return ipaddress.IPv4Address(int(ip))
    return None


def refusal(ip: IPAddress, *, allow_private: bool = False) -> str | None:
    """Why a receiver at ``ip`` is refused ("a loopback address", ...), or None when it may be reached.

    Always refused: cloud metadata, unspecified, multicast and reserved addresses (no receiver lives
    there). Refused unless ``allow_private``: loopback, link-local, private (RFC 1918, fc00::/7),
    shared (CGNAT, 100.64.0.0/10) and any other address that is not globally reachable."""
    if ip in METADATA_ADDRESSES:
        return "a cloud metadata address"
    if ip.version == 6:
        inner = _embedded_ipv4(ip)
        if inner is not None:
            why = refusal(inner, allow_private=allow_private)
            return f"{why} ({inner}) inside an IPv6 address" if why else None
    always = _always_refused(ip)
    if always:
        return always
    private = _private_kind(ip)
    return None if private is None or allow_private else private


def _always_refused(ip: IPAddress) -> str | None:
    if ip.is_unspecified:
        return "the unspecified address"
    if ip.is_multicast:
        return "a multicast address"
    if ip.is_reserved and not ip.is_loopback:  # Python counts ::/8, and so ::1, as reserved
        return "a reserved address"
    return None


def _private_kind(ip: IPAddress) -> str | None:
    if ip.is_loopback:
        return "a loopback address"
    if ip.is_link_local:
        return "a link-local address"
    if any(ip in net for net in PRIVATE if net.version == ip.version):
        return "a private address"
    if ip in SHARED:
        return "a shared (carrier-grade NAT) address"
    if ip.version == 6 and ip.is_site_local:
        return "a site-local address"
    if not ip.is_global:
        return "a special-purpose address that is not publicly reachable"
    return None


def _addresses(infos: list) -> list[IPAddress]:
    found: list[IPAddress] = []
    for *_, sockaddr in infos:
        ip = ipaddress.ip_address(sockaddr[0])
        if ip not in found:
            found.append(ip)
    return found


def _lookup(host: str, port: int) -> list[IPAddress]:
    return _addresses(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM))


def resolve(host: str, port: int, timeout_s: float) -> list[IPAddress]:
    """Every address of ``host`` (in the resolver's order), waiting at most ``timeout_s``. Raises
    ``LookupError`` when the name does not resolve, ``TimeoutError`` when DNS does not answer in time."""
    ip = literal(host)
    if ip is not None:
        return [ip]
    future = _RESOLVERS.submit(_lookup, host, port)
    try:
        return future.result(timeout=timeout_s)
    except FutureTimeout as exc:
        future.cancel()
        raise TimeoutError(f"DNS gave no answer for {host} within {timeout_s:g} s") from exc
    except (OSError, UnicodeError, ValueError) as exc:
        raise LookupError(f"{host} does not resolve ({exc})") from exc


async def resolve_async(host: str, port: int, timeout_s: float) -> list[IPAddress]:
    """``resolve`` for the event loop: the loop waits, no thread of the caller's pool is held."""
    ip = literal(host)
    if ip is not None:
        return [ip]
    future = asyncio.wrap_future(_RESOLVERS.submit(_lookup, host, port))
    try:
        return await asyncio.wait_for(future, timeout_s)
    except TimeoutError as exc:
        raise TimeoutError(f"DNS gave no answer for {host} within {timeout_s:g} s") from exc
    except (OSError, UnicodeError, ValueError) as exc:
        raise LookupError(f"{host} does not resolve ({exc})") from exc
