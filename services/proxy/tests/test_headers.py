"""Header rules for forwarded messages."""

from __future__ import annotations

from tether.proxy.core.headers import error_response, request_target, strip_hop_by_hop


def test_headers_without_hop_by_hop_fields_are_returned_as_is() -> None:
    headers = [(b":status", b"200"), (b"te", b"trailers"), (b"grpc-timeout", b"1S")]
    assert strip_hop_by_hop(headers) is headers


def test_connection_fields_and_the_fields_they_name_are_dropped() -> None:
    headers = [
        (b":method", b"GET"),
        (b"connection", b"close, x-private"),
        (b"x-private", b"1"),
        (b"proxy-connection", b"keep-alive"),
        (b"te", b"gzip"),
        (b"trailer", b"x-sum"),
        (b"x-kept", b"yes"),
    ]
    assert strip_hop_by_hop(headers) == [(b":method", b"GET"), (b"x-kept", b"yes")]


def test_te_trailers_survives() -> None:
    headers = [(b"connection", b"te"), (b"te", b"trailers")]
    assert strip_hop_by_hop(headers) == []  # named by Connection, so it goes
    assert strip_hop_by_hop([(b"upgrade", b"x"), (b"te", b"trailers")]) == [(b"te", b"trailers")]


def test_request_target_prefers_authority_and_detects_grpc() -> None:
    assert request_target([(b":authority", b"a:1"), (b"host", b"b:2")]) == (b"a:1", False)
    assert request_target([(b"host", b"b:2"), (b"content-type", b"application/grpc+proto")]) == (
        b"b:2",
        True,
    )


def test_error_responses() -> None:
    grpc = dict(error_response(True, 503, "no endpoints"))
    assert grpc[b":status"] == b"200" and grpc[b"grpc-status"] == b"14"
    assert grpc[b"grpc-message"] == b"no endpoints"
    plain = dict(error_response(False, 503, "no endpoints"))
    assert plain[b":status"] == b"503" and plain[b"content-length"] == b"0"
