"""The web dashboard at ``/ui``: one HTML page, one script and one style sheet shipped in the
package (no CDN, no library, nothing fetched from anywhere but this control plane). The page
asks for an API token, keeps it in the tab's sessionStorage and sends it as a bearer header;
what it may do follows the token's role, and the API checks every action again.

Every answer under ``/ui`` carries a Content-Security-Policy that lets the page talk to its
own origin only and run no inline script: text from devices (labels, error messages, event
text) is put into the page as text, and even markup slipped past that could not run."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse, RedirectResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

STATIC = Path(__file__).resolve().parent / "static"
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-cache"),
]
FILES = {"app.js": "text/javascript", "app.css": "text/css"}

router = APIRouter(include_in_schema=False)


@router.get("/ui")
def ui_root() -> RedirectResponse:
    return RedirectResponse("/ui/")


@router.get("/ui/")
def ui_page() -> FileResponse:
    return FileResponse(STATIC / "index.html", media_type="text/html")


@router.get("/ui/{name}")
def ui_asset(name: str) -> FileResponse:
    if name not in FILES:  # a fixed list: no path from the URL reaches the file system
        return FileResponse(STATIC / "index.html", media_type="text/html", status_code=404)
    return FileResponse(STATIC / name, media_type=FILES[name])


class UiHeaders:
    """Adds the security headers to every answer under ``/ui``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/ui"):
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *HEADERS]}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def install(app: FastAPI) -> None:
    app.include_router(router)
    app.add_middleware(UiHeaders)
