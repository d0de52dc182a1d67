"""GET / : the web page (service/static/) and its icon, served by the app itself so it works without internet."""

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).resolve().parents[1] / "static"

router = APIRouter()


@router.get("/", include_in_schema=False)
async def index() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html")


@router.get("/favicon.ico", include_in_schema=False)
async def favicon() -> FileResponse:
    # At the root, where browsers ask for it whether or not the page names it.
    return FileResponse(STATIC_DIR / "favicon.ico", media_type="image/vnd.microsoft.icon")


def install_page(app: FastAPI) -> None:
    """The page at /, its icon at /favicon.ico, and its script and style sheet under /static/."""
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
