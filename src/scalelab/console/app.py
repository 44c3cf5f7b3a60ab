"""The console app: polls each running system's /healthz when the page is asked for."""

from __future__ import annotations

import asyncio
import html
from typing import Any

import httpx
from fastapi import APIRouter, FastAPI, Request
from starlette.responses import HTMLResponse, Response

from scalelab.systems import SYSTEMS
from scalelab.web import create_app as create_web_app
from scalelab.web import json_response

router = APIRouter()


async def _probe(client: httpx.AsyncClient, url: str | None) -> str:
    if url is None:
        return "not running"
    if not url.startswith("http"):
        return "running"
    try:
        r = await client.get(f"{url}/healthz", timeout=5.0)
    except httpx.HTTPError as exc:
        return f"down ({type(exc).__name__})"
    return "healthy" if r.status_code == 200 else f"unhealthy ({r.status_code})"


async def system_rows(urls: dict[str, str]) -> list[dict[str, Any]]:
    async with httpx.AsyncClient() as client:
        states = await asyncio.gather(*(_probe(client, urls.get(s.name)) for s in SYSTEMS))
    return [
        {
            "system": s.name,
            "chapter": s.chapter,
            "title": s.title,
            "protocol": s.protocol,
            "url": urls.get(s.name),
            "status": state if s.implemented else f"planned (issue {s.issue})",
        }
        for s, state in zip(SYSTEMS, states, strict=True)
    ]


@router.get("/api/systems")
async def systems(request: Request) -> Response:
    return json_response({"systems": await system_rows(request.app.state.urls)})


# Pages a running system serves besides its API: (path, label), shown next to its address.
EXTRA_LINKS: dict[str, tuple[tuple[str, str], ...]] = {
    "nearby_friends": (("/demo/map", "live map"),),  # walkers move with --demo
}


def _extra_links(system: str, url: str) -> str:
    return "".join(
        f" &middot; <a href='{html.escape(url)}{path}'>{html.escape(label)}</a>"
        for path, label in EXTRA_LINKS.get(system, ())
    )


@router.get("/", response_class=HTMLResponse)
async def index(request: Request) -> HTMLResponse:
    rows = await system_rows(request.app.state.urls)
    body = "".join(
        "<tr><td>{ch}</td><td>{title}</td><td>{proto}</td><td>{link}</td><td class='{cls}'>"
        "{status}</td></tr>".format(
            ch=r["chapter"],
            title=html.escape(r["title"]),
            proto=html.escape(r["protocol"]),
            link=(
                f"<a href='{html.escape(r['url'])}/healthz'>{html.escape(r['url'])}</a>"
                + _extra_links(r["system"], r["url"])
                if r["url"]
                else "-"
            ),
            cls="ok" if r["status"] == "healthy" else "no",
            status=html.escape(r["status"]),
        )
        for r in rows
    )
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>scalelab</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em}}td,th{{padding:.3em .8em;
text-align:left}}.ok{{color:#080}}.no{{color:#888}}</style></head><body>
<h1>scalelab</h1><p>Nine systems from System Design Interview vol. 2.</p>
<table><tr><th>ch.</th><th>system</th><th>protocol</th><th>address</th><th>status</th></tr>
{body}</table></body></html>"""
    return HTMLResponse(page)


def create_app(urls: dict[str, str]) -> FastAPI:
    app = create_web_app("console", routers=[router])
    app.state.urls = dict(urls)
    return app
