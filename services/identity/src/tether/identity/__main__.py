"""`tether-identity`: the mesh certificate authority.

tether-identity [serve] [--grpc-addr ...]          run the service (the default without a subcommand)
tether-identity bootstrap --out DIR [--trust-domain D]
tether-identity mint-token --namespace N --serviceaccount S --key FILE [--ttl SECONDS]
tether-identity kube-bootstrap [--namespace tether] ...  create the cluster's issuer and NATS credentials
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

from tether.shared.config import TetherArgumentParser
from tether.shared.errors import SetupError
from tether.shared.failure import exit_with
from tether.shared.identity_names import DEFAULT_TRUST_DOMAIN, InvalidIdentityName, WorkloadIdentity

COMMAND = "tether-identity"
SUBCOMMANDS = {
    "serve": "run the certificate authority (the default when no subcommand is given)",
    "bootstrap": "generate a trust anchor, an issuer and a token-signing key into a directory",
    "mint-token": "print a signed `local` token for a ServiceAccount (for meshes outside Kubernetes)",
    "kube-bootstrap": "create the cluster's issuer, trust roots and NATS credentials if absent (the Job)",
}
USAGE = (
    f"usage: {COMMAND} [{{{','.join(SUBCOMMANDS)}}}] [options]\n\n"
    "The Tether certificate authority.\n\ncommands:\n"
    + "".join(f"  {name:<15} {text}\n" for name, text in SUBCOMMANDS.items())
    + f"\n'{COMMAND} <command> --help' lists a command's options.\n"
)


def _bootstrap(argv: Sequence[str]) -> int:
    from tether.identity.bootstrap import bootstrap

    parser = TetherArgumentParser(
        prog=f"{COMMAND} bootstrap",
        description="Generate a trust anchor (P-256, 10 y), an issuer (P-256, 1 y) and a local token key.",
    )
    parser.add_argument("--out", required=True, type=Path, help="directory to write the PEM files to")
    parser.add_argument("--trust-domain", default=DEFAULT_TRUST_DOMAIN)
    args = parser.parse_args(argv)
    try:
        paths = bootstrap(args.out, datetime.now(UTC), args.trust_domain)
    except FileExistsError as error:
        exit_with(COMMAND, SetupError(str(error), "choose another --out, or remove the old files first"))
    except InvalidIdentityName as error:
        exit_with(COMMAND, SetupError(f"--trust-domain: {error}"), help_command=parser.prog)
    for name, path in paths.items():
        print(f"{name}\t{path}")
    return 0


def _mint_token(argv: Sequence[str]) -> int:
    from tether.identity.errors import ConfigurationError
    from tether.identity.tokens.local import load_token_key, mint_token

    parser = TetherArgumentParser(
        prog=f"{COMMAND} mint-token", description="Print a signed `local` token for a ServiceAccount."
    )
    parser.add_argument("--namespace", required=True)
    parser.add_argument("--serviceaccount", required=True)
    parser.add_argument("--key", required=True, type=Path, help="the token-signing.key written by bootstrap")
    parser.add_argument("--ttl", type=int, default=86_400, help="lifetime in seconds (default: one day)")
    args = parser.parse_args(argv)
    if args.ttl <= 0:
        parser.error("--ttl must be positive")
    try:
        identity = WorkloadIdentity(args.serviceaccount, args.namespace)
        key = load_token_key(args.key.read_bytes())
    except InvalidIdentityName as error:
        exit_with(COMMAND, SetupError(str(error)), help_command=parser.prog)
    except ConfigurationError as error:
        exit_with(COMMAND, SetupError(f"--key {args.key}: {error.cause}", error.remedy))
    except OSError as error:
        exit_with(COMMAND, SetupError(f"--key {args.key} cannot be read: {error.strerror}", "check --key"))
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
        prog=f"{COMMAND} serve",
        description="The mesh certificate authority: serves tether.identity.v1.Identity/Certify.",
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in ("-h", "--help"):
        sys.stdout.write(USAGE)
        return 0
    if args and args[0] == "bootstrap":
        return _bootstrap(args[1:])
    if args and args[0] == "mint-token":
        return _mint_token(args[1:])
    if args and args[0] == "kube-bootstrap":
        from tether.identity.kube_bootstrap.cli import main as kube_bootstrap

        return kube_bootstrap(args[1:])
    if args and args[0] == "serve":
        args = args[1:]
    elif args and not args[0].startswith("-"):
        exit_with(COMMAND, SetupError(f"unknown command {args[0]!r}", f"one of {', '.join(SUBCOMMANDS)}"))
    return _serve(args)


if __name__ == "__main__":
    sys.exit(main())
