"""A server the project starts for itself on 127.0.0.1 (the demo's model server, the workbench for the bench and
the browser test): a free loopback port, start, wait until it answers, stop."""

from __future__ import annotations

import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from icd10_coder.paths import REPO_ROOT


class ServerError(RuntimeError):
    """The server exited or did not answer in time; the message names its log."""


def free_port() -> int:
    """A port nothing listens on now, on the loopback interface."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def local_server(command: list[str], ready_url: str, log: Path, env: dict[str, str],
                 timeout_s: float = 240) -> Iterator[subprocess.Popen]:
    """Run ``command`` (run in the checkout, output to ``log``) until ``ready_url`` answers 200; yields the process
    and stops it afterwards."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as handle:
        server = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=env, cwd=REPO_ROOT)
        try:
            deadline = time.monotonic() + timeout_s
            while True:
                if server.poll() is not None:
                    raise ServerError(f"the local server exited early; see {log}:\n{log.read_text()[-3000:]}")
                try:
                    with urllib.request.urlopen(ready_url, timeout=2) as response:
                        if response.status == 200:
                            break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    raise ServerError(f"the local server did not answer in {timeout_s:.0f} s; see {log}")
                time.sleep(1)
            yield server
        finally:
            server.terminate()
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                server.kill()
