"""`x-request-id` once on every HTTP response the gateway serves behind Ray Serve's proxy.

Ray Serve's HTTP proxy appends `X-Request-ID` to every response it forwards: the request's
own `x-request-id`, which it adds to the request when the client sent none. The OpenAI API
sets the header too (on every chat completion and on its errors), so behind the proxy each
response carried it twice. The proxy's copy is the one that stays, on every route and
status. The API takes its id from the same request header whenever it is a valid request id
(`api.grpc_api.REQUEST_ID`), so the header and the body's `chatcmpl-<id>` agree; a client id
that is not one is echoed by the proxy as sent, while the API names the request by an id of
its own.
"""

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

REQUEST_ID_HEADER = b"x-request-id"


class WithoutRequestIdHeader:
    """Drops `x-request-id` from the responses of the ASGI app it wraps."""

    def __init__(self, app: ASGIApp):
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return

        async def send_without_request_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = message.get("headers") or []
                message["headers"] = [(k, v) for k, v in headers if k.lower() != REQUEST_ID_HEADER]
            await send(message)

        await self._app(scope, receive, send_without_request_id)


class ServeIngressApp(FastAPI):
    """The gateway's FastAPI app, served only behind Ray Serve's HTTP proxy. The header goes
    outside the whole middleware stack, so the responses of the handlers Starlette runs
    outside user middleware (a 500 for an unexpected fault) lose it too."""

    def build_middleware_stack(self) -> ASGIApp:
        return WithoutRequestIdHeader(super().build_middleware_stack())
