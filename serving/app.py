"""recalign's HTTP API over the published model, the DuckDB catalogue and the LanceDB item vectors.

Unknown users get the documented fallback: popularity, flagged in the response (`fallback`).
Unknown item ids in a history are a 422 naming them. Limits: k <= 100, history <= 200 items.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import math
import os
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass

import numpy as np
import torch
from fastapi import FastAPI, HTTPException, Query, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
)
from pydantic import BaseModel, ConfigDict, Field, StrictBool

from recalign.settings import Settings

from .catalogue import Catalogue
from .guard import MAX_BODY_BYTES, BodyGuard
from .model_holder import ModelHolder

MAX_K = 100
MAX_HISTORY = 200
SERVING_MODES = ("auto", "precompute", "ann")
OPEN_PATHS = ("/healthz", "/readyz")  # probes stay open when RECALIGN_API_KEY is set
log = logging.getLogger("recalign.serving")


@dataclass
class ServiceConfig:
    home: str
    dataset: str
    api_key: str | None = None
    poll_seconds: float = 2.0
    mode: str = "auto"  # "precompute" (top lists of every user at load), "ann" (per request), "auto": by size
    precompute_max_users: int = 100_000  # "auto" precomputes up to this many users, else serves by ANN

    @classmethod
    def from_env(cls) -> ServiceConfig:
        return cls(
            home=os.environ.get("RECALIGN_HOME", "./.recalign"),
            dataset=os.environ.get("RECALIGN_DATASET", "synthetic"),
            api_key=os.environ.get("RECALIGN_API_KEY") or None,
            poll_seconds=float(os.environ.get("RECALIGN_POLL_SECONDS", "2")),
            mode=os.environ.get("RECALIGN_SERVING_MODE", "auto"),
        )

    def __post_init__(self):
        if self.mode not in SERVING_MODES:
            raise ValueError(f"serving mode {self.mode!r}: choose one of {', '.join(SERVING_MODES)}")

    def ann(self, n_users: int) -> bool:
        """Serve by ANN (nothing per user in memory)? Asked for, or 'auto' with more users than precomputed."""
        return self.mode == "ann" or (self.mode == "auto" and n_users > self.precompute_max_users)


class RecommendRequest(BaseModel):
    """Exactly one of `user_id` and `history`; nothing else besides the options."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"oneOf": [{"required": ["user_id"]}, {"required": ["history"]}]}
    )

    user_id: int = Field(None, description="a known user: their history is looked up")
    history: list[int] = Field(
        None, max_length=MAX_HISTORY, description="or an ad-hoc history of item ids, oldest first"
    )
    k: int = Field(10, ge=1, le=MAX_K)
    exclude_seen: StrictBool = Field(
        True,
        description="leave out the history's items (models trained with mask_history, the "
        "default, never learned to rank them: their scores say nothing)",
    )
    category: str = Field(None, max_length=200, description="only items whose category path contains this")


class Problem(BaseModel):
    """Why a request was refused: a message, or FastAPI's list of validation errors (422)."""

    detail: str | list[dict]


REFUSED = {
    400: {
        "model": Problem,
        "description": "the body is not strict JSON (NaN, Infinity, a number that overflows, a lone surrogate)",
    },
    401: {"model": Problem, "description": "RECALIGN_API_KEY is set and X-API-Key is missing or wrong"},
    413: {"model": Problem, "description": f"the body is over {MAX_BODY_BYTES} bytes"},
    422: {"model": Problem, "description": "a field out of its range, or not exactly one of user_id and history"},
}
NOT_FOUND = {404: {"model": Problem, "description": "an unknown item id"}}


class ScoredItem(BaseModel):
    item_id: int
    title: str | None
    score: float


class RecommendResponse(BaseModel):
    items: list[ScoredItem]
    model_version: str | None
    fallback: str | None = Field(None, description="'popularity' when the user is unknown (documented fallback)")


class ItemDetails(BaseModel):
    item_id: int
    title: str | None
    categories: str | None


class SimilarResponse(BaseModel):
    item_id: int
    items: list[ScoredItem]
    source: str = Field(
        description="'item_text' (LanceDB text vectors) or 'model' (the served model's item embeddings)"
    )


class Batcher:
    """Requests that arrive while a batch is computed form the next batch (no timer, no added wait): one call of
    `fn(jobs) -> (results, extra)` per batch, run in a worker thread so the event loop keeps taking requests."""

    def __init__(self, fn, max_batch: int = 64):
        self.fn, self.max_batch = fn, max_batch
        self.pending: list = []
        self.running = False

    async def submit(self, job):
        future = asyncio.get_running_loop().create_future()
        self.pending.append((job, future))
        if not self.running:
            self.running = True
            asyncio.get_running_loop().create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self.pending:
                batch, self.pending = self.pending[: self.max_batch], self.pending[self.max_batch :]
                try:
                    results, extra = await loop.run_in_executor(None, self.fn, [job for job, _ in batch])
                    for (_, future), result in zip(batch, results):
                        future.set_result((*result, extra))
                except Exception as exc:  # noqa: BLE001 - every waiting request gets the error
                    for _, future in batch:
                        future.set_exception(exc)
        finally:
            self.running = False


def create_app(cfg: ServiceConfig | None = None) -> FastAPI:
    cfg = cfg or ServiceConfig.from_env()
    settings = Settings.from_env(cfg.home)
    state: dict = {}
    metrics = CollectorRegistry()
    requests = Counter("recalign_requests_total", "requests", ["endpoint", "status"], registry=metrics)
    latency = Histogram(
        "recalign_request_seconds",
        "latency",
        ["endpoint"],
        registry=metrics,
        buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
    )

    class ModelCounts:
        """The model holder's own counts, read at scrape time (models swapped in, published models refused)."""

        def collect(self):
            h = state.get("holder")
            yield CounterMetricFamily(
                "recalign_model_switches", "models loaded and swapped in", value=h.switches if h else 0
            )
            yield CounterMetricFamily(
                "recalign_model_refusals",
                "published models refused (corrupt or incompatible)",
                value=h.refusals if h else 0,
            )

    metrics.register(ModelCounts())

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        torch.set_num_threads(1)  # many small requests: one thread each scales better on 2 cores
        warehouse = settings.warehouse_path(cfg.dataset)
        ann = cfg.ann(Catalogue.n_users(warehouse))
        cat = Catalogue.load(warehouse, settings.cache_dir / "serving" / cfg.dataset if ann else None)
        holder = ModelHolder(
            settings.registry_dir(cfg.dataset),
            cat.n_items,
            cfg.poll_seconds,
            None if ann else cat.histories,
            MAX_K,
            ann=ann,
        )
        holder.start()
        state.update(catalogue=cat, holder=holder, batcher=Batcher(holder.ann_top_batch))
        # the catalogue and model are long-lived: keep the cyclic GC from rescanning them under load (p99)
        gc.collect()
        gc.freeze()
        yield
        holder.stop()

    app = FastAPI(
        title="recalign",
        version="1",
        lifespan=lifespan,
        description="Recommendations from the published recalign model.",
    )

    class Observe:
        """Request counts and latency per route, as plain ASGI (Starlette's BaseHTTPMiddleware costs ~1 ms)."""

        def __init__(self, app):
            self.app = app

        async def __call__(self, scope, receive, send):
            if scope["type"] != "http":
                return await self.app(scope, receive, send)
            t0, status = time.perf_counter(), [500]

            async def send_wrapper(message):
                if message["type"] == "http.response.start":
                    status[0] = message["status"]
                await send(message)

            try:
                await self.app(scope, receive, send_wrapper)
            finally:
                path = getattr(scope.get("route"), "path", "unmatched")
                requests.labels(path, str(status[0])).inc()
                latency.labels(path).observe(time.perf_counter() - t0)

    class KeyGuard:
        """With RECALIGN_API_KEY set, every path but the probes needs X-API-Key (the API, /docs, /openapi.json,
        /metrics)."""

        def __init__(self, app):
            self.app = app

        async def __call__(self, scope, receive, send):
            if scope["type"] == "http" and cfg.api_key and scope["path"] not in OPEN_PATHS:
                if dict(scope.get("headers") or []).get(b"x-api-key", b"").decode("latin-1") != cfg.api_key:
                    return await JSONResponse({"detail": "missing or wrong X-API-Key"}, 401)(scope, receive, send)
            return await self.app(scope, receive, send)

    app.add_middleware(BodyGuard)
    app.add_middleware(KeyGuard)
    app.add_middleware(Observe)  # outermost: refused requests are counted too

    def cat() -> Catalogue:
        return state["catalogue"]

    def holder() -> ModelHolder:
        return state["holder"]

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok"}

    @app.get("/readyz", responses={503: {"description": "no model loaded yet"}})
    def readyz():
        h = holder()
        cur = h.current
        body = {
            "ready": cur is not None,
            "model": None if cur is None else {"name": cur.name, "version": cur.version, "loaded_at": cur.loaded_at},
            "switches": h.switches,
            "refused": h.refusals,
            "last_error": h.last_error,
            "mode": "ann" if h.ann else "precompute",
        }
        return JSONResponse(body, status_code=200 if cur is not None else 503)

    @app.get("/metrics", response_class=PlainTextResponse, responses=REFUSED)
    def prometheus():
        return Response(generate_latest(metrics), media_type=CONTENT_TYPE_LATEST)

    def _recommend(
        history: np.ndarray,
        k: int,
        exclude_seen: bool,
        category: str | None,
        user_known: bool,
        user_id: int | None = None,
    ) -> RecommendResponse:
        c, h = cat(), holder()
        if not user_known or h.current is None:
            pool = c.popular
            if exclude_seen and len(history):
                pool = pool[~np.isin(pool, history)]
            if category:
                mask = c.category_mask(category)
                pool = pool[mask[pool]]
            top = pool[:k]
            n = len(c.popular)
            return _response([(int(i), float(1 - r / n)) for r, i in enumerate(top)], None, "popularity")
        cached = h.top(user_id) if user_id is not None and not category else None
        if cached is not None:  # a known user: precomputed best items, history removed here
            ids, vals, loaded = cached
            keep = ~np.isin(ids, history) if exclude_seen else slice(None)
            return _response(
                list(zip(ids[keep][:k].tolist(), vals[keep][:k].tolist())), f"{loaded.name}/{loaded.version}", None
            )
        scores, loaded = h.scores(history, user_id)
        scores = scores.copy()
        scores[0] = -np.inf
        if exclude_seen:
            scores[history] = -np.inf
        if category:
            mask = c.category_mask(category)
            scores[~mask] = -np.inf
        k_eff = min(k, int(np.isfinite(scores).sum()))
        top = np.argpartition(-scores, k_eff - 1)[:k_eff] if k_eff > 0 else np.zeros(0, dtype=np.int64)
        top = top[np.argsort(-scores[top], kind="stable")]
        return _response([(int(i), float(scores[i])) for i in top], f"{loaded.name}/{loaded.version}", None)

    def _response(scored: list[tuple[int, float]], version: str | None, fallback: str | None) -> Response:
        """A RecommendResponse serialised directly (the schema in the OpenAPI page is the same)."""
        titles = cat().titles
        body = {
            "items": [
                {"item_id": i, "title": titles.get(i), "score": s if math.isfinite(s) else None} for i, s in scored
            ],
            "model_version": version,
            "fallback": fallback,
        }
        return Response(json.dumps(body, separators=(",", ":")), media_type="application/json")

    @app.post("/v1/recommend", response_model=RecommendResponse, responses={**REFUSED, **NOT_FOUND})
    async def recommend(req: RecommendRequest):
        history, known, user_id = _history(req)
        h = holder()
        if known and h.ann and h.current is not None and not req.category:  # batched with concurrent requests
            ids, vals, loaded = await state["batcher"].submit((history, user_id, req.k, req.exclude_seen))
            return _response(list(zip(ids.tolist(), vals.tolist())), f"{loaded.name}/{loaded.version}", None)
        # a few ms of CPU: run inline on the event loop (thread-pool hand-offs under the GIL cost more)
        return _recommend(history, req.k, req.exclude_seen, req.category, known, user_id)

    def _history(req: RecommendRequest) -> tuple[np.ndarray, bool, int | None]:
        """The request's history, whether it is known (else the popularity fallback) and its user id."""
        c = cat()
        if (req.user_id is None) == (req.history is None):
            raise HTTPException(422, "give exactly one of user_id or history")
        if req.history is not None:
            unknown = sorted({i for i in req.history if i not in c.titles})
            if unknown:
                raise HTTPException(404, f"unknown item ids: {unknown[:20]}")
            return np.asarray(req.history, np.int64), bool(req.history), None
        hist = c.histories.get(req.user_id)
        if hist is None:
            return np.zeros(0, np.int64), False, None
        return hist, True, req.user_id

    @app.get("/v1/users/{user_id}/recommendations", response_model=RecommendResponse)
    async def recommend_user(
        user_id: int,
        k: int = Query(10, ge=1, le=MAX_K),
        exclude_seen: bool = True,
        category: str | None = Query(None, max_length=200),
    ):
        given = {"category": category} if category is not None else {}
        return await recommend(RecommendRequest(user_id=user_id, k=k, exclude_seen=exclude_seen, **given))

    @app.get("/v1/items/{item_id}", response_model=ItemDetails, responses={**REFUSED, **NOT_FOUND})
    def item(item_id: int):
        c = cat()
        if item_id not in c.titles:
            raise HTTPException(404, f"unknown item id {item_id}")
        return ItemDetails(item_id=item_id, title=c.titles[item_id], categories=c.categories.get(item_id))

    @app.get("/v1/items/{item_id}/similar", response_model=SimilarResponse, responses={**REFUSED, **NOT_FOUND})
    def similar(item_id: int, k: int = Query(10, ge=1, le=MAX_K)):
        c = cat()
        if item_id not in c.titles:
            raise HTTPException(404, f"unknown item id {item_id}")
        store = state.setdefault("vectors", settings.vectors(cfg.dataset))
        if store.has("item_text"):
            try:
                res = store.nearest("item_text", item_id, k=k, exclude_self=True, with_content=False)
                return SimilarResponse(
                    item_id=item_id,
                    source="item_text",
                    items=[
                        ScoredItem(item_id=int(r.id), title=c.titles.get(int(r.id)), score=float(r.score))
                        for r in res.itertuples()
                    ],
                )
            except KeyError:
                pass  # no text vector for this item: fall back to the model's item embeddings
        loaded = holder().current
        if loaded is None:
            raise HTTPException(404, f"no similar items for {item_id}: no text vectors and no model loaded")
        with torch.no_grad():
            table = loaded.model.item_table(loaded.model.cfg.modalities[0])
            table = torch.nn.functional.normalize(table, dim=1)
            sims = (table @ table[item_id]).numpy()
        sims[[0, item_id]] = -np.inf
        top = np.argsort(-sims, kind="stable")[:k]
        return SimilarResponse(
            item_id=item_id,
            source="model",
            items=[ScoredItem(item_id=int(i), title=c.titles.get(int(i)), score=float(sims[i])) for i in top],
        )

    return app
