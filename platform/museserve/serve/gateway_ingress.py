"""The gateway tier: the Serve ingress for gRPC (ChatService, grpc.health.v1) and HTTP.

A thin shell: the request path lives in `Gateway`, `GrpcChatApi`, `OpenAIHttpApi` and
`RealtimeApi` (the Realtime WebSocket, which Serve's HTTP proxy passes through).
Method names of the gRPC side must equal the RPC names; the proxy routes by them. The
HTTP side is the OpenAI-compatible API; FastAPI serves its OpenAPI document at
`/openapi.json`.

No `from __future__ import annotations` here: Ray Serve re-signs the route methods, and
FastAPI then reads their annotations as they are, so they must be real types.
"""

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Annotated, Literal

from fastapi import Query, Request, WebSocket
from fastapi.responses import Response
from grpc_health.v1 import health_pb2
from ray import serve
from ray.serve.handle import DeploymentHandle

from museserve.api.grpc_api import GrpcChatApi
from museserve.api.openai.body_limit import BodyLimit
from museserve.api.openai.completions_schemas import CompletionRequest
from museserve.api.openai.http_api import OpenAIHttpApi, install_error_handlers
from museserve.api.openai.realtime import RealtimeApi
from museserve.api.openai.responses import (
    CHAT_RESPONSES,
    COMPLETION_RESPONSES,
    OPENAI_ERRORS,
    ChatCompletion,
    Completion,
    Model,
    ModelList,
)
from museserve.api.openai.responses_http import ResponsesHttpApi
from museserve.api.openai.responses_models import (
    CREATE_RESPONSES,
    STORED_RESPONSES,
    InputItemList,
    ResponseDeleted,
    ResponseObject,
)
from museserve.api.openai.responses_schemas import ResponseCreateRequest
from museserve.api.openai.schemas import ChatCompletionRequest
from museserve.config import MuseServeConfig
from museserve.gateway.factory import build_gateway
from museserve.logs import setup_logging
from museserve.serve.autoscaling_stats import IN_FLIGHT
from museserve.serve.direct_ingress import DirectGrpcIngress
from museserve.serve.drain_board import current_app_name, watch_for_drain
from museserve.serve.gateway_metrics import GatewayMetrics
from museserve.serve.handles import HandlePoolClient, HandlePreprocessClient
from museserve.serve.request_id_header import ServeIngressApp
from museserve.v1 import chat_pb2 as pb

http_app = ServeIngressApp(title="museserve", version="1", docs_url=None, redoc_url=None)
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
        pool_clients = {name: HandlePoolClient(handle, name) for name, handle in pools.items()}
        preprocess_client = HandlePreprocessClient(preprocess, config.preprocess.call_timeout_s)
        self._gateway = build_gateway(config, preprocess_client, pool_clients, GatewayMetrics())
        self._api = GrpcChatApi(self._gateway)
        self._openai = OpenAIHttpApi(self._gateway)
        self._responses = ResponsesHttpApi(self._gateway)
        self._realtime = RealtimeApi(self._gateway)
        self._direct = DirectGrpcIngress.from_config(self._api, config)
        if self._direct is not None:
            await self._direct.start()
        self._drain_started: float | None = None
        app_name = current_app_name()
        self._drain_watch = asyncio.create_task(watch_for_drain(app_name, self._drain)) if app_name else None

    async def _drain(self) -> None:
        """From the first call on, every new request is refused with UNAVAILABLE and the
        direct gRPC server takes no new calls (its health turns NOT_SERVING); returns once
        the requests in flight have finished, or `server.drain_timeout_s` after the first
        call. Safe to call more than once."""
        if self._drain_started is None:
            self._drain_started = time.monotonic()
        # The direct server first: it sends GOAWAY, so calls its clients send from here on
        # go to another replica (gRPC retries refused streams transparently); what it had
        # already taken is admitted and finishes.
        stopping = asyncio.ensure_future(self._direct.stop()) if self._direct is not None else None
        await asyncio.sleep(0)
        self._gateway.admission.start_draining()
        timeout_s = self._gateway.config.server.drain_timeout_s
        if stopping is not None:
            await stopping
        await self._gateway.drain(max(0.0, timeout_s - (time.monotonic() - self._drain_started)))

    async def __del__(self) -> None:
        """Serve calls this when the replica stops (redeploy, scale-down, app deletion), once
        the requests its proxy routed here have finished. It drains the rest (see `_drain`;
        `museserve serve` starts the drain earlier, through the drain board), then flushes the
        output-token settlements. Serve force-kills the replica `SHUTDOWN_MARGIN_S` after the
        drain timeout (`graceful_shutdown_timeout_s`)."""
        if getattr(self, "_gateway", None) is None:  # __init__ failed
            return
        if self._drain_watch is not None and self._drain_started is None:
            self._drain_watch.cancel()
        await self._drain()
        await self._gateway.close()

    async def record_autoscaling_stats(self) -> dict[str, float]:
        """Pulled by Serve for the gateways' autoscaling policy: requests in flight on this
        replica from both ports (Serve counts only what its proxy routed here). Async: the
        admission counts live on this replica's loop."""
        return {IN_FLIGHT: float(self._gateway.admission.total_in_flight)}

    async def Chat(self, request: pb.ChatRequest, grpc_context) -> pb.ChatResponse:
        return await self._api.chat(request, grpc_context)

    async def ChatStream(self, request: pb.ChatRequest, grpc_context) -> AsyncIterator[pb.ChatEvent]:
        async for event in self._api.chat_stream(request, grpc_context):
            yield event

    async def Converse(self, request_stream, grpc_context) -> AsyncIterator[pb.ConverseEvent]:
        """Bidirectional: Serve's proxy hands the client's messages over as a `gRPCInputStream`."""
        async for event in self._api.converse(request_stream, grpc_context):
            yield event

    async def CountTokens(self, request: pb.ChatRequest, grpc_context) -> pb.CountTokensResponse:
        return await self._api.count_tokens(request, grpc_context)

    async def ListModels(self, request: pb.ListModelsRequest, grpc_context) -> pb.ListModelsResponse:
        return await self._api.list_models(request, grpc_context)

    def Check(self, request: health_pb2.HealthCheckRequest, grpc_context) -> health_pb2.HealthCheckResponse:
        """grpc.health.v1 for Kubernetes probes: cheap, answers from this replica alone."""
        status = health_pb2.HealthCheckResponse.NOT_SERVING if self._gateway.admission.draining else None
        return health_pb2.HealthCheckResponse(status=status or health_pb2.HealthCheckResponse.SERVING)

    @http_app.get("/healthz")
    def healthz(self) -> Response:
        if self._gateway.admission.draining:
            return Response('{"status": "draining"}', status_code=503, media_type="application/json")
        return Response('{"status": "ok"}', media_type="application/json")

    @http_app.post(
        "/v1/chat/completions",
        response_model=ChatCompletion,
        responses=CHAT_RESPONSES,
        summary="Chat completion; with stream: true, server-sent chat.completion.chunk events",
    )
    async def chat_completions(self, body: ChatCompletionRequest, request: Request) -> Response:
        return await self._openai.chat_completions(body, request)

    @http_app.post(
        "/v1/completions",
        response_model=Completion,
        responses=COMPLETION_RESPONSES,
        summary="Text completion of a raw prompt; with stream: true, server-sent text_completion events",
    )
    async def completions(self, body: CompletionRequest, request: Request) -> Response:
        return await self._openai.completions(body, request)

    @http_app.post(
        "/v1/responses",
        response_model=ResponseObject,
        responses=CREATE_RESPONSES,
        summary="Create a response (stored by default); with stream: true, server-sent response events",
    )
    async def create_response(self, body: ResponseCreateRequest, request: Request) -> Response:
        return await self._responses.create(body, request)

    @http_app.get("/v1/responses/{response_id}", response_model=ResponseObject, responses=STORED_RESPONSES)
    async def retrieve_response(self, response_id: str, request: Request, stream: bool | None = None) -> Response:
        return await self._responses.retrieve(response_id, request, stream)

    @http_app.delete("/v1/responses/{response_id}", response_model=ResponseDeleted, responses=STORED_RESPONSES)
    async def delete_response(self, response_id: str, request: Request) -> Response:
        return await self._responses.delete(response_id, request)

    @http_app.get("/v1/responses/{response_id}/input_items", response_model=InputItemList, responses=STORED_RESPONSES)
    async def list_response_input_items(
        self,
        response_id: str,
        request: Request,
        after: str | None = None,
        limit: Annotated[int, Query(ge=1, le=100)] = 20,
        order: Literal["asc", "desc"] = "desc",
    ) -> Response:
        return await self._responses.list_input_items(response_id, request, after, limit, order)

    @http_app.websocket("/v1/realtime")
    async def realtime(self, websocket: WebSocket) -> None:
        """The Realtime API: speech in, text answers out (`?model=MODEL`)."""
        await self._realtime.connect(websocket)

    @http_app.get("/v1/models", response_model=ModelList, responses=OPENAI_ERRORS)
    async def list_models(self, request: Request) -> Response:
        return await self._openai.list_models(request)

    @http_app.get("/v1/models/{model_id}", response_model=Model, responses=OPENAI_ERRORS)
    async def retrieve_model(self, model_id: str, request: Request) -> Response:
        return await self._openai.retrieve_model(model_id, request)
