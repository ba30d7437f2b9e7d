"""The demo page and the API docs in a real headless Chromium (Debian's, driven by Playwright).

The page runs against the live test service (a tiny random model in a real uvicorn): it uploads a real
Helen-50 face and the checks read what the browser shows, images' natural sizes and the landmark
canvas's pixels included. Every request the browser makes is recorded, and any that would leave the
test server is refused, as it would fail on a machine without internet access: the pages must work
offline.

A full-page screenshot of the page with a result is saved as a test artefact
(`build/test-artifacts/demo-page.png`; the folder can be changed with FACESR_TEST_ARTIFACTS).
Chromium comes from `scripts/ensure-chromium.sh` (`make test` runs it); FACESR_CHROMIUM names another binary.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from pydantic import SecretStr

from facesr.model.inference import FaceSR
from facesr.service.api.app import create_app
from facesr.service.settings import ServiceSettings
from tests.service.conftest import LiveServer, RunningService, start_embedded

pytestmark = pytest.mark.browser

REPO_ROOT = Path(__file__).resolve().parents[3]
CHROMIUM = os.environ.get("FACESR_CHROMIUM", "/usr/bin/chromium")
# What works headless on a CI container as root, with nothing fetched in the background.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
NO_QUEUE = "redis://127.0.0.1:1/0"  # the docs and the page itself need no model
API_KEY = "demo-page-key-0123456789"
WAIT_MS = 30_000


def artifacts_dir() -> Path:
    folder = Path(os.environ.get("FACESR_TEST_ARTIFACTS", REPO_ROOT / "build" / "test-artifacts"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


# -- the browser ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def browser_context(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One Chromium with a fresh profile for the module; each test opens its own page."""
    if not (Path(CHROMIUM).is_file() and os.access(CHROMIUM, os.X_OK)) and shutil.which(CHROMIUM) is None:
        pytest.fail(
            f"Chromium not found at {CHROMIUM}: run scripts/ensure-chromium.sh (as root it installs "
            "Debian's chromium and chromium-driver; `make test` runs it), or set FACESR_CHROMIUM"
        )
    if importlib.util.find_spec("playwright") is None:
        pytest.fail("the playwright package is missing: install the dev extra (pip install -e '.[dev]')")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")),
            executable_path=CHROMIUM,  # never Playwright's own browser builds
            headless=True,
            args=CHROMIUM_FLAGS,
            viewport={"width": 1280, "height": 900},
        )
        context.set_default_timeout(WAIT_MS)
        try:
            yield context
        finally:
            context.close()


@dataclass
class Tab:
    """A browser page for one origin, and what it asked for.

    `requests` is every URL the page asked for, `blocked` those the page's own Content-Security-Policy
    stopped before any connection, and `refused` those that reached the network layer for another
    origin: they are aborted, as they would fail offline, and recorded.
    """

    page: Any
    origin: str
    requests: list[str] = field(default_factory=list)
    blocked: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # console errors and uncaught exceptions

    def local(self, url: str) -> bool:
        return url.startswith(("data:", "blob:", self.origin + "/"))

    def external(self) -> list[str]:
        return [url for url in self.requests if not self.local(url)]

    def goto(self, path: str) -> None:
        response = self.page.goto(self.origin + path)
        assert response is not None and response.status == 200, path

    def eval(self, script: str, arg: Any = None) -> Any:
        return self.page.evaluate(script, arg)


@pytest.fixture
def open_tab(browser_context: Any) -> Iterator[Any]:
    """`open_tab(origin)`: a new page that records its requests and may reach `origin` only."""
    pages = []

    def opener(origin: str) -> Tab:
        page = browser_context.new_page()
        pages.append(page)
        tab = Tab(page, origin)

        def route(intercepted: Any) -> None:
            if tab.local(intercepted.request.url):
                intercepted.continue_()
            else:
                tab.refused.append(intercepted.request.url)
                intercepted.abort("internetdisconnected")

        def failed(request: Any) -> None:
            if "csp" in (request.failure or "").lower():  # "csp", or "net::ERR_BLOCKED_BY_CSP"
                tab.blocked.append(request.url)

        page.route("**/*", route)
        page.on("request", lambda request: tab.requests.append(request.url))
        page.on("requestfailed", failed)

        def console(message: Any) -> None:
            if message.type == "error":
                tab.errors.append(message.text)

        page.on("console", console)
        page.on("pageerror", lambda error: tab.errors.append(str(error)))
        return tab

    yield opener
    for page in pages:
        page.close()


@pytest.fixture(scope="module")
def page_server() -> Iterator[LiveServer]:
    """The API without a model (its queue's Redis is absent): enough for the docs and the page itself."""
    server = LiveServer(create_app(ServiceSettings(redis_url=NO_QUEUE)))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def bundled_service() -> Iterator[RunningService]:
    """The embedded service with the bundled checkpoint: the page shows the product's own model."""
    service = start_embedded(FaceSR.from_checkpoint(None, device="cpu"))
    try:
        yield service
    finally:
        service.close()


@dataclass(frozen=True)
class HelenFace:
    """A Helen-50 test face (128 x 128) and its 68 annotated landmarks (x, y in its pixels)."""

    path: Path
    landmarks: np.ndarray


@pytest.fixture
def helen_face(shared_dir: Path) -> HelenFace:
    folder = shared_dir / "data" / "helen-50"
    names = (folder / "list.txt").read_text().split()
    if not names:
        pytest.fail(f"no Helen-50 faces listed in {folder / 'list.txt'}")
    return HelenFace(folder / "HR" / names[0], np.load(folder / "landmarks68.npy")[0])


# -- reading the page ----------------------------------------------------------------------------------
NATURAL_SIZES = """async (ids) => {
  const images = ids.map((id) => document.getElementById(id));
  await Promise.all(images.map((image) => image.decode()));
  return Object.fromEntries(images.map((image) => [image.id, [image.naturalWidth, image.naturalHeight]]));
}"""

CANVAS_INK = """() => {
  const canvas = document.getElementById("landmarks-canvas");
  const pixels = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
  let drawn = 0;
  for (let i = 3; i < pixels.length; i += 4) if (pixels[i] > 0) drawn++;
  return {drawn, width: canvas.width, height: canvas.height};
}"""


def wait_for_answer(tab: Tab, action: Any) -> Any:
    """Run `action` and return the page's POST /v1/super-resolve response."""
    with tab.page.expect_response(lambda r: "/v1/super-resolve" in r.url, timeout=WAIT_MS) as answer:
        action()
    return answer.value


def drop_file(tab: Tab, name: str, content: str, media_type: str) -> None:
    """Drag and drop a file made in the page onto the drop zone, as a person would."""
    transfer = tab.page.evaluate_handle(
        """([name, content, type]) => {
            const transfer = new DataTransfer();
            transfer.items.add(new File([content], name, {type}));
            return transfer;
        }""",
        [name, content, media_type],
    )
    tab.page.dispatch_event("#drop", "drop", {"dataTransfer": transfer})


# -- the tests -----------------------------------------------------------------------------------------
def test_a_face_uploaded_on_the_demo_page_shows_every_view(
    bundled_service: RunningService, open_tab: Any, helen_face: HelenFace
) -> None:
    tab = open_tab(bundled_service.url)
    tab.goto("/")
    assert tab.page.is_hidden("#key-row")  # no API keys on this service
    response = wait_for_answer(tab, lambda: tab.page.set_input_files("#file", str(helen_face.path)))
    request = response.request
    assert response.status == 200
    assert request.method == "POST" and request.headers["accept"] == "application/json"
    assert "steps=true&landmarks=true&compare=true" in request.url
    body = response.json()
    tab.page.wait_for_selector("#result", state="visible")

    sizes = tab.eval(NATURAL_SIZES, ["lr-image", "bicubic-image", "sr-image", "landmarks-image"])
    assert sizes == {
        "lr-image": [16, 16],
        "bicubic-image": [128, 128],
        "sr-image": [128, 128],
        "landmarks-image": [128, 128],
    }
    lr_style = tab.eval("getComputedStyle(document.getElementById('lr-image')).imageRendering")
    assert lr_style == "pixelated"
    assert tab.eval("document.getElementById('lr-image').getBoundingClientRect().width") >= 128

    ink = tab.eval(CANVAS_INK)
    assert body["landmarks"] is not None and len(body["landmarks"]) == 68
    # The bundled model's points are on the face: mean error under a fifth of the outer-eye-corner distance
    # (its card's Helen-50 NRMSE is below 0.09; points scattered at random are off by about 1).
    found = np.array([[point["x"], point["y"]] for point in body["landmarks"]])
    interocular = np.linalg.norm(helen_face.landmarks[36] - helen_face.landmarks[45])
    error = np.linalg.norm(found - helen_face.landmarks, axis=1).mean() / interocular
    assert error < 0.2, f"landmarks off by {error:.2f} of the interocular distance"
    assert ink["drawn"] > 68 * 4, ink  # 68 dots and the lines between them
    assert tab.page.is_hidden("#error")

    # The step slider: the last step is the result; the first is another image.
    steps = body["steps"]
    assert len(steps) >= 2
    shown_last = tab.eval("document.getElementById('sr-image').src")
    assert shown_last.endswith(steps[-1]) and steps[-1] == body["image"]
    assert tab.page.text_content("#step-label") == f"{len(steps)} of {len(steps)}"
    tab.page.fill("#step", "1")
    shown_first = tab.eval("document.getElementById('sr-image').src")
    assert shown_first != shown_last and shown_first.endswith(steps[0])
    assert tab.page.text_content("#step-label") == f"1 of {len(steps)}"
    assert tab.eval(NATURAL_SIZES, ["sr-image"]) == {"sr-image": [128, 128]}
    tab.page.fill("#step", str(len(steps)))

    # Timings, model id, batch size and the input policy's record, as the API answered them.
    timings = tab.page.inner_text("#timings")
    for phase in body["timings_ms"]:
        assert phase in timings
    meta = tab.page.inner_text("#meta")
    assert body["model_id"] in meta and str(body["batch_size"]) in meta
    record = tab.page.inner_text("#input-record")
    assert f"{body['input']['format']}, 128 x 128" in record
    warnings = [item.strip() for item in tab.page.locator("#warnings code").all_inner_texts()]
    assert warnings == [warning["code"] for warning in body["input"]["warnings"]]
    assert warnings, "a 128 x 128 upload carries the larger-than-output warning"

    tab.page.locator("#step").blur()  # no focus ring in the screenshot
    path = artifacts_dir() / "demo-page.png"
    tab.page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 10_000
    assert tab.external() == [], f"requests outside the test server: {tab.external()}"
    assert tab.errors == []


def test_an_upload_that_is_not_an_image_shows_the_problem_title(
    embedded_service: RunningService, open_tab: Any
) -> None:
    tab = open_tab(embedded_service.url)
    tab.goto("/")
    response = wait_for_answer(tab, lambda: drop_file(tab, "notes.txt", "not a face", "text/plain"))
    problem = response.json()
    assert response.status >= 400 and response.headers["content-type"] == "application/problem+json"
    tab.page.wait_for_selector("#error", state="visible")
    assert tab.page.text_content("#error-title") == problem["title"]
    assert tab.page.text_content("#error-detail") == problem["detail"]
    assert tab.page.is_hidden("#result")
    assert tab.external() == []


def test_with_api_keys_the_page_asks_for_one_and_sends_it(open_tab: Any) -> None:
    server = LiveServer(create_app(ServiceSettings(redis_url=NO_QUEUE, api_keys=[SecretStr(API_KEY)])))
    server.start()
    try:
        tab = open_tab(server.url)
        tab.goto("/")
        tab.page.wait_for_selector("#key-row", state="visible")  # the OpenAPI document declares the key
        without = wait_for_answer(tab, lambda: drop_file(tab, "face.png", "x", "image/png"))
        assert without.status == 401
        tab.page.wait_for_selector("#error", state="visible")
        assert tab.page.text_content("#error-title") == without.json()["title"]
        # With the key the request passes the guard and meets the next problem: no queue behind it.

        def enter_key() -> None:
            tab.page.fill("#api-key", API_KEY)
            tab.page.press("#api-key", "Enter")  # a changed key sends the last file again

        with_key = wait_for_answer(tab, enter_key)
        assert with_key.request.headers["x-api-key"] == API_KEY
        assert with_key.status == 503
        tab.page.wait_for_function(
            "(title) => document.getElementById('error-title').textContent === title",
            arg=with_key.json()["title"],
        )
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("path", "operation"),
    [
        ("/docs", "#swagger-ui .opblock-summary-path[data-path='/v1/super-resolve']"),
        ("/redoc", 'h2:has-text("Super-resolve one face (16x16 -> 128x128)")'),
    ],
    ids=["swagger-ui", "redoc"],
)
def test_the_api_docs_render_offline(
    page_server: LiveServer, open_tab: Any, path: str, operation: str
) -> None:
    tab = open_tab(page_server.url)
    tab.goto(path)
    tab.page.wait_for_selector(operation, state="visible")
    tab.page.wait_for_load_state("networkidle")  # every request made and answered (or failed)
    if path == "/docs":
        shown = tab.page.locator("#swagger-ui .opblock-summary-path").all_inner_texts()
        assert {"/v1/super-resolve", "/v1/super-resolve/batch", "/v1/models"} <= {p.strip() for p in shown}
    # Nothing reached the network for another origin. ReDoc's footer logo is the one thing its bundle
    # asks for elsewhere (Redocly's CDN); the page's Content-Security-Policy stops it before any
    # connection is made (and the console says so). Swagger UI asks for nothing elsewhere at all.
    assert tab.refused == [], f"the page reached outside the server: {tab.refused}"
    assert tab.external() == tab.blocked, "every request for another origin must be stopped by the policy"
    if path == "/docs":
        assert tab.external() == []
    assert [error for error in tab.errors if "Content Security Policy" not in error] == []
    assert any(url.endswith("/openapi.json") for url in tab.requests)


def test_the_demo_page_is_404_when_turned_off(open_tab: Any) -> None:
    server = LiveServer(create_app(ServiceSettings(redis_url=NO_QUEUE, demo_page=False)))
    server.start()
    try:
        tab = open_tab(server.url)
        response = tab.page.goto(server.url + "/")
        assert response is not None and response.status == 404
        assert "not-found" in tab.page.inner_text("body") or "Not Found" in tab.page.inner_text("body")
        with httpx.Client(base_url=server.url) as client:
            assert client.get("/docs").status_code == 200
    finally:
        server.stop()
