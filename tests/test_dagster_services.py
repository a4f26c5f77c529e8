"""The real Dagster webserver and daemon: a run launched over GraphQL succeeds; the asset graph renders."""

import time

import httpx
import pytest

from .service_utils import chromium_page, dagster_services, stop_process

pytestmark = pytest.mark.service

LAUNCH = """mutation($params: ExecutionParams!) { launchRun(executionParams: $params) {
  __typename ... on LaunchRunSuccess { run { runId } } ... on PythonError { message }
  ... on RunConfigValidationInvalid { errors { message } } ... on InvalidSubsetError { message } } }"""
STATUS = """query($id: ID!) { runOrError(runId: $id) { __typename ... on Run { status } } }"""
REPOS = """{ repositoriesOrError { ... on RepositoryConnection { nodes { name location { name } } } } }"""


def test_run_launched_over_graphql_succeeds_and_lineage_renders(tmp_path):
    web, daemon = dagster_services(tmp_path / "home", tmp_path / "dagster_home", str(tmp_path))
    try:
        gql = lambda q, v=None: httpx.post(
            web.url + "/graphql", json={"query": q, "variables": v or {}}, timeout=60
        ).json()
        repo = gql(REPOS)["data"]["repositoriesOrError"]["nodes"][0]
        params = {
            "selector": {
                "repositoryLocationName": repo["location"]["name"],
                "repositoryName": repo["name"],
                "jobName": "ingest",
            },
            "runConfigData": {"resources": {"dataset": {"config": {"synthetic_items": 96, "synthetic_users": 120}}}},
        }
        launched = gql(LAUNCH, {"params": params})["data"]["launchRun"]
        assert launched["__typename"] == "LaunchRunSuccess", launched
        run_id = launched["run"]["runId"]
        status, deadline = None, time.time() + 240
        while time.time() < deadline:
            status = gql(STATUS, {"id": run_id})["data"]["runOrError"]["status"]
            if status in ("SUCCESS", "FAILURE", "CANCELED"):
                break
            time.sleep(2)
        assert status == "SUCCESS"

        groups = {
            "ingest": "raw_dataset",
            "tables": "sequences",
            "embeddings": "item_text",
            "training": "seqrec_sft",
            "evaluation": "evaluation_report",
            "serving": "published_model",
        }

        def shoot(page):
            page.goto(web.url + "/asset-groups", wait_until="networkidle", timeout=120_000)
            page.wait_for_timeout(2000)

            def dismiss_dialog(wait_ms: int = 0):
                """The first-visit community dialog can appear late; its backdrop blocks clicks."""
                skip = page.get_by_role("button", name="Skip")
                try:
                    skip.wait_for(state="visible", timeout=wait_ms) if wait_ms else None
                except Exception:  # noqa: BLE001 - no dialog this time
                    return
                if skip.count() and skip.first.is_visible():
                    skip.first.click()
                    page.wait_for_timeout(300)

            dismiss_dialog(wait_ms=8000)
            for group in groups:  # expand each group of the lineage tree beside the graph
                dismiss_dialog()
                page.get_by_role("button", name=group, exact=False).first.click()
                page.wait_for_timeout(300)
                page.keyboard.press("ArrowRight")
                page.wait_for_timeout(400)
            page.wait_for_timeout(1000)
            page.screenshot(path=str(tmp_path / "asset_graph.png"))
            return page.content()

        html = chromium_page(shoot)
        for name in (*groups.values(), "seqrec_dpo", "items", "interactions"):
            assert name in html, name
        assert (tmp_path / "asset_graph.png").stat().st_size > 10_000
    finally:
        web.stop()
        stop_process(daemon)
