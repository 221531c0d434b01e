"""Configuration: the Centrifugo v6 layout as frozen dataclasses, loading and validation.

Pure data. Sources, lowest precedence first: built-in defaults, a JSON/YAML/TOML file,
environment variables (``RTSERVER_<PATH>`` or ``CENTRIFUGO_<PATH>``, e.g.
``RTSERVER_CLIENT_TOKEN_HMAC_SECRET_KEY``), then command-line overrides.

Every leaf is declared once, in the dataclasses below; loading, environment names,
unknown-key warnings, ``rtserver defaultconfig``/``defaultenv`` and the key tables of
docs/configuration.rst all derive from them, through one walker (:func:`schema_keys`). Durations are
strings like ``"25s"``, ``"720h"`` or ``"1500ms"`` (plain numbers are seconds) and are
stored as float seconds.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import os
import re
import tomllib
import typing
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

__all__ = [
    "AdminConfig",
    "BrokerConfig",
    "ChannelConfig",
    "ChannelOptions",
    "ClientConfig",
    "ClientTLSConfig",
    "Config",
    "ConfigError",
    "ConsumerConfig",
    "NamespaceOptions",
    "NatsAddress",
    "NatsBrokerConfig",
    "PresenceManagerConfig",
    "RedisAddress",
    "RedisConnectionConfig",
    "RedisStreamConsumerConfig",
    "SchemaKey",
    "default_tree",
    "env_names",
    "load",
    "load_pem",
    "parse_address",
    "parse_nats_urls",
    "pem_certificates",
    "redis_shards",
    "schema_keys",
    "server_client_ca_pem",
    "server_tls_files",
    "server_tls_pem",
]

_DURATION = {"duration": True}
#: An integer Centrifugo types as a string: ``"9000"`` reads as 9000, ``""`` as 0.
_DIGITS = {"digits": True}


def duration(default: float) -> Any:
    """A dataclass field holding seconds, configured as ``"25s"``-style strings."""
    return field(default=default, metadata=_DURATION)


class ConfigError(ValueError):
    """The configuration is invalid; the message names the key and the problem."""


# --- schema ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ChannelOptions:
    """Options of a namespace, or of channels without one (docs/configuration.rst)."""

    presence: bool = False
    join_leave: bool = False
    force_push_join_leave: bool = False
    history_size: int = 0
    history_ttl: float = duration(0.0)
    history_meta_ttl: float = duration(0.0)
    force_positioning: bool = False
    allow_positioning: bool = False
    force_recovery: bool = False
    allow_recovery: bool = False
    force_recovery_mode: str = "stream"
    allow_subscribe_for_client: bool = False
    allow_subscribe_for_anonymous: bool = False
    allow_publish_for_client: bool = False
    allow_publish_for_subscriber: bool = False
    allow_publish_for_anonymous: bool = False
    allow_presence_for_client: bool = False
    allow_presence_for_subscriber: bool = False
    allow_presence_for_anonymous: bool = False
    allow_history_for_client: bool = False
    allow_history_for_subscriber: bool = False
    allow_history_for_anonymous: bool = False
    allow_user_limited_channels: bool = False
    channel_regex: str = ""
    publication_data_format: str = ""
    subscribe_proxy_enabled: bool = False
    subscribe_proxy_name: str = "default"
    publish_proxy_enabled: bool = False
    publish_proxy_name: str = "default"
    sub_refresh_proxy_enabled: bool = False
    sub_refresh_proxy_name: str = "default"
    #: Delta formats subscribers may negotiate (``delta`` in subscribe); only "fossil".
    allowed_delta_types: list[str] = field(default_factory=list)
    #: Publish every publication of the channel with ``delta`` (as if the API said so).
    delta_publish: bool = False
    #: Subscribers may send a ``tf`` tag filter.
    allow_tags_filter: bool = False

    @property
    def history_enabled(self) -> bool:
        """History is kept only when both size and TTL are set."""
        return self.history_size > 0 and self.history_ttl > 0


@dataclass(frozen=True)
class NamespaceOptions(ChannelOptions):
    """A named namespace: channels ``<name>:<rest>`` use these options."""

    name: str = ""


@dataclass(frozen=True)
class TLSConfig:
    """TLS of a listening server (``http_server.tls``, ``grpc_api.tls``, ``uni_grpc.tls``).

    For the HTTP server, ``--listen ssl:...`` is the alternative.
    """

    enabled: bool = False
    #: PEM text, base64 of PEM text, or a PEM file path (``load_pem``).
    cert_pem: str = field(default="", repr=False)
    key_pem: str = field(default="", repr=False)
    cert_pem_file: str = ""
    key_pem_file: str = ""
    #: CA certificate(s) of client certificates: set, every client must present a
    #: certificate one of them signed (mutual TLS). The same value forms as ``cert_pem``.
    client_ca_pem: str = field(default="", repr=False)


@dataclass(frozen=True)
class HTTP3Config:
    """HTTP/3 (QUIC over UDP) on the HTTP server's port number; needs ``http_server.tls``."""

    enabled: bool = False


@dataclass(frozen=True)
class HTTPServerConfig:
    """Where the HTTP server listens."""

    address: str = ""
    port: int = 8000
    #: A second listener for the admin web UI (unless ``admin.external``); 0 = none.
    internal_address: str = ""
    internal_port: int = field(default=0, metadata=_DIGITS)
    tls: TLSConfig = field(default_factory=TLSConfig)
    http3: HTTP3Config = field(default_factory=HTTP3Config)
    read_header_timeout: float = duration(10.0)
    max_unfinished_request_heads: int = 1024


@dataclass(frozen=True)
class LogConfig:
    """Logging."""

    level: str = "info"
    #: ``text`` (twistd's lines) or ``json`` (one JSON object per line); rtserver's own
    #: key, Centrifugo has no equivalent.
    format: str = "text"


@dataclass(frozen=True)
class TokenConfig:
    """Keys and checks for JWT verification."""

    hmac_secret_key: str = field(default="", repr=False)
    #: The HMAC key before a rotation: tokens signed with it still verify (until
    #: ``hmac_previous_secret_key_valid_until``, unix seconds, when that is not 0).
    hmac_previous_secret_key: str = field(default="", repr=False)
    hmac_previous_secret_key_valid_until: int = 0
    rsa_public_key: str = ""
    ecdsa_public_key: str = ""
    #: URL of a JSON Web Key Set (RSA, EC and OKP keys chosen by the token's ``kid``).
    jwks_public_endpoint: str = ""
    audience: str = ""
    #: A regular expression one ``aud`` value must match (searched, not anchored).
    audience_regex: str = ""
    issuer: str = ""
    #: A regular expression ``iss`` must match (searched, not anchored).
    issuer_regex: str = ""
    user_id_claim: str = ""


@dataclass(frozen=True)
class SubscriptionTokenConfig(TokenConfig):
    """Separate keys for subscription tokens (when ``enabled``)."""

    enabled: bool = False


@dataclass(frozen=True)
class PersonalChannelConfig:
    """Server-side subscription of every user to ``#<user>``."""

    enabled: bool = False
    personal_channel_namespace: str = ""
    single_connection: bool = False


@dataclass(frozen=True)
class ClientTLSConfig:
    """TLS of a connection rtserver opens (Centrifugo's TLS object, client side).

    Used by ``engine.redis.tls``/``sentinel_tls``, ``broker.nats.tls``, the
    ``grpc.tls`` of GRPC proxies and the ``http.tls`` of HTTP proxies. Each ``*_pem``
    value is PEM text, base64 of PEM text, or the path of a PEM file (tried in that
    order, as Centrifugo does).
    """

    enabled: bool = False
    cert_pem: str = ""
    key_pem: str = field(default="", repr=False)
    server_ca_pem: str = ""
    insecure_skip_verify: bool = False
    server_name: str = ""


@dataclass(frozen=True)
class ProxyHTTPConfig:
    """HTTP specifics of a proxy: headers added to every request, TLS of ``https://``."""

    static_headers: dict[str, str] = field(default_factory=dict)
    #: With ``enabled``: the TLS of an ``https://`` endpoint (own CA, client certificate,
    #: server name, no verification); without, the system's trust store.
    tls: ClientTLSConfig = field(default_factory=ClientTLSConfig)


@dataclass(frozen=True)
class ProxyGRPCConfig:
    """GRPC specifics of a proxy (``grpc://`` endpoints, docs/proxies.rst "GRPC")."""

    tls: ClientTLSConfig = field(default_factory=ClientTLSConfig)
    #: Metadata key sent with every call (Centrifugo's per-RPC credentials); "" = none.
    credentials_key: str = ""
    credentials_value: str = field(default="", repr=False)
    #: Compress requests with gzip.
    compression: bool = False
    #: Metadata added to every call (Centrifugo v6.5.2+); forwarded headers of the same
    #: key override it. Values may be secrets: kept out of ``repr`` and messages.
    static_metadata: dict[str, str] = field(default_factory=dict, repr=False)


@dataclass(frozen=True)
class ProxyConfig:
    """One backend proxy endpoint (docs/proxies.rst)."""

    endpoint: str = ""
    timeout: float = duration(1.0)
    http_headers: list[str] = field(default_factory=list)
    grpc_metadata: list[str] = field(default_factory=list)
    emulated_headers: list[str] = field(default_factory=list)
    binary_encoding: bool = False
    include_connection_meta: bool = False
    http: ProxyHTTPConfig = field(default_factory=ProxyHTTPConfig)
    grpc: ProxyGRPCConfig = field(default_factory=ProxyGRPCConfig)


@dataclass(frozen=True)
class SwitchedProxyConfig(ProxyConfig):
    """The connect or refresh proxy: a proxy with a switch."""

    enabled: bool = False


@dataclass(frozen=True)
class NamedProxyConfig(ProxyConfig):
    """An entry of the top-level ``proxies`` list, referenced by ``*_proxy_name``."""

    name: str = ""


@dataclass(frozen=True)
class ClientProxyConfig:
    """``client.proxy``: connect and refresh proxies."""

    connect: SwitchedProxyConfig = field(default_factory=SwitchedProxyConfig)
    refresh: SwitchedProxyConfig = field(default_factory=SwitchedProxyConfig)


@dataclass(frozen=True)
class ChannelProxyConfig:
    """``channel.proxy``: the proxies named ``default`` of channel events."""

    subscribe: ProxyConfig = field(default_factory=ProxyConfig)
    publish: ProxyConfig = field(default_factory=ProxyConfig)
    sub_refresh: ProxyConfig = field(default_factory=ProxyConfig)


@dataclass(frozen=True)
class RPCOptions:
    """Options of an RPC namespace, or of methods without one."""

    proxy_enabled: bool = False
    proxy_name: str = "default"


@dataclass(frozen=True)
class RPCNamespace(RPCOptions):
    """A named RPC namespace: methods ``<name>:<rest>`` use these options."""

    name: str = ""


@dataclass(frozen=True)
class RPCPingConfig:
    """The built-in RPC method answering ``{}``."""

    enabled: bool = False
    method: str = "ping"


@dataclass(frozen=True)
class RPCConfig:
    """Client ``rpc`` calls: the RPC proxy and its namespaces."""

    proxy: ProxyConfig = field(default_factory=ProxyConfig)
    without_namespace: RPCOptions = field(default_factory=RPCOptions)
    namespaces: list[RPCNamespace] = field(default_factory=list)
    namespace_boundary: str = ":"
    ping: RPCPingConfig = field(default_factory=RPCPingConfig)


@dataclass(frozen=True)
class ClientConfig:
    """Client connections: auth, origins, timers, limits."""

    token: TokenConfig = field(default_factory=TokenConfig)
    subscription_token: SubscriptionTokenConfig = field(default_factory=SubscriptionTokenConfig)
    allowed_origins: list[str] = field(default_factory=list)
    allow_anonymous_connect_without_token: bool = False
    disallow_anonymous_connection_tokens: bool = False
    #: A request header holding the user id, set by an authenticating proxy in front: the
    #: user of a connect with no token that neither a connect proxy nor anonymous access
    #: decided (HTTP-based transports only).
    user_id_http_header: str = ""
    insecure: bool = False
    ping_interval: float = duration(25.0)
    pong_timeout: float = duration(8.0)
    expired_close_delay: float = duration(25.0)
    expired_sub_close_delay: float = duration(25.0)
    stale_close_delay: float = duration(10.0)
    channel_limit: int = 128
    queue_max_size: int = 1048576
    max_messages_in_frame: int = 16
    write_delay: float = duration(0.0)
    presence_update_interval: float = duration(27.0)
    history_max_publication_limit: int = 300
    recovery_max_publication_limit: int = 300
    user_connection_limit: int = 0
    connection_limit: int = 0
    connection_rate_limit: int = 0
    connect_include_server_time: bool = False
    subscribe_to_user_personal_channel: PersonalChannelConfig = field(
        default_factory=PersonalChannelConfig
    )
    proxy: ClientProxyConfig = field(default_factory=ClientProxyConfig)


@dataclass(frozen=True)
class ChannelConfig:
    """Channel namespaces and the channel-name grammar."""

    without_namespace: ChannelOptions = field(default_factory=ChannelOptions)
    namespaces: list[NamespaceOptions] = field(default_factory=list)
    history_meta_ttl: float = duration(720 * 3600.0)
    max_length: int = 255
    private_prefix: str = "$"
    namespace_boundary: str = ":"
    user_boundary: str = "#"
    user_separator: str = ","
    proxy: ChannelProxyConfig = field(default_factory=ChannelProxyConfig)


@dataclass(frozen=True)
class HTTPAPIConfig:
    """The server API at ``POST /api/<method>``."""

    disabled: bool = False
    key: str = field(default="", repr=False)
    insecure: bool = False
    handler_prefix: str = "/api"
    max_request_body_size: int = 10 * 1024 * 1024
    #: ``transport``: every API error as an HTTP status, as the request header
    #: ``X-Centrifugo-Error-Mode: transport`` asks for one request.
    error_mode: str = ""


@dataclass(frozen=True)
class GRPCAPIConfig:
    """The server API over GRPC (``centrifugal.centrifugo.api.CentrifugoApi``)."""

    enabled: bool = False
    address: str = ""
    port: int = 10000
    key: str = field(default="", repr=False)
    error_mode: str = ""
    tls: TLSConfig = field(default_factory=TLSConfig)
    reflection: bool = False
    max_receive_message_size: int = 0
    #: Which server speaks GRPC: ``h2`` (HTTP/2 on the reactor) or ``grpcio`` (grpcio's
    #: threaded server, the only one with reflection). Empty: :attr:`served_by` decides.
    server: str = ""

    @property
    def served_by(self) -> str:
        """``server`` if set; else ``h2``, or ``grpcio`` when ``reflection`` is on."""
        return self.server or ("grpcio" if self.reflection else "h2")


@dataclass(frozen=True)
class WebSocketConfig:
    """The bidirectional WebSocket endpoint."""

    disabled: bool = False
    handler_prefix: str = "/connection/websocket"
    message_size_limit: int = 65536
    write_timeout: float = duration(1.0)


@dataclass(frozen=True)
class WebTransportConfig:
    """The WebTransport endpoint (HTTP/3 extended CONNECT; needs ``http_server.http3``)."""

    enabled: bool = False
    handler_prefix: str = "/connection/webtransport"
    #: Largest command a client may send (bytes); larger closes with 3501.
    message_size_limit: int = 65536
    #: Output not yet acknowledged by the peer beyond which writes pause (bytes).
    write_buffer_size: int = 262144
    write_timeout: float = duration(1.0)
    #: QUIC connections open at once; beyond, new ones are refused.
    max_connections: int = 10000
    #: WebTransport sessions on one QUIC connection (centrifuge-js opens one).
    max_sessions_per_connection: int = 1
    #: Streams a client may open in one session (centrifuge-js opens one).
    max_streams_per_session: int = 1
    #: A QUIC connection with no packets for this long is closed.
    idle_timeout: float = duration(30.0)


@dataclass(frozen=True)
class StreamEndpointConfig:
    """An HTTP endpoint of a streaming transport: switch, path, request body cap."""

    enabled: bool = False
    handler_prefix: str = ""
    max_request_body_size: int = 65536


@dataclass(frozen=True)
class HTTPStreamConfig(StreamEndpointConfig):
    """Bidirectional emulation over an HTTP streaming response."""

    handler_prefix: str = "/connection/http_stream"


@dataclass(frozen=True)
class SSEConfig(StreamEndpointConfig):
    """Bidirectional emulation over Server-Sent Events."""

    handler_prefix: str = "/connection/sse"


@dataclass(frozen=True)
class EmulationConfig:
    """``POST /emulation``: commands for HTTP-stream and SSE sessions."""

    handler_prefix: str = "/emulation"
    max_request_body_size: int = 65536


@dataclass(frozen=True)
class UniWebSocketConfig:
    """Unidirectional WebSocket: connect request in, pushes out."""

    enabled: bool = False
    handler_prefix: str = "/connection/uni_websocket"
    message_size_limit: int = 65536
    join_push_messages: bool = False


@dataclass(frozen=True)
class UniSSEConfig(StreamEndpointConfig):
    """Unidirectional Server-Sent Events."""

    handler_prefix: str = "/connection/uni_sse"


@dataclass(frozen=True)
class UniHTTPStreamConfig(StreamEndpointConfig):
    """Unidirectional HTTP streaming."""

    handler_prefix: str = "/connection/uni_http_stream"


@dataclass(frozen=True)
class UniGRPCConfig:
    """Unidirectional GRPC (``centrifugal.centrifugo.unistream.CentrifugoUniStream``)."""

    enabled: bool = False
    address: str = ""
    port: int = 11000
    max_receive_message_size: int = 0
    tls: TLSConfig = field(default_factory=TLSConfig)
    #: Streams served at once (each a connection of the node). Beyond: RESOURCE_EXHAUSTED.
    max_concurrent_streams: int = 128


@dataclass(frozen=True)
class SockJSConfig:
    """SockJS endpoint for legacy browsers (centrifuge-js ``sockjs`` transport)."""

    enabled: bool = False
    handler_prefix: str = "/connection/sockjs"
    heartbeat_delay: float = duration(25.0)
    disconnect_delay: float = duration(5.0)
    response_limit: int = 128 * 1024
    client_url: str = ""
    cookie_needed: bool = False
    websocket: bool = True
    max_request_body_size: int = 65536


@dataclass(frozen=True)
class HealthConfig:
    """``GET /health`` (on by default, unlike Centrifugo) and ``GET /ready``."""

    enabled: bool = True
    handler_prefix: str = "/health"
    #: Readiness (rtserver's own): 503 while starting, draining or the engine is down.
    ready_handler_prefix: str = "/ready"
    #: On SIGTERM, answer 503 on readiness for this long, still serving, before closing
    #: listeners and clients (rtserver's own; 0 = close at once).
    drain_delay: float = duration(0.0)


@dataclass(frozen=True)
class ShutdownConfig:
    """The graceful shutdown on SIGTERM."""

    #: At most this long for closing (after ``health.drain_delay``): clients' close
    #: handshakes, the engine, the GRPC servers; then the process stops regardless.
    timeout: float = duration(30.0)


@dataclass(frozen=True)
class PrometheusConfig:
    """``GET /metrics`` in the Prometheus text format (off by default, as in Centrifugo)."""

    enabled: bool = False
    handler_prefix: str = "/metrics"


@dataclass(frozen=True)
class GraphiteConfig:
    """Pushing the metrics of ``/metrics`` to Graphite over TCP (off by default)."""

    enabled: bool = False
    host: str = "localhost"
    port: int = 2003
    #: Every path starts ``<prefix>.<node name>.``.
    prefix: str = "centrifugo"
    interval: float = duration(10.0)
    #: Graphite tags (``;label=value``) instead of label names and values in the path.
    tags: bool = False


#: A list key that also takes a single string (``"address": "127.0.0.1:6379"``).
_ONE_OR_MANY = {"one_or_many": True}


@dataclass(frozen=True)
class RedisConnectionConfig:
    """Where and how to connect to Redis: the connection keys of ``engine.redis``.

    Shared by every section that talks to Redis (the engine, a broker or presence
    manager, a ``redis_stream`` consumer); :func:`redis_shards` reads them.
    """

    address: list[str] = field(
        default_factory=lambda: ["redis://127.0.0.1:6379"], metadata=_ONE_OR_MANY
    )
    db: int = 0
    user: str = ""
    password: str = field(default="", repr=False)
    client_name: str = ""
    force_resp2: bool = False
    tls: ClientTLSConfig = field(default_factory=ClientTLSConfig)
    sentinel_address: list[str] = field(default_factory=list, metadata=_ONE_OR_MANY)
    sentinel_master_name: str = ""
    sentinel_user: str = ""
    sentinel_password: str = field(default="", repr=False)
    sentinel_client_name: str = ""
    sentinel_tls: ClientTLSConfig = field(default_factory=ClientTLSConfig)
    cluster_address: list[str] = field(default_factory=list, metadata=_ONE_OR_MANY)
    connect_timeout: float = duration(1.0)
    io_timeout: float = duration(4.0)


@dataclass(frozen=True)
class RedisEngineConfig(RedisConnectionConfig):
    """The Redis engine (``engine.type: redis``): the bus and store of a cluster."""

    prefix: str = "centrifugo"
    presence_ttl: float = duration(60.0)
    idempotent_result_ttl: float = duration(300.0)
    pubsub_probe_interval: float = duration(30.0)


@dataclass(frozen=True)
class EngineConfig:
    """Broker, history and presence backend."""

    type: str = "memory"
    redis: RedisEngineConfig = field(default_factory=RedisEngineConfig)


@dataclass(frozen=True)
class AdminConfig:
    """The admin web UI (docs/admin.rst); off by default."""

    enabled: bool = False
    password: str = field(default="", repr=False)
    secret: str = field(default="", repr=False)
    insecure: bool = False
    handler_prefix: str = ""
    external: bool = False


@dataclass(frozen=True)
class NatsRawModeConfig:
    """NATS raw mode: channels map to plain NATS subjects, payloads travel unwrapped."""

    enabled: bool = False
    channel_replacements: dict[str, str] = field(default_factory=dict)
    prefix: str = ""


@dataclass(frozen=True)
class NatsBrokerConfig:
    """The NATS broker (``broker.type: nats``): PUB/SUB between nodes over NATS."""

    #: One URL or several, comma-separated (failover, in order).
    url: str = "nats://localhost:4222"
    prefix: str = "centrifugo"
    dial_timeout: float = duration(1.0)
    write_timeout: float = duration(1.0)
    tls: ClientTLSConfig = field(default_factory=ClientTLSConfig)
    allow_wildcards: bool = False
    raw_mode: NatsRawModeConfig = field(default_factory=NatsRawModeConfig)


@dataclass(frozen=True)
class BrokerConfig:
    """A broker chosen apart from ``engine`` (Centrifugo v6's ``broker`` section)."""

    enabled: bool = False
    type: str = "memory"
    redis: RedisEngineConfig = field(default_factory=RedisEngineConfig)
    nats: NatsBrokerConfig = field(default_factory=NatsBrokerConfig)


@dataclass(frozen=True)
class PresenceManagerConfig:
    """A presence manager chosen apart from ``engine`` (``presence_manager`` section)."""

    enabled: bool = False
    type: str = "memory"
    redis: RedisEngineConfig = field(default_factory=RedisEngineConfig)


@dataclass(frozen=True)
class RedisStreamPublicationDataModeConfig:
    """A stream entry's payload is publication data; the other fields say where."""

    enabled: bool = False
    channels_value: str = "centrifugo-channels"
    idempotency_key_value: str = "centrifugo-idempotency-key"
    delta_value: str = "centrifugo-delta"
    version_value: str = "centrifugo-version"
    version_epoch_value: str = "centrifugo-version-epoch"
    tags_value_prefix: str = "centrifugo-tag-"


@dataclass(frozen=True)
class RedisStreamConsumerConfig(RedisConnectionConfig):
    """A ``redis_stream`` consumer: server API commands from Redis Streams (docs/consumers.rst).

    The connection keys are those of ``engine.redis``, inline.
    """

    streams: list[str] = field(default_factory=list)
    consumer_group: str = ""
    visibility_timeout: float = duration(30.0)
    num_workers: int = 1
    payload_value: str = "payload"
    method_value: str = "method"
    publication_data_mode: RedisStreamPublicationDataModeConfig = field(
        default_factory=RedisStreamPublicationDataModeConfig
    )


@dataclass(frozen=True)
class ConsumerConfig:
    """An entry of ``consumers``: an asynchronous consumer of server API commands."""

    name: str = ""
    enabled: bool = False
    type: str = ""
    redis_stream: RedisStreamConsumerConfig = field(default_factory=RedisStreamConsumerConfig)


@dataclass(frozen=True)
class NodeConfig:
    """This node's identity in ``info`` and cluster messages."""

    name: str = ""


@dataclass(frozen=True)
class Config:
    """The whole server configuration."""

    http_server: HTTPServerConfig = field(default_factory=HTTPServerConfig)
    log: LogConfig = field(default_factory=LogConfig)
    client: ClientConfig = field(default_factory=ClientConfig)
    channel: ChannelConfig = field(default_factory=ChannelConfig)
    http_api: HTTPAPIConfig = field(default_factory=HTTPAPIConfig)
    grpc_api: GRPCAPIConfig = field(default_factory=GRPCAPIConfig)
    websocket: WebSocketConfig = field(default_factory=WebSocketConfig)
    webtransport: WebTransportConfig = field(default_factory=WebTransportConfig)
    http_stream: HTTPStreamConfig = field(default_factory=HTTPStreamConfig)
    sse: SSEConfig = field(default_factory=SSEConfig)
    emulation: EmulationConfig = field(default_factory=EmulationConfig)
    uni_websocket: UniWebSocketConfig = field(default_factory=UniWebSocketConfig)
    uni_sse: UniSSEConfig = field(default_factory=UniSSEConfig)
    uni_http_stream: UniHTTPStreamConfig = field(default_factory=UniHTTPStreamConfig)
    uni_grpc: UniGRPCConfig = field(default_factory=UniGRPCConfig)
    sockjs: SockJSConfig = field(default_factory=SockJSConfig)
    health: HealthConfig = field(default_factory=HealthConfig)
    shutdown: ShutdownConfig = field(default_factory=ShutdownConfig)
    prometheus: PrometheusConfig = field(default_factory=PrometheusConfig)
    graphite: GraphiteConfig = field(default_factory=GraphiteConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    broker: BrokerConfig = field(default_factory=BrokerConfig)
    presence_manager: PresenceManagerConfig = field(default_factory=PresenceManagerConfig)
    node: NodeConfig = field(default_factory=NodeConfig)
    admin: AdminConfig = field(default_factory=AdminConfig)
    rpc: RPCConfig = field(default_factory=RPCConfig)
    proxies: list[NamedProxyConfig] = field(default_factory=list)
    consumers: list[ConsumerConfig] = field(default_factory=list)


# --- loading ---------------------------------------------------------------------------

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ns|us|µs|ms|s|m|h)?\s*$")
_DURATION_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
    None: 1.0,
}
_NAMESPACE_NAME_RE = re.compile(r"^[-a-zA-Z0-9_.]{2,}$")
_ENV_PREFIXES = ("CENTRIFUGO_", "RTSERVER_")  # later wins

#: Centrifugo v5 flat keys and where v6 keeps them.
_V5_KEYS = {
    "token_hmac_secret_key": "client.token.hmac_secret_key",
    "token_rsa_public_key": "client.token.rsa_public_key",
    "token_ecdsa_public_key": "client.token.ecdsa_public_key",
    "api_key": "http_api.key",
    "api_insecure": "http_api.insecure",
    "allowed_origins": "client.allowed_origins",
    "client_insecure": "client.insecure",
    "allow_anonymous_connect_without_token": "client.allow_anonymous_connect_without_token",
    "port": "http_server.port",
    "address": "http_server.address",
    "namespaces": "channel.namespaces",
    "log_level": "log.level",
    "redis_address": "engine.redis.address",
    "redis_prefix": "engine.redis.prefix",
    "redis_password": "engine.redis.password",
    "redis_db": "engine.redis.db",
}


def _fields(cls: type) -> Iterator[tuple[dataclasses.Field[Any], Any]]:
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        yield f, hints[f.name]


# --- the schema walker -------------------------------------------------------------------


@dataclass(frozen=True)
class SchemaKey:
    """One leaf of the configuration schema, as every consumer of the schema sees it.

    Loading from the environment, ``env_names()``, ``default_tree()``, the CLI's
    ``defaultenv`` and the generated tables of docs/configuration.rst all read the
    schema through :func:`schema_keys`.
    """

    path: tuple[str, ...]
    #: The field's resolved type (``bool``, ``int``, ``str``, ``float``, ``list[...]``).
    hint: Any
    field: dataclasses.Field[Any] = dataclasses.field(repr=False, compare=False)

    @property
    def name(self) -> str:
        """The dotted key, e.g. ``client.token.hmac_secret_key``."""
        return ".".join(self.path)

    @property
    def env_name(self) -> str:
        """The ``RTSERVER_*`` environment variable (``CENTRIFUGO_*`` is read too)."""
        return "RTSERVER_" + "_".join(self.path).upper()

    @property
    def is_duration(self) -> bool:
        """Whether the key holds seconds written as ``"25s"``-style strings."""
        return bool(self.field.metadata.get("duration"))

    @property
    def holds_objects(self) -> bool:
        """Whether the key is a list of objects (namespaces), JSON in the environment."""
        if typing.get_origin(self.hint) is not list:
            return False
        (item,) = typing.get_args(self.hint)
        return dataclasses.is_dataclass(item)

    @property
    def default(self) -> Any:
        """The default as a config file writes it (durations as ``"25s"``); a fresh copy."""
        f = self.field
        value: Any = f.default if f.default_factory is dataclasses.MISSING else f.default_factory()
        if self.is_duration:
            return format_duration(value)
        return value

    @property
    def is_map(self) -> bool:
        """Whether the key is a string-to-string map, JSON in the environment."""
        return typing.get_origin(self.hint) is dict

    @property
    def env_default(self) -> str:
        """The default as the environment loader reads it back."""
        value = self.default
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, dict):
            return json.dumps(value)
        if isinstance(value, list):
            return json.dumps(value) if self.holds_objects else " ".join(value)
        if isinstance(value, dict):
            return json.dumps(value)
        return str(value)

    def from_env(self, raw: str, name: str) -> Any:
        """Parse the text of environment variable ``name`` for this key.

        Raises:
            ConfigError: naming the variable, when the text does not fit the type.
        """
        hint = self.hint
        if self.is_duration:
            return raw
        if hint is bool:
            lowered = raw.strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off", ""):
                return False
            raise ConfigError(f"{name}: expected true or false, got {raw!r}")
        if self.field.metadata.get("digits"):
            if not re.fullmatch(r"[0-9]*", raw):
                raise ConfigError(f"{name}: expected a number, got {raw!r}")
            return int(raw or "0")
        if hint is int:
            try:
                return int(raw)
            except ValueError:
                raise ConfigError(f"{name}: expected an integer, got {raw!r}") from None
        if self.holds_objects:
            try:
                return json.loads(raw)
            except ValueError:
                raise ConfigError(f"{name}: expected a JSON array") from None
        if self.is_map:
            try:
                return json.loads(raw)
            except ValueError:
                raise ConfigError(f"{name}: expected a JSON object") from None
        if typing.get_origin(hint) is list:
            return raw.split()
        return raw


def schema_keys(cls: type = Config, prefix: tuple[str, ...] = ()) -> Iterator[SchemaKey]:
    """Every leaf key of the schema rooted at dataclass ``cls``, in declaration order.

    Nested sections are walked depth first; a list of objects (``channel.namespaces``)
    is one key.

    Args:
        cls: The section to walk (``Config`` for everything, ``ChannelOptions`` for the
            options of a namespace).
        prefix: The path of ``cls`` itself.
    """
    for f, hint in _fields(cls):
        path = (*prefix, f.name)
        if isinstance(hint, type) and dataclasses.is_dataclass(hint):
            yield from schema_keys(hint, path)
        else:
            yield SchemaKey(path, hint, f)


@dataclass(frozen=True)
class RedisAddress:
    """Where one Redis shard lives; ``str()`` never shows a password.

    A Sentinel shard has a ``master_name`` and its ``sentinels`` (host, port); its
    ``host``/``port`` are then the first sentinel's and the master is asked for on each
    connect. ``tls``/``sentinel_tls`` are None for plain TCP.
    """

    host: str
    port: int = 6379
    db: int = 0
    user: str = ""
    password: str = field(default="", repr=False)
    tls: ClientTLSConfig | None = None
    client_name: str = ""
    master_name: str = ""
    sentinels: tuple[tuple[str, int], ...] = ()
    sentinel_user: str = ""
    sentinel_password: str = field(default="", repr=False)
    sentinel_tls: ClientTLSConfig | None = None
    sentinel_client_name: str = ""
    #: Per-address overrides of engine.redis.connect_timeout / io_timeout (seconds).
    connect_timeout: float | None = None
    io_timeout: float | None = None
    #: Redis Cluster: the seed nodes (host, port) the slot map is first asked of; the
    #: first one is also ``host``/``port``. Empty for standalone and Sentinel.
    cluster_seeds: tuple[tuple[str, int], ...] = ()

    @property
    def is_sentinel(self) -> bool:
        """Whether the master is found through Sentinel."""
        return bool(self.master_name)

    @property
    def is_cluster(self) -> bool:
        """Whether this shard is a Redis Cluster (keys routed by hash slot)."""
        return bool(self.cluster_seeds)

    def __str__(self) -> str:
        scheme = "rediss" if self.tls is not None else "redis"
        if self.is_cluster:
            where = ",".join(f"{h}:{p}" for h, p in self.cluster_seeds)
            return f"{scheme}+cluster://{where}"
        if self.is_sentinel:
            where = ",".join(f"{h}:{p}" for h, p in self.sentinels)
            return f"{scheme}+sentinel://{where}/{self.db} (master {self.master_name})"
        return f"{scheme}://{self.host}:{self.port}/{self.db}"

    def __repr__(self) -> str:
        return f"RedisAddress({self!s})"


_REDIS_SCHEMES = (
    "redis",
    "rediss",
    "tcp",
    "redis+sentinel",
    "rediss+sentinel",
    "redis+cluster",
    "rediss+cluster",
)
_CLUSTER_DB = "Redis Cluster has only database 0"


def _host_port(text: str, what: str) -> tuple[str, int]:
    host, sep, port = text.strip().rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{what} {text!r} is not host:port")
    return host, int(port)


def _flag(query: dict[str, list[str]], name: str) -> bool | None:
    if name not in query:
        return None
    value = query[name][-1].strip().lower()
    if value in ("1", "t", "true", "yes", "on"):
        return True
    if value in ("0", "f", "false", "no", "off"):
        return False
    raise ValueError(f"Redis address parameter {name} must be true or false")


def parse_address(
    address: str,
    *,
    db: int = 0,
    user: str = "",
    password: str = "",
    base: RedisAddress | None = None,
) -> RedisAddress:
    """Parse one ``engine.redis.address`` entry, as Centrifugo reads it.

    Forms: ``host:port``; ``redis://[[user]:password@]host:port[/db]`` (``tcp://`` too);
    ``rediss://...`` (TLS); ``redis+sentinel://[[user]:password@]host:port[/db]
    ?sentinel_master_name=NAME[&addr=host:port...]`` (``rediss+sentinel://`` for TLS).
    Query parameters: ``sentinel_master_name``, ``addr`` (more sentinels),
    ``sentinel_user``, ``sentinel_password``, ``tls_enabled``, ``sentinel_tls_enabled``,
    ``connect_timeout``, ``io_timeout``, ``force_resp2``. Redis Cluster:
    ``redis+cluster://[[user]:password@]host:port[,host:port...][?addr=host:port...]``
    (``rediss+cluster://`` for TLS), or a ``redis://`` address with ``addr=`` seeds (the
    form of Centrifugo v6's docs); every host:port is a seed node, the database is 0.

    Args:
        address: The text.
        db: Database when the address has none.
        user: ACL user when the address has none.
        password: Password when the address has none.
        base: Defaults of the other fields (TLS, client names, Sentinel credentials).

    Raises:
        ValueError: saying what is wrong (never echoing a password).
    """
    text = address.strip()
    defaults = base or RedisAddress("")
    if "://" not in text:
        host, port = _host_port(text, "Redis address") if ":" in text else (text, 6379)
        if not host:
            raise ValueError("Redis address has no host")
        return dataclasses.replace(
            defaults, host=host, port=port, db=db, user=user, password=password
        )
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    if scheme not in _REDIS_SCHEMES:
        raise ValueError(
            f"unsupported Redis address scheme {parts.scheme!r} (use redis://, rediss://, "
            "redis+sentinel://, rediss+sentinel://, redis+cluster:// or rediss+cluster://)"
        )
    more_seeds: list[str] = []
    if scheme.endswith("+cluster"):
        # redis+cluster://h1:p1,h2:p2: the seeds after the first one are like addr= ones
        userinfo, at, hosts = parts.netloc.rpartition("@")
        first, *more_seeds = hosts.split(",")
        parts = parts._replace(netloc=userinfo + at + first)
    try:
        port = parts.port or (26379 if scheme.endswith("+sentinel") else 6379)
    except ValueError:
        raise ValueError("Redis address has an invalid port") from None
    host = parts.hostname or ""
    if not host:
        raise ValueError("Redis address has no host")
    path = parts.path.strip("/")
    if path:
        if not path.isdigit():
            raise ValueError("Redis address path must be a database number")
        db = int(path)
    if parts.username:
        user = unquote(parts.username)
    if parts.password is not None:
        password = unquote(parts.password)
    elif parts.username and ":" not in parts.netloc.rpartition("@")[0]:
        # redis://password@host is a common shorthand for a password without a user
        user, password = "", unquote(parts.username)
    query = parse_qs(parts.query, keep_blank_values=True)
    known = {
        "sentinel_master_name",
        "addr",
        "sentinel_user",
        "sentinel_password",
        "tls_enabled",
        "sentinel_tls_enabled",
        "connect_timeout",
        "io_timeout",
        "force_resp2",
        "replica_client_enabled",
    }
    unknown = sorted(set(query) - known)
    if unknown:
        raise ValueError(f"unknown Redis address parameter {unknown[0]!r}")
    if _flag(query, "replica_client_enabled"):
        raise ValueError("replica_client_enabled is not supported")
    tls = defaults.tls
    if scheme.startswith("rediss") or _flag(query, "tls_enabled"):
        tls = tls or ClientTLSConfig(enabled=True)
    master_name = query.get("sentinel_master_name", [defaults.master_name])[-1]
    sentinel = scheme.endswith("+sentinel") or bool(query.get("sentinel_master_name"))
    extra = query.get("addr", [])
    fields: dict[str, Any] = {}
    for name in ("connect_timeout", "io_timeout"):
        if name in query:
            try:
                fields[name] = parse_duration(query[name][-1], name)
            except ConfigError:
                raise ValueError(f"Redis address parameter {name} is not a duration") from None
    if scheme.endswith("+cluster") or (extra and not sentinel):
        if sentinel:
            raise ValueError("a Redis Cluster address takes no sentinel_master_name")
        if db:
            raise ValueError(_CLUSTER_DB)
        seeds = ((host, port), *(_host_port(a, "Redis Cluster seed") for a in more_seeds + extra))
        return dataclasses.replace(
            defaults,
            host=host,
            port=port,
            db=0,
            user=user,
            password=password,
            tls=tls,
            master_name="",
            sentinels=(),
            cluster_seeds=seeds,
            **fields,
        )
    if not sentinel:
        return dataclasses.replace(
            defaults,
            host=host,
            port=port,
            db=db,
            user=user,
            password=password,
            tls=tls,
            master_name="",
            sentinels=(),
            **fields,
        )
    if not master_name:
        raise ValueError("a Redis Sentinel address needs ?sentinel_master_name=<master name>")
    sentinels = ((host, port), *(_host_port(a, "Sentinel address") for a in extra))
    sentinel_tls = defaults.sentinel_tls
    if scheme == "rediss+sentinel" or _flag(query, "sentinel_tls_enabled"):
        sentinel_tls = sentinel_tls or ClientTLSConfig(enabled=True)
    return dataclasses.replace(
        defaults,
        host=host,
        port=port,
        db=db,
        user=user,
        password=password,
        tls=tls,
        master_name=master_name,
        sentinels=sentinels,
        sentinel_user=query.get("sentinel_user", [defaults.sentinel_user])[-1],
        sentinel_password=query.get("sentinel_password", [defaults.sentinel_password])[-1],
        sentinel_tls=sentinel_tls,
        **fields,
    )


def redis_shards(redis: RedisConnectionConfig) -> list[RedisAddress]:
    """The shards ``engine.redis`` describes, one address each (as Centrifugo builds them).

    A non-empty ``cluster_address`` wins over ``sentinel_address`` and ``address``: each
    of its entries is one Redis Cluster (seed nodes separated by commas), clusters are
    shards like addresses. A non-empty ``sentinel_address`` wins over ``address``: each
    of its entries is one shard, its sentinels separated by commas.

    Raises:
        ConfigError: naming the key and the problem.
    """
    base = RedisAddress(
        "",
        tls=redis.tls if redis.tls.enabled else None,
        client_name=redis.client_name,
        master_name=redis.sentinel_master_name,
        sentinel_user=redis.sentinel_user,
        sentinel_password=redis.sentinel_password,
        sentinel_tls=redis.sentinel_tls if redis.sentinel_tls.enabled else None,
        sentinel_client_name=redis.sentinel_client_name,
    )
    shards: list[RedisAddress] = []
    if redis.cluster_address:
        base = dataclasses.replace(base, master_name="")
        for i, entry in enumerate(redis.cluster_address):
            text = entry.strip()
            if "://" not in text:
                text = "redis+cluster://" + text
            elif not urlsplit(text).scheme.lower().endswith("+cluster"):
                scheme, _, rest = text.partition("://")
                text = f"{scheme}+cluster://{rest}"
            try:
                shards.append(
                    parse_address(
                        text, db=redis.db, user=redis.user, password=redis.password, base=base
                    )
                )
            except ValueError as e:
                raise ConfigError(f"engine.redis.cluster_address[{i}]: {e}") from None
        return shards
    if redis.sentinel_address:
        if not redis.sentinel_master_name:
            raise ConfigError(
                "engine.redis.sentinel_master_name: required with engine.redis.sentinel_address"
            )
        for i, entry in enumerate(redis.sentinel_address):
            key = f"engine.redis.sentinel_address[{i}]"
            try:
                sentinels = tuple(
                    _host_port(a, "Sentinel address") for a in entry.split(",") if a.strip()
                )
            except ValueError as e:
                raise ConfigError(f"{key}: {e}") from None
            if not sentinels:
                raise ConfigError(f"{key}: no Sentinel address")
            host, port = sentinels[0]
            shards.append(
                dataclasses.replace(
                    base,
                    host=host,
                    port=port,
                    db=redis.db,
                    user=redis.user,
                    password=redis.password,
                    sentinels=sentinels,
                )
            )
        return shards
    base = dataclasses.replace(base, master_name="")
    for i, text in enumerate(redis.address):
        try:
            shards.append(
                parse_address(
                    text, db=redis.db, user=redis.user, password=redis.password, base=base
                )
            )
        except ValueError as e:
            raise ConfigError(f"engine.redis.address[{i}]: {e}") from None
    return shards


@dataclass(frozen=True)
class NatsAddress:
    """One NATS server of ``broker.nats.url``; ``str()`` never shows credentials.

    ``tls`` is True for a ``tls://`` URL.
    """

    host: str
    port: int = 4222
    user: str = ""
    password: str = field(default="", repr=False)
    token: str = field(default="", repr=False)
    tls: bool = False

    def __str__(self) -> str:
        return f"{'tls' if self.tls else 'nats'}://{self.host}:{self.port}"

    def __repr__(self) -> str:
        return f"NatsAddress({self!s})"


def parse_nats_urls(url: str) -> tuple[NatsAddress, ...]:
    """The servers of ``broker.nats.url``, in order, as the official NATS clients read it.

    A comma-separated list of ``nats://`` or ``tls://[user:password@|token@]host[:port]``
    (the scheme may be left out: ``nats://``); surrounding spaces and empty entries are
    ignored.

    Raises:
        ConfigError: naming ``broker.nats.url`` and the entry at fault.
    """
    addresses = []
    for entry in url.split(","):
        text = entry.strip()
        if not text:
            continue
        if "://" not in text:
            text = "nats://" + text
        parts = urlsplit(text)
        scheme = parts.scheme.lower()
        shown = f"{parts.scheme}://{parts.hostname or ''}"
        if scheme not in ("nats", "tls"):
            raise ConfigError(
                f"broker.nats.url: unsupported scheme in {shown!r} (use nats:// or tls://)"
            )
        if not parts.hostname:
            raise ConfigError(f"broker.nats.url: no host in {shown!r}")
        try:
            port = parts.port or 4222
        except ValueError:
            raise ConfigError(f"broker.nats.url: invalid port in {shown!r}") from None
        tls = scheme == "tls"
        user = unquote(parts.username) if parts.username else ""
        if parts.password is not None:
            password = unquote(parts.password)
            addresses.append(NatsAddress(parts.hostname, port, user, password, tls=tls))
        else:
            addresses.append(NatsAddress(parts.hostname, port, token=user, tls=tls))
    if not addresses:
        raise ConfigError("broker.nats.url: no server URL")
    return tuple(addresses)


def load_pem(value: str, key: str) -> bytes:
    """PEM bytes from PEM text, base64 of PEM text, or a PEM file path (in that order).

    Raises:
        ConfigError: naming ``key`` when the value is none of them.
    """
    if "-----BEGIN " in value:
        return value.encode()
    try:
        decoded = base64.b64decode(value, validate=True)
    except (ValueError, binascii.Error):
        decoded = b""
    if b"-----BEGIN " in decoded:
        return decoded
    path = Path(value)
    if _is_file(value):
        try:
            data = path.read_bytes()
        except OSError as e:
            raise ConfigError(f"{key}: cannot read {value}: {e.strerror}") from None
        if b"-----BEGIN " not in data:
            raise ConfigError(f"{key}: file {value} holds no PEM data")
        return data
    raise ConfigError(f"{key}: neither PEM text, base64 PEM nor an existing PEM file")


def parse_duration(value: Any, key: str) -> float:
    """Parse ``"25s"``/``"1500ms"``/``"720h"`` (or a number of seconds)."""
    if isinstance(value, bool):
        raise ConfigError(f"{key}: expected a duration like '25s', got {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        total = 0.0
        text = value.strip()
        parts = re.findall(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)", text)
        if parts and "".join(n + u for n, u in parts) == text:
            for number, unit in parts:
                total += float(number) * _DURATION_UNITS[unit]
            seconds = total
        else:
            match = _DURATION_RE.match(text)
            if not match:
                raise ConfigError(f"{key}: expected a duration like '25s', got {value!r}")
            seconds = float(match.group(1)) * _DURATION_UNITS[match.group(2)]
    else:
        raise ConfigError(f"{key}: expected a duration like '25s', got {value!r}")
    if seconds < 0:
        raise ConfigError(f"{key}: must not be negative")
    return seconds


def _shown(value: Any, key: str) -> str:
    """A value for an error message; secrets are described, never printed."""
    leaf = key.rsplit(".", 1)[-1]
    if any(word in leaf for word in ("secret", "key", "password", "credentials")):
        return f"a value of type {type(value).__name__}"
    return repr(value)


def _convert(value: Any, hint: Any, f: dataclasses.Field[Any], key: str, warn: list[str]) -> Any:
    origin = typing.get_origin(hint)
    if f.metadata.get("duration"):
        return parse_duration(value, key)
    if f.metadata.get("one_or_many") and isinstance(value, str):
        value = [value]
    if f.metadata.get("digits") and isinstance(value, str):
        if not re.fullmatch(r"[0-9]*", value):
            raise ConfigError(f'{key}: expected a number (9000 or "9000"), got {value!r}')
        value = int(value or "0")
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected an object, got {type(value).__name__}")
        return build(hint, value, key, warn)  # type: ignore[arg-type]
    if origin is dict:
        if not isinstance(value, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()
        ):
            raise ConfigError(f"{key}: expected an object of strings")
        return dict(value)
    if origin is list:
        (item,) = typing.get_args(hint)
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {type(value).__name__}")
        if dataclasses.is_dataclass(item):
            out = []
            for i, v in enumerate(value):
                if not isinstance(v, Mapping):
                    raise ConfigError(f"{key}[{i}]: expected an object")
                out.append(build(item, v, f"{key}[{i}]", warn))  # type: ignore[arg-type]
            return out
        if not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{key}: expected a list of strings")
        return list(value)
    if origin is dict:
        if not isinstance(value, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()
        ):
            raise ConfigError(f"{key}: expected an object of strings")
        return dict(value)
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {_shown(value, key)}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {_shown(value, key)}")
        if value < 0:
            raise ConfigError(f"{key}: must not be negative")
        return value
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {_shown(value, key)}")
        return value
    raise ConfigError(f"{key}: unsupported type")  # pragma: no cover - schema bug


def build(cls: type, data: Mapping[str, Any], prefix: str, warn: list[str]) -> Any:
    """Build dataclass ``cls`` from a mapping, warning about unknown keys."""
    known = {}
    for f, hint in _fields(cls):
        key = f"{prefix}.{f.name}" if prefix else f.name
        if f.name in data:
            known[f.name] = _convert(data[f.name], hint, f, key, warn)
    for name in data:
        if name not in known:
            key = f"{prefix}.{name}" if prefix else name
            warn.append(f"unknown key {key} (ignored)")
    return cls(**known)


def _set_path(tree: dict[str, Any], path: list[str], value: Any) -> None:
    node = tree
    for part in path[:-1]:
        child = node.get(part)
        # Copy on the way down: nested tables may belong to the caller.
        child = dict(child) if isinstance(child, Mapping) else {}
        node[part] = child
        node = child
    node[path[-1]] = value


def env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    """Nested mapping of the values set through environment variables."""
    tree: dict[str, Any] = {}
    for key in schema_keys():
        suffix = key.env_name.removeprefix("RTSERVER_")
        for prefix in _ENV_PREFIXES:
            name = prefix + suffix
            if name in environ:
                _set_path(tree, list(key.path), key.from_env(environ[name], name))
    return tree


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(dict(out[key]), value)
        else:
            out[key] = value
    return out


def read_file(path: str | Path) -> dict[str, Any]:
    """Parse a JSON, YAML or TOML file (chosen by extension) into a mapping."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror}") from None
    suffix = path.suffix.lower()
    try:
        if suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        elif suffix == ".toml":
            data = tomllib.loads(text)
        else:
            data = json.loads(text) if text.strip() else {}
    except Exception as e:  # each parser raises its own type
        raise ConfigError(f"cannot parse config file {path}: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: top level must be an object")
    return data


def _upgrade_v5(data: dict[str, Any], warn: list[str]) -> dict[str, Any]:
    """Move Centrifugo v5 flat keys to their v6 places, with a warning each."""
    out = dict(data)
    channel_fields = {f.name for f in dataclasses.fields(ChannelOptions)}
    if isinstance(out.get("engine"), str):
        warn.append("key engine is now engine.type; please move it")
        out["engine"] = {"type": out["engine"]}
    for old, new in _V5_KEYS.items():
        if old in out and not isinstance(out.get(old), Mapping):
            value = out.pop(old)
            if new == "engine.redis.address" and isinstance(value, str):
                value = [value]
            _set_path(out, new.split("."), value)
            warn.append(f"key {old} is the v5 name of {new}; please move it")
    for name in sorted(channel_fields & out.keys()):
        _set_path(out, ["channel", "without_namespace", name], out.pop(name))
        warn.append(f"key {name} now lives in channel.without_namespace; please move it")
    return out


def validate(config: Config) -> None:
    """Cross-field checks that no single key can express."""
    client = config.client
    if client.ping_interval and client.pong_timeout >= client.ping_interval:
        raise ConfigError("client.pong_timeout: must be less than client.ping_interval")
    if not 0 < config.http_server.port < 65536:
        raise ConfigError("http_server.port: must be between 1 and 65535")
    if config.http_server.read_header_timeout < 0:
        raise ConfigError("http_server.read_header_timeout: must not be negative")
    if config.http_server.max_unfinished_request_heads < 0:
        raise ConfigError("http_server.max_unfinished_request_heads: must not be negative")
    if config.engine.type not in ("memory", "redis"):
        raise ConfigError(
            f"engine.type: unsupported engine {config.engine.type!r} (supported: memory, redis)"
        )
    if config.engine.type == "redis":
        _validate_redis(config.engine.redis)
    _validate_broker(config)
    if config.log.level not in ("trace", "debug", "info", "warn", "error", "fatal", "none"):
        raise ConfigError(f"log.level: unknown level {config.log.level!r}")
    if config.health.enabled and config.health.ready_handler_prefix in (
        "",
        config.health.handler_prefix,
    ):
        raise ConfigError("health.ready_handler_prefix: must be set and differ from handler_prefix")
    if config.log.format not in ("text", "json"):
        raise ConfigError(f"log.format: unknown format {config.log.format!r} (text or json)")
    if config.websocket.message_size_limit < 1024:
        raise ConfigError("websocket.message_size_limit: must be at least 1024 bytes")
    if client.queue_max_size < 1024:
        raise ConfigError("client.queue_max_size: must be at least 1024 bytes")
    if client.max_messages_in_frame < 1:
        raise ConfigError("client.max_messages_in_frame: must be at least 1")
    _validate_admin(config)
    _validate_token(client.token, "client.token")
    _validate_token(client.subscription_token, "client.subscription_token")
    _validate_http_tls(config)
    if config.http_api.error_mode not in ("", "transport"):
        raise ConfigError(
            f"http_api.error_mode: {config.http_api.error_mode!r} is not '' or 'transport'"
        )
    _validate_grpc_api(config.grpc_api)
    _validate_graphite(config.graphite)
    _validate_uni_grpc(config.uni_grpc)
    seen: set[str] = set()
    _validate_options(config.channel.without_namespace, "channel.without_namespace", config)
    for i, ns in enumerate(config.channel.namespaces):
        key = f"channel.namespaces[{i}]"
        if not _NAMESPACE_NAME_RE.match(ns.name):
            raise ConfigError(f"{key}.name: {ns.name!r} must match {_NAMESPACE_NAME_RE.pattern}")
        if ns.name in seen:
            raise ConfigError(f"{key}.name: namespace {ns.name!r} is defined twice")
        seen.add(ns.name)
        _validate_options(ns, key, config)
    _validate_proxies(config)
    _validate_consumers(config)


def _validate_graphite(graphite: GraphiteConfig) -> None:
    if not graphite.enabled:
        return
    if not graphite.host:
        raise ConfigError("graphite.host: must be set")
    if not 0 < graphite.port < 65536:
        raise ConfigError("graphite.port: must be between 1 and 65535")
    if graphite.interval <= 0:
        raise ConfigError("graphite.interval: must be positive")
    if not graphite.prefix.strip("."):
        raise ConfigError("graphite.prefix: must not be empty")


def _validate_token(token: TokenConfig, key: str) -> None:
    for name in ("audience_regex", "issuer_regex"):
        pattern = getattr(token, name)
        if pattern:
            try:
                re.compile(pattern)
            except re.error as e:
                raise ConfigError(f"{key}.{name}: not a valid regular expression ({e})") from None
    if token.hmac_previous_secret_key and not token.hmac_secret_key:
        raise ConfigError(f"{key}.hmac_previous_secret_key: set without hmac_secret_key")
    if token.hmac_previous_secret_key_valid_until < 0:
        raise ConfigError(f"{key}.hmac_previous_secret_key_valid_until: must not be negative")


def server_tls_files(tls: TLSConfig) -> tuple[str, str]:
    """The certificate and key file paths of the TCP listener.

    ``cert_pem``/``key_pem`` given as file paths count as files.
    """
    cert = tls.cert_pem_file or (tls.cert_pem if _is_file(tls.cert_pem) else "")
    key = tls.key_pem_file or (tls.key_pem if _is_file(tls.key_pem) else "")
    return cert, key


def _is_file(value: str) -> bool:
    """Whether ``value`` names an existing file (PEM text is no file name)."""
    if not value or "\n" in value:
        return False
    try:
        return Path(value).is_file()
    except (OSError, ValueError):  # too long, or a NUL byte
        return False


def server_tls_pem(tls: TLSConfig, key: str = "http_server.tls") -> tuple[bytes, bytes]:
    """``(certificate chain, private key)`` PEM bytes of ``tls``.

    Raises:
        ConfigError: a value or file holds no PEM data.
    """
    cert_pem, key_pem = tls.cert_pem, tls.key_pem
    cert = load_pem(tls.cert_pem_file or cert_pem, f"{key}.cert_pem")
    private = load_pem(tls.key_pem_file or key_pem, f"{key}.key_pem")
    return cert, private


_PEM_CERTIFICATE = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)


def pem_certificates(pem: bytes) -> list[bytes]:
    """The ``CERTIFICATE`` blocks of PEM data, in order (a chain or a CA bundle)."""
    return _PEM_CERTIFICATE.findall(pem)


def server_client_ca_pem(tls: TLSConfig, key: str) -> bytes | None:
    """The PEM certificates of ``tls.client_ca_pem``; None without it or with TLS off.

    Set, the server requires every client to present a certificate signed by one of
    them (Go's ``tls.RequireAndVerifyClientCert``, as Centrifugo does).

    Raises:
        ConfigError: naming ``<key>.client_ca_pem`` when the value loads no certificate.
    """
    if not (tls.enabled and tls.client_ca_pem):
        return None
    name = f"{key}.client_ca_pem"
    pem = load_pem(tls.client_ca_pem, name)
    blocks = pem_certificates(pem)
    if not blocks:
        raise ConfigError(f"{name}: no certificate in it")
    from cryptography import x509

    for block in blocks:
        try:
            x509.load_pem_x509_certificate(block)
        except ValueError as e:
            raise ConfigError(f"{name}: not a valid certificate ({e})") from None
    return b"\n".join(blocks) + b"\n"


def _validate_http_tls(config: Config) -> None:
    server = config.http_server
    tls = server.tls
    if tls.enabled:
        if server_client_ca_pem(tls, "http_server.tls") and server.http3.enabled:
            raise ConfigError(
                "http_server.tls.client_ca_pem: HTTP/3 (http_server.http3.enabled) cannot "
                "require client certificates (its QUIC implementation, aioquic, does not "
                "verify them): turn HTTP/3 off, or remove client_ca_pem"
            )
        cert, key = server_tls_files(tls)
        if not (tls.cert_pem or tls.cert_pem_file) or not (tls.key_pem or tls.key_pem_file):
            raise ConfigError(
                "http_server.tls: cert_pem and key_pem (or cert_pem_file and key_pem_file) "
                "are required"
            )
        if server.http3.enabled:
            server_tls_pem(tls)  # QUIC reads the PEM itself: a bad value fails now
        if not (cert and key):
            raise ConfigError(
                "http_server.tls: the TCP listener reads its certificate from files: give "
                "cert_pem and key_pem as file paths (or cert_pem_file and key_pem_file)"
            )
    if server.http3.enabled and not tls.enabled:
        raise ConfigError("http_server.http3.enabled: HTTP/3 needs http_server.tls.enabled")
    wt = config.webtransport
    if wt.enabled and not server.http3.enabled:
        raise ConfigError("webtransport.enabled: WebTransport needs http_server.http3.enabled")
    if wt.message_size_limit < 1024:
        raise ConfigError("webtransport.message_size_limit: must be at least 1024 bytes")
    if wt.write_buffer_size < 16384:
        raise ConfigError("webtransport.write_buffer_size: must be at least 16384 bytes")
    for name in ("max_connections", "max_sessions_per_connection", "max_streams_per_session"):
        if getattr(wt, name) < 1:
            raise ConfigError(f"webtransport.{name}: must be at least 1")
    if wt.idle_timeout <= 0:
        raise ConfigError("webtransport.idle_timeout: must be positive")
    if not wt.handler_prefix.startswith("/"):
        raise ConfigError("webtransport.handler_prefix: must start with /")


def _validate_endpoint(proxy: ProxyConfig, key: str) -> None:
    endpoint = proxy.endpoint
    if not endpoint.startswith(("http://", "https://", "grpc://")):
        raise ConfigError(
            f"{key}.endpoint: expected an http://, https:// or grpc:// URL, got {endpoint!r}"
        )
    if proxy.timeout <= 0:
        raise ConfigError(f"{key}.timeout: must be positive")
    if endpoint.startswith("grpc://"):
        _validate_proxy_grpc(proxy.grpc, f"{key}.grpc")
    elif proxy.http.tls.enabled:
        validate_client_tls(proxy.http.tls, f"{key}.http.tls")


#: A GRPC metadata key as grpcio sends it (lower case; ``-bin`` keys carry bytes).
_METADATA_KEY_RE = re.compile(r"[0-9a-z_.-]+")
#: Printable ASCII: the characters a text metadata value may hold.
_METADATA_VALUE_RE = re.compile(r"[\x20-\x7e]*")
#: Keys GRPC sets itself (grpcio and grpc-go drop them silently from call metadata) or
#: HTTP/2 forbids in a request (RFC 9113, 8.2.2); ``grpc-*`` keys are GRPC's too.
_RESERVED_METADATA_KEYS = frozenset(
    {
        "content-type",
        "te",
        "user-agent",
        "connection",
        "host",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "upgrade",
    }
)


def _check_metadata_key(name: str, shown: str, key: str) -> None:
    """``name`` (lower-cased) is a key a GRPC call may carry; ``shown`` as configured."""
    if not _METADATA_KEY_RE.fullmatch(name) or name.startswith("grpc-"):
        raise ConfigError(
            f"{key}: {shown!r} is not a GRPC metadata key "
            "(letters, digits, '-', '_', '.'; not starting with 'grpc-')"
        )
    if name in _RESERVED_METADATA_KEYS:
        raise ConfigError(f"{key}: {shown!r} is reserved (GRPC or HTTP/2 sets it)")


def _validate_proxy_grpc(grpc: ProxyGRPCConfig, key: str) -> None:
    """``grpc`` of a GRPC proxy; no message shows ``credentials_value`` or a metadata value."""
    if grpc.tls.enabled:
        validate_client_tls(grpc.tls, f"{key}.tls")
    name = grpc.credentials_key.lower()
    if grpc.credentials_value and not name:
        raise ConfigError(f"{key}.credentials_value: set without credentials_key")
    if name:
        _check_metadata_key(name, grpc.credentials_key, f"{key}.credentials_key")
        if name.endswith("-bin"):
            raise ConfigError(f"{key}.credentials_key: binary ('-bin') keys are not supported")
        if not _METADATA_VALUE_RE.fullmatch(grpc.credentials_value):
            raise ConfigError(f"{key}.credentials_value: only printable ASCII characters")
    seen: dict[str, str] = {}
    for shown, value in grpc.static_metadata.items():
        where = f"{key}.static_metadata"
        meta = shown.lower()  # as Centrifugo (grpc-go's metadata.MD) sends it
        _check_metadata_key(meta, shown, where)
        if meta in seen:
            raise ConfigError(f"{where}: {seen[meta]!r} and {shown!r} are the same key")
        seen[meta] = shown
        if not meta.endswith("-bin") and not _METADATA_VALUE_RE.fullmatch(value):
            raise ConfigError(f"{where}.{shown}: only printable ASCII characters (or a '-bin' key)")


def proxy_names(config: Config) -> dict[str, dict[str, ProxyConfig]]:
    """Per channel/RPC event kind, the proxies a ``*_proxy_name`` may name.

    ``default`` is the event's own section (``channel.proxy.subscribe``, ``rpc.proxy``);
    every entry of ``proxies`` is available to every kind under its name.
    """
    named = {p.name: p for p in config.proxies}
    defaults: dict[str, ProxyConfig] = {
        "subscribe": config.channel.proxy.subscribe,
        "publish": config.channel.proxy.publish,
        "sub_refresh": config.channel.proxy.sub_refresh,
        "rpc": config.rpc.proxy,
    }
    out: dict[str, dict[str, ProxyConfig]] = {}
    for kind, default in defaults.items():
        table: dict[str, ProxyConfig] = dict(named)
        if default.endpoint:
            table["default"] = default
        out[kind] = table
    return out


def _validate_proxies(config: Config) -> None:
    """Endpoints of enabled proxies, names of named proxies and their references."""
    client = config.client.proxy
    for kind, proxy in (("connect", client.connect), ("refresh", client.refresh)):
        if proxy.enabled:
            _validate_endpoint(proxy, f"client.proxy.{kind}")
    seen: set[str] = set()
    for i, named in enumerate(config.proxies):
        key = f"proxies[{i}]"
        if not named.name or named.name == "default":
            raise ConfigError(f"{key}.name: a proxy needs a name other than 'default'")
        if named.name in seen:
            raise ConfigError(f"{key}.name: proxy {named.name!r} is defined twice")
        seen.add(named.name)
        _validate_endpoint(named, key)
    channel = config.channel.proxy
    for kind, default in (
        ("subscribe", channel.subscribe),
        ("publish", channel.publish),
        ("sub_refresh", channel.sub_refresh),
    ):
        if default.endpoint:
            _validate_endpoint(default, f"channel.proxy.{kind}")
    if config.rpc.proxy.endpoint:
        _validate_endpoint(config.rpc.proxy, "rpc.proxy")
    if not config.rpc.namespace_boundary:
        raise ConfigError("rpc.namespace_boundary: must not be empty")
    rpc_seen: set[str] = set()
    for i, ns in enumerate(config.rpc.namespaces):
        if not _NAMESPACE_NAME_RE.match(ns.name):
            raise ConfigError(
                f"rpc.namespaces[{i}].name: {ns.name!r} must match {_NAMESPACE_NAME_RE.pattern}"
            )
        if ns.name in rpc_seen:
            raise ConfigError(f"rpc.namespaces[{i}].name: namespace {ns.name!r} is defined twice")
        rpc_seen.add(ns.name)


def check_proxy_references(config: Config, available: Mapping[str, set[str]]) -> None:
    """Every enabled ``*_proxy_name`` names a proxy of ``available[kind]``.

    The service calls this with the configured proxies plus any in-process hooks, so
    a namespace naming a proxy that nobody provides fails at startup, not per call.

    Raises:
        ConfigError: naming the namespace key and the missing proxy.
    """
    spaces: list[tuple[str, ChannelOptions]] = [
        ("channel.without_namespace", config.channel.without_namespace)
    ]
    spaces += [(f"channel.namespaces[{i}]", ns) for i, ns in enumerate(config.channel.namespaces)]
    for key, opts in spaces:
        for kind, enabled, name in (
            ("subscribe", opts.subscribe_proxy_enabled, opts.subscribe_proxy_name),
            ("publish", opts.publish_proxy_enabled, opts.publish_proxy_name),
            ("sub_refresh", opts.sub_refresh_proxy_enabled, opts.sub_refresh_proxy_name),
        ):
            if enabled and name not in available.get(kind, set()):
                raise ConfigError(
                    f"{key}.{kind}_proxy_name: no {kind} proxy named {name!r} is configured"
                )
    rpc_spaces: list[tuple[str, RPCOptions]] = [
        ("rpc.without_namespace", config.rpc.without_namespace)
    ]
    rpc_spaces += [(f"rpc.namespaces[{i}]", ns) for i, ns in enumerate(config.rpc.namespaces)]
    for key, rpc_opts in rpc_spaces:
        if rpc_opts.proxy_enabled and rpc_opts.proxy_name not in available.get("rpc", set()):
            raise ConfigError(
                f"{key}.proxy_name: no rpc proxy named {rpc_opts.proxy_name!r} is configured"
            )


def _validate_grpc_api(grpc: GRPCAPIConfig) -> None:
    if not grpc.enabled:
        return
    if not 0 < grpc.port < 65536:
        raise ConfigError("grpc_api.port: must be between 1 and 65535")
    if grpc.error_mode not in ("", "transport"):
        raise ConfigError(f"grpc_api.error_mode: {grpc.error_mode!r} is not '' or 'transport'")
    if grpc.server not in ("", "h2", "grpcio"):
        raise ConfigError(f"grpc_api.server: {grpc.server!r} is not 'h2' or 'grpcio'")
    if grpc.reflection and grpc.server == "h2":
        raise ConfigError(
            "grpc_api.reflection: the reflection service is served by grpcio's server, "
            "not by grpc_api.server: h2; set grpc_api.server: grpcio, or turn reflection off"
        )
    if grpc.max_receive_message_size < 0:
        raise ConfigError("grpc_api.max_receive_message_size: must not be negative")
    if grpc.tls.enabled:
        tls = grpc.tls
        if not (tls.cert_pem or tls.cert_pem_file) or not (tls.key_pem or tls.key_pem_file):
            raise ConfigError(
                "grpc_api.tls: cert_pem and key_pem (or cert_pem_file and key_pem_file) "
                "are required"
            )
        server_client_ca_pem(tls, "grpc_api.tls")


def _validate_uni_grpc(uni: UniGRPCConfig) -> None:
    if not uni.enabled:
        return
    if not 0 < uni.port < 65536:
        raise ConfigError("uni_grpc.port: must be between 1 and 65535")
    if uni.max_receive_message_size < 0:
        raise ConfigError("uni_grpc.max_receive_message_size: must not be negative")
    if uni.max_concurrent_streams < 1:
        raise ConfigError("uni_grpc.max_concurrent_streams: must be at least 1")
    if uni.tls.enabled:
        tls = uni.tls
        if not (tls.cert_pem or tls.cert_pem_file) or not (tls.key_pem or tls.key_pem_file):
            raise ConfigError(
                "uni_grpc.tls: cert_pem and key_pem (or cert_pem_file and key_pem_file) "
                "are required"
            )
        server_client_ca_pem(tls, "uni_grpc.tls")


def _validate_admin(config: Config) -> None:
    admin = config.admin
    if config.http_server.internal_port > 65535:
        raise ConfigError("http_server.internal_port: must be between 0 and 65535")
    if admin.enabled and not admin.insecure and not (admin.password and admin.secret):
        raise ConfigError(
            "admin: password and secret are required when admin.enabled is on "
            "(run 'rtserver genconfig' to generate them, or set admin.insecure for local use)"
        )


def _validate_redis(redis: RedisEngineConfig) -> None:
    if not redis.address and not redis.sentinel_address:
        raise ConfigError("engine.redis.address: at least one Redis address is required")
    if redis.presence_ttl < 1:
        raise ConfigError("engine.redis.presence_ttl: must be at least 1s")
    redis_shards(redis)
    for name, tls in (("tls", redis.tls), ("sentinel_tls", redis.sentinel_tls)):
        if tls.enabled:
            validate_client_tls(tls, f"engine.redis.{name}")


def validate_client_tls(tls: ClientTLSConfig, key: str) -> None:
    """An enabled client TLS object: a certificate goes with its key, every PEM loads.

    Raises:
        ConfigError: naming ``key`` and the field.
    """
    if bool(tls.cert_pem) != bool(tls.key_pem):
        raise ConfigError(f"{key}: cert_pem and key_pem go together")
    for pem in ("cert_pem", "key_pem", "server_ca_pem"):
        value = getattr(tls, pem)
        if value:
            load_pem(value, f"{key}.{pem}")


_BROKER_TYPES = ("memory", "redis", "nats")
_PRESENCE_MANAGER_TYPES = ("memory", "redis")


def _validate_broker(config: Config) -> None:
    """``broker`` and ``presence_manager``: checked only when enabled, as Centrifugo does."""
    broker = config.broker
    if broker.enabled:
        if broker.type not in _BROKER_TYPES:
            raise ConfigError(
                f"broker.type: unsupported broker {broker.type!r} (supported: memory, redis, nats)"
            )
        if broker.type == "redis":
            _validate_redis_at(broker.redis, "broker.redis")
        if broker.type == "nats":
            _validate_nats(broker.nats)
    pm = config.presence_manager
    if pm.enabled:
        if pm.type not in _PRESENCE_MANAGER_TYPES:
            raise ConfigError(
                f"presence_manager.type: unsupported presence manager {pm.type!r} "
                "(supported: memory, redis)"
            )
        if pm.type == "redis":
            _validate_redis_at(pm.redis, "presence_manager.redis")


def _validate_redis_at(redis: RedisEngineConfig, key: str) -> None:
    """The checks of ``engine.redis`` for a Redis section found at ``key``."""
    try:
        _validate_redis(redis)
    except ConfigError as e:
        raise ConfigError(str(e).replace("engine.redis", key, 1)) from None


_CONSUMER_NAME_RE = re.compile(r"^[a-zA-Z0-9_-]+$")


def _validate_consumers(config: Config) -> None:
    """``consumers``: a disabled entry is skipped unchecked, as Centrifugo does."""
    names: set[str] = set()
    for i, consumer in enumerate(config.consumers):
        key = f"consumers[{i}]"
        if not _CONSUMER_NAME_RE.match(consumer.name):
            raise ConfigError(
                f"{key}.name: {consumer.name!r} must match {_CONSUMER_NAME_RE.pattern}"
            )
        if consumer.name in names:
            raise ConfigError(f"{key}.name: consumer {consumer.name!r} is defined twice")
        names.add(consumer.name)
        if not consumer.enabled:
            continue
        if consumer.type != "redis_stream":
            raise ConfigError(
                f"{key}.type: unsupported consumer type {consumer.type!r} (supported: redis_stream)"
            )
        _validate_redis_stream(consumer.redis_stream, f"{key}.redis_stream")


def _validate_redis_stream(stream: RedisStreamConsumerConfig, key: str) -> None:
    if not stream.address and not stream.sentinel_address:
        raise ConfigError(f"{key}.address: a Redis address is required")
    if not stream.streams or not all(stream.streams):
        raise ConfigError(f"{key}.streams: at least one stream name is required")
    if not stream.consumer_group:
        raise ConfigError(f"{key}.consumer_group: is required")
    if stream.num_workers < 1:
        raise ConfigError(f"{key}.num_workers: must be at least 1")
    if stream.publication_data_mode.enabled and not stream.publication_data_mode.channels_value:
        raise ConfigError(
            f"{key}.publication_data_mode.channels_value: is required in publication data mode"
        )
    if not stream.payload_value:
        raise ConfigError(f"{key}.payload_value: must not be empty")
    if stream.cluster_address:
        raise ConfigError(f"{key}.cluster_address: Redis Cluster is not supported for consumers")
    try:
        shards = redis_shards(stream)
    except ConfigError as e:
        raise ConfigError(str(e).replace("engine.redis", key, 1)) from None
    if len(shards) != 1:
        raise ConfigError(
            f"{key}: one Redis shard is expected (one address, or one sentinel_address entry "
            f"with its sentinels comma-separated), got {len(shards)}"
        )
    for name, tls in (("tls", stream.tls), ("sentinel_tls", stream.sentinel_tls)):
        if tls.enabled:
            validate_client_tls(tls, f"{key}.{name}")


def _validate_nats(nats: NatsBrokerConfig) -> None:
    parse_nats_urls(nats.url)
    if nats.tls.enabled:
        validate_client_tls(nats.tls, "broker.nats.tls")
    if nats.dial_timeout <= 0 or nats.write_timeout <= 0:
        raise ConfigError("broker.nats: dial_timeout and write_timeout must be positive")
    if not nats.raw_mode.enabled and not nats.prefix:
        raise ConfigError("broker.nats.prefix: must not be empty")


def _validate_options(opts: ChannelOptions, key: str, config: Config) -> None:
    where = f" (namespace {opts.name!r})" if isinstance(opts, NamespaceOptions) else ""
    if (opts.history_size > 0) != (opts.history_ttl > 0):
        raise ConfigError(f"{key}: history_size and history_ttl must be set together{where}")
    if (opts.force_recovery or opts.allow_recovery) and not opts.history_enabled:
        raise ConfigError(f"{key}: recovery needs history_size and history_ttl{where}")
    meta_ttl = opts.history_meta_ttl or config.channel.history_meta_ttl
    if opts.history_ttl > meta_ttl:
        raise ConfigError(f"{key}: history_ttl must not exceed history_meta_ttl{where}")
    if opts.force_recovery_mode not in ("stream", "cache"):
        raise ConfigError(f"{key}.force_recovery_mode: must be 'stream' or 'cache'{where}")
    if opts.publication_data_format not in ("", "json", "json_object", "binary"):
        raise ConfigError(
            f"{key}.publication_data_format: must be one of '', 'json', 'json_object', "
            f"'binary'{where}"
        )
    unknown = [t for t in opts.allowed_delta_types if t != "fossil"]
    if unknown:
        raise ConfigError(
            f"{key}.allowed_delta_types: only 'fossil' is supported, not {unknown}{where}"
        )
    if opts.delta_publish and not opts.allowed_delta_types:
        raise ConfigError(f"{key}.delta_publish: needs allowed_delta_types{where}")
    if opts.channel_regex:
        try:
            re.compile(opts.channel_regex)
        except re.error as e:
            raise ConfigError(
                f"{key}.channel_regex: invalid regular expression{where}: {e}"
            ) from None


def load(
    path: str | Path | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> tuple[Config, list[str]]:
    """Load, merge and validate the configuration.

    Returns:
        The configuration and a list of warnings (unknown keys, v5 names, risky settings).

    Raises:
        ConfigError: naming the key and the problem.
    """
    warn: list[str] = []
    data: dict[str, Any] = {}
    if path is not None:
        data = _upgrade_v5(read_file(path), warn)
    data = _merge(data, env_overrides(os.environ if environ is None else environ))
    if overrides:
        data = _merge(data, overrides)
    config = build(Config, data, "", warn)
    validate(config)
    warn.extend(_risky(config))
    return config, warn


def from_mapping(data: Mapping[str, Any]) -> Config:
    """Build and validate a configuration from a mapping (tests, ``.tac`` files)."""
    warn: list[str] = []
    config = build(Config, _upgrade_v5(dict(data), warn), "", warn)
    validate(config)
    return config


def _risky(config: Config) -> list[str]:
    out = []
    if "*" in config.client.allowed_origins:
        out.append("client.allowed_origins contains '*': any web page may connect")
    if config.client.insecure:
        out.append("client.insecure is on: connections and channels are not protected")
    if config.admin.enabled and config.admin.insecure:
        out.append("admin.insecure is on: anyone who reaches the admin UI controls the server")
    if config.http_api.insecure:
        out.append("http_api.insecure is on: anyone can use the server API")
    elif not config.http_api.key and not config.http_api.disabled:
        out.append("http_api.key is empty: every server API request will get 401")
    if config.grpc_api.enabled and not config.grpc_api.key:
        out.append("grpc_api.key is empty: anyone who reaches the GRPC API port can use it")
    return out


def default_tree(cls: type = Config) -> dict[str, Any]:
    """The defaults as a plain mapping (for ``rtserver defaultconfig``)."""
    out: dict[str, Any] = {}
    for key in schema_keys(cls):
        node = out
        for part in key.path[:-1]:
            node = node.setdefault(part, {})
        node[key.path[-1]] = key.default
    return out


def format_duration(seconds: float) -> str:
    """Render seconds the way config files write them."""
    if seconds and seconds % 3600 == 0:
        return f"{int(seconds // 3600)}h"
    if seconds == int(seconds):
        return f"{int(seconds)}s"
    return f"{round(seconds * 1000)}ms"


def env_names() -> list[str]:
    """Every ``RTSERVER_*`` environment variable the loader reads."""
    return [key.env_name for key in schema_keys()]
