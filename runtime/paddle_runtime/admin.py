"""Admin endpoints: ``POST /admin/reload`` and ``GET /admin/status`` (also ``GET /version``).

An :class:`~.app.App` like the inference port's, served by the same transport on its own port
(``admin_port``), so a NetworkPolicy can expose the two differently.  Off unless ``admin_port`` is
set, and it refuses to start without ``admin_token_file``: an unauthenticated reload trigger is a
DoS lever.  A reload runs in a worker thread (it loads and checks a whole model), so inference on
the shared event loop keeps going meanwhile.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from .app import App
from .auth import TokenFile
from .errors import ConfigError, Unauthorized
from .settings import RuntimeSettings
from .transport import Request, Response, json_response

Status = Callable[[], dict[str, Any]]
Reload = Callable[[], dict[str, Any]]


def admin_token(settings: RuntimeSettings) -> TokenFile:
    """The admin token file, read once now so that a missing or empty one fails the start."""
    if not settings.admin_token_file:
        raise ConfigError("admin_port is set but admin_token_file is empty; the admin port needs a token")
    token = TokenFile(settings.admin_token_file)
    try:
        token.get()
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    return token


def build_admin_app(token: TokenFile, status: Status, reload: Reload) -> App:
    """The admin routes behind a bearer-token check; ``reload()`` raises typed errors (422 refused)."""
    app = App()

    async def authorized(req: Request) -> None:
        if not token.check(req.headers.get("authorization")):
            raise Unauthorized("admin endpoints need 'Authorization: Bearer <admin token>'")

    async def get_status(req: Request) -> Response:
        return json_response(status())

    async def post_reload(req: Request) -> Response:
        return json_response(await asyncio.get_running_loop().run_in_executor(None, reload))

    app.before_request.append(authorized)
    app.add_route("GET", "/admin/status", get_status)
    app.add_route("GET", "/version", get_status)
    app.add_route("POST", "/admin/reload", post_reload)
    return app
