"""Following the API server from asyncio: LIST then WATCH, with resync and bounded backoff.

An `Informer` keeps the objects of one query by name. It LISTs, then WATCHes from the list's
resourceVersion (with bookmarks, so that version stays fresh); the server ends each watch after
`watch_seconds` and the informer watches again from where it was, and relists every `resync_seconds` so a
missed event cannot stick. 410 Gone (the version is too old for the server) relists at once; any other
failure waits a backoff that doubles up to `MAX_BACKOFF_SECONDS`. Until it lists again, the informer keeps
its last objects, so the gateway keeps serving its last table.

Credentials come from the `kubernetes` package's config loading (in-cluster or kubeconfig); the token is
read before each request, because in-cluster tokens rotate.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import ssl
from collections.abc import AsyncGenerator, Callable, Mapping
from contextlib import aclosing

import aiohttp

from tgipool.manifest import Manifest

log = logging.getLogger("tgipool.gateway")

# The server ends a watch after WATCH_SECONDS; a new one continues from the same version. By default the
# relist falls on that boundary: one LIST and one WATCH per query every 5 minutes.
WATCH_SECONDS = 300
RESYNC_SECONDS = 300.0
MIN_BACKOFF_SECONDS = 0.5
MAX_BACKOFF_SECONDS = 30.0
MAX_EVENT_BYTES = 4 << 20  # one watch event: an object, which etcd caps at 1.5 MiB


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status


class GoneError(ApiError):
    """The resourceVersion is older than the server keeps: list again."""


class KubeApi:
    """The few reads the gateway makes, on one aiohttp session (open it with `async with`)."""

    def __init__(
        self,
        host: str,
        ssl_context: ssl.SSLContext | bool = True,
        token: Callable[[], str | None] = lambda: None,
    ) -> None:
        self.host = host.rstrip("/")
        self._ssl = ssl_context
        self._token = token
        self._session: aiohttp.ClientSession | None = None

    @classmethod
    def from_environment(cls) -> KubeApi:
        import kubernetes  # heavy: only a gateway in the cluster needs it

        try:
            kubernetes.config.load_incluster_config()  # type: ignore[no-untyped-call]
        except kubernetes.config.ConfigException:
            kubernetes.config.load_kube_config()  # type: ignore[no-untyped-call]
        conf = kubernetes.client.Configuration.get_default_copy()
        context: ssl.SSLContext | bool = False
        if conf.verify_ssl:
            context = ssl.create_default_context(cafile=conf.ssl_ca_cert)
        if conf.cert_file:
            if not isinstance(context, ssl.SSLContext):
                context = ssl.create_default_context()
                context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
            context.load_cert_chain(conf.cert_file, conf.key_file)
        return cls(
            conf.host, context, lambda: conf.get_api_key_with_prefix("BearerToken", alias="authorization")
        )

    async def __aenter__(self) -> KubeApi:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_connect=10))
        return self

    async def __aexit__(self, *_: object) -> None:
        if self._session is not None:
            await self._session.close()

    def _headers(self) -> dict[str, str]:
        token = self._token()
        # The user agent names the gateway in the API server's audit log and request metrics.
        headers = {"Accept": "application/json", "User-Agent": "tgipool-gateway"}
        return {**headers, "Authorization": token} if token else headers

    @staticmethod
    async def _check(resp: aiohttp.ClientResponse) -> None:
        if resp.status == 200:
            return
        text = await resp.text()
        try:
            message = json.loads(text).get("message", text)
        except ValueError:
            message = text
        raise (GoneError if resp.status == 410 else ApiError)(resp.status, str(message)[:500])

    async def list(self, path: str, params: Mapping[str, str]) -> tuple[list[Manifest], str]:
        """(items, resourceVersion of the list)."""
        assert self._session is not None
        async with self._session.get(
            self.host + path,
            params=dict(params),
            headers=self._headers(),
            ssl=self._ssl,
            timeout=aiohttp.ClientTimeout(total=60),
        ) as resp:
            await self._check(resp)
            body = await resp.json()
        return list(body.get("items") or []), str(body["metadata"]["resourceVersion"])

    async def merge_patch(self, path: str, body: Mapping[str, object]) -> None:
        """One JSON merge patch (the demand Lease's renewTime): bounded, raises ApiError when refused."""
        assert self._session is not None
        async with self._session.patch(
            self.host + path,
            data=json.dumps(body),
            headers={**self._headers(), "Content-Type": "application/merge-patch+json"},
            ssl=self._ssl,
            timeout=aiohttp.ClientTimeout(total=10),
        ) as resp:
            await self._check(resp)

    async def watch(
        self, path: str, params: Mapping[str, str], version: str, seconds: int
    ) -> AsyncGenerator[tuple[str, Manifest], None]:
        """(type, object) events until the server ends the watch after `seconds`."""
        assert self._session is not None
        query = {
            **params,
            "watch": "1",
            "resourceVersion": version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(seconds),
        }
        # A connection that stays silent past the server's own deadline is dead.
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=seconds + 30)
        async with self._session.get(
            self.host + path, params=query, headers=self._headers(), ssl=self._ssl, timeout=timeout
        ) as resp:
            await self._check(resp)
            while line := await resp.content.readline(max_line_length=MAX_EVENT_BYTES):
                if line.strip():
                    event = json.loads(line)
                    yield event["type"], event["object"]


class Informer:
    """The objects of one LIST+WATCH query, by name; `on_change()` after each change (module docstring)."""

    def __init__(
        self,
        api: KubeApi,
        path: str,
        params: Mapping[str, str],
        on_change: Callable[[], None],
        resync_seconds: float = RESYNC_SECONDS,
        watch_seconds: int = WATCH_SECONDS,
    ) -> None:
        self.api, self.path, self.params = api, path, dict(params)
        self.on_change = on_change
        self.resync_seconds = resync_seconds
        self.watch_seconds = watch_seconds
        self.items: dict[str, Manifest] = {}
        self.synced = False  # listed at least once

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        backoff = 0.0
        while True:
            try:
                version = await self._list()
                backoff = 0.0
                resync_at = loop.time() + self.resync_seconds
                while True:
                    seconds = max(1, min(self.watch_seconds, round(resync_at - loop.time())))
                    started = loop.time()
                    version = await self._watch(version, seconds)
                    if loop.time() - started < seconds / 2:  # the server keeps a watch open `seconds`
                        raise ApiError(0, "the watch ended early")
                    if loop.time() > resync_at - 1:  # due, or too close to be worth another watch
                        break
            except GoneError:
                log.info("%s: resourceVersion too old, listing again", self.path)
            except Exception as exc:  # whatever broke, back off and list again; never stop following
                backoff = min(max(backoff * 2, MIN_BACKOFF_SECONDS), MAX_BACKOFF_SECONDS)
                delay = backoff * random.uniform(0.5, 1.0)  # noqa: S311  replicas must not retry in step
                log.warning("%s: %s; listing again in %.1fs", self.path, exc or type(exc).__name__, delay)
                await asyncio.sleep(delay)

    async def _list(self) -> str:
        items, version = await self.api.list(self.path, self.params)
        self.items = {o["metadata"]["name"]: o for o in items}
        self.synced = True
        self.on_change()
        return version

    async def _watch(self, version: str, seconds: int) -> str:
        """Applies events until the server ends the watch; the version to continue from."""
        events = self.api.watch(self.path, self.params, version, seconds)
        async with aclosing(events):
            async for kind, obj in events:
                if kind == "ERROR":
                    status = int(obj.get("code") or 500)
                    raise (GoneError if status == 410 else ApiError)(status, str(obj.get("message", "")))
                version = obj["metadata"]["resourceVersion"]
                if kind == "BOOKMARK":
                    continue
                name = obj["metadata"]["name"]
                if kind == "DELETED":
                    self.items.pop(name, None)
                else:
                    self.items[name] = obj
                self.on_change()
        return version
