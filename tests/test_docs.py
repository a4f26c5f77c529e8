"""Every fenced `bash` command in README.md and docs/*.md runs as written, in order, in its small form.

The commands run from the repository root with RECALIGN_SMOKE=1 (training/smoke.py: one epoch, a few thousand
users, one LLM step), a fresh RECALIGN_HOME and DAGSTER_HOME, and /tmp/ paths moved into this test's folder.
A comment line before a fence directs its block: `<!-- docs-test: syntax-only (why) -->` (a GPU, a Docker
engine, the internet, this suite itself: `bash -n` only) or `<!-- docs-test: server HOST:PORT -->` (the first
command is a server: started, awaited on its port, the others run against it, then stopped). Blocks that name a
dataset of ../shared/data are skipped, with that reason, in a clone without it.
"""

import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

from recalign.settings import shared_data_dir

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
FENCE = re.compile(r"(?:<!--\s*docs-test:\s*(?P<directive>[^>]*?)\s*-->\s*\n)?```bash\n(?P<body>.*?)```", re.S)
NEEDS_SHARED = re.compile(r"\.\./shared|amazon[-_](beauty|sports)|movielens|microlens")


def blocks() -> list[dict]:
    out = []
    for doc in DOCS:
        for m in FENCE.finditer(doc.read_text()):
            line = doc.read_text()[: m.start("body")].count("\n") + 1
            out.append(
                {
                    "doc": doc.name,
                    "line": line,
                    "directive": (m["directive"] or "").strip(),
                    "commands": commands(m["body"]),
                }
            )
    return out


def commands(body: str) -> list[str]:
    """Shell commands of a block: continuation lines joined, blank and comment-only lines left out."""
    out, current = [], ""
    for raw in body.splitlines():
        current += raw.strip() if current else raw
        if raw.rstrip().endswith("\\"):
            current = current.rstrip()[:-1].rstrip() + " "
            continue
        if current.strip() and not current.strip().startswith("#"):
            out.append(current.strip())
        current = ""
    return out


def _wait_for_port(host: str, port: int, proc: subprocess.Popen, seconds: float) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited with {proc.returncode} before listening on {host}:{port}")
        try:
            with socket.create_connection((host, port), timeout=1):
                return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"server not listening on {host}:{port} after {seconds} s")


def test_every_documented_command_runs(tmp_path):
    env = {
        **os.environ,
        "RECALIGN_SMOKE": "1",
        "RECALIGN_HOME": str(tmp_path / "home"),
        "DAGSTER_HOME": str(tmp_path / "dagster"),
        "DAGSTER_DISABLE_TELEMETRY": "1",
    }
    env.pop("PYTEST_CURRENT_TEST", None)
    (tmp_path / "tmp").mkdir()
    ran, syntax, skipped = [], [], []

    def run(cmd: str, where: str) -> None:
        cmd = cmd.replace("/tmp/", f"{tmp_path}/tmp/")
        t0 = time.time()
        proc = subprocess.run(
            ["bash", "-o", "pipefail", "-c", cmd], cwd=REPO, env=env, capture_output=True, text=True, timeout=1200
        )
        assert proc.returncode == 0, (
            f"{where}: `{cmd}` exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
        ran.append((where, cmd, round(time.time() - t0, 1)))

    for b in blocks():
        where = f"{b['doc']}:{b['line']}"
        if b["directive"].startswith("syntax-only"):
            for c in b["commands"]:
                check = subprocess.run(["bash", "-n", "-c", c], capture_output=True, text=True)
                assert check.returncode == 0, f"{where}: `{c}` is not valid bash: {check.stderr}"
                syntax.append((where, c))
            continue
        if shared_data_dir() is None and any(NEEDS_SHARED.search(c) for c in b["commands"]):
            skipped.extend((where, c, "needs ../shared/data") for c in b["commands"])
            continue
        if b["directive"].startswith("server"):
            host, port = b["directive"].split()[1].rsplit(":", 1)
            server = subprocess.Popen(
                ["bash", "-c", b["commands"][0]],
                cwd=REPO,
                env=env,
                start_new_session=True,
                stdout=subprocess.DEVNULL,
                stderr=open(tmp_path / "server.log", "w"),
            )
            try:
                _wait_for_port(host, int(port), server, 300)
                ran.append((where, b["commands"][0], "server"))
                for c in b["commands"][1:]:
                    run(c, where)
            finally:
                os.killpg(server.pid, signal.SIGTERM)
                server.wait(timeout=60)
            continue
        assert not b["directive"], f"{where}: unknown docs-test directive {b['directive']!r}"
        for c in b["commands"]:
            run(c, where)
    report = [f"ran {len(ran)} commands, checked {len(syntax)} for syntax only, skipped {len(skipped)}"]
    report += [f"  {w}: {s} s  {c[:100]}" for w, c, s in ran] + [f"  {w}: syntax only  {c[:100]}" for w, c in syntax]
    report += [f"  {w}: skipped ({why})  {c[:100]}" for w, c, why in skipped]
    print("\n".join(report))
    (REPO / ".recalign").mkdir(exist_ok=True)
    (REPO / ".recalign" / "docs-test.txt").write_text("\n".join(report) + "\n")
    assert ran, "no documented command ran"


def test_directives_parse_and_blocks_are_found():
    found = blocks()
    assert sum(len(b["commands"]) for b in found) >= 10
    assert {b["directive"].split()[0] for b in found if b["directive"]} <= {"syntax-only", "server"}
    assert commands("a \\\n  b\n# note\n\nc  # trailing\n") == ["a b", "c  # trailing"]
