"""``/docs``: the OpenAPI description in Swagger UI, served whole by this process.

FastAPI's own ``/docs`` page loads Swagger UI from a CDN and is blank on a machine
with no Internet access. Here the page is FastAPI's (``get_swagger_ui_html``) with
its script, style sheet and icon taken from the ``swagger-ui-bundle-v2`` package
(Swagger UI's release files in a Python package) and served under ``/docs/assets/``;
the validator badge, which would ask an outside site, is turned off.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, HTTPException, status
from fastapi.openapi.docs import get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import FileResponse, HTMLResponse
from swagger_ui_bundle import swagger_ui_path  # type: ignore[import-untyped]

__all__ = ["ASSETS", "router"]

ASSETS: dict[str, str] = {
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "swagger-ui.css": "text/css; charset=utf-8",
    "favicon-32x32.png": "image/png",
}
"""The Swagger UI files ``/docs/assets/`` serves, with their media types."""
_DIR = Path(swagger_ui_path)

router = APIRouter(include_in_schema=False)


@router.get("/docs")
def docs() -> HTMLResponse:
    """Swagger UI on ``/openapi.json``, from this service's own files."""
    return get_swagger_ui_html(
        openapi_url="/openapi.json", title="marsad — API",
        swagger_js_url="/docs/assets/swagger-ui-bundle.js",
        swagger_css_url="/docs/assets/swagger-ui.css",
        swagger_favicon_url="/docs/assets/favicon-32x32.png",
        oauth2_redirect_url="/docs/oauth2-redirect",
        swagger_ui_parameters={"validatorUrl": None})


@router.get("/docs/oauth2-redirect")
def oauth2_redirect() -> HTMLResponse:
    """Swagger UI's OAuth2 redirect page (FastAPI's)."""
    return get_swagger_ui_oauth2_redirect_html()


@router.get("/docs/assets/{name}")
def asset(name: str) -> FileResponse:
    """One of Swagger UI's files."""
    media_type = ASSETS.get(name)
    if media_type is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no docs asset {name}")
    return FileResponse(_DIR / name, media_type=media_type,
                        headers={"Cache-Control": "public, max-age=86400"})
