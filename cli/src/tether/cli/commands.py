"""The client commands: ``version``, ``check``, ``stat``, ``edges``, ``tap`` and ``endpoints``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import signal
import sys
from collections.abc import Mapping
from typing import Any

import grpc
from google.protobuf.duration_pb2 import Duration

from tether.cli import kubecreds, output
from tether.cli.config import (
    WINDOWS,
    WORKLOAD_KINDS,
    ApiConfig,
    ResourceArg,
    StatConfig,
    TapConfig,
    api_config,
    parse_resource,
    validated,
)
from tether.shared.errors import ConfigError, FatalError
from tether.shared.failure import exit_with, report
from tether.shared.proto.public.v1 import public_pb2, public_pb2_grpc
from tether.shared.proto.telemetry.v1 import telemetry_pb2
from tether.shared.runtime import package_version

COMMAND = "tether"
DEFAULT_NAMESPACE = "default"
_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_UNREACHABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


def _namespace(flag: str, value: str | None, default: str = DEFAULT_NAMESPACE) -> str:
    if value is None:
        return default
    if not _LABEL.match(value):
        raise ConfigError(
            f"{flag}: {value[:64]!r} is not a namespace name (lowercase letters, digits and '-')"
        )
    return value


def _resource(resource: ResourceArg) -> public_pb2.Resource:
    return public_pb2.Resource(namespace=resource.namespace, kind=resource.kind, name=resource.name)


def _json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2, ensure_ascii=False) + "\n")


def stat_config(args: argparse.Namespace) -> StatConfig:
    selector = parse_resource(args.resource, "TYPE[/NAME]")
    namespace = "" if args.all_namespaces else _namespace("--namespace", args.namespace)
    if selector.kind == "namespace":
        namespace = ""  # a namespace is its own scope
    selector = ResourceArg(namespace=namespace, kind=selector.kind, name=selector.name)
    to = source = None
    if args.to:
        peer = parse_resource(args.to, "--to", kinds=(*WORKLOAD_KINDS, "namespace", "service"))
        to = ResourceArg(
            namespace=""
            if peer.kind == "namespace"
            else _namespace("--to-namespace", args.to_namespace, namespace),
            kind=peer.kind,
            name=peer.name,
        )
    elif args.to_namespace is not None:
        raise ConfigError("--to-namespace: only with --to")
    if args.source:
        if selector.kind in ("service", "authority"):
            raise ConfigError(f"--from: not with a {selector.kind} resource")
        peer = parse_resource(args.source, "--from", kinds=(*WORKLOAD_KINDS, "namespace"))
        source = ResourceArg(
            namespace=""
            if peer.kind == "namespace"
            else _namespace("--from-namespace", args.from_namespace, namespace),
            kind=peer.kind,
            name=peer.name,
        )
    elif args.from_namespace is not None:
        raise ConfigError("--from-namespace: only with --from")
    config: StatConfig = validated(
        StatConfig,
        {
            "selector": selector,
            "all_namespaces": bool(args.all_namespaces),
            "window": args.time_window,
            "to": to,
            "source": source,
        },
    )
    return config


def tap_config(args: argparse.Namespace) -> TapConfig:
    target = parse_resource(
        args.resource, "TYPE/NAME", name_required=True, kinds=(*WORKLOAD_KINDS, "namespace")
    )
    namespace = "" if target.kind == "namespace" else _namespace("--namespace", args.namespace)
    if not args.max_rps > 0:
        raise ConfigError(f"--max-rps: must be above 0, got {args.max_rps:g}")
    if args.max_requests < 0:
        raise ConfigError(f"--max-requests: must be 0 or more, got {args.max_requests}")
    if args.method and not re.fullmatch(r"[A-Za-z]{1,32}", args.method):
        raise ConfigError(f"--method: {args.method[:40]!r} is not an HTTP method")
    config: TapConfig = validated(
        TapConfig,
        {
            "target": ResourceArg(namespace=namespace, kind=target.kind, name=target.name),
            "method": args.method.upper(),
            "path": args.path,
            "authority": args.authority,
            "max_rps": args.max_rps,
            "max_requests": args.max_requests,
        },
    )
    return config


def edges_request(args: argparse.Namespace) -> public_pb2.EdgesRequest:
    kind = parse_resource(args.resource, "TYPE", kinds=WORKLOAD_KINDS)
    if kind.name:
        raise ConfigError(f"TYPE: expected a resource type, got {args.resource!r}")
    namespace = "" if args.all_namespaces else _namespace("--namespace", args.namespace)
    return public_pb2.EdgesRequest(
        selector=public_pb2.Resource(namespace=namespace, kind=kind.kind),
        time_window=Duration(seconds=WINDOWS[args.time_window]),
    )


def endpoints_request(args: argparse.Namespace) -> public_pb2.EndpointsRequest:
    authority = args.authority
    if not authority or len(authority) > 512 or any(c.isspace() for c in authority):
        raise ConfigError(f"AUTHORITY: expected host:port, got {authority[:64]!r}")
    namespace = _namespace("--namespace", args.namespace or None, "")
    return public_pb2.EndpointsRequest(authority=authority, namespace=namespace)


async def version(stub: public_pb2_grpc.ApiStub, config: ApiConfig) -> int:
    client = package_version("tether-cli")
    if config.output == "text":
        print(f"Client version: {client}", flush=True)
    response = await stub.Version(public_pb2.VersionRequest(), timeout=config.timeout)
    servers = sorted({c.version for c in response.components if c.service == "public-api"})
    if config.output == "json":
        body = output.to_dict(response)
        _json({"client_version": client, "server_version": ", ".join(servers) or None, **body})
        return 0
    print(f"Server version: {', '.join(servers) or 'unavailable'}")
    rows = [
        [c.service, c.version, c.instance, "ready" if c.ready else "not ready"] for c in response.components
    ]
    if rows:
        print(output.table(["COMPONENT", "VERSION", "INSTANCE", "STATUS"], rows))
    return 0


async def check(stub: public_pb2_grpc.ApiStub, config: ApiConfig) -> int:
    response = await stub.Check(public_pb2.CheckRequest(), timeout=config.timeout)
    failed = not response.ok or any(
        output.check_status(r) == public_pb2.CHECK_STATUS_ERROR for r in response.results
    )
    if config.output == "json":
        _json(output.to_dict(response))
    else:
        print(output.check_text(response))
    return 1 if failed else 0


async def stat(stub: public_pb2_grpc.ApiStub, config: ApiConfig, args: argparse.Namespace) -> int:
    sc = stat_config(args)
    request = public_pb2.StatSummaryRequest(
        selector=_resource(sc.selector), time_window=Duration(seconds=WINDOWS[sc.window])
    )
    if sc.to is not None:
        request.to.CopyFrom(_resource(sc.to))
    if sc.source is not None:
        getattr(request, "from").CopyFrom(_resource(sc.source))
    response = await stub.StatSummary(request, timeout=config.timeout)
    rows = list(response.rows)
    if config.output == "json":
        _json(output.stat_json(rows))
    elif not rows:
        print("No traffic found.", file=sys.stderr)
    else:
        all_namespaces = sc.all_namespaces and sc.selector.kind != "namespace"
        print(output.stat_table(rows, all_namespaces=all_namespaces, wide=config.output == "wide"))
    return 0


async def edges(stub: public_pb2_grpc.ApiStub, config: ApiConfig, args: argparse.Namespace) -> int:
    response = await stub.Edges(edges_request(args), timeout=config.timeout)
    if config.output == "json":
        _json([output.to_dict(e) for e in response.edges])
    elif not response.edges:
        print("No edges found.", file=sys.stderr)
    else:
        print(output.edges_table(list(response.edges), wide=config.output == "wide"))
    return 0


async def endpoints(
    stub: public_pb2_grpc.ApiStub,
    config: ApiConfig,
    args: argparse.Namespace,
    metadata: kubecreds.Metadata = (),
) -> int:
    response = await stub.Endpoints(
        endpoints_request(args), timeout=config.timeout, metadata=metadata or None
    )
    if config.output == "json":
        _json(output.to_dict(response))
    elif not response.endpoints:
        print("No endpoints found.", file=sys.stderr)
    else:
        print(output.endpoints_table(response, wide=config.output == "wide"))
    return 0


async def tap(
    stub: public_pb2_grpc.ApiStub,
    config: ApiConfig,
    args: argparse.Namespace,
    metadata: kubecreds.Metadata = (),
) -> int:
    tc = tap_config(args)
    request = public_pb2.TapRequest(
        target=_resource(tc.target),
        match=telemetry_pb2.TapMatch(authority=tc.authority, path_prefix=tc.path, method=tc.method),
        max_requests=tc.max_requests,
        max_events_per_second=tc.max_rps,
    )
    call = stub.Tap(request, metadata=metadata or None)
    loop = asyncio.get_running_loop()
    stopped = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stopped.set)

    async def stream() -> None:
        requests = 0
        async for event in call:
            if config.output == "json":
                sys.stdout.write(json.dumps(output.to_dict(event), ensure_ascii=False) + "\n")
            else:
                sys.stdout.write(output.tap_line(event) + "\n")
            sys.stdout.flush()
            if event.WhichOneof("phase") == "response_end":
                requests += 1
                if tc.max_requests and requests >= tc.max_requests:
                    return

    streaming = asyncio.ensure_future(stream())
    waiting = asyncio.ensure_future(stopped.wait())
    try:
        await asyncio.wait({streaming, waiting}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiting.cancel()
        call.cancel()
    if streaming.done():
        streaming.result()  # raises the stream's error (an unreachable API...)
    else:
        streaming.cancel()
        with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
            await streaming
    return 0


async def _run(config: ApiConfig, args: argparse.Namespace, metadata: kubecreds.Metadata = ()) -> int:
    async with grpc.aio.insecure_channel(config.api_addr) as channel:
        stub = public_pb2_grpc.ApiStub(channel)
        if args.command in ("stat", "edges", "tap", "endpoints"):
            # Fail fast, with where it tried, when nothing answers (streams have no deadline).
            try:
                await asyncio.wait_for(channel.channel_ready(), timeout=config.timeout)
            except TimeoutError:
                raise _Unreachable("no answer within the timeout") from None
        if args.command == "version":
            return await version(stub, config)
        if args.command == "check":
            return await check(stub, config)
        if args.command == "stat":
            return await stat(stub, config, args)
        if args.command == "edges":
            return await edges(stub, config, args)
        if args.command == "tap":
            return await tap(stub, config, args, metadata)
        return await endpoints(stub, config, args, metadata)


class _Unreachable(Exception):
    pass


def _unreachable(config: ApiConfig, why: str) -> FatalError:
    return FatalError(
        f"cannot reach the public API at {config.api_addr} (from {config.api_addr_source}; {why})",
        "start the local mesh with `tether up`, or give --api-addr / TETHER_API_ADDR",
    )


def _answered(exc: grpc.aio.AioRpcError, *, sent_credentials: bool) -> FatalError:
    cause = f"the public API answered {exc.code().name}: {exc.details()}"
    if exc.code() == grpc.StatusCode.UNAUTHENTICATED and not sent_credentials:
        return FatalError(cause, "a cluster's public API needs your Kubernetes credentials: add --kube")
    return FatalError(cause)


def run(parser: argparse.ArgumentParser, args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    help_command = f"tether {args.command}"
    flags = {
        "api_addr": args.api_addr,
        "timeout": args.timeout,
        "output": args.output,
        "state_dir": args.state_dir,
    }
    try:
        config = api_config(flags, environ)
        # Argument errors before any call: one line, exit 2.
        if args.command == "stat":
            stat_config(args)
        elif args.command == "tap":
            tap_config(args)
        elif args.command == "edges":
            edges_request(args)
        elif args.command == "endpoints":
            endpoints_request(args)
        # The caller's Kubernetes credentials, when asked for (tether.cli.kubecreds).
        metadata = kubecreds.call_metadata(args, environ) if args.command in ("tap", "endpoints") else ()
    except ConfigError as exc:
        exit_with(COMMAND, exc, help_command=help_command)
    try:
        return asyncio.run(_run(config, args, metadata))
    except ConfigError as exc:
        exit_with(COMMAND, exc, help_command=help_command)
    except _Unreachable as exc:
        return report(COMMAND, _unreachable(config, str(exc)))
    except grpc.aio.AioRpcError as exc:
        if exc.code() in _UNREACHABLE:
            return report(COMMAND, _unreachable(config, f"{exc.code().name}: {exc.details()}"))
        return report(COMMAND, _answered(exc, sent_credentials=bool(metadata)))
    except KeyboardInterrupt:
        return 130
