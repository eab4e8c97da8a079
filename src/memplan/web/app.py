"""The ASGI app of ``memplan serve``: the JSON API over :mod:`memplan.api` and one static page.

FastAPI (on Starlette, served by uvicorn) rather than bare Starlette: the issue asks for OpenAPI docs
at ``/docs``, and FastAPI derives them, and validates every request body, from the same pydantic models
(web/schemas.py); with Starlette alone both would be written by hand and could drift apart.

Every endpoint answers exactly what the CLI's ``--json`` prints for the same input (it calls the same
builders: ``cli.estimate.json_report``, ``cli.plan.json_report``, ``cli.models.preset_rows``,
``cli.gpus.gpu_to_json``). Errors are ``{"error": {"location", "message"}}``: 422 for bad input
(memplan's ``MemplanError`` or a body that fails validation), 413 for an oversized body, 500 with a
message and no traceback for anything else. Hardening: the body size is capped before parsing, model
names resolve only to presets, uploaded configs (parsed data) or, when started with ``allow_hub``, hub
ids (never a path), and each request runs in a worker thread with a time limit.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache, partial
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from memplan.errors import MemplanError
from memplan.web.schemas import CheckRequest, EstimateRequest, PlanRequest

#: Largest request body: a launch command is a few KB and a config.json a few KB (loader.py), so
#: 256 KiB leaves room for both and several uploads while keeping a flood of large bodies cheap.
MAX_BODY_BYTES = 256 * 1024
#: Per-request time limit. An estimate takes milliseconds and a plan over several GPU types well under
#: a second (README: "candidates evaluated: ... in 0.10 s"); 20 s is far beyond either.
REQUEST_SECONDS = 20.0
#: Worker threads computing answers (one request each); more requests wait their turn.
WORKERS = 8


def error_response(status: int, location: str, message: str) -> JSONResponse:
    """The API's one error shape."""
    return JSONResponse({"error": {"location": location, "message": message}}, status_code=status)


class BodyLimit:
    """ASGI middleware: read at most ``limit`` bytes of a request body, answer 413 beyond it."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or ()).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            await self._reject(scope, receive, send)
            return
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > self.limit:
                await self._reject(scope, receive, send)
                return
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    async def _reject(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = error_response(413, "body", f"request body larger than {self.limit} bytes")
        await response(scope, receive, send)


def _location(loc: tuple[Any, ...]) -> str:
    """``("body", "flags", 3)`` → ``flags[3]``: the field as the client wrote it."""
    parts = [str(p) for p in loc if p != "body"]
    text = ""
    for part in parts:
        text += f"[{part}]" if part.isdigit() else (f".{part}" if text else part)
    return text or "body"


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": ("body",), "msg": "invalid request"}
        more = len(exc.errors()) - 1
        message = str(first.get("msg", "invalid")) + (f" (and {more} more problems)" if more > 0 else "")
        if first.get("type") == "json_invalid":  # loc is (body, character offset)
            return error_response(422, "body", f"{message} at character {first['loc'][-1]}")
        return error_response(422, _location(tuple(first.get("loc", ("body",)))), message)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        where = "body" if exc.status_code == 400 else "path"  # 400: the body could not be parsed at all
        return error_response(exc.status_code, where, str(exc.detail))

    @app.exception_handler(MemplanError)
    async def bad_input(_: Request, exc: MemplanError) -> JSONResponse:
        return error_response(422, exc.location, exc.message)

    @app.exception_handler(Exception)
    async def internal(_: Request, exc: Exception) -> JSONResponse:  # never a traceback to the client
        return error_response(500, "server", f"internal error ({type(exc).__name__}); please report the request")


class Runner:
    """Runs one request's computation in a worker thread, sandboxed, with a time limit."""

    def __init__(self, *, allow_hub: bool, seconds: float, workers: int = WORKERS) -> None:
        self.allow_hub, self.seconds = allow_hub, seconds
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="memplan-web")

    def _sandboxed(self, fn: Callable[[], Any], configs: dict[str, dict[str, Any]]) -> Any:
        from memplan.model.sandbox import sandboxed

        with sandboxed(configs, allow_hub=self.allow_hub):
            return fn()

    async def __call__(self, fn: Callable[[], Any], configs: dict[str, dict[str, Any]]) -> Any:
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self.pool, self._sandboxed, fn, configs)
        try:
            return await asyncio.wait_for(future, self.seconds)
        except TimeoutError:
            raise MemplanError("request", f"took longer than {self.seconds:g} s; ask for fewer GPUs or "
                                          "GPU types") from None


# --- the computations: each mirrors one CLI command's run() -------------------------------------------

def estimate_data(req: EstimateRequest) -> tuple[Any, Any, dict[str, Any]]:
    """``memplan estimate ... --json``: (run, estimate, JSON object)."""
    from memplan.api import resolve_model_run
    from memplan.model import load_model_spec

    load_model_spec(req.model)
    run = resolve_model_run(req.model, req.method, req.flags, gpus=req.gpus, nodes=req.nodes,
                            gpus_per_node=req.gpus_per_node, version=_version(req, req.framework),
                            framework=req.framework)
    return _estimate_of(run, req.gpu, req.host_ram)


def _version(req: Any, framework: str) -> str | None:
    """The version field that applies to ``framework`` (as the CLI's ``--framework-version``)."""
    from memplan.cli.estimate import framework_version
    from memplan.errors import ConfigError

    try:
        return framework_version(req, framework)
    except ConfigError as exc:  # name the field, not the CLI option
        raise ConfigError(exc.location.lstrip("-").replace("-", "_"), exc.message) from None


def _estimate_of(run: Any, gpu: str | None, host_ram: str | None) -> tuple[Any, Any, dict[str, Any]]:
    from memplan.api import estimate_run, resolve_capacity
    from memplan.cli.estimate import json_report

    gpu_spec, host_bytes = resolve_capacity(gpu, host_ram)
    est = estimate_run(run, gpu=gpu_spec, host_ram_bytes=host_bytes)
    return run, est, json_report(run, est, gpu_spec, host_bytes)


def check_data(req: CheckRequest) -> tuple[Any, Any, dict[str, Any]]:
    """``memplan check ... --json -- COMMAND``: the text is the command itself, never a file name."""
    from memplan.api import resolve_command
    from memplan.frameworks import detect

    framework = req.framework or detect(req.command)
    run = resolve_command(req.command, version=_version(req, framework), framework=framework)
    return _estimate_of(run, req.gpu, req.host_ram)


def plan_data(req: PlanRequest) -> tuple[list[Any], dict[str, Any]]:
    """``memplan plan ... --json``: (plan results, JSON object)."""
    from memplan.cli.plan import json_report, plan_results

    results = plan_results(req.model, req.method, req.gpu, host_ram=req.host_ram, gpus_per_node=req.gpus_per_node,
                           max_gpus=req.max_gpus, flags=req.flags, keep=req.keep, allow_lora=req.allow_lora,
                           version=_version(req, req.framework), framework=req.framework)
    return results, json_report(results)


@lru_cache(maxsize=1)
def _models_json() -> dict[str, Any]:
    from memplan.cli.models import preset_rows

    return {"models": preset_rows()}


@lru_cache(maxsize=1)
def _gpus_json() -> dict[str, Any]:
    from memplan.cli.gpus import gpu_to_json
    from memplan.hardware import load_catalogue

    return {"gpus": [gpu_to_json(g) for g in load_catalogue()]}


@lru_cache(maxsize=1)
def vega_bundle() -> str:
    """vega + vega-lite + vega-embed as one script, from vl-convert (no CDN, no npm)."""
    import vl_convert

    return vl_convert.javascript_bundle()


def _static(name: str) -> str:
    return resources.files("memplan.web").joinpath("static", name).read_text(encoding="utf-8")


def _json(data: Any) -> Response:
    """JSON exactly as ``render.print_json`` would serialise it (integers stay integers)."""
    return Response(json.dumps(data, ensure_ascii=False), media_type="application/json")


def create_app(*, allow_hub: bool = False, seconds: float = REQUEST_SECONDS,
               max_body_bytes: int = MAX_BODY_BYTES) -> ASGIApp:
    """The app; ``allow_hub`` lets model names that are hub ids be fetched from the Hugging Face hub."""
    from memplan import __version__
    from memplan.charts import estimate_chart, plan_chart

    app = FastAPI(title="memplan", version=__version__,
                  description="GPU and host memory of OpenRLHF and verl runs: the same answers as "
                              "`memplan ... --json`.")
    _install_error_handlers(app)
    run = Runner(allow_hub=allow_hub, seconds=seconds)

    @app.post("/api/estimate", summary="memplan estimate MODEL --method METHOD [flags] --json")
    async def api_estimate(req: EstimateRequest) -> Response:
        return _json((await run(partial(estimate_data, req), req.configs))[2])

    @app.post("/api/check", summary="memplan check --json -- COMMAND")
    async def api_check(req: CheckRequest) -> Response:
        return _json((await run(partial(check_data, req), req.configs))[2])

    @app.post("/api/plan", summary="memplan plan MODEL --method METHOD --gpu GPU[,GPU...] --json")
    async def api_plan(req: PlanRequest) -> Response:
        return _json((await run(partial(plan_data, req), req.configs))[1])

    @app.post("/api/estimate/chart", summary="Vega-Lite spec of an estimate (same body as /api/estimate)")
    async def chart_estimate(req: EstimateRequest) -> Response:
        return _json(estimate_chart((await run(partial(estimate_data, req), req.configs))[1]))

    @app.post("/api/check/chart", summary="Vega-Lite spec of a checked command (same body as /api/check)")
    async def chart_check(req: CheckRequest) -> Response:
        return _json(estimate_chart((await run(partial(check_data, req), req.configs))[1]))

    @app.post("/api/plan/chart", summary="Vega-Lite spec of a plan (same body as /api/plan)")
    async def chart_plan(req: PlanRequest) -> Response:
        return _json(plan_chart((await run(partial(plan_data, req), req.configs))[0]))

    @app.get("/api/models", summary="memplan models --json")
    async def api_models() -> Response:
        return _json(_models_json())

    @app.get("/api/gpus", summary="memplan gpus --json")
    async def api_gpus() -> Response:
        return _json(_gpus_json())

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(_static("index.html"))

    @app.get("/static/{name}", include_in_schema=False)
    async def static(name: str) -> Response:
        if name == "vega-bundle.js":
            return Response(vega_bundle(), media_type="text/javascript",
                            headers={"Cache-Control": "public, max-age=86400"})
        types = {"app.js": "text/javascript", "style.css": "text/css"}
        if name not in types:
            return error_response(404, "path", f"no static file {name!r}")
        return Response(_static(name), media_type=types[name])

    return BodyLimit(app, max_body_bytes)
