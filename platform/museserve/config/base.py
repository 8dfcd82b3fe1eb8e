"""Sections every tier shares: the base model of all sections, the server and Ray Serve knobs."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class Section(BaseModel):
    """Frozen and closed: an unknown key is an error with its path, not a silent default."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class ServerConfig(Section):
    grpc_port: int = Field(50051, ge=1, le=65535, description="gRPC port (the proxy binds all interfaces).")
    http_host: str = Field("127.0.0.1", description="Address the HTTP proxy binds.")
    http_port: int = Field(8000, ge=1, le=65535, description="HTTP port.")
    request_timeout_s: float = Field(
        600.0, gt=0, description="End-to-end bound on one request when the client sets no deadline."
    )
    throughput_optimized: bool = Field(
        True,
        description="Ray Serve's throughput-optimized mode: replicas run our code on their own event loop "
        "(so no deployment may block its loop) and buffer request logs.",
    )
    max_request_bytes: int = Field(
        64 << 20, ge=1 << 20, description="Largest gRPC message the proxy accepts; larger: RESOURCE_EXHAUSTED."
    )
    direct_grpc_port: int | None = Field(
        50052,
        ge=0,
        le=65535,
        description="Port of the gRPC server each gateway replica runs itself (ChatService, grpc.health.v1, "
        "reflection), bypassing Ray Serve's proxy; replicas on one node share it (SO_REUSEPORT). "
        "null or 0: off.",
    )
    direct_grpc_host: str = Field(
        "127.0.0.1", description="Address the direct gRPC server binds; 0.0.0.0 (or [::]) in a cluster."
    )
    drain_timeout_s: float = Field(
        30.0,
        ge=0,
        description="When a replica stops (redeploy, scale-down, SIGTERM), how long requests in flight may take "
        "to finish. A draining gateway refuses new requests with UNAVAILABLE at once; Ray Serve's graceful "
        "shutdown timeout of every tier is set a little above this.",
    )

    @property
    def direct_grpc_enabled(self) -> bool:
        return bool(self.direct_grpc_port)


class DeploymentConfig(Section):
    """Ray Serve knobs shared by every tier; each tier sets its own values."""

    num_replicas: int = Field(1, ge=1, description="Replicas of this deployment.")
    max_ongoing_requests: int = Field(256, ge=1, description="Requests one replica handles at once.")
    max_queued_requests: int = Field(
        1024, ge=-1, description="Requests waiting for a replica before RESOURCE_EXHAUSTED; -1 unbounded."
    )
    num_cpus: float = Field(0.0, ge=0, description="CPUs reserved per replica (0: CPU-light).")
    num_gpus: float = Field(0.0, ge=0, description="GPUs reserved per replica.")
