"""The A2A agent card of a server, built from the agents it serves.

One card for the server: with one agent it is that agent's (its name and
description), with several each agent is an interface of its own, picked by the
`tenant` A2A requests carry. Skills are the agents' tools (an agent without tools
is one skill itself). The card is served by `GetExtendedAgentCard` and as JSON at
`/.well-known/agent-card.json` on the metrics port.
"""

from __future__ import annotations

import socket
from importlib import metadata
from typing import Mapping

from a2a.types import a2a_pb2 as a2a
from google.protobuf import json_format

from ..agent import AgentSpec
from ..config import ServerConfig
from .a2a_parts import MODES

WELL_KNOWN_PATH = "/.well-known/agent-card.json"
PROTOCOL_BINDING = "GRPC"
PROTOCOL_VERSION = "1.0"
BEARER = "bearer"


def _version() -> str:
    try:
        return metadata.version("agent-runtime")
    except metadata.PackageNotFoundError:  # run from a checkout
        return "0.0.0"


def interface_url(config: ServerConfig, port: int) -> str:
    """Where A2A clients reach the gRPC service: `a2a_url` when set (the Kubernetes
    Service's address), else this host and the bound port."""
    if config.a2a_url:
        return config.a2a_url
    host = config.host
    if host in ("0.0.0.0", "::", "[::]", ""):
        host = socket.getfqdn()
    elif ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{host}:{port}"


def _skills(spec: AgentSpec) -> list[a2a.AgentSkill]:
    if not spec.tools:
        return [a2a.AgentSkill(id=spec.name, name=spec.name, tags=["agent"],
                               description=spec.description or f"runs the agent {spec.name}")]
    return [a2a.AgentSkill(id=f"{spec.name}.{tool.name}", name=tool.name, tags=["tool", spec.name],
                           description=tool.description or f"the tool {tool.name} of the agent {spec.name}")
            for tool in spec.tools]


def agent_card(agents: Mapping[str, AgentSpec], url: str, *, token_auth: bool) -> a2a.AgentCard:
    specs = list(agents.values())
    only = specs[0] if len(specs) == 1 else None
    card = a2a.AgentCard(
        name=only.name if only is not None else "agent-runtime",
        description=(only.description if only is not None else "") or
        f"agents served by agent-runtime: {', '.join(agents)}",
        version=_version(),
        default_input_modes=MODES, default_output_modes=MODES,
        capabilities=a2a.AgentCapabilities(streaming=True, push_notifications=False, extended_agent_card=True),
        skills=[skill for spec in specs for skill in _skills(spec)])
    tenants = [""] if only is not None else list(agents)
    for tenant in tenants:
        card.supported_interfaces.add(url=url, protocol_binding=PROTOCOL_BINDING,
                                      protocol_version=PROTOCOL_VERSION, tenant=tenant)
    if token_auth:
        card.security_schemes[BEARER].http_auth_security_scheme.CopyFrom(a2a.HTTPAuthSecurityScheme(
            scheme="Bearer", description="the server's token, as `authorization: Bearer <token>` metadata"))
        card.security_requirements.add().schemes[BEARER].SetInParent()
    return card


def card_json(card: a2a.AgentCard) -> bytes:
    """The card as A2A's JSON (protobuf's JSON mapping, camelCase names)."""
    return json_format.MessageToJson(card).encode()
