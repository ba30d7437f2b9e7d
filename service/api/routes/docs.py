"""GET /docs (Swagger UI) and GET /redoc (ReDoc), with every asset served by the API itself.

FastAPI's own pages load Swagger UI and ReDoc from a CDN, so they are blank on a machine without
internet access. The same pages are built here with FastAPI's helpers, pointing at the JavaScript, CSS
and favicon that the `fastapi-offline` package ships (its `static/` folder: a recent Swagger UI 5
bundle, the ReDoc 2 standalone bundle and FastAPI's favicon), mounted at `ASSETS_PATH`. Only that
folder of the package is used; the application is still the one `create_app` builds.

The pages are sent with a Content-Security-Policy that lets the browser load nothing from other
origins. ReDoc's bundle shows an "API docs by Redocly" footer whose logo it would fetch from Redocly's
CDN; the policy stops that request (the footer keeps its text), so the pages make no request outside
the API, online or not.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

DOCS_PATH = "/docs"
REDOC_PATH = "/redoc"
OAUTH2_REDIRECT_PATH = "/docs/oauth2-redirect"
ASSETS_PATH = "/static/docs"
SWAGGER_JS = "swagger-ui-bundle.js"
SWAGGER_CSS = "swagger-ui.css"
REDOC_JS = "redoc.standalone.js"
FAVICON = "favicon.png"
# Swagger UI starts from an inline script and both UIs set inline styles; ReDoc runs its search in a
# blob: worker. Everything else comes from the API's own origin.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; font-src 'self' data:; worker-src 'self' blob:; connect-src 'self'; "
    "base-uri 'self'; form-action 'self'; object-src 'none'"
)


def assets_folder() -> Path:
    """The folder of `fastapi-offline` that holds the Swagger UI and ReDoc bundles."""
    folder = Path(str(files("fastapi_offline").joinpath("static")))
    missing = [name for name in (SWAGGER_JS, SWAGGER_CSS, REDOC_JS, FAVICON) if not (folder / name).is_file()]
    if missing:  # a future release that renames its files must fail loudly, not serve blank pages
        raise RuntimeError(f"fastapi-offline no longer ships {', '.join(missing)} in {folder}")
    return folder


def install_docs(app: FastAPI) -> None:
    """Add /docs, its OAuth2 redirect page and /redoc to `app` (built with docs_url=redoc_url=None)."""
    app.mount(ASSETS_PATH, StaticFiles(directory=assets_folder()), name="docs-assets")
    openapi_url = app.openapi_url or "/openapi.json"

    def asset(request: Request, name: str) -> str:
        return f"{request.scope.get('root_path', '')}{ASSETS_PATH}/{name}"

    @app.get(DOCS_PATH, include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        page = get_swagger_ui_html(
            openapi_url=request.scope.get("root_path", "") + openapi_url,
            title=f"{app.title} - Swagger UI",
            oauth2_redirect_url=OAUTH2_REDIRECT_PATH,
            swagger_js_url=asset(request, SWAGGER_JS),
            swagger_css_url=asset(request, SWAGGER_CSS),
            swagger_favicon_url=asset(request, FAVICON),
            swagger_ui_parameters=app.swagger_ui_parameters,
        )
        return _self_contained(page)

    @app.get(OAUTH2_REDIRECT_PATH, include_in_schema=False)
    async def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get(REDOC_PATH, include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        page = get_redoc_html(
            openapi_url=request.scope.get("root_path", "") + openapi_url,
            title=f"{app.title} - ReDoc",
            redoc_js_url=asset(request, REDOC_JS),
            redoc_favicon_url=asset(request, FAVICON),
            with_google_fonts=False,  # the fonts would come from Google's servers
        )
        return _self_contained(page)


def _self_contained(page: HTMLResponse) -> HTMLResponse:
    """The page, with a policy that keeps the browser from loading anything from other origins."""
    page.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    return page
