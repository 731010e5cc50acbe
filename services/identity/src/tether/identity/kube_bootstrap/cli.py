"""`tether-identity kube-bootstrap`: the bootstrap Job's entry point."""

from __future__ import annotations

import asyncio
import traceback
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import structlog

from tether.identity.kube_bootstrap.api import KubeObjects
from tether.identity.kube_bootstrap.config import KubeBootstrapConfig
from tether.identity.kube_bootstrap.job import Bootstrap, Outcome
from tether.shared.config import load_config
from tether.shared.errors import FatalError
from tether.shared.failure import report
from tether.shared.logging import configure
from tether.shared.runtime import env, instance_id, package_version

COMMAND = "tether-identity"
PROG = f"{COMMAND} kube-bootstrap"
DESCRIPTION = (
    "Create, if absent, what the mesh needs in its namespace: Secret tether-identity-issuer (trust anchor "
    "and issuer), ConfigMap tether-trust-roots, Secret tether-nats-server (auth.conf, TLS) and one Secret "
    "tether-nats-<role> per NATS user. Existing objects are never changed; safe to rerun."
)

log = structlog.get_logger(__name__)


def run(config: KubeBootstrapConfig, api_client: Any, now: datetime | None = None) -> Outcome:
    """Check the API answers, then bootstrap; raises FatalError (one line) on any failure."""
    from tether.shared.kube import wait_reachable

    settings = config.kube_settings()
    asyncio.run(
        wait_reachable(
            api_client,
            settings.connect_timeout,
            what_to_check="check --kube-api-url or the kubeconfig, and that the API server is up",
        )
    )
    return Bootstrap(config, KubeObjects(api_client, config.namespace), now or datetime.now(UTC)).run()


def main(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> int:
    config = load_config(
        KubeBootstrapConfig,
        "identity",
        argv,
        env() if environ is None else environ,
        prog=PROG,
        description=DESCRIPTION,
    )
    configure(
        service="identity",
        instance=instance_id(),
        version=package_version("tether-identity"),
        fmt=config.log_format,
        level=config.log_level,
    )
    from tether.shared.kube import api_client

    client: Any = None
    try:
        client = api_client(
            config.kube_settings(),
            remedy="run it as the bootstrap Job (in-cluster ServiceAccount), or pass --kubeconfig or "
            "--kube-api-url",
        )
        run(config, client)
    except FatalError as error:
        return report(COMMAND, error, help_command=PROG)
    except Exception as error:
        # A bug, not a failure a user can cause: keep the traceback (no object data is ever in one).
        log.error("unexpected_error", error=type(error).__name__, traceback=traceback.format_exc())
        failure = FatalError(
            f"unexpected {type(error).__name__}", "this is a bug: please report it with the log above"
        )
        return report(COMMAND, failure, help_command=PROG)
    finally:
        if client is not None:
            client.close()
    return 0
