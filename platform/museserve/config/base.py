"""Sections every tier shares: the base model of all sections, the server and Ray Serve knobs."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator


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


class AutoscalingPolicyConfig(Section):
    """When and how far a tier scales. Each tier compares its own signals with its targets below
    (pools: KV use, waiting requests, TTFT p90 against `admission.ttft_objective_s`; gateways:
    requests in flight on both ports; preprocess: ongoing requests and CPU); the worst ratio of
    signal to target is the tier's pressure. Above 1 for `upscale_delay_s`: up; below
    `downscale_below` for `downscale_delay_s`: down (a stopping replica drains first)."""

    min_replicas: int = Field(
        1, ge=0, description="Fewest replicas; 0 only for a pool that is an A/B or mirror candidate."
    )
    max_replicas: int = Field(4, ge=1, description="Most replicas.")
    upscale_delay_s: float = Field(30.0, ge=0, description="How long the pressure must stay above 1 to scale up.")
    downscale_delay_s: float = Field(
        300.0, ge=0, description="How long the pressure must stay below downscale_below to scale down."
    )
    cooldown_s: float = Field(60.0, ge=0, description="No further change this long after a change.")
    downscale_below: float = Field(
        0.5, gt=0, lt=1, description="Pressure under which the tier is well below its targets."
    )
    look_back_s: float = Field(
        10.0, gt=0, description="Window over which Ray Serve averages each replica's reported signals."
    )
    metrics_push_interval_s: float = Field(
        2.0,
        gt=0,
        description="How often each replica and each handle sends its signals to Serve's controller (Serve's "
        "metrics_interval_s).",
    )
    kv_usage_target: float = Field(0.8, gt=0, le=1, description="Pools: mean fraction of KV blocks in use.")
    waiting_per_replica: float = Field(4.0, gt=0, description="Pools: requests waiting in a replica's engine.")
    in_flight_per_replica: float = Field(
        256.0, gt=0, description="Gateways: requests in flight per replica, from both the proxy and the direct port."
    )
    ongoing_per_replica: float = Field(16.0, gt=0, description="Preprocess: requests ongoing per replica.")
    cpu_per_replica: float = Field(
        0.8, gt=0, description="Preprocess: CPU seconds per second one replica uses (1.0: one busy core)."
    )

    @model_validator(mode="after")
    def _bounds_ordered(self) -> AutoscalingPolicyConfig:
        if self.max_replicas < self.min_replicas:
            raise ValueError(f"max_replicas ({self.max_replicas}) is below min_replicas ({self.min_replicas})")
        if self.look_back_s <= self.metrics_push_interval_s:
            raise ValueError("look_back_s must exceed metrics_push_interval_s, or the window misses reports")
        return self


class DeploymentConfig(Section):
    """Ray Serve knobs shared by every tier; each tier sets its own values."""

    num_replicas: int = Field(
        1, ge=1, description="Replicas of this deployment; with autoscaling, how many start (within its bounds)."
    )
    max_ongoing_requests: int = Field(256, ge=1, description="Requests one replica handles at once.")
    max_queued_requests: int = Field(
        1024, ge=-1, description="Requests waiting for a replica before RESOURCE_EXHAUSTED; -1 unbounded."
    )
    num_cpus: float = Field(0.0, ge=0, description="CPUs reserved per replica (0: CPU-light).")
    num_gpus: float = Field(0.0, ge=0, description="GPUs reserved per replica.")
    autoscaling: AutoscalingPolicyConfig | None = Field(
        None,
        description="Scale replicas on the tier's own signals (museserve.serve.autoscaling_policies) between "
        "min_replicas and max_replicas. null: a fixed num_replicas.",
    )
