"""What keeps the browsers on the same machine from using the dashboard against its user (pure functions).

* **DNS rebinding.** A page of ``evil.example`` whose name the attacker then resolves to 127.0.0.1 reaches
  the dashboard as a same-origin page of ``evil.example``; its requests say ``Host: evil.example``. Every
  request whose Host is not the bound address, ``localhost``, ``127.0.0.1``, ``[::1]`` or a configured
  ``--dashboard-host`` gets 403. The port is not compared: ``kubectl port-forward 9999:8084`` sends
  ``localhost:9999``.
* **CSRF.** Starting and stopping a tap are POSTs and need proof that the dashboard's own page sent them: an
  ``Origin`` equal to ``http(s)://<Host>``, or else ``Sec-Fetch-Site: same-origin``. Another page of the
  same site (``localhost:3000`` is *same-site* with ``localhost:8084``) is refused too, and so is a request
  that carries neither header (browsers send ``Origin`` with every POST).
* **Response headers**: a Content-Security-Policy allowing only the component's own files (no inline script
  or style, no framing, no plugins, no base or form targets elsewhere), ``nosniff``, ``X-Frame-Options:
  DENY``, no referrer.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping

from tether.shared.config import parse_hostport

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
    (b"permissions-policy", b"camera=(), microphone=(), geolocation=()"),
)
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
_LABEL = r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
_HOST_NAME = re.compile(rf"^{_LABEL}(\.{_LABEL})*$")
_PORT = re.compile(r"^[0-9]{1,5}$")


def valid_host_name(name: str) -> bool:
    """A DNS name (lower case) or an IP address literal (IPv6 without brackets)."""
    if len(name) > 253:
        return False
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return bool(_HOST_NAME.match(name))
    return True


def check_dashboard_options(addr: str, hosts: Iterable[str]) -> None:
    """The configuration's check of ``--dashboard-addr`` and ``--dashboard-host`` (ValueError naming it)."""
    if addr:
        try:
            parse_hostport(addr)
        except ValueError as exc:
            raise ValueError(f"dashboard_addr: {exc}") from None
    for name in hosts:
        if not valid_host_name(name):
            raise ValueError(
                f"dashboard_host: {name[:80]!r} is not a lower-case host name or an IP address "
                "(no port, no brackets)"
            )


def allowed_hosts(bound_host: str, extra: Iterable[str]) -> frozenset[str]:
    """The Host names the dashboard answers: loopback, the bound address unless a wildcard, ``extra``."""
    names = set(LOOPBACK_NAMES) | {name.lower() for name in extra}
    if bound_host not in ("", "0.0.0.0", "::"):
        names.add(bound_host.lower())
    return frozenset(names)


def host_name(header: str) -> str | None:
    """The host of a ``Host`` header (``localhost:8084`` → ``localhost``, ``[::1]:8084`` → ``::1``); None when
    it is not a host name or address with an optional port."""
    value = header.strip().lower()
    if value.startswith("["):
        inside, bracket, rest = value[1:].partition("]")
        if not bracket or (rest and not (rest.startswith(":") and _PORT.match(rest[1:]))):
            return None
        try:
            ipaddress.IPv6Address(inside)
        except ValueError:
            return None
        return inside
    name, colon, port = value.partition(":")
    if colon and not _PORT.match(port):
        return None
    return name if name and valid_host_name(name) and ":" not in name else None


def host_allowed(header: str | None, allowed: frozenset[str]) -> bool:
    if header is None:
        return False
    name = host_name(header)
    return name is not None and name in allowed


def same_origin(headers: Mapping[str, str]) -> str:
    """Empty when the request demonstrably comes from the dashboard's own page, else why not."""
    host = headers.get("host", "")
    origin = headers.get("origin")
    if origin is not None:
        if origin.lower() in (f"http://{host}".lower(), f"https://{host}".lower()):
            return ""
        return f"Origin {origin[:100]!r} is not this dashboard's"
    site = headers.get("sec-fetch-site")
    if site == "same-origin":
        return ""
    if site is not None:
        return f"Sec-Fetch-Site is {site[:40]!r}"
    return "neither Origin nor Sec-Fetch-Site says the request comes from the dashboard's page"


def cross_site(headers: Mapping[str, str]) -> bool:
    """A read the browser says another site's page made (``Sec-Fetch-Site: cross-site`` or ``same-site``).

    Reading the answer is blocked by the same-origin policy anyway; refusing it also spares the API."""
    return headers.get("sec-fetch-site") in ("cross-site", "same-site")
