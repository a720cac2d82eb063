"""Privacy guard for the Baseline LLM: dialogues go only to endpoints on your own network.

An OpenAI-compatible ``base_url`` is accepted when every address its host resolves to is
loopback or private (RFC 1918, unique-local IPv6, link-local). Anything else needs an
explicit opt-in, so a typo or a copied cloud URL cannot send patient text away.
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlparse

# lm-eval model types that talk to a remote API, and whether they take a base_url.
API_MODELS = {"local-chat-completions": True, "local-completions": True,
              "openai-chat-completions": False, "openai-completions": False, "anthropic-chat": False}


class EndpointError(ValueError):
    """The endpoint would send data off this network."""


def _is_local_address(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%")[0])
    return ip.is_loopback or ip.is_private or ip.is_link_local


def resolve_host(host: str) -> list[str]:
    """Addresses of ``host`` (an IP literal resolves to itself, without any lookup)."""
    try:
        return [str(ipaddress.ip_address(host))]
    except ValueError:
        pass
    try:
        return sorted({info[4][0] for info in socket.getaddrinfo(host, None)})
    except socket.gaierror as err:
        raise EndpointError(f"cannot resolve endpoint host {host!r}: {err}") from err


def check_endpoint(base_url: str | None, allow_remote: bool = False) -> str:
    """Return a one-line verdict, or raise :class:`EndpointError` for a non-local endpoint."""
    if not base_url:
        raise EndpointError("no base_url: an API model without one would go to a public cloud endpoint")
    parsed = urlparse(base_url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise EndpointError(f"base_url {base_url!r} is not an http(s) URL")
    addresses = resolve_host(parsed.hostname)
    remote = [a for a in addresses if not _is_local_address(a)]
    if remote and not allow_remote:
        raise EndpointError(
            f"endpoint {parsed.hostname} resolves to non-private address(es) {', '.join(remote)}: dialogues would "
            "leave your network. Serve the model on-premise, or pass --allow-remote-endpoint if you really mean it."
        )
    where = "REMOTE (explicitly allowed)" if remote else "local/private"
    return f"endpoint {parsed.scheme}://{parsed.hostname}:{parsed.port or ''} is {where}"


def unreachable_reason(base_url: str, timeout_s: float = 3.0) -> str | None:
    """Why nothing answers at ``base_url`` (one TCP connect, nothing sent), or None when something listens."""
    parsed = urlparse(base_url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname, port), timeout=timeout_s):
            return None
    except OSError as err:
        return f"no server answers at {parsed.hostname}:{port} ({err.strerror or type(err).__name__})"
