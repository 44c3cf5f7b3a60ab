"""The built-in dashboard: the book's visualization box, served beside Prometheus's API.

One static page (`ui/index.html`, `ui/app.js`, `ui/style.css`, and uPlot vendored under
`ui/vendor/`) reads the same HTTP API that Grafana would: an expression box with a graph
(`/api/v1/query_range`) and a table (`/api/v1/query`), and the alerts, targets and silences
pages. Its pages live where Prometheus's do (`/graph`, `/alerts`, `/targets`, ...; `/`
redirects to `/graph`), so links into a Prometheus UI work here too, and its assets under
`/ui/`. Every URL in the page is relative, so it also works behind a reverse proxy's prefix.

The files are read once when the app is built and served from memory, each with its content
type, an ETag and `Cache-Control: no-cache` (the browser revalidates; an unchanged file costs
a 304). Only the files listed at startup are served: a path is a key, never a filesystem path.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from fastapi import FastAPI, Request
from starlette.exceptions import HTTPException
from starlette.responses import RedirectResponse, Response

UI_DIR = Path(__file__).resolve().parent / "ui"
PAGES = ("graph", "table", "alerts", "targets", "silences")
ASSET_PREFIX = "/ui/"

CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".md": "text/markdown; charset=utf-8",
    ".LICENSE": "text/plain; charset=utf-8",
}


@dataclass(frozen=True)
class Asset:
    body: bytes
    content_type: str
    etag: str

    def response(self, request: Request) -> Response:
        headers = {"ETag": self.etag, "Cache-Control": "no-cache"}
        wanted = request.headers.get("if-none-match", "")
        if wanted.strip() == "*" or self.etag in (t.strip() for t in wanted.split(",")):
            return Response(status_code=304, headers=headers)
        body = b"" if request.method == "HEAD" else self.body
        response = Response(body, media_type=self.content_type, headers=headers)
        response.headers["Content-Length"] = str(len(self.body))
        return response


def load_assets(root: Path = UI_DIR) -> dict[str, Asset]:
    """The servable files under `root`, keyed by their POSIX path relative to it."""
    assets: dict[str, Asset] = {}
    for path in sorted(root.rglob("*")):
        content_type = CONTENT_TYPES.get(path.suffix)
        if content_type is None or not path.is_file():
            continue
        body = path.read_bytes()
        etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
        assets[path.relative_to(root).as_posix()] = Asset(body, content_type, etag)
    if "index.html" not in assets:
        raise RuntimeError(f"the dashboard's index.html is missing from {root}")
    return assets


def install_ui(app: FastAPI, root: Path = UI_DIR) -> None:
    """Add the dashboard's routes: `/` -> `/graph`, the pages, and `/ui/<file>`."""
    assets = load_assets(root)
    index = assets["index.html"]

    async def home(request: Request) -> Response:
        return RedirectResponse("graph", status_code=302)

    async def page(request: Request) -> Response:
        return index.response(request)

    async def asset(request: Request) -> Response:
        found = assets.get(request.path_params["path"])
        if found is None:
            raise HTTPException(404, "no such file")
        return found.response(request)

    methods = ["GET", "HEAD"]
    app.add_api_route("/", home, methods=methods, include_in_schema=False)
    for name in PAGES:
        app.add_api_route(f"/{name}", page, methods=methods, include_in_schema=False)
    app.add_api_route(ASSET_PREFIX + "{path:path}", asset, methods=methods, include_in_schema=False)
