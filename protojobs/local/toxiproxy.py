"""toxiproxy-server, built from its Go module, and a small HTTP client with timeouts.

We talk to toxiproxy's REST API with urllib instead of `toxiproxy-python`: that client keeps the
API address as global state, has no HTTP timeouts (the server has been seen to hang removing
toxics under load) and returns None from `add_toxic`. Every call here has a timeout, and
`reset()` re-enables every proxy and removes every toxic.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from protojobs.local.cluster import BrokerError, _tail, cache_dir
from protojobs.local.pidfiles import _read_pid, stop_pidfiles, track, write_pidfile
from protojobs.observe.process import pid_alive

TOXIPROXY_MODULE = "github.com/Shopify/toxiproxy/v2/cmd/server"
TOXIPROXY_VERSION = "v2.12.0"


def toxiproxy_binary() -> Path:
    return Path(os.environ.get("PROTOJOBS_TOXIPROXY", cache_dir() / "bin" / "toxiproxy-server"))


def ensure_toxiproxy() -> Path:
    """Return the toxiproxy-server binary, building it with `go install` when missing."""
    binary = toxiproxy_binary()
    if binary.exists():
        return binary
    if shutil.which("go") is None:
        raise BrokerError("Go is not on PATH: toxiproxy-server is built with `go install`; install Go >= 1.23")
    gobin = binary.parent / "gobin"
    env = dict(os.environ, GOBIN=str(gobin))
    done = subprocess.run(["go", "install", f"{TOXIPROXY_MODULE}@{TOXIPROXY_VERSION}"],
                          env=env, capture_output=True, text=True, cwd="/")
    if done.returncode != 0:
        raise BrokerError(f"building toxiproxy failed:\n{_tail(done.stderr)}")
    binary.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(gobin / "server"), binary)
    shutil.rmtree(gobin, ignore_errors=True)
    return binary


@dataclass
class Toxiproxy:
    """A running toxiproxy-server (state in `state_dir`) and its API."""

    state_dir: Path
    port: int = 8474
    timeout: float = 10.0
    spawned: bool = field(default=False, init=False)  # start() started the server (not found running)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pidfile(self) -> Path:
        return self.state_dir / "toxiproxy.pid"

    def start(self) -> Toxiproxy:
        binary = ensure_toxiproxy()
        pid = _read_pid(self.pidfile)
        if pid is not None and pid_alive(pid):
            return self
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with open(self.state_dir / "toxiproxy.log", "ab") as log:
            proc = track(subprocess.Popen([str(binary), "-host", "127.0.0.1", "-port", str(self.port)],
                                          stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                          start_new_session=True))
        write_pidfile(self.pidfile, proc.pid)
        self.spawned = True
        deadline = time.monotonic() + 15
        while True:
            try:
                self._call("GET", "/version")
                return self
            except (OSError, urllib.error.URLError):
                if proc.poll() is not None or time.monotonic() > deadline:
                    log_text = (self.state_dir / "toxiproxy.log").read_text(errors="replace")
                    self.stop()
                    raise BrokerError(f"toxiproxy-server did not start on port {self.port}:\n"
                                      f"{_tail(log_text)}") from None
                time.sleep(0.05)

    def stop(self) -> None:
        stop_pidfiles([self.pidfile], timeout=5)

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=self.timeout) as response:
            payload = response.read()
        return json.loads(payload) if payload.strip() else None

    def create(self, name: str, listen: int, upstream: int) -> Proxy:
        """Create (or replace) the proxy `name`: 127.0.0.1:listen -> 127.0.0.1:upstream."""
        try:
            self._call("DELETE", f"/proxies/{name}")
        except urllib.error.HTTPError as err:
            if err.code != 404:
                raise
        self._call("POST", "/proxies", {"name": name, "listen": f"127.0.0.1:{listen}",
                                        "upstream": f"127.0.0.1:{upstream}", "enabled": True})
        return Proxy(self, name, listen)

    def proxy(self, name: str) -> Proxy:
        info = self._call("GET", f"/proxies/{name}")
        return Proxy(self, name, int(info["listen"].rsplit(":", 1)[1]))

    def reset(self, tries: int = 4) -> None:
        """Enable every proxy and remove every toxic. Retried: under load the server has been
        seen to take longer than one request timeout to remove toxics."""
        for attempt in range(tries):
            try:
                self._call("POST", "/reset")
                return
            except (TimeoutError, OSError, urllib.error.URLError):
                if attempt == tries - 1:
                    raise
                time.sleep(1)


@dataclass
class Proxy:
    server: Toxiproxy
    name: str
    listen: int

    def add_toxic(self, kind: str, stream: str = "downstream", toxicity: float = 1.0,
                  name: str | None = None, **attributes: Any) -> str:
        """Add a toxic (latency, bandwidth, slow_close, timeout, reset_peer, slicer, limit_data)."""
        toxic = name or f"{kind}_{stream}"
        self.server._call("POST", f"/proxies/{self.name}/toxics", {
            "name": toxic, "type": kind, "stream": stream, "toxicity": toxicity, "attributes": attributes})
        return toxic

    def remove_toxic(self, toxic: str) -> None:
        self.server._call("DELETE", f"/proxies/{self.name}/toxics/{toxic}")

    def set_enabled(self, enabled: bool) -> None:
        self.server._call("POST", f"/proxies/{self.name}", {"enabled": enabled})

    def disable(self) -> None:
        self.set_enabled(False)

    def enable(self) -> None:
        self.set_enabled(True)
