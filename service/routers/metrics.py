"""Prometheus scrape endpoint."""

from fastapi import APIRouter, Request, Response

router = APIRouter(tags=["metrics"])


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format."}},
    summary="Requests by route and status, latency, batch sizes, queue depth",
    description="Prometheus text format, for a scraper. Open without an API key.",
)
async def metrics(request: Request) -> Response:
    service_metrics = request.app.state.metrics
    return Response(content=service_metrics.render(), media_type=service_metrics.content_type)
