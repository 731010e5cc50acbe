"""The local mesh's configuration, its port layout and the files of its state directory.

Every listener is on 127.0.0.1, at a fixed offset from ``--port-base`` (4700 by default), so the mesh keeps
to a range of its own, away from the ports applications use (identity's usual 8080 above all) and below
Linux's ephemeral range (32768-60999), where an outgoing connection's local port would make a listener's
bind fail now and then:

=======  =====================  ==============
offset   default port           what
=======  =====================  ==============
+0       4700                   NATS (clients)
+10/+11  4710 / 4711            identity gRPC (TLS) / admin
+20/+21  4720 / 4721            destination gRPC / admin
+30/+31  4730 / 4731            telemetry gRPC / admin
+40/+41  4740 / 4741            public-api gRPC / admin
+42      4742                   public-api web dashboard (HTTP; ``tether dashboard`` opens it)
+50..99  4750 - 4799            reserved for the mesh (application proxies)
=======  =====================  ==============
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from tether.shared.config import LoggingConfig

HOST = "127.0.0.1"
SERVICE = "mesh"  # TETHER_MESH_* environment variables

NATS = "nats"
IDENTITY = "identity"
DESTINATION = "destination"
TELEMETRY = "telemetry"
PUBLIC_API = "public-api"
# Start order: NATS first, identity before the components that get their certificates from it.
COMPONENTS = (NATS, IDENTITY, DESTINATION, TELEMETRY, PUBLIC_API)
OFFSETS = {NATS: 0, IDENTITY: 10, DESTINATION: 20, TELEMETRY: 30, PUBLIC_API: 40}
RANGE = 100
DASHBOARD_OFFSET = 42  # public-api's web dashboard


class MeshConfig(LoggingConfig, frozen=True, kw_only=True):
    """Options of ``tether up``, ``tether down`` and ``tether status`` (flags or TETHER_MESH_*)."""

    state_dir: Annotated[
        str, Meta(description="directory of the mesh's state: CA, NATS store, logs, pids and ports")
    ] = ".tether"
    port_base: Annotated[
        int,
        Meta(
            ge=1024, le=65536 - RANGE, description="first port of the mesh's range of 100 ports on 127.0.0.1"
        ),
    ] = 4700
    ready_timeout: Annotated[
        float, Meta(gt=0, le=600, description="seconds `tether up` waits for every component to be ready")
    ] = 60.0
    stop_grace: Annotated[
        float, Meta(ge=0, le=300, description="seconds a component has to exit on SIGTERM before SIGKILL")
    ] = 5.0
    output: Annotated[Literal["text", "json"], Meta(description="tether status output: text or json")] = (
        "text"
    )

    def ports(self) -> dict[str, tuple[int, int]]:
        """Component → (main port, admin port); NATS has no admin port (0)."""
        return {
            name: (self.port_base + offset, 0 if name == NATS else self.port_base + offset + 1)
            for name, offset in OFFSETS.items()
        }

    def listeners(self) -> list[tuple[str, str, int]]:
        """Every listener of the mesh: (component, what, port)."""
        found = []
        for name, (port, admin) in self.ports().items():
            found.append((name, "client" if name == NATS else "gRPC", port))
            if admin:
                found.append((name, "admin", admin))
        found.append((PUBLIC_API, "web", self.dashboard_port))
        return found

    @property
    def dashboard_port(self) -> int:
        return self.port_base + DASHBOARD_OFFSET


class Paths:
    """The files of a state directory (absolute)."""

    def __init__(self, state_dir: str | Path) -> None:
        self.root = Path(state_dir).resolve()
        self.state = self.root / "mesh.json"
        self.lock = self.root / "supervisor.lock"
        self.logs = self.root / "logs"
        self.ca = self.root / "ca"
        self.tokens = self.root / "tokens"
        self.nats = self.root / "nats"
        self.users = self.nats / "users"
        self.registry = self.root / "registry.yaml"

    def log(self, component: str) -> Path:
        return self.logs / f"{component}.log"

    def token(self, component: str) -> Path:
        return self.tokens / f"{component}.token"

    def seed(self, user: str) -> Path:
        return self.users / f"{user}.nk"


def encode(config: MeshConfig) -> str:
    return msgspec.json.encode(config).decode()


def decode(text: str) -> MeshConfig:
    return msgspec.json.decode(text, type=MeshConfig)
