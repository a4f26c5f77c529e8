"""Start and stop real service processes on 127.0.0.1 in their own process group."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Service:
    def __init__(self, args: list[str], env: dict, url: str, ready_path: str, log_path, timeout: float = 120):
        self.url = url
        self.log = open(log_path, "w")
        full_env = {**os.environ, **env}
        self.proc = subprocess.Popen(args, env=full_env, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"service exited with {self.proc.returncode}; see {log_path}")
            try:
                if httpx.get(url + ready_path, timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.stop()
        raise TimeoutError(f"service not ready after {timeout}s; see {log_path}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
        self.log.close()


def serving(home, dataset: str, log_path, **env) -> Service:
    port = free_port()
    return Service([sys.executable, "-m", "serving"],
                   {"RECALIGN_HOME": str(home), "RECALIGN_DATASET": dataset, "RECALIGN_PORT": str(port),
                    "RECALIGN_POLL_SECONDS": "0.5", "RECALIGN_LOG_LEVEL": "warning", **env},
                   f"http://127.0.0.1:{port}", "/readyz", log_path)
