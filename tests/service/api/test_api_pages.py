"""The pages for people, over HTTP: /docs and /redoc reference only assets the API serves itself, the
demo page and its files are served (and shipped as package data), and FACESR_DEMO_PAGE=false removes it.

The same pages in a real browser are in test_demo_page.py.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx
import pytest

from facesr.service.api.app import create_app
from facesr.service.api.routes import demo
from facesr.service.settings import ServiceSettings
from tests.service.conftest import LiveServer

REPO_ROOT = Path(__file__).resolve().parents[3]
# These pages need no model: an API in Redis mode whose Redis is not there serves them all the same.
NO_QUEUE = "redis://127.0.0.1:1/0"
ASSET_TYPES = {
    ".js": ("text/javascript", "application/javascript"),
    ".css": ("text/css",),
    ".png": ("image/png",),
    ".svg": ("image/svg+xml",),
}
_LINK = re.compile(r"""(?:src|href|spec-url)\s*=\s*["']([^"']+)["']""")


def page_server(**overrides: Any) -> LiveServer:
    server = LiveServer(create_app(ServiceSettings(redis_url=NO_QUEUE, **overrides)))
    server.start()
    return server


@pytest.fixture(scope="module")
def client() -> Iterator[httpx.Client]:
    server = page_server()
    try:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            yield http
    finally:
        server.stop()


def linked_urls(html: str) -> list[str]:
    return _LINK.findall(html)


def check_asset(client: httpx.Client, page: str, link: str) -> None:
    base = str(client.base_url).rstrip("/")
    url = urljoin(base + page, link)
    assert url.startswith(base + "/"), f"{page} links to another host: {link}"
    response = client.get(url)
    assert response.status_code == 200, f"{link} (from {page}): {response.status_code}"
    wanted = ASSET_TYPES[Path(urlsplit(url).path).suffix]
    assert response.headers["content-type"].split(";")[0] in wanted, (link, response.headers["content-type"])
    assert len(response.content) > 100


@pytest.mark.parametrize(("page", "assets"), [("/docs", 3), ("/redoc", 2)])
def test_the_docs_pages_load_only_assets_the_api_serves(client: httpx.Client, page: str, assets: int) -> None:
    response = client.get(page)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    html = response.text
    assert "http://" not in html and "https://" not in html, "an external URL in the page"
    links = [link for link in linked_urls(html) if not link.endswith("openapi.json")]
    assert len(links) == assets, links  # script, stylesheet (Swagger UI only) and favicon
    assert any(link.endswith(".png") for link in links), "the favicon must be local too"
    for link in links:
        assert link.startswith("/static/docs/"), link
        check_asset(client, page, link)


def test_the_docs_point_at_the_served_openapi_document(client: httpx.Client) -> None:
    assert "url: '/openapi.json'" in client.get("/docs").text
    assert 'spec-url="/openapi.json"' in client.get("/redoc").text
    paths = client.get("/openapi.json").json()["paths"]
    assert "/v1/super-resolve" in paths
    assert "/" not in paths and "/docs" not in paths  # the pages are not API operations


def test_the_demo_page_and_its_files_are_served(client: httpx.Client) -> None:
    response = client.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    html = response.text
    assert "https://" not in html and "//" not in "".join(linked_urls(html)), (
        "the page must be self-contained"
    )
    links = [link for link in linked_urls(html) if link != "docs"]
    assert sorted(Path(link).name for link in links) == ["demo.css", "demo.js", "favicon.svg"]
    for link in links:
        check_asset(client, "/", link)
    script = client.get("/static/demo/demo.js").text
    assert "v1/super-resolve?steps=true&landmarks=true&compare=true" in script
    assert "http://" not in script and "https://" not in script


def test_an_unknown_demo_file_is_a_problem_404(client: httpx.Client) -> None:
    response = client.get("/static/demo/missing.js")
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"


def test_the_setting_turns_the_demo_page_off() -> None:
    server = page_server(demo_page=False)
    try:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            page = http.get("/")
            script = http.get("/static/demo/demo.js")
            docs = http.get("/docs")
    finally:
        server.stop()
    assert page.status_code == 404 and page.headers["content-type"] == "application/problem+json"
    assert script.status_code == 404
    assert docs.status_code == 200  # the API docs stay


def test_the_setting_is_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert ServiceSettings().demo_page is True
    monkeypatch.setenv("FACESR_DEMO_PAGE", "false")
    assert ServiceSettings().demo_page is False


def test_every_demo_file_is_package_data() -> None:
    """A non-editable `pip install .` ships exactly what [tool.setuptools.package-data] matches."""
    tomllib = pytest.importorskip("tomllib")
    config = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["facesr.service.api"]
    folder = REPO_ROOT / "service" / "api"
    files = [path.relative_to(folder).as_posix() for path in (folder / demo.PACKAGE_FOLDER).iterdir()]
    assert set(files) >= {f"{demo.PACKAGE_FOLDER}/{name}" for name in demo.DEMO_FILES}
    for name in files:
        assert any(fnmatch.fnmatch(name, pattern) for pattern in patterns), f"{name} would not be installed"
