"""A meshed proxy loads neither grpcio nor cryptography: each would cost more than its whole memory budget.

The proxy runs as a real process with identity on, gets its certificate from the real identity service,
and is then inspected: its ``sys.modules`` (the loopback-only ``/debug/modules`` admin route) and, from
outside, the shared objects mapped into it (``/proc/<pid>/maps``), which would also show a native extension
loaded some other way. Its key was made by the short-lived helper process instead.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from identity_harness import IdentityHarness, identity_of

from tether.shared.natsserver import free_port
from tether.shared.testing import eventually


async def _status(port: int, path: str) -> int | None:
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return None
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    data = await reader.read()
    writer.close()
    return int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/1.1 ") else None


async def _get_json(port: int, path: str) -> object:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    data = await reader.read()
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 "), head
    return json.loads(body)


async def test_a_meshed_proxy_maps_no_grpc_and_no_cryptography(tmp_path: Path) -> None:
    identity = IdentityHarness(tmp_path / "ca")
    await identity.start()
    me = identity_of("web", "shop")
    admin = free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tether.proxy",
        "run",
        "--outbound-addr",
        f"127.0.0.1:{free_port()}",
        "--inbound-addr",
        f"127.0.0.1:{free_port()}",
        "--admin-addr",
        f"127.0.0.1:{admin}",
        "--destination-addr",
        "",
        "--identity-name",
        me.dns_name,
        "--identity-addr",
        identity.addr,
        "--identity-server-name",
        identity.server_name,
        "--identity-trust-anchors",
        str(identity.trust_anchors),
        "--identity-token-file",
        str(identity.token_file(me)),
        "--log-format",
        "json",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        await eventually(lambda: _ready(admin), 20.0, "the proxy holds its certificate")
        modules = await _get_json(admin, "/debug/modules")
        assert isinstance(modules, list) and "tether.proxy.identity" in modules, modules
        heavy = [name for name in modules if name.split(".")[0] in ("grpc", "cryptography")]
        assert heavy == [], heavy
        maps = Path(f"/proc/{process.pid}/maps").read_text()
        loaded = {line.rsplit("/", 1)[-1] for line in maps.splitlines() if ".so" in line}
        assert not [name for name in loaded if "cygrpc" in name], "grpcio is loaded"
        assert not [name for name in loaded if name.startswith(("_rust.abi3", "_cffi_backend"))], loaded
        assert any(name.startswith("_ssl") for name in loaded)  # the TLS it does use
        status = Path(f"/proc/{process.pid}/status").read_text().splitlines()
        rss_kb = next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
        print(f"meshed proxy RSS after its first certificate: {rss_kb / 1024:.1f} MB")
    finally:
        process.terminate()
        _, err = await process.communicate()
        await identity.stop()
    assert process.returncode == 0, err.decode()[-2000:]


async def _ready(admin: int) -> bool:
    return await _status(admin, "/ready") == 200
