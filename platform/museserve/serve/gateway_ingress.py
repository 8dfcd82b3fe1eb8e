"""The gateway tier: the Serve ingress for gRPC (ChatService, grpc.health.v1) and HTTP.

A thin shell: the request path lives in `Gateway` and `GrpcChatApi`. Method names of the
gRPC side must equal the RPC names; the proxy routes by them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from fastapi import FastAPI
from grpc_health.v1 import health_pb2
from ray import serve
from ray.serve.handle import DeploymentHandle

from museserve.api.grpc_api import GrpcChatApi
from museserve.config import MuseServeConfig
from museserve.gateway.factory import build_gateway
from museserve.logs import setup_logging
from museserve.serve.cancel_board import CancelSignal
from museserve.serve.gateway_metrics import GatewayMetrics
from museserve.serve.handles import HandlePoolClient, HandlePreprocessClient
from museserve.v1 import chat_pb2 as pb

http_app = FastAPI(title="museserve", docs_url=None, redoc_url=None)


@serve.deployment
@serve.ingress(http_app)
class GatewayIngress:
    def __init__(
        self,
        config: MuseServeConfig,
        preprocess: DeploymentHandle,
        pools: dict[str, DeploymentHandle],
        log_level: str = "INFO",
    ):
        setup_logging(log_level)
        cancels = CancelSignal.for_this_replica()
        pool_clients = {name: HandlePoolClient(handle, name, cancels) for name, handle in pools.items()}
        preprocess_client = HandlePreprocessClient(preprocess)
        self._gateway = build_gateway(config, preprocess_client, pool_clients, GatewayMetrics())
        self._api = GrpcChatApi(self._gateway)

    async def Chat(self, request: pb.ChatRequest, grpc_context) -> pb.ChatResponse:
        return await self._api.chat(request, grpc_context)

    async def ChatStream(self, request: pb.ChatRequest, grpc_context) -> AsyncIterator[pb.ChatEvent]:
        async for event in self._api.chat_stream(request, grpc_context):
            yield event

    async def CountTokens(self, request: pb.ChatRequest, grpc_context) -> pb.CountTokensResponse:
        return await self._api.count_tokens(request, grpc_context)

    async def ListModels(self, request: pb.ListModelsRequest, grpc_context) -> pb.ListModelsResponse:
        return await self._api.list_models(request, grpc_context)

    def Check(self, request: health_pb2.HealthCheckRequest, grpc_context) -> health_pb2.HealthCheckResponse:
        """grpc.health.v1 for Kubernetes probes: cheap, answers from this replica alone."""
        return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)

    @http_app.get("/healthz")
    def healthz(self) -> dict:
        return {"status": "ok"}

    @http_app.get("/v1/models")
    def models(self) -> dict:
        data = [
            {"id": info.name, "object": "model", "created": 0, "owned_by": "museserve"}
            for info, _ in self._gateway.list_models()
        ]
        return {"object": "list", "data": data}
