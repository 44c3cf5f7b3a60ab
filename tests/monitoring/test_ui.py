"""The built-in dashboard: its pages and files served by a real server, and (where Debian's
`chromium` is installed) the page itself in headless Chromium, driven over the DevTools
protocol: the graph draws every pushed series on its canvas, the table lists them, errors show
their type, and the alerts, targets and silences pages read the live API.

Set SCALELAB_UI_SCREENSHOTS=<folder> to keep a PNG of each page the browser tests look at.
"""

from __future__ import annotations

import base64
import contextlib
import fnmatch
import json
import os
import shutil
import signal
import subprocess
import time
import tomllib
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry, Gauge, start_http_server

from scalelab.monitoring import ui
from scalelab.monitoring.server import create_app
from scalelab.monitoring.settings import MonitoringSettings
from scalelab.web import ServerThread

from .support import running_server, wait_for

UPLOT_VERSION = "1.6.32"
ROOT = Path(__file__).resolve().parents[2]
UI_FILES = ["index.html", "app.js", "style.css"]
VENDOR_FILES = ["uPlot.iife.min.js", "uPlot.min.css", "uPlot.LICENSE", "README.md"]
JS = "text/javascript; charset=utf-8"
CSS = "text/css; charset=utf-8"
HTML = "text/html; charset=utf-8"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[str]:
    with running_server(tmp_path / "data") as url:
        yield url


class _Refs(HTMLParser):
    """The src and href attributes of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.refs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in ("src", "href") and value:
                self.refs.append(value)


# -- HTTP: what the server hands a browser ----------------------------------------------------


def test_root_redirects_to_the_graph_page(server: str) -> None:
    reply = httpx.get(f"{server}/")
    assert reply.status_code == 302
    assert reply.headers["location"] == "graph"  # relative: works behind a path prefix too
    page = httpx.get(f"{server}/", follow_redirects=True)
    assert page.status_code == 200 and str(page.url) == f"{server}/graph"
    assert page.headers["content-type"] == HTML


@pytest.mark.parametrize("page", ui.PAGES)
def test_every_page_serves_the_dashboard(server: str, page: str) -> None:
    reply = httpx.get(f"{server}/{page}", params={"g0.expr": "up"})
    assert reply.status_code == 200
    assert reply.headers["content-type"] == HTML
    assert reply.headers["cache-control"] == "no-cache"
    assert '<script src="ui/app.js" defer></script>' in reply.text
    again = httpx.get(f"{server}/{page}", headers={"If-None-Match": reply.headers["etag"]})
    assert again.status_code == 304 and again.content == b""


@pytest.mark.parametrize(
    ("path", "content_type", "starts"),
    [
        ("app.js", JS, b"// scalelab monitoring dashboard"),
        ("style.css", CSS, b"/* scalelab monitoring dashboard"),
        ("index.html", HTML, b"<!doctype html>"),
        (
            "vendor/uPlot.iife.min.js",
            JS,
            f"/*! https://github.com/leeoniya/uPlot (v{UPLOT_VERSION}) */".encode(),
        ),
        ("vendor/uPlot.min.css", CSS, b".uplot"),
        ("vendor/uPlot.LICENSE", "text/plain; charset=utf-8", b"The MIT License"),
    ],
)
def test_files_are_served_with_their_content_types(
    server: str, path: str, content_type: str, starts: bytes
) -> None:
    reply = httpx.get(f"{server}/ui/{path}")
    assert reply.status_code == 200
    assert reply.headers["content-type"] == content_type
    assert reply.content.startswith(starts)
    assert reply.content == (ui.UI_DIR / path).read_bytes()
    assert int(reply.headers["content-length"]) == len(reply.content)
    head = httpx.head(f"{server}/ui/{path}")
    assert head.status_code == 200 and head.headers["etag"] == reply.headers["etag"]


def test_only_the_dashboards_files_are_served(server: str) -> None:
    for path in ("nope.js", "../ui.py", "%2e%2e/ui.py", "..%2fserver.py", "vendor", ""):
        reply = httpx.get(f"{server}/ui/{path}")
        assert reply.status_code == 404, path
    assert httpx.get(f"{server}/rules-page").status_code == 404
    assert httpx.get(f"{server}/api/v1/query", params={"query": "1"}).status_code == 200


def test_the_page_references_files_that_exist(server: str) -> None:
    parser = _Refs()
    parser.feed(httpx.get(f"{server}/graph").text)
    assets = [r for r in parser.refs if r.startswith("ui/")]
    assert sorted(assets) == [
        "ui/app.js",
        "ui/style.css",
        "ui/vendor/uPlot.iife.min.js",
        "ui/vendor/uPlot.min.css",
    ]
    for ref in parser.refs:
        assert not ref.startswith("/"), f"{ref}: absolute paths break behind a path prefix"
        if ref.startswith("ui/"):
            assert (ui.UI_DIR / ref.removeprefix("ui/")).is_file()
            assert httpx.get(f"{server}/{ref}").status_code == 200, ref


def test_the_vendored_library_is_noted_with_its_version_and_licence() -> None:
    vendor = ui.UI_DIR / "vendor"
    assert sorted(p.name for p in vendor.iterdir()) == sorted(VENDOR_FILES)
    assert f"| uPlot | {UPLOT_VERSION} |" in (vendor / "README.md").read_text()
    assert "Leon Sorokin" in (vendor / "uPlot.LICENSE").read_text()


def test_the_files_ship_in_the_wheel() -> None:
    """Every dashboard file matches the package-data globs of pyproject.toml."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    globs = config["tool"]["setuptools"]["package-data"]["scalelab"]
    package = ROOT / "src" / "scalelab"
    files = [p for p in ui.UI_DIR.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    assert len(files) == len(UI_FILES) + len(VENDOR_FILES)
    for path in files:
        rel = path.relative_to(package).as_posix()
        # setuptools' globs do not cross "/" with "*"
        assert any(fnmatch.fnmatch(rel, g) and rel.count("/") == g.count("/") for g in globs), (
            f"{rel} is not in [tool.setuptools.package-data]"
        )


def test_app_js_is_valid_javascript() -> None:
    node = shutil.which("node")
    assert node is not None, "node is not installed (every machine kind here has Node.js)"
    check = subprocess.run(
        [node, "--check", str(ui.UI_DIR / "app.js")], capture_output=True, text=True, timeout=30
    )
    assert check.returncode == 0, check.stderr


def test_load_assets_needs_an_index(tmp_path: Path) -> None:
    (tmp_path / "app.js").write_text("1")
    with pytest.raises(RuntimeError, match="index.html"):
        ui.load_assets(tmp_path)
    (tmp_path / "index.html").write_text("<!doctype html>")
    (tmp_path / "notes.txt").write_text("not served")
    assert sorted(ui.load_assets(tmp_path)) == ["app.js", "index.html"]


# -- a real browser ---------------------------------------------------------------------------


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


class Browser:
    """Headless Chromium driven over the DevTools protocol on a WebSocket (no WebDriver)."""

    def __init__(self, binary: str, profile: Path) -> None:
        from websockets.sync.client import connect

        self.log_path = profile.parent / "chromium.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [
                binary,
                "--headless=new",
                "--no-sandbox",  # CI runs as root
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-extensions",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--mute-audio",
                "--hide-scrollbars",
                "--force-device-scale-factor=1",
                "--window-size=1280,1000",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
                f"--user-data-dir={profile}",
                "about:blank",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its helper processes share our browser's group id
        )
        self.events: list[dict[str, Any]] = []
        self._next_id = 0
        self._stack = contextlib.ExitStack()
        try:
            port_file = profile / "DevToolsActivePort"

            def devtools_port() -> int | None:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"chromium exited: {self._log_tail()}")
                lines = port_file.read_text().split() if port_file.exists() else []
                return int(lines[0]) if len(lines) >= 2 else None

            port = wait_for(devtools_port, 30, "chromium's DevTools port")
            targets = httpx.get(f"http://127.0.0.1:{port}/json/list", timeout=10).json()
            page = next(t for t in targets if t["type"] == "page")
            self.ws = self._stack.enter_context(
                connect(page["webSocketDebuggerUrl"], max_size=None, open_timeout=10)
            )
            for domain in ("Page", "Runtime", "Log"):
                self.call(f"{domain}.enable")
        except BaseException:
            self.close()
            raise

    def _log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-2000:]

    def call(self, method: str, timeout: float = 20.0, **params: Any) -> dict[str, Any]:
        self._next_id += 1
        wanted = self._next_id
        self.ws.send(json.dumps({"id": wanted, "method": method, "params": params}))
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no answer to {method} within {timeout}s")
            message = json.loads(self.ws.recv(timeout=remaining))
            if message.get("id") == wanted:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})  # type: ignore[no-any-return]
            if "method" in message:
                self.events.append(message)

    def js(self, expression: str) -> Any:
        result = self.call(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression!r} threw: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait(self, expression: str, timeout: float = 15.0) -> Any:
        """Polls a JS expression until it is truthy; fails with what the page shows."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.js(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                text = self.js("document.body.innerText.slice(0, 1500)")
                raise AssertionError(
                    f"{expression} still {value!r} after {timeout}s; errors: "
                    f"{self.errors()}; page text:\n{text}"
                )
            time.sleep(0.1)

    def open(self, url: str) -> None:
        self.call("Page.navigate", url=url)
        self.wait("document.readyState === 'complete' && typeof uPlot === 'function'")

    def errors(self) -> list[str]:
        """Uncaught exceptions and console.error calls so far (failed requests are logged as
        network entries and are not counted: a 400 for a bad query is expected)."""
        out = []
        for event in self.events:
            if event["method"] == "Runtime.exceptionThrown":
                out.append(json.dumps(event["params"]["exceptionDetails"])[:500])
            elif event["method"] == "Runtime.consoleAPICalled":
                if event["params"]["type"] in ("error", "assert"):
                    out.append(json.dumps(event["params"]["args"])[:500])
            elif event["method"] == "Log.entryAdded":
                entry = event["params"]["entry"]
                if entry["level"] == "error" and entry.get("source") != "network":
                    out.append(entry["text"])
        return out

    def type(self, selector: str, text: str) -> None:
        """Focus a field, clear it, and type as a user would (input events and all)."""
        self.js(
            f"(() => {{ const f = document.querySelector({json.dumps(selector)}); "
            "f.focus(); f.select(); })()"
        )
        self.call("Input.insertText", text=text)

    def key(self, key: str, code: str, key_code: int) -> None:
        for kind in ("rawKeyDown", "keyUp"):
            self.call(
                "Input.dispatchKeyEvent",
                type=kind,
                key=key,
                code=code,
                windowsVirtualKeyCode=key_code,
                nativeVirtualKeyCode=key_code,
            )

    def click(self, selector: str) -> None:
        self.js(f"document.querySelector({json.dumps(selector)}).click()")

    def screenshot(self, name: str) -> None:
        folder = os.environ.get("SCALELAB_UI_SCREENSHOTS")
        if not folder:
            return
        shot = self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / f"{name}.png").write_bytes(base64.b64decode(shot["data"]))

    def close(self) -> None:
        self._stack.close()
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        with contextlib.suppress(ProcessLookupError):  # helpers left behind, if any
            os.killpg(self.proc.pid, signal.SIGKILL)
        self._log.close()


RULES = """\
groups:
  - name: demo
    interval: 100ms
    rules:
      - record: room:demo_temperature_celsius:max
        expr: max by (room) (demo_temperature_celsius)
      - alert: DemoHot
        expr: demo_temperature_celsius > 25
        labels: {severity: page}
        annotations: {summary: '{{ $labels.room }} is at {{ $value }} degrees'}
      - alert: DemoWarm
        expr: demo_temperature_celsius > 20
        for: 1h
      - alert: DemoFrozen
        expr: demo_temperature_celsius < -50
"""


@pytest.fixture(scope="module")
def dashboard(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A server with two pushed series over the last hour, rules (firing, pending, inactive),
    and two scrape pools: a live exporter and a port nothing listens on."""
    tmp = tmp_path_factory.mktemp("dashboard")
    registry = CollectorRegistry()
    Gauge("demo_exporter_ready", "Ready", registry=registry).set(1)
    exporter, exporter_thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    servers: list[ServerThread] = []
    try:
        (tmp / "rules.yml").write_text(RULES)
        (tmp / "prometheus.yml").write_text(
            "global:\n  scrape_interval: 500ms\n  scrape_timeout: 400ms\nscrape_configs:\n"
            "  - job_name: app\n    static_configs:\n"
            f"      - targets: ['127.0.0.1:{exporter.server_port}']\n"
            "  - job_name: broken\n    static_configs:\n      - targets: ['127.0.0.1:1']\n"
        )
        settings = MonitoringSettings.from_env(
            {},
            data=tmp / "data",
            port=0,
            rule_files=str(tmp / "rules.yml"),
            scrape_config=tmp / "prometheus.yml",
        )
        servers.append(ServerThread(create_app(settings)).start())
        url = servers[0].url
        start = int(time.time()) - 3600
        lines = [
            # a sawtooth every 6 minutes, ending on its peak: kitchen 26, garage 13
            f"demo.temperature_celsius room={room} {start + 30 * i} {base + (i + 11) % 12 / 2.2}"
            for room, base in (("kitchen", 21.0), ("garage", 8.0))
            for i in range(121)
        ]
        reply = httpx.post(f"{url}/api/v1/push", content="\n".join(lines).encode())
        assert reply.status_code == 204, reply.text
        yield url
    finally:
        for s in servers:
            s.stop()
        exporter.shutdown()
        exporter.server_close()
        exporter_thread.join(5)


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    binary = _chromium()
    if binary is None:  # .ci/run installs it; a browser test that cannot run must not pass
        pytest.fail("no chromium on PATH (Debian: apt-get install chromium)")
    tmp = tmp_path_factory.mktemp("chromium")
    b = Browser(binary, tmp / "profile")
    try:
        yield b
    finally:
        b.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Browser]:
    """The browser, checked after each test for uncaught errors in the page."""
    browser.events.clear()
    yield browser
    assert browser.errors() == []


SERIES = 'demo_temperature_celsius{room="kitchen"}'

# Counts the canvas pixels drawn in a legend swatch's colour (the series' stroke).
COUNT_SERIES_PIXELS = """
(() => {
  const canvas = document.querySelector('#chart canvas');
  const ctx = canvas.getContext('2d');
  const { data } = ctx.getImageData(0, 0, canvas.width, canvas.height);
  return [...document.querySelectorAll('#legend .swatch')].map((swatch) => {
    const [r, g, b] = getComputedStyle(swatch).backgroundColor.match(/\\d+/g).map(Number);
    let n = 0;
    for (let i = 0; i < data.length; i += 4) {
      const d = Math.abs(data[i] - r) + Math.abs(data[i + 1] - g) + Math.abs(data[i + 2] - b);
      if (data[i + 3] > 200 && d < 40) n += 1;
    }
    return n;
  });
})()
"""


def test_graph_draws_every_series_with_a_legend(dashboard: str, page: Browser) -> None:
    page.open(f"{dashboard}/graph?g0.expr=demo_temperature_celsius&g0.range_input=1h")
    page.wait("document.querySelectorAll('#legend li').length === 2")
    legend = page.js("[...document.querySelectorAll('#legend li')].map((li) => li.innerText)")
    assert sorted(legend) == [
        'demo_temperature_celsius{room="garage"}',
        'demo_temperature_celsius{room="kitchen"}',
    ]
    assert "Result series: 2" in page.js("document.querySelector('#query-status').innerText")
    assert page.js("document.querySelector('#range').value") == "3600"
    assert page.js("document.querySelector('#step-auto').innerText") == "auto: 14s"
    assert page.js("getComputedStyle(document.querySelector('#table-controls')).display") == "none"
    # each series' line is on the canvas in its own colour
    pixels = page.wait(
        f"(() => {{ const n = {COUNT_SERIES_PIXELS}; "
        "return n.length === 2 && n.every((c) => c > 100) && n; })()"
    )
    assert len(pixels) == 2
    page.screenshot("graph")

    # hovering the plot shows the nearest series and its value
    box = page.js(
        "(() => { const r = document.querySelector('.u-over').getBoundingClientRect();"
        " return [r.left, r.top, r.width, r.height]; })()"
    )
    for x_fraction in (0.5, 0.52):  # two moves: uPlot reacts to movement
        page.call(
            "Input.dispatchMouseEvent",
            type="mouseMoved",
            x=box[0] + box[2] * x_fraction,
            y=box[1] + box[3] * 0.5,
        )
    tip = page.wait(
        "!document.querySelector('#tooltip').hidden && document.querySelector('#tooltip').innerText"
    )
    assert "demo_temperature_celsius" in tip and "room=" in tip
    page.screenshot("graph-hover")

    # dragging across the plot queries that span (as Prometheus does)
    page.call(
        "Input.dispatchMouseEvent", type="mouseMoved", x=box[0] + box[2] * 0.25, y=box[1] + 50
    )
    page.call(
        "Input.dispatchMouseEvent",
        type="mousePressed",
        x=box[0] + box[2] * 0.25,
        y=box[1] + 50,
        button="left",
        clickCount=1,
    )
    for x_fraction in (0.4, 0.5):
        page.call(
            "Input.dispatchMouseEvent",
            type="mouseMoved",
            x=box[0] + box[2] * x_fraction,
            y=box[1] + 60,
            button="left",
            buttons=1,
        )
    page.call(
        "Input.dispatchMouseEvent",
        type="mouseReleased",
        x=box[0] + box[2] * 0.5,
        y=box[1] + 60,
        button="left",
        clickCount=1,
    )
    zoomed = page.wait(
        "document.querySelector('#end').value && Number(document.querySelector('#range').value)"
    )
    assert 800 < zoomed < 1000  # a quarter of the hour
    assert "g0.end_input=" in page.js("location.search")
    page.wait("document.querySelectorAll('#legend li').length === 2")

    # clicking a legend entry isolates that series
    page.js(
        "[...document.querySelectorAll('#legend li')]"
        f".find((li) => li.innerText === {json.dumps(SERIES)}).click()"
    )
    off = page.js("[...document.querySelectorAll('#legend li.off')].map((li) => li.innerText)")
    assert off == ['demo_temperature_celsius{room="garage"}']


def test_table_shows_the_series_and_typed_queries(dashboard: str, page: Browser) -> None:
    page.open(f"{dashboard}/table?g0.expr=demo_temperature_celsius")
    page.wait("document.querySelectorAll('#result-table tbody tr').length === 2")
    rows = page.js(
        "[...document.querySelectorAll('#result-table tbody tr')]"
        ".map((tr) => [...tr.cells].map((td) => td.innerText))"
    )
    assert sorted(r[0] for r in rows) == [
        'demo_temperature_celsius{room="garage"}',
        'demo_temperature_celsius{room="kitchen"}',
    ]
    assert sorted(float(r[1]) for r in rows) == [13.0, 26.0]  # the last pushed samples
    assert page.js("getComputedStyle(document.querySelector('#graph-controls')).display") == "none"
    assert page.js("getComputedStyle(document.querySelector('#graph-view')).display") == "none"
    page.screenshot("table")

    # typed into the box and run with Enter, as a user would; the URL follows
    page.type("#expr", "sum(demo_temperature_celsius)")
    page.key("Enter", "Enter", 13)
    page.wait(
        "document.querySelectorAll('#result-table tbody tr').length === 1 && "
        "document.querySelector('#result-table tbody td.value').innerText === '39'"
    )
    assert "g0.expr=sum%28demo_temperature_celsius%29" in page.js("location.search")
    page.type("#expr", "1 + 1")
    page.key("Enter", "Enter", 13)
    page.wait("document.querySelector('#result-table').dataset.resultType === 'scalar'")
    assert page.js("document.querySelector('#result-table tbody td.value').innerText") == "2"

    # the Graph tab keeps the expression and draws it
    page.type("#expr", "demo_temperature_celsius")
    page.click(".tabs a[data-tab='graph']")
    page.wait(
        "location.pathname.endsWith('/graph') && "
        "document.querySelectorAll('#legend li').length === 2"
    )


def test_api_errors_show_their_type_and_message(dashboard: str, page: Browser) -> None:
    page.open(f"{dashboard}/graph?g0.expr=sum((")
    text = page.wait(
        "!document.querySelector('#query-error').hidden && "
        "document.querySelector('#query-error').innerText"
    )
    assert text.startswith("bad_data: ")
    assert page.js("document.querySelector('#graph-view').hidden") is True
    page.screenshot("error")
    page.open(f"{dashboard}/graph?g0.expr=up&g0.range_input=2w&g0.step_input=1")
    text = page.wait(
        "!document.querySelector('#query-error').hidden && "
        "document.querySelector('#query-error').innerText"
    )
    assert "exceeded maximum resolution" in text


def test_metric_names_complete_from_the_api(dashboard: str, page: Browser) -> None:
    page.open(f"{dashboard}/graph")
    page.js("localStorage.removeItem('scalelab.monitoring.history')")  # metric names only
    page.open(f"{dashboard}/graph")
    page.type("#expr", "demo_temp")
    options = page.wait(
        "!document.querySelector('#suggest').hidden && "
        "[...document.querySelectorAll('#suggest li')].map((li) => li.innerText).join('|')"
    )
    assert options.startswith("demo_temperature_celsius")
    page.screenshot("autocomplete")
    page.key("Tab", "Tab", 9)
    assert page.js("document.querySelector('#expr').value") == "demo_temperature_celsius"
    page.type("#expr", "rat")
    page.wait(
        "[...document.querySelectorAll('#suggest li')].some("
        "(li) => li.innerText.startsWith('rate'))"
    )


def test_alerts_page_lists_rules_by_state(dashboard: str, page: Browser) -> None:
    page.open(f"{dashboard}/alerts")
    states = page.wait(
        "(() => { const s = Object.fromEntries([...document.querySelectorAll('details.rule')]"
        ".map((d) => [d.dataset.rule, d.className])); "
        "return s.DemoHot === 'rule firing' && s.DemoWarm === 'rule pending' && s; })()",
        timeout=20,
    )
    assert states["DemoFrozen"] == "rule inactive"
    hot = page.js("document.querySelector('details.rule[data-rule=DemoHot]').innerText")
    assert 'room="kitchen"' in hot and 'severity="page"' in hot
    assert "kitchen is at 26 degrees" in hot
    assert "room:demo_temperature_celsius:max" in page.js(
        "document.querySelector('#rules-body').innerText"
    )
    summary = page.js("document.querySelector('#alerts-summary').innerText")
    assert summary.startswith("1 firing and 1 pending alerts")
    page.screenshot("alerts")
    # the firing filter hides the rest
    page.click("#page-alerts input[data-state=inactive]")
    page.click("#page-alerts input[data-state=pending]")
    shown = page.js("[...document.querySelectorAll('details.rule')].map((d) => d.dataset.rule)")
    assert shown == ["DemoHot"]


def test_targets_page_shows_pools_health_and_errors(dashboard: str, page: Browser) -> None:
    page.open(f"{dashboard}/targets")
    page.wait(
        "!!document.querySelector('details.pool[data-pool=app] tr.target.up') && "
        "!!document.querySelector('details.pool[data-pool=broken] tr.target.down')",
        timeout=20,
    )
    broken = page.js("document.querySelector('details.pool[data-pool=broken]').textContent")
    assert "0/1 up" in broken and "127.0.0.1:1" in broken
    assert page.js("document.querySelector('tr.target.down td.error-cell').innerText") != ""
    app = page.js("document.querySelector('details.pool[data-pool=app]').textContent")
    assert "1/1 up" in app and 'job="app"' in app
    last_scrape = page.js("document.querySelector('tr.target.up').cells[3].innerText")
    assert last_scrape == "just now" or last_scrape.endswith("s ago"), last_scrape
    page.screenshot("targets")


def test_silences_are_created_and_expired(dashboard: str, page: Browser) -> None:
    page.open(f"{dashboard}/silences?matcher=alertname%3D%22DemoHot%22")
    page.wait(
        "document.querySelector('#silence-new').open && "
        "document.querySelector('#silence-matchers .name').value === 'alertname'"
    )
    assert page.js("document.querySelector('#silence-matchers .value').value") == "DemoHot"
    page.type("#silence-by", "ui-test")
    page.type("#silence-comment", "checking the dashboard")
    page.click("#silence-form button[type=submit]")
    created = page.wait("document.querySelector('#silence-created').innerText")
    silence_id = created.removeprefix("Created silence ")
    page.wait(f"!!document.querySelector('tr.silence[data-id=\"{silence_id}\"]')")
    listed = httpx.get(f"{dashboard}/api/v2/silences").json()
    mine = next(s for s in listed if s["id"] == silence_id)
    assert mine["matchers"] == [
        {"name": "alertname", "value": "DemoHot", "isRegex": False, "isEqual": True}
    ]
    assert mine["createdBy"] == "ui-test" and mine["status"]["state"] == "active"
    page.screenshot("silences")

    page.click(f'tr.silence[data-id="{silence_id}"] button.expire')
    page.wait(
        "document.querySelector('#silence-states button.active').dataset.state === "
        f"'active' && !document.querySelector('tr.silence[data-id=\"{silence_id}\"]')"
    )
    state = httpx.get(f"{dashboard}/api/v2/silence/{silence_id}").json()["status"]["state"]
    assert state == "expired"

    # a bad matcher comes back as the API's error
    page.js("document.querySelector('#silence-matchers .op').value = '=~'")
    page.type("#silence-matchers .value", "(")
    page.click("#silence-form button[type=submit]")
    text = page.wait(
        "!document.querySelector('#silence-form-error').hidden && "
        "document.querySelector('#silence-form-error').innerText"
    )
    assert text.startswith("HTTP 400: ")
