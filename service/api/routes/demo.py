"""GET / : a one-page demo of the API for people (FACESR_DEMO_PAGE, on by default).

The page is a few static files shipped inside the package (`service/api/demo-page/`: HTML, CSS,
plain JavaScript and an SVG icon; nothing fetched from elsewhere, no build step). It posts the chosen
face to POST /v1/super-resolve like any other client, so it shows exactly what the API returns.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

DEMO_PATH = "/"
ASSETS_PATH = "/static/demo"
# Not an importable name, so setuptools takes it for package data, not for a package left out.
PACKAGE_FOLDER = "demo-page"
# No inline script or style, and nothing from another origin (images are the API's data: URLs).
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'self'; "
    "form-action 'none'; object-src 'none'"
)
DEMO_FILES = ("index.html", "demo.css", "demo.js", "favicon.svg")


def demo_folder() -> Path:
    """The page's files inside the installed package."""
    folder = Path(str(files("facesr.service.api").joinpath(PACKAGE_FOLDER)))
    missing = [name for name in DEMO_FILES if not (folder / name).is_file()]
    if missing:  # a build that left the package data out: fail at start-up, not with a blank page
        raise RuntimeError(f"the demo page's files are missing from {folder}: {', '.join(missing)}")
    return folder


def install_demo(app: FastAPI) -> None:
    """Serve the page at `/` and its CSS and JavaScript under `ASSETS_PATH`."""
    folder = demo_folder()
    app.mount(ASSETS_PATH, StaticFiles(directory=folder), name="demo-assets")

    @app.get(DEMO_PATH, include_in_schema=False)
    async def demo_page() -> FileResponse:
        return FileResponse(
            folder / "index.html",
            media_type="text/html; charset=utf-8",
            headers={"Content-Security-Policy": CONTENT_SECURITY_POLICY},
        )
