"""Prometheus metrics shared by every server, served on a second port."""

from __future__ import annotations

from prometheus_client import Counter, Histogram, start_http_server

RPC_SECONDS = Histogram(
    "grpc_server_handling_seconds",
    "Time to handle an RPC (a whole stream for streaming RPCs).",
    ["grpc_service", "grpc_method"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 60),
)
RPC_HANDLED = Counter(
    "grpc_server_handled_total",
    "RPCs completed, by status code.",
    ["grpc_service", "grpc_method", "grpc_code"],
)


def start_metrics_server(port: int, host: str = "127.0.0.1") -> int:
    """Starts the /metrics HTTP endpoint in a thread; returns the bound port (port 0 picks one)."""
    server, _thread = start_http_server(port, addr=host)
    return int(server.server_port)
