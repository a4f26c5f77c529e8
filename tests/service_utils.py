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
        self.proc = subprocess.Popen(
            args, env=full_env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True
        )
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
    return Service(
        [sys.executable, "-m", "serving"],
        {
            "RECALIGN_HOME": str(home),
            "RECALIGN_DATASET": dataset,
            "RECALIGN_PORT": str(port),
            "RECALIGN_POLL_SECONDS": "0.5",
            "RECALIGN_LOG_LEVEL": "warning",
            **env,
        },
        f"http://127.0.0.1:{port}",
        "/readyz",
        log_path,
    )


def dagster_services(home, dagster_home, log_dir, env: dict | None = None) -> tuple[Service, subprocess.Popen]:
    """dagster-webserver + dagster-daemon for orchestration.definitions, on 127.0.0.1."""
    port = free_port()
    bin_dir = os.path.dirname(sys.executable)
    base = {
        "RECALIGN_HOME": str(home),
        "DAGSTER_HOME": str(dagster_home),
        "DAGSTER_DISABLE_TELEMETRY": "1",
        **(env or {}),
    }
    os.makedirs(dagster_home, exist_ok=True)
    daemon_log = open(os.path.join(log_dir, "daemon.log"), "w")
    daemon = subprocess.Popen(
        [os.path.join(bin_dir, "dagster-daemon"), "run", "-m", "orchestration.definitions"],
        env={**os.environ, **base},
        stdout=daemon_log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    web = Service(
        [
            os.path.join(bin_dir, "dagster-webserver"),
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
            "-m",
            "orchestration.definitions",
        ],
        base,
        f"http://127.0.0.1:{port}",
        "/server_info",
        os.path.join(log_dir, "webserver.log"),
        timeout=180,
    )
    return web, daemon


def stop_process(proc) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def chromium_page(func):
    """Run func(page) in headless Debian chromium through playwright; skip when chromium is absent."""
    import shutil

    import pytest

    exe = shutil.which("chromium") or "/usr/bin/chromium"
    if not os.path.exists(exe):
        pytest.skip("Debian's chromium is not installed (apt-get install chromium; .ci/run does it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=exe,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            return func(page)
        finally:
            browser.close()
