"""The HTTP API: OpenAI's /v1/completions, /v1/chat/completions (streamed as server-sent events
or not) and /v1/models, plus /v1/feedback, /healthz, /readyz and /metrics. The routes only call
the serving class (serving.py); the request and response shapes are protocol.py's."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from lmforge.jobs.serve.engine import Engine
from lmforge.jobs.serve.guard import ApiError
from lmforge.jobs.serve.protocol import ChatBody, CompletionBody
from lmforge.jobs.serve.serving import Serving
from lmforge.operator.api.jobs import ServeConfig


def create_app(config: ServeConfig, engine: Engine) -> FastAPI:
    app = FastAPI(title="lmforge serve", docs_url=None, redoc_url=None)
    serving = Serving(config, engine)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError) -> JSONResponse:
        serving.metrics.errors.labels(str(error.status)).inc()
        return JSONResponse(error.body(), error.status, headers=error.headers)

    @app.exception_handler(404)
    async def not_found(request: Request, error: Exception) -> JSONResponse:
        return JSONResponse(ApiError(404, f"no route {request.url.path}").body(), 404)

    @app.exception_handler(405)
    async def not_allowed(request: Request, error: Exception) -> JSONResponse:
        message = f"method {request.method} not allowed on {request.url.path}"
        return JSONResponse(ApiError(405, message).body(), 405)

    # Both probes fail once the decoding thread is gone: readiness takes the pod out of its
    # Service at once, liveness has the kubelet restart it (after its failureThreshold).
    @app.get("/healthz")
    async def healthz() -> Response:
        alive = engine.thread.is_alive()
        return JSONResponse({"status": "ok" if alive else "engine stopped"}, 200 if alive else 503)

    @app.get("/readyz")
    async def readyz() -> Response:
        ready = engine.thread.is_alive()
        return JSONResponse({"ready": ready}, 200 if ready else 503)

    @app.get("/metrics")
    async def metrics() -> Response:
        registry = serving.metrics.registry
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def models(request: Request) -> dict:
        return serving.models(request)

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await serving.complete(request, "/v1/completions", CompletionBody, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        return await serving.complete(request, "/v1/chat/completions", ChatBody, chat=True)

    @app.post("/v1/feedback")
    async def feedback(request: Request) -> dict:
        return await serving.feedback(request)

    return app
