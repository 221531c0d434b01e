"""grpc_api options on a real ``twistd -n rtserver``: TLS, reflection, message size, error mode.

Also the lifecycle seen from outside: the port is open once the server answers, closed
after SIGTERM, and a GRPC port that cannot be bound stops the server from starting.
"""

from __future__ import annotations

import datetime
import ipaddress
import socket
import uuid
from pathlib import Path

import grpc
import pytest
from grpc_support import CALL_TIMEOUT, accepts, grpc_overrides
from harness import base_config, free_port, merge, run_server, spawn_server

from rtserver.grpcapi.proto import api_pb2 as pb
from rtserver.grpcapi.proto import api_pb2_grpc

pytestmark = pytest.mark.interop


def _self_signed(workdir: Path) -> tuple[Path, Path, bytes]:
    """A certificate for 127.0.0.1 and its key, as PEM files; also the certificate bytes."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "rtserver test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_path, cert_path = workdir / "grpc.key", workdir / "grpc.crt"
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    cert_path.write_bytes(cert_pem)
    return cert_path, key_path, cert_pem


def test_tls_reflection_size_limit_and_transport_errors(tmp_path: Path) -> None:
    """A TLS server with reflection, a 1 KiB request limit and transport error mode.

    Reflection is on and ``grpc_api.server`` unset: grpcio's server serves the port.
    """
    cert, key, cert_pem = _self_signed(tmp_path)
    port, api_key = free_port(), "k-" + uuid.uuid4().hex
    overrides = grpc_overrides(
        port, api_key, reflection=True, max_receive_message_size=1024, error_mode="transport",
        tls={"enabled": True, "cert_pem_file": str(cert), "key_pem_file": str(key)})
    metadata = [("authorization", f"apikey {api_key}")]
    with run_server(tmp_path, overrides) as server:
        assert "grpc_api.reflection is on, so grpcio's server serves" in server.log()
        assert "HTTP/2 on the reactor" not in server.log()
        creds = grpc.ssl_channel_credentials(root_certificates=cert_pem)
        with grpc.secure_channel(f"127.0.0.1:{port}", creds) as channel:
            stub = api_pb2_grpc.CentrifugoApiStub(channel)
            info = stub.Info(pb.InfoRequest(), metadata=metadata, timeout=CALL_TIMEOUT)
            assert len(info.result.nodes) == 1

            big = pb.PublishRequest(channel="c", data=b'"' + b"x" * 2000 + b'"')
            with pytest.raises(grpc.RpcError) as e:
                stub.Publish(big, metadata=metadata, timeout=CALL_TIMEOUT)
            assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED

            with pytest.raises(grpc.RpcError) as e:
                stub.Publish(pb.PublishRequest(channel="c"), metadata=metadata,
                             timeout=CALL_TIMEOUT)
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert e.value.details() == "bad request: data is required"

            from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

            reflect = reflection_pb2_grpc.ServerReflectionStub(channel)
            request = reflection_pb2.ServerReflectionRequest(list_services="")
            (answer,) = reflect.ServerReflectionInfo(iter([request]), timeout=CALL_TIMEOUT)
            names = {s.name for s in answer.list_services_response.service}
            assert "centrifugal.centrifugo.api.CentrifugoApi" in names

        with grpc.insecure_channel(f"127.0.0.1:{port}") as plain:
            stub = api_pb2_grpc.CentrifugoApiStub(plain)
            with pytest.raises(grpc.RpcError) as e:
                stub.Info(pb.InfoRequest(), metadata=metadata, timeout=CALL_TIMEOUT)
            assert e.value.code() == grpc.StatusCode.UNAVAILABLE
        assert accepts(port)
    # run_server sent SIGTERM and checked the clean exit
    assert not accepts(port)
    assert "GRPC API stopped" in server.log()


def test_tls_size_limit_and_transport_errors_on_the_reactor(tmp_path: Path) -> None:
    """The default server, HTTP/2 on the reactor: TLS with ALPN h2, limits, errors."""
    cert, key, cert_pem = _self_signed(tmp_path)
    port, api_key = free_port(), "k-" + uuid.uuid4().hex
    overrides = grpc_overrides(
        port, api_key, max_receive_message_size=1024, error_mode="transport",
        tls={"enabled": True, "cert_pem_file": str(cert), "key_pem_file": str(key)})
    metadata = [("authorization", f"apikey {api_key}")]
    with run_server(tmp_path, overrides) as server:
        assert "HTTP/2 on the reactor" in server.log()
        creds = grpc.ssl_channel_credentials(root_certificates=cert_pem)
        with grpc.secure_channel(f"127.0.0.1:{port}", creds) as channel:
            stub = api_pb2_grpc.CentrifugoApiStub(channel)
            info = stub.Info(pb.InfoRequest(), metadata=metadata, timeout=CALL_TIMEOUT)
            assert len(info.result.nodes) == 1

            big = pb.PublishRequest(channel="c", data=b'"' + b"x" * 2000 + b'"')
            with pytest.raises(grpc.RpcError) as e:
                stub.Publish(big, metadata=metadata, timeout=CALL_TIMEOUT)
            assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            # the connection goes on after a refused call
            with pytest.raises(grpc.RpcError) as e:
                stub.Publish(pb.PublishRequest(channel="c"), metadata=metadata,
                             timeout=CALL_TIMEOUT)
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert e.value.details() == "bad request: data is required"

            with pytest.raises(grpc.RpcError) as e:
                stub.Info(pb.InfoRequest(), metadata=[("authorization", "apikey no")],
                          timeout=CALL_TIMEOUT)
            assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED

        with grpc.insecure_channel(f"127.0.0.1:{port}") as plain:
            stub = api_pb2_grpc.CentrifugoApiStub(plain)
            with pytest.raises(grpc.RpcError) as e:
                stub.Info(pb.InfoRequest(), metadata=metadata, timeout=CALL_TIMEOUT)
            assert e.value.code() == grpc.StatusCode.UNAVAILABLE
        assert accepts(port)
    assert not accepts(port)
    assert "GRPC API stopped" in server.log()


def test_a_grpc_port_in_use_stops_startup(tmp_path: Path) -> None:
    """The server refuses to start when grpc_api.port is taken, and says why."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = merge(base_config("s" * 40, "k"), grpc_overrides(port, "k"))
        with pytest.raises(RuntimeError, match="during start-up") as e:
            spawn_server(tmp_path, config, secret="s" * 40, api_key="k")
        assert f"GRPC API: cannot listen on 127.0.0.1:{port}" in str(e.value)
