"""The console's routes: server-rendered pages over the control plane, its actions, and live events.

Every page and action names the RPC it mirrors and is authorized by `TokenAuth.authorize` as that RPC
would be; every error a caller sees comes from the error table (`status_of`).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any

import grpc
import structlog
from aiohttp import web

from ortserve.console.actions import ACTIONS
from ortserve.console.history import MetricsHistory
from ortserve.console.render import environment
from ortserve.console.sessions import COOKIE, Sessions
from ortserve.console.views import Views
from ortserve.control import ControlPlane
from ortserve.errors import PermissionDenied, Unauthenticated
from ortserve.scheduler.events import ModelEvent
from ortserve.scheduler.shadow import ShadowStats
from ortserve.server.auth import Scope, TokenAuth
from ortserve.server.errors import status_of
from ortserve.server.metrics import Metrics

log = structlog.get_logger(__name__)

_REGISTRY = "/ortserve.api.v1.RegistryService/"
LIST_MODELS = f"{_REGISTRY}ListModels"
GET_MODEL = f"{_REGISTRY}GetModel"
AUDIT = f"{_REGISTRY}ListAuditEvents"
WATCH = f"{_REGISTRY}WatchModels"
ACTIONS_OFF = (
    "console actions are off: no tokens are configured and console_actions is false "
    "(configure admin tokens and sign in, or set console_actions = true)"
)
REBINDING = (
    "without tokens, console actions are taken only at an IP address or localhost, not through a host "
    "name (a guard against DNS rebinding); configure admin tokens to act through a host name"
)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
SESSION_ID = web.RequestKey("session_id", str)
MAX_STREAMS = 32
KEEPALIVE_S = 15.0
REFRESH_S = 10

HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.FAILED_PRECONDITION: 409,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",  # "no-referrer" makes Chromium send Origin: null
    "Cache-Control": "no-store",
}


@dataclass(frozen=True, slots=True)
class Banner:
    """The outcome of an action, or an error, shown at the top of a page."""

    ok: bool
    text: str


class Console:
    """The web console over `control`; `auth` None means no tokens are configured, and then actions
    need `actions` (the console_actions setting)."""

    def __init__(
        self,
        control: ControlPlane,
        shadows: Mapping[str, ShadowStats],
        metrics: Metrics,
        auth: TokenAuth | None,
        *,
        actions: bool,
    ) -> None:
        self._control = control
        self._auth = auth
        self._actions = actions
        self._views = Views(control, shadows)
        self.history = MetricsHistory(metrics.request_seconds.collect, metrics.errors.collect)
        self.sessions = Sessions()
        self._templates = environment()
        self._static = {
            name: resources.files("ortserve.console").joinpath("static", name).read_bytes()
            for name in ("console.js",)
        }
        self._css = self._templates.get_template("console.css").render().encode()
        self._sampler: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._streams = 0

    def install(self, app: web.Application) -> None:
        routes = app.router
        routes.add_get("/", self._guard(self._models_page))
        routes.add_get("/models/{name}", self._guard(self._model_page))
        routes.add_get("/models/{name}/events", self._guard(self._events))
        routes.add_post("/models/{name}/{action}", self._guard(self._act))
        routes.add_get("/signin", self._guard(self._signin_page))
        routes.add_post("/signin", self._guard(self._signin))
        routes.add_post("/signout", self._guard(self._signout))
        routes.add_get("/static/console.css", self._stylesheet)
        routes.add_get("/static/console.js", self._script)

    def _guard(self, handler: Handler) -> Handler:
        """A bug in a page answers INTERNAL with a correlation id (logged), as an RPC would."""

        async def guarded(request: web.Request) -> web.StreamResponse:
            try:
                return await handler(request)
            except web.HTTPException:
                raise
            except Exception as exc:
                return self._error_page(request, exc)

        return guarded

    def start(self) -> None:
        self._sampler = asyncio.create_task(self.history.run(), name="console-metrics-history")

    async def aclose(self) -> None:
        """Stop sampling and end every live event stream."""
        self._stopping.set()
        if self._sampler is not None:
            self._sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sampler

    # --- pages ------------------------------------------------------------------------------

    async def _models_page(self, request: web.Request) -> web.StreamResponse:
        if (refused := self._refused(request, LIST_MODELS)) is not None:
            return refused
        models = await self._views.models(await self.history.rates())
        window_s = self.history.span_s()
        return self._render(request, "models.html", models=models, refresh_s=REFRESH_S, window_s=window_s)

    async def _model_page(self, request: web.Request) -> web.StreamResponse:
        if (refused := self._refused(request, GET_MODEL)) is not None:
            return refused
        return await self._show_model(request, request.match_info["name"])

    async def _show_model(
        self, request: web.Request, name: str, banner: Banner | None = None, status: int = 200
    ) -> web.StreamResponse:
        try:
            model = await self._views.model(name, await self.history.rates())
        except Exception as exc:
            return self._error_page(request, exc, banner)
        audit = await self._views.audit(name) if self._allowed(request, AUDIT) else None
        return self._render(request, "model.html", status=status, model=model, audit=audit, banner=banner)

    async def _signin_page(self, request: web.Request) -> web.StreamResponse:
        return self._render(request, "signin.html")

    # --- actions ----------------------------------------------------------------------------

    async def _act(self, request: web.Request) -> web.StreamResponse:
        name, verb = request.match_info["name"], request.match_info["action"]
        action = ACTIONS.get(verb)
        if action is None:
            raise web.HTTPNotFound()
        form = await _form(request)
        try:
            self._check_post(request, form)
        except PermissionDenied as exc:  # a cross-site post gets no page with forms in return
            return self._error_page(request, exc)
        try:
            actor = self._caller(request, action.method, write=True)
            banner, status = Banner(True, await action.run(self._control, name, form, actor)), 200
        except Exception as exc:
            code, message = status_of(exc, method=action.method, model=name)
            banner, status = Banner(False, f"{code.name}: {message}"), HTTP_STATUS.get(code, 500)
        log.info("console_action", action=verb, model=name, status=status, outcome=banner.text)
        return await self._show_model(request, name, banner, status)

    async def _signin(self, request: web.Request) -> web.StreamResponse:
        form = await _form(request)
        try:
            self._check_post(request, form)
            if self._auth is None:
                raise PermissionDenied("no tokens are configured: there is nothing to sign in with")
            token = self._auth.authenticate(form.get("token", "").strip().encode())
        except Exception as exc:
            code, message = status_of(exc, method="console/signin")
            banner = Banner(False, f"{code.name}: {message}")
            return self._render(request, "signin.html", status=HTTP_STATUS.get(code, 500), banner=banner)
        log.info("console_signed_in", token=token.name, scope=token.scope.value)
        self.sessions.sign_out(_session_id(request))
        return self._redirect(request, "/", self.sessions.sign_in(token))

    async def _signout(self, request: web.Request) -> web.StreamResponse:
        form = await _form(request)
        try:
            self._check_post(request, form)
        except Exception as exc:
            return self._error_page(request, exc)
        self.sessions.sign_out(_session_id(request))
        return self._redirect(request, "/", Sessions.new_id())

    # --- live events ------------------------------------------------------------------------

    async def _events(self, request: web.Request) -> web.StreamResponse:
        """Server-Sent Events: the model's registry and load events as JSON, as WatchModels sends them."""
        name = request.match_info["name"]
        try:
            self._caller(request, WATCH)
        except Exception as exc:
            code, message = status_of(exc, method=WATCH)
            return web.Response(status=HTTP_STATUS.get(code, 500), text=f"{code.name}: {message}")
        if self._streams >= MAX_STREAMS:
            return web.Response(status=503, text=f"UNAVAILABLE: more than {MAX_STREAMS} live event streams")
        response = web.StreamResponse(headers={**SECURITY_HEADERS, "Content-Type": "text/event-stream"})
        await response.prepare(request)
        self._streams += 1
        try:
            async with contextlib.aclosing(self._subscription(name)) as events:
                async for event in events:
                    text = f"data: {json.dumps(_event_json(event))}\n\n" if event else ": keepalive\n\n"
                    await response.write(text.encode())
        except ConnectionError:
            pass  # the browser went away
        finally:
            self._streams -= 1
        return response

    async def _subscription(self, name: str) -> AsyncGenerator[ModelEvent | None]:
        """`name`'s events, None every KEEPALIVE_S without one; ends when the console stops."""
        events = self._control.pool.events.subscribe()
        stopping: asyncio.Future[Any] = asyncio.ensure_future(self._stopping.wait())
        pending: asyncio.Future[Any] | None = None
        try:
            while not self._stopping.is_set():
                pending = pending or asyncio.ensure_future(anext(events))
                done, _ = await asyncio.wait(
                    {pending, stopping}, timeout=KEEPALIVE_S, return_when=asyncio.FIRST_COMPLETED
                )
                if pending in done:
                    event, pending = pending.result(), None
                    if event.model == name:
                        yield event
                elif not done:
                    yield None
        finally:
            futures = [f for f in (pending, stopping) if f is not None]
            for future in futures:
                future.cancel()
            await asyncio.gather(*futures, return_exceptions=True)  # the subscription ended with them
            await events.aclose()  # type: ignore[attr-defined]

    # --- helpers ----------------------------------------------------------------------------

    def _caller(self, request: web.Request, method: str, *, write: bool = False) -> str:
        """Who may call `method` (named for the audit log), as the gRPC API decides it; raises
        Unauthenticated or PermissionDenied."""
        if self._auth is None:
            if write and not self._actions:
                raise PermissionDenied(ACTIONS_OFF)
            if write and not _address_host(request.url.host):
                raise PermissionDenied(REBINDING)
            return f"console@{request.remote}"
        token = self.sessions.token(_session_id(request))
        if token is None:
            raise Unauthenticated(f"{method} needs a token: sign in to the console first")
        return self._auth.authorize(method, token).name

    def _refused(self, request: web.Request, method: str) -> web.StreamResponse | None:
        """None when the caller may see a page that mirrors `method`; else the answer: signed out, the
        sign-in page."""
        try:
            self._caller(request, method)
        except Unauthenticated:
            raise web.HTTPSeeOther("/signin") from None
        except PermissionDenied as exc:
            return self._error_page(request, exc)
        return None

    def _allowed(self, request: web.Request, method: str, *, write: bool = False) -> bool:
        try:
            self._caller(request, method, write=write)
        except (Unauthenticated, PermissionDenied):
            return False
        return True

    def _check_post(self, request: web.Request, form: Mapping[str, str]) -> None:
        origin = f"{request.scheme}://{request.host}"
        self.sessions.check_post(_session_id(request), form.get("csrf", ""), request.headers, origin)

    def _render(
        self, request: web.Request, template: str, *, status: int = 200, **context: Any
    ) -> web.Response:
        session_id = _session_id(request)
        token = self.sessions.token(session_id) if self._auth is not None else None
        context.setdefault("banner", None)
        page = self._templates.get_template(template).render(
            auth=self._auth is not None,
            signed_in=token,
            admin=token is not None and token.scope is Scope.ADMIN,
            can_act=self._allowed(request, ACTIONS["promote"].method, write=True),
            csrf=self.sessions.csrf(session_id),
            **context,
        )
        response = web.Response(text=page, status=status, content_type="text/html", headers=SECURITY_HEADERS)
        if request.cookies.get(COOKIE) != session_id:
            _set_cookie(request, response, session_id)
        return response

    def _error_page(self, request: web.Request, exc: Exception, banner: Banner | None = None) -> web.Response:
        code, message = status_of(exc, method=f"console {request.path}")
        error = Banner(False, f"{code.name}: {message}")
        status = HTTP_STATUS.get(code, 500)
        return self._render(request, "error.html", status=status, error=error, banner=banner)

    def _redirect(self, request: web.Request, location: str, session_id: str) -> web.Response:
        response = web.Response(status=303, headers={**SECURITY_HEADERS, "Location": location})
        _set_cookie(request, response, session_id)
        return response

    async def _stylesheet(self, request: web.Request) -> web.Response:
        return web.Response(body=self._css, content_type="text/css", headers={"Cache-Control": "no-cache"})

    async def _script(self, request: web.Request) -> web.Response:
        body = self._static["console.js"]
        return web.Response(body=body, content_type="text/javascript", headers={"Cache-Control": "no-cache"})


def _address_host(host: str | None) -> bool:
    """Whether the page was asked for by IP address or as localhost (no DNS name a page could rebind)."""
    if host is None:
        return False
    if host == "localhost":
        return True
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def _session_id(request: web.Request) -> str:
    """The browser's session id, or a fresh one (set as its cookie by the response) when it has none."""
    found = request.get(SESSION_ID)
    if found is None:
        cookie = request.cookies.get(COOKIE)
        found = request[SESSION_ID] = cookie if cookie and Sessions.valid_id(cookie) else Sessions.new_id()
    return found


def _set_cookie(request: web.Request, response: web.StreamResponse, session_id: str) -> None:
    response.set_cookie(COOKIE, session_id, httponly=True, samesite="Strict", path="/", secure=request.secure)


async def _form(request: web.Request) -> dict[str, str]:
    data = await request.post()
    return {key: value for key, value in data.items() if isinstance(value, str)}


def _event_json(event: ModelEvent) -> dict[str, Any]:
    return {
        "kind": event.kind,
        "model": event.model,
        "version": event.version,
        "state": event.state.value if event.state else "",
        "detail": event.detail,
        "revision": event.revision,
        "time_ns": event.time_ns,
    }
