"""A Django app with Django Channels, as its docs write it, for daphne (which never sends
lifespan): ``python -m daphne tests.apps.django_app:application``.

GET /healthz   200
GET /slow-recorded?ms=N&id=X   records "start:X", sleeps N ms, 200
POST /jobs-recorded?ms=N&id=X  202; a job (graceful_web.spawn) sleeps N ms, then appends X to
               JOBS_FILE
WEBSOCKET /ws  accepts, records "ws-open", echoes, records "ws-closed" when it disconnects
BARE=1 serves the same app without GracefulLifespan; HANDLE_SIGNALS=0 leaves the signals to
daphne (``handle_signals=False``).
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import django
from django.conf import settings

settings.configure(
    DEBUG=False,
    SECRET_KEY="tests-only",
    ALLOWED_HOSTS=["*"],
    ROOT_URLCONF=__name__,
    INSTALLED_APPS=[],
    MIDDLEWARE=[],
    LOGGING_CONFIG=None,
)
django.setup()

from channels.generic.websocket import AsyncWebsocketConsumer  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.core.asgi import get_asgi_application  # noqa: E402
from django.http import HttpRequest, HttpResponse, JsonResponse  # noqa: E402
from django.urls import path  # noqa: E402

from demo_services._contract import configure_logging  # noqa: E402
from graceful_web import spawn  # noqa: E402
from graceful_web.asgi import GracefulLifespan  # noqa: E402

from ._work import record_after, record_event  # noqa: E402


async def healthz(request: HttpRequest) -> HttpResponse:
    return HttpResponse("ok\n")


async def slow(request: HttpRequest) -> HttpResponse:
    ms = int(request.GET.get("ms", "1000"))
    record_event(f"start:{request.GET.get('id', '')}")
    await asyncio.sleep(ms / 1000)
    return HttpResponse(f"slept {ms} ms\n")


async def jobs(request: HttpRequest) -> HttpResponse:
    job_id = request.GET["id"]
    spawn(record_after(int(request.GET.get("ms", "1000")), job_id), name=f"job-{job_id}")
    record_event(f"spawned:{job_id}")
    return JsonResponse({"id": job_id}, status=202)


class Echo(AsyncWebsocketConsumer):
    async def connect(self) -> None:
        await self.accept()
        record_event("ws-open")

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        await self.send(text_data=text_data, bytes_data=bytes_data)

    async def disconnect(self, code: int) -> None:
        record_event("ws-closed")


urlpatterns = [
    path("healthz", healthz),
    path("slow-recorded", slow),
    path("jobs-recorded", jobs),
]


def build() -> Any:
    configure_logging()
    router = ProtocolTypeRouter(
        {
            "http": get_asgi_application(),
            "websocket": URLRouter([path("ws", Echo.as_asgi())]),
        }
    )
    if os.environ.get("BARE") == "1":
        return router
    grace = os.environ.get("LONG_LIVED_GRACE")
    return GracefulLifespan(
        router,
        handle_signals=os.environ.get("HANDLE_SIGNALS") != "0",
        **({"long_lived_grace": float(grace)} if grace else {}),
    )


application = build()
