"""The HTTP API serves a bounded number of requests at once, over real HTTP on 127.0.0.1: one
beyond the bound is answered 503 at once, and served once the others are done."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from aiohttp import ClientSession, web
from aiohttp.test_utils import TestServer

from swarm.daemon.http import HttpApi


def test_a_request_beyond_the_bound_is_told_to_come_back() -> None:
    async def main() -> None:
        api = HttpApi(SimpleNamespace(), SimpleNamespace())  # type: ignore[arg-type]
        api._busy = asyncio.Semaphore(1)
        release = asyncio.Event()

        async def slow(request: web.Request) -> web.Response:
            await release.wait()
            return web.Response(text="done")

        api.app.router.add_get("/slow", slow)
        server = TestServer(api.app, host="127.0.0.1")
        await server.start_server()
        try:
            async with ClientSession() as client:
                first = asyncio.ensure_future(client.get(server.make_url("/slow")))
                while not api._busy.locked():
                    await asyncio.sleep(0.01)
                async with client.get(server.make_url("/slow")) as refused:
                    assert refused.status == 503 and refused.headers["Retry-After"] == "1"
                release.set()
                async with await first as served:
                    assert served.status == 200 and await served.text() == "done"
                async with client.get(server.make_url("/slow")) as again:
                    assert again.status == 200  # free again
        finally:
            await server.close()

    asyncio.run(asyncio.wait_for(main(), 30))
