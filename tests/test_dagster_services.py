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
ADD_PARTITION = """mutation($repo: RepositorySelector!, $key: String!) {
  addDynamicPartition(repositorySelector: $repo, partitionsDefName: "datasets", partitionKey: $key) {
  __typename ... on PythonError { message } ... on UnauthorizedError { message } } }"""
SHOPS = {"shop-a": {"n_items": 96, "n_users": 120}, "shop-b": {"n_items": 72, "n_users": 100, "seed": 3}}


def test_runs_of_two_dataset_partitions_over_graphql_succeed_and_both_render(tmp_path):
    from assets.ingest.pipeline import DatasetSpec, register_dataset
    from recalign.settings import Settings

    for name, options in SHOPS.items():  # two shops: two registered datasets, two partitions of one lineage
        register_dataset(Settings.from_env(tmp_path / "home"), DatasetSpec("synthetic", name=name, options=options))
    web, daemon = dagster_services(tmp_path / "home", tmp_path / "dagster_home", str(tmp_path))
    try:
        gql = lambda q, v=None: httpx.post(
            web.url + "/graphql", json={"query": q, "variables": v or {}}, timeout=60
        ).json()
        deadline, nodes = time.time() + 120, []
        while not nodes and time.time() < deadline:  # the code location loads after the server answers
            nodes = gql(REPOS)["data"]["repositoriesOrError"].get("nodes") or []
            time.sleep(0 if nodes else 1)
        repo = nodes[0]
        selector = {"repositoryLocationName": repo["location"]["name"], "repositoryName": repo["name"]}
        run_ids = []
        for key in SHOPS:
            added = gql(ADD_PARTITION, {"repo": selector, "key": key})["data"]["addDynamicPartition"]
            # the daemon's dataset_partitions sensor adds registered datasets by itself, often before this does
            assert added["__typename"] in ("AddDynamicPartitionSuccess", "DuplicateDynamicPartitionError"), added
            params = {
                "selector": {**selector, "jobName": "ingest"},
                "executionMetadata": {"tags": [{"key": "dagster/partition", "value": key}]},
            }
            launched = gql(LAUNCH, {"params": params})["data"]["launchRun"]
            assert launched["__typename"] == "LaunchRunSuccess", launched
            run_ids.append(launched["run"]["runId"])
        for run_id in run_ids:
            status, deadline = None, time.time() + 240
            while time.time() < deadline:
                status = gql(STATUS, {"id": run_id})["data"]["runOrError"]["status"]
                if status in ("SUCCESS", "FAILURE", "CANCELED"):
                    break
                time.sleep(2)
            assert status == "SUCCESS"
        for key, options in SHOPS.items():  # each partition built its own tables
            users = Settings.from_env(tmp_path / "home").warehouse(key).read("SELECT count(*) AS n FROM users")
            assert users["n"][0] == options["n_users"]

        def partitions(page):
            page.goto(web.url + "/assets/interactions?view=partitions", wait_until="networkidle", timeout=120_000)
            page.wait_for_timeout(3000)
            skip = page.get_by_role("button", name="Skip")
            if skip.count() and skip.first.is_visible():
                skip.first.click()
                page.wait_for_timeout(300)
            page.get_by_text("shop-b").first.wait_for(timeout=30_000)
            page.screenshot(path=str(tmp_path / "partitions.png"))
            return page.content()

        html = chromium_page(partitions)
        assert "shop-a" in html and "shop-b" in html
        assert (tmp_path / "partitions.png").stat().st_size > 10_000

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
