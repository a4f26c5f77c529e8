"""Serving benchmark: the real server on 127.0.0.1, a bounded load from a second process; one JSON line.

    python benchmarks/serving.py --home /tmp/bh --dataset amazon-beauty --seconds 15 --concurrency 16
Serves the published model, else the newest model of the sequential track (any variant).
Targets (2 cores, 16 clients): /v1/recommend p99 under 50 ms and at least 1,000 requests/s, 0 errors; /healthz is
measured beside it for reference (a ratio to it moves whenever /healthz gets faster, so it is no target).
"""

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGETS = {"recommend_p99_ms": 50, "recommend_rps": 1000, "concurrency": 16}
sys.path.insert(0, str(ROOT))

from training.smoke import small  # noqa: E402  (RECALIGN_SMOKE: the docs test's small form)


def load(url: str, n: int, concurrency: int, body_fn) -> dict:
    """Drive n requests with `concurrency` clients (runs in its own process)."""
    import httpx

    async def run():
        lat, errors = [], 0
        queue = asyncio.Queue()
        for i in range(n):
            queue.put_nowait(i)

        async def worker(client):
            nonlocal errors
            while True:
                try:
                    i = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                t0 = time.perf_counter()
                try:
                    body = body_fn(i)
                    r = await (client.post(url, json=body) if body is not None else client.get(url))
                    if r.status_code != 200:
                        errors += 1
                except httpx.HTTPError:
                    errors += 1
                lat.append(time.perf_counter() - t0)

        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        async with httpx.AsyncClient(timeout=30, limits=limits) as client:
            t0 = time.perf_counter()
            await asyncio.gather(*(worker(client) for _ in range(concurrency)))
            wall = time.perf_counter() - t0
        lat.sort()
        q = lambda p: 1000 * lat[min(len(lat) - 1, int(p * len(lat)))]
        return {
            "requests": n,
            "rps": round(n / wall, 1),
            "p50_ms": round(q(0.5), 2),
            "p99_ms": round(q(0.99), 2),
            "errors": errors,
        }

    return asyncio.run(run())


WRK_SCRIPT = """
local users = {%s}
local i = 0
request = function()
  i = i + 1
  %s
end
"""


def wrk_load(url: str, n: int, concurrency: int, endpoint: str, users: list[int]) -> dict:
    """A bounded load (n seconds, `concurrency` connections) from wrk: C, one thread, far less client CPU than a
    Python client on 2 cores."""
    import re
    import tempfile

    if endpoint == "recommend":
        req = (
            'local body = string.format(\'{"user_id": %d, "k": 10}\', users[(i % #users) + 1])\n'
            '  return wrk.format("POST", "/v1/recommend", {["Content-Type"] = "application/json"}, body)'
        )
    else:
        req = 'return wrk.format("GET", "/healthz")'
    script = WRK_SCRIPT % (", ".join(map(str, users)), req)
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as fh:
        fh.write(script)
    # wrk bounds by time: the duration that gives about n requests at the warm-up's rate (at least 5 s)
    proc = subprocess.run(
        ["wrk", "-t1", f"-c{concurrency}", f"-d{max(5, n)}s", "--latency", "-s", fh.name, url],
        capture_output=True,
        text=True,
        check=True,
    )
    text = proc.stdout

    def ms(label):
        m = re.search(rf"^\s*{label}%\s+([\d.]+)(us|ms|s)\s*$", text, flags=re.MULTILINE)
        v = float(m.group(1))
        return round(v / 1000 if m.group(2) == "us" else v * 1000 if m.group(2) == "s" else v, 2)

    done = int(re.search(r"(\d+) requests in", text).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    errors = (int(non2xx.group(1)) if non2xx else 0) + (sum(map(int, sock.groups())) if sock else 0)
    return {
        "requests": done,
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1)),
        "p50_ms": ms(50),
        "p99_ms": ms(99),
        "errors": errors,
        "client": "wrk",
    }


def drive(
    url: str, endpoint: str, users: list[int], seconds: int, requests: int, concurrency: int, wrk: bool = True
) -> dict:
    """A warm-up, then the measured load: wrk where it is installed (and wanted), else the httpx client in its own
    process (`requests` requests)."""
    import shutil

    if wrk and shutil.which("wrk"):
        wrk_load(url, 3, concurrency, endpoint, users)  # warm-up
        return wrk_load(url, seconds, concurrency, endpoint, users)
    cmd = [sys.executable, __file__, "--client", "--url", url, "--endpoint", endpoint, "--users", json.dumps(users)]
    subprocess.run([*cmd, "--requests", "200", "--concurrency", str(concurrency)], capture_output=True)  # warm-up
    run = subprocess.run(
        [*cmd, "--requests", str(requests), "--concurrency", str(concurrency)],
        capture_output=True,
        text=True,
        check=True,
    )
    return {**json.loads(run.stdout), "client": "httpx"}


def client_main(args) -> None:
    users = json.loads(args.users)
    body = (lambda i: {"user_id": users[i % len(users)], "k": 10}) if args.endpoint == "recommend" else (lambda i: None)
    path = "/v1/recommend" if args.endpoint == "recommend" else "/healthz"
    print(json.dumps(load(args.url + path, args.requests, args.concurrency, body)))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--home", required=False, default=os.environ.get("RECALIGN_HOME"))
    ap.add_argument("--dataset", default="amazon-beauty")
    ap.add_argument("--requests", type=int, default=small(2000, 200))
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--seconds", type=int, default=small(15, 2), help="wrk: load duration per endpoint")
    ap.add_argument("--python-client", action="store_true", help="use the httpx client even where wrk exists")
    ap.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--url", help=argparse.SUPPRESS)
    ap.add_argument("--endpoint", help=argparse.SUPPRESS)
    ap.add_argument("--users", default="[]", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.client:
        return client_main(args)
    from recalign.settings import Settings
    from tests.service_utils import serving

    settings = Settings.from_env(args.home)
    reg = settings.registry(args.dataset)
    if reg.published() is None and reg.newest("seqrec") is None:
        sys.exit(f"no model in {reg.root}: run benchmarks/seqrec.py --home {args.home} first")
    log = Path(settings.cache_dir) / "serving-bench.log"
    svc = serving(settings.home, args.dataset, log)
    try:
        import duckdb

        con = duckdb.connect(str(settings.warehouse_path(args.dataset)), read_only=True)
        users = [
            int(u) for (u,) in con.execute("SELECT DISTINCT user_id FROM sequences USING SAMPLE 500 ROWS").fetchall()
        ]
        con.close()
        out = {"benchmark": "serving", "dataset": args.dataset, "concurrency": args.concurrency}
        for endpoint in ("healthz", "recommend"):
            out[endpoint] = drive(
                svc.url, endpoint, users, args.seconds, args.requests, args.concurrency, wrk=not args.python_client
            )
        import httpx

        out["model"] = httpx.get(svc.url + "/readyz").json()["model"]  # published, else the track's newest
        out["recommend_to_healthz_rps"] = round(out["recommend"]["rps"] / out["healthz"]["rps"], 3)
        out["errors"] = out["recommend"]["errors"] + out["healthz"]["errors"]
        out["targets"] = TARGETS
        rec = out["recommend"]
        out["meets_targets"] = (
            rec["p99_ms"] < TARGETS["recommend_p99_ms"]
            and rec["rps"] >= TARGETS["recommend_rps"]
            and out["errors"] == 0
        )
        print(json.dumps(out))
    finally:
        svc.stop()


if __name__ == "__main__":
    main()
