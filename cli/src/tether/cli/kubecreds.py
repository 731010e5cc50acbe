"""The caller's Kubernetes credentials for ``tether tap`` and ``tether endpoints`` against a cluster.

A cluster's public API (``--authz kubernetes``) lets only authorised users tap or resolve: the CLI sends the
bearer token of the kubeconfig's user as gRPC metadata ``authorization: Bearer <token>``, and the public API
checks it with TokenReview and SubjectAccessReview.

The credentials are sent only when asked for, with ``--kube``, ``--kubeconfig FILE`` or ``--context NAME``
(the kubeconfig: ``--kubeconfig``, else ``KUBECONFIG``, else ``~/.kube/config``; the context: ``--context``,
else its current context). Never by default: a kubeconfig is often present while the local mesh is used,
and its token must not go to whatever answers on the API address. The kubernetes client's own loader reads
the kubeconfig, so static tokens, ``tokenFile`` and exec plugins (cloud providers' ``aws eks get-token``,
``gke-gcloud-auth-plugin``, ``kubelogin``) all work. A user that authenticates with a client certificate
has no token to send: the error says so.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tether.shared.errors import ConfigError

Metadata = tuple[tuple[str, str], ...]
_FIX = "use a kubeconfig user with a token or an exec plugin, or --context to choose another"


def add_flags(parser: argparse.ArgumentParser) -> None:
    """``--kube``, ``--kubeconfig`` and ``--context`` on a client command that a cluster authorises."""
    group = parser.add_argument_group("Kubernetes credentials (a cluster's public API)")
    group.add_argument(
        "--kube",
        action="store_true",
        help="send the kubeconfig's credentials (bearer token, exec plugins too) to the public API",
    )
    group.add_argument(
        "--kubeconfig",
        default=None,
        help="kubeconfig file; implies --kube (default: KUBECONFIG, else ~/.kube/config)",
    )
    group.add_argument(
        "--context", default=None, help="kubeconfig context; implies --kube (default: its current context)"
    )


def wanted(args: argparse.Namespace) -> bool:
    return bool(
        getattr(args, "kube", False) or getattr(args, "kubeconfig", None) or getattr(args, "context", None)
    )


def kubeconfig_path(flag: str | None, environ: Mapping[str, str]) -> str:
    """``--kubeconfig``, else ``KUBECONFIG`` (a list of files, as kubectl merges them), else the default."""
    if flag:
        return flag
    if environ.get("KUBECONFIG"):
        return environ["KUBECONFIG"]
    home = environ.get("HOME") or str(Path.home())
    return str(Path(home) / ".kube" / "config")


class _Collect(logging.Handler):
    """The kubernetes loader logs an exec plugin's failure instead of raising it: keep the first line."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage().splitlines()[0][:300] if record.getMessage() else "")


def bearer_token(kubeconfig: str, context: str | None) -> str:
    """The bearer token the kubeconfig gives its (current or named) context's user; ConfigError otherwise."""
    from kubernetes import client as kube_client
    from kubernetes import config as kube_config
    from kubernetes.config.config_exception import ConfigException

    where = f"kubeconfig {kubeconfig}" + (f", context {context}" if context else "")
    configuration = kube_client.Configuration()
    collected = _Collect()
    root = logging.getLogger()
    root.addHandler(collected)  # also keeps logging's last-resort handler from printing them
    load: Any = kube_config.load_kube_config
    try:
        load(
            config_file=kubeconfig,
            context=context or None,
            client_configuration=configuration,
            persist_config=False,
        )
    except (ConfigException, OSError, ValueError, TypeError, KeyError) as exc:
        detail = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
        raise ConfigError(
            f"--kubeconfig: cannot load {where}: {detail}", "give --kubeconfig FILE or --context NAME"
        ) from None
    finally:
        root.removeHandler(collected)
    auth: Any = configuration.auth_settings()
    value = (auth.get("BearerToken") or {}).get("value") or ""
    scheme, _, token = str(value).partition(" ")
    if scheme != "Bearer" or not token.strip():
        why = (
            f"its exec plugin failed ({collected.messages[0]})"
            if collected.messages
            else "it uses a client certificate, a password or nothing, which the public API cannot check"
            if scheme in ("", "Basic")
            else f"its credentials are of an unknown kind ({scheme[:20]})"
        )
        raise ConfigError(f"--kubeconfig: the user of {where} has no bearer token: {why}", _FIX)
    return token.strip()


def call_metadata(args: argparse.Namespace, environ: Mapping[str, str]) -> Metadata:
    """The metadata to send with the call: the bearer token when asked for (module docstring), else none."""
    if not wanted(args):
        return ()
    token = bearer_token(kubeconfig_path(getattr(args, "kubeconfig", None), environ), args.context)
    return (("authorization", f"Bearer {token}"),)
