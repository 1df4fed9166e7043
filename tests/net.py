"""What tests of the network parts share: whether this machine has IPv6, and the details a
gRPC refusal carries."""

from __future__ import annotations

import socket

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2


def has_ipv6() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


ipv6 = pytest.mark.skipif(not has_ipv6(), reason="this machine has no IPv6 loopback")


def error_info(err: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo:
    """The google.rpc.ErrorInfo in a refusal's status details."""
    packed = dict(err.trailing_metadata() or ())["grpc-status-details-bin"]
    assert isinstance(packed, bytes)
    for detail in status_pb2.Status.FromString(packed).details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return info
    raise AssertionError(f"no ErrorInfo in {err}")
