"""GET /demo: a single HTML page that draws the faces the service finds in a chosen photo."""

from functools import cache
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

router = APIRouter()

DEMO_PAGE = Path(__file__).resolve().parent.parent / "static" / "demo.html"

# The page uses inline script and style and calls this origin only. The policy
# makes the browser block anything else, such as a script from a CDN.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
    "img-src data: blob:; connect-src 'self'; form-action 'none'; base-uri 'none'"
)


@cache
def demo_html() -> str:
    return DEMO_PAGE.read_text(encoding="utf-8")


@router.get("/demo", include_in_schema=False)
async def demo_page() -> HTMLResponse:
    """Return the demo page. It is left out of the OpenAPI schema because it is no API."""
    return HTMLResponse(demo_html(), headers={"Content-Security-Policy": CONTENT_SECURITY_POLICY})
