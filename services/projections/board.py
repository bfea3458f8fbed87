"""The OKR board: one web page at `/`, its scripts and styles (`/board/<file>`) from the
`static/` folder beside this module (no CDN, no build step: plain HTML, CSS and JavaScript
modules), and the little it needs to know (`/board/config.json`).

The page and its assets need no token: they hold no data. The data comes from the reads under
`/v1/`, which the page calls with the token the user signs in with. Every answer here carries
a strict Content-Security-Policy: scripts, styles and images from this origin only, and
connections to this origin and the check-in service alone.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from fastapi import APIRouter
from fastapi.responses import FileResponse, JSONResponse

from shared.domain import NotFound

BOARD_DIR = Path(__file__).with_name("static")
MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
INDEX = BOARD_DIR / "index.html"
# Only the files that ship with the package, by name: no path from a request reaches the disk.
ASSETS = {p.name: p for p in BOARD_DIR.iterdir() if p.suffix in MEDIA_TYPES and p != INDEX}


def origin_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def security_headers(checkins_url: str) -> dict[str, str]:
    policy = "; ".join(
        [
            "default-src 'none'",
            "script-src 'self'",
            "style-src 'self'",
            "img-src 'self'",
            f"connect-src 'self' {origin_of(checkins_url)}",
            "form-action 'self'",
            "base-uri 'none'",
            "frame-ancestors 'none'",
        ]
    )
    return {
        "Content-Security-Policy": policy,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        # Revalidate every time (the ETag makes that cheap): a new release shows at once.
        "Cache-Control": "no-cache",
    }


def board_router(checkins_url: str) -> APIRouter:
    router = APIRouter(tags=["board"])
    headers = security_headers(checkins_url)

    @router.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(INDEX, media_type=MEDIA_TYPES[".html"], headers=headers)

    @router.get(
        "/board/config.json", summary="What the board needs to know: where to send commands"
    )
    async def config() -> JSONResponse:
        return JSONResponse({"checkins_url": checkins_url}, headers=headers)

    @router.get("/board/{name}", include_in_schema=False)
    async def asset(name: str) -> FileResponse:
        path = ASSETS.get(name)
        if path is None:
            raise NotFound(f"The board has no file {name!r}")
        return FileResponse(path, media_type=MEDIA_TYPES[path.suffix], headers=headers)

    return router
