"""asyncio integration: the backend's wake fds in the event loop (``loop.add_reader``)."""

from __future__ import annotations

import asyncio
from typing import Optional

from .backend import Backend, GatewayGone, Service


async def serve(backend: Backend, service: Service) -> None:
    """Serve on the running loop until the gateway goes away (raises GatewayGone). Other
    tasks run between batches; callbacks run on the loop (keep them short, or defer)."""
    loop = asyncio.get_running_loop()
    wake = asyncio.Event()
    fds = backend.wake_fds()
    for fd in fds:
        loop.add_reader(fd, wake.set)
    try:
        while True:
            due = backend.heartbeat_due()
            if due is not None and due <= 0:
                backend.send_heartbeat()
            if backend.poll(service):
                await asyncio.sleep(0)  # let other tasks run between batches
                continue
            # Parked: the gateway rings a data fd on its next record.
            wake.clear()
            timeout: Optional[float] = backend.heartbeat_due()
            try:
                await asyncio.wait_for(wake.wait(), timeout=1.0 if timeout is None else max(timeout, 0.001))
            except asyncio.TimeoutError:
                pass
            if not backend.gateway_alive():
                raise GatewayGone()
    finally:
        for fd in fds:
            loop.remove_reader(fd)
