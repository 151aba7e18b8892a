"""Headless Chromium (Debian's ``chromium``, installed by ``make test``) driven over the DevTools protocol with aiohttp's
websocket client: a page's text, its images' load state, a screenshot, and every console error, failed resource load
or uncaught exception while it loaded."""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field

import aiohttp

LISTENING = re.compile(r"DevTools listening on ws://127\.0\.0\.1:(\d+)/")
PAGE_STATE = """JSON.stringify({text: document.body.innerText,
  images: Array.from(document.images).map(function (image) { return [image.complete, image.naturalWidth]; }),
  title: document.title, lang: document.documentElement.lang})"""


@dataclass
class Rendered:
    text: str
    title: str
    lang: str
    images: list[list]
    """(complete, natural width) per image: an image that did not load has width 0."""
    screenshot: bytes = field(repr=False)
    errors: list[str] = field(default_factory=list)


def _signal_group(group: int, number: int) -> None:
    try:
        os.killpg(group, number)
    except ProcessLookupError:  # every member has exited
        pass


def live_group_members(group: int) -> list[int]:
    """The processes of a process group that are running (exited ones waiting to be reaped are not), from /proc."""
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    fields = stat.read().rsplit(")", 1)[1].split()  # after the command's name, which may hold spaces
            except OSError:  # it exited meanwhile
                continue
            if int(fields[2]) == group and fields[0] not in "ZX":
                members.append(int(entry))
    return members


class Chromium:
    """One headless Chromium for a test session; :meth:`render` opens a page in a phone-sized viewport."""

    def __init__(self) -> None:
        binary = shutil.which("chromium")
        if binary is None:
            raise RuntimeError("chromium is not installed: run `make test`, which installs it")
        self.profile = tempfile.TemporaryDirectory(prefix="chromium-")
        self.process = subprocess.Popen(
            [binary, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
             "--no-default-browser-check", "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
             f"--user-data-dir={self.profile.name}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
        deadline = time.monotonic() + 60
        self.port = None
        while self.port is None:
            line = self.process.stderr.readline()
            match = LISTENING.search(line)
            if match:
                self.port = int(match.group(1))
            elif not line and (self.process.poll() is not None or time.monotonic() > deadline):
                raise RuntimeError("chromium did not start")

    def close(self) -> None:
        """Stop Chromium and every process it started (its renderers and helpers, in its process group, write to the
        profile until they exit; removing it under them failed with 'Directory not empty'), then remove the profile."""
        _signal_group(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        _signal_group(self.process.pid, signal.SIGKILL)  # whatever outlived it
        self.process.wait()
        deadline = time.monotonic() + 10
        while live_group_members(self.process.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        self.process.stderr.close()
        self.profile.cleanup()

    def render(self, url: str, width: int = 390, height: int = 844, timeout_s: float = 30) -> Rendered:
        return asyncio.run(asyncio.wait_for(self._render(url, width, height), timeout_s))

    async def _render(self, url: str, width: int, height: int) -> Rendered:
        async with aiohttp.ClientSession() as http:
            async with http.put(f"http://127.0.0.1:{self.port}/json/new?about:blank") as response:
                target = await response.json(content_type=None)
            try:
                async with http.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=0) as socket:
                    return await _Session(socket).render(url, width, height)
            finally:
                async with http.get(f"http://127.0.0.1:{self.port}/json/close/{target['id']}"):
                    pass


class _Session:
    def __init__(self, socket) -> None:
        self.socket, self.ids, self.events = socket, itertools.count(1), []

    async def call(self, method: str, **params):
        number = next(self.ids)
        await self.socket.send_json({"id": number, "method": method, "params": params})
        while True:
            message = await self.socket.receive_json()
            if message.get("id") == number:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message["result"]
            self.events.append(message)

    async def _drain(self, quiet_s: float) -> None:
        while True:
            try:
                self.events.append(await asyncio.wait_for(self.socket.receive_json(), quiet_s))
            except asyncio.TimeoutError:
                return

    async def render(self, url: str, width: int, height: int) -> Rendered:
        for domain in ("Page", "Runtime", "Log"):
            await self.call(f"{domain}.enable")
        await self.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=True)
        await self.call("Page.navigate", url=url)
        while not any(event.get("method") == "Page.loadEventFired" for event in self.events):
            self.events.append(await self.socket.receive_json())
        await self._drain(0.5)
        state = (await self.call("Runtime.evaluate", expression=PAGE_STATE, returnByValue=True))["result"]["value"]
        shot = base64.b64decode((await self.call("Page.captureScreenshot", format="png"))["data"])
        page = json.loads(state)
        return Rendered(page["text"], page["title"], page["lang"], page["images"], shot, self._errors())

    def _errors(self) -> list[str]:
        errors = []
        for event in self.events:
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.exceptionThrown":
                errors.append(params["exceptionDetails"].get("text", "exception"))
            elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                errors.append(" ".join(str(arg.get("value", arg.get("description", ""))) for arg in params.get("args", [])))
            elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
                errors.append(f"{params['entry'].get('text')} {params['entry'].get('url', '')}".strip())
        return errors
