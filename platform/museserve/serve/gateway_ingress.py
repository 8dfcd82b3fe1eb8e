"""The gateway tier: the Serve ingress for gRPC (ChatService, grpc.health.v1) and HTTP.

A thin shell: the request path lives in `Gateway`, `GrpcChatApi` and `OpenAIHttpApi`.
Method names of the gRPC side must equal the RPC names; the proxy routes by them. The
HTTP side is the OpenAI-compatible API; FastAPI serves its OpenAPI document at
`/openapi.json`.

No `from __future__ import annotations` here: Ray Serve re-signs the route methods, and
FastAPI then reads their annotations as they are, so they must be real types.
"""

from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import Response
from grpc_health.v1 import health_pb2
from ray import serve
from ray.serve.handle import DeploymentHandle

from museserve.api.grpc_api import GrpcChatApi
from museserve.api.openai.body_limit import BodyLimit
from museserve.api.openai.http_api import OpenAIHttpApi, install_error_handlers
from museserve.api.openai.responses import CHAT_RESPONSES, OPENAI_ERRORS, ChatCompletion, Model, ModelList
from museserve.api.openai.schemas import ChatCompletionRequest
from museserve.config import MuseServeConfig
from museserve.gateway.factory import build_gateway
from museserve.logs import setup_logging
from museserve.serve.cancel_board import CancelSignal
from museserve.serve.direct_ingress import DirectGrpcIngress
from museserve.serve.gateway_metrics import GatewayMetrics
from museserve.serve.handles import HandlePoolClient, HandlePreprocessClient
from museserve.v1 import chat_pb2 as pb

http_app = FastAPI(title="museserve", version="1", docs_url=None, redoc_url=None)
install_error_handlers(http_app)
http_app.add_middleware(BodyLimit)  # reads app.state.max_request_bytes, set per replica below


@serve.deployment
@serve.ingress(http_app)
class GatewayIngress:
    async def __init__(  # Serve awaits an async __init__ on the replica's loop, before any request
        self,
        config: MuseServeConfig,
        preprocess: DeploymentHandle,
        pools: dict[str, DeploymentHandle],
        log_level: str = "INFO",
    ):
        setup_logging(log_level)
        http_app.state.max_request_bytes = config.server.max_request_bytes
        cancels = CancelSignal.for_this_replica()
        pool_clients = {name: HandlePoolClient(handle, name, cancels) for name, handle in pools.items()}
        preprocess_client = HandlePreprocessClient(preprocess)
        self._gateway = build_gateway(config, preprocess_client, pool_clients, GatewayMetrics())
        self._api = GrpcChatApi(self._gateway)
        self._openai = OpenAIHttpApi(self._gateway)
        self._direct = DirectGrpcIngress.from_config(self._api, config)
        if self._direct is not None:
            await self._direct.start()

    async def __del__(self) -> None:
        """Serve awaits this (through the `@serve.ingress` wrapper, after the HTTP app's
        lifespan ends) when the replica stops: the direct gRPC server drains."""
        direct = getattr(self, "_direct", None)
        if direct is not None:
            await direct.stop()

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

    @http_app.post(
        "/v1/chat/completions",
        response_model=ChatCompletion,
        responses=CHAT_RESPONSES,
        summary="Chat completion; with stream: true, server-sent chat.completion.chunk events",
    )
    async def chat_completions(self, body: ChatCompletionRequest, request: Request) -> Response:
        return await self._openai.chat_completions(body, request)

    @http_app.get("/v1/models", response_model=ModelList, responses=OPENAI_ERRORS)
    async def list_models(self, request: Request) -> Response:
        return await self._openai.list_models(request)

    @http_app.get("/v1/models/{model_id}", response_model=Model, responses=OPENAI_ERRORS)
    async def retrieve_model(self, model_id: str, request: Request) -> Response:
        return await self._openai.retrieve_model(model_id, request)
