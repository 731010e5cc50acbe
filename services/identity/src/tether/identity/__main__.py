"""`tether-identity`: the mesh certificate authority.

tether-identity [serve] [--grpc-addr ...]          run the service (the default without a subcommand)
tether-identity bootstrap --out DIR [--trust-domain D]
tether-identity mint-token --namespace N --serviceaccount S --key FILE [--ttl SECONDS]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

from tether.shared.identity_names import DEFAULT_TRUST_DOMAIN, InvalidIdentityName, WorkloadIdentity

SUBCOMMANDS = ("serve", "bootstrap", "mint-token")


def _bootstrap(argv: Sequence[str]) -> int:
    from tether.identity.bootstrap import bootstrap

    parser = argparse.ArgumentParser(
        prog="tether-identity bootstrap",
        description="Generate a trust anchor (P-256, 10 y), an issuer (P-256, 1 y) and a local token key.",
    )
    parser.add_argument("--out", required=True, type=Path, help="directory to write the PEM files to")
    parser.add_argument("--trust-domain", default=DEFAULT_TRUST_DOMAIN)
    args = parser.parse_args(argv)
    try:
        paths = bootstrap(args.out, datetime.now(UTC), args.trust_domain)
    except (FileExistsError, InvalidIdentityName) as error:
        parser.exit(2, f"{parser.prog}: error: {error}\n")
    for name, path in paths.items():
        print(f"{name}\t{path}")
    return 0


def _mint_token(argv: Sequence[str]) -> int:
    from tether.identity.errors import ConfigurationError
    from tether.identity.tokens.local import load_token_key, mint_token

    parser = argparse.ArgumentParser(
        prog="tether-identity mint-token", description="Print a signed `local` token for a ServiceAccount."
    )
    parser.add_argument("--namespace", required=True)
    parser.add_argument("--serviceaccount", required=True)
    parser.add_argument("--key", required=True, type=Path, help="the token-signing.key written by bootstrap")
    parser.add_argument("--ttl", type=int, default=86_400, help="lifetime in seconds (default: one day)")
    args = parser.parse_args(argv)
    if args.ttl <= 0:
        parser.exit(2, f"{parser.prog}: error: --ttl must be positive\n")
    try:
        identity = WorkloadIdentity(args.serviceaccount, args.namespace)
        key = load_token_key(args.key.read_bytes())
    except (InvalidIdentityName, ConfigurationError) as error:
        parser.exit(2, f"{parser.prog}: error: {error}\n")
    except OSError as error:
        parser.exit(2, f"{parser.prog}: error: cannot read {args.key}: {error.strerror}\n")
    token = mint_token(key, identity, datetime.now(UTC), timedelta(seconds=args.ttl))
    sys.stdout.write(token.decode("ascii") + "\n")
    return 0


def _serve(argv: Sequence[str]) -> int:
    from tether.identity.config import IdentityConfig
    from tether.identity.service import IdentityService
    from tether.shared.runtime import service_main

    return service_main(
        IdentityConfig,
        "identity",
        IdentityService,
        argv,
        prog="tether-identity serve",
        description="The mesh certificate authority: serves tether.identity.v1.Identity/Certify.",
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "bootstrap":
        return _bootstrap(args[1:])
    if args and args[0] == "mint-token":
        return _mint_token(args[1:])
    if args and args[0] == "serve":
        args = args[1:]
    return _serve(args)


if __name__ == "__main__":
    sys.exit(main())
