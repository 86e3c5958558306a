"""The ``gallery`` scenario: one text scored against N cached images, N swept.

The students' image features are written to sharded feature stores on disk (:mod:`dde_bench.bench.featurestore`)
and every query reads them shard by shard with bounded memory, as pooled features and as the fusion-aware cache
(``MODEL@fusion-cache``, :mod:`dde_bench.modeling.fastpath`). A query ranks the images by one class's score
(:data:`dde_bench.tasks.GALLERY_LABEL`), and a student computes only that class. The teacher runs N joint passes;
sizes whose estimated query time exceeds the suite's ``teacher_gallery_budget_s`` are recorded as not measured,
with the estimate. A student row carries the break-even query count against its teacher.
"""

from __future__ import annotations

import shutil
import time
from functools import partial

import torch

from dde_bench.bench import timing
from dde_bench.bench.context import Rows, RunContext
from dde_bench.bench.flops import count_flops
from dde_bench.bench.scenarios.batched import vs_plain
from dde_bench.bench.stats import MIN_ROUNDS_FOR_INTERVAL, speedup
from dde_bench.bench.workload import DTYPES, Entry, comparison_groups, full_call, inputs, variant
from dde_bench.tasks import GALLERY_LABEL

NAME = "gallery"
FLOPS_MAX_N = 1000  # FLOPs are counted (one extra call under FlopCounterMode) up to this gallery size
GALLERY_SIZE_MAX_S = 15.0  # timed seconds per gallery size at most (all its models, interleaved)


def break_even_queries(cache_build_s: float | None, teacher_s: float, student_s: float) -> float | None:
    """Queries after which building the cache plus student queries costs less than teacher queries:
    cache build seconds / (teacher seconds per query - student seconds per query); None if never."""
    if cache_build_s is None or teacher_s <= student_s:
        return None
    return cache_build_s / (teacher_s - student_s)


class GalleryScenario:
    name = NAME

    def run(self, ctx: RunContext, entries: list[Entry], dtype: str, progress) -> None:
        stores = _Stores(ctx, dtype)
        try:
            for teacher, members in comparison_groups(entries, NAME):
                students = [e for e in members if e.kind == "student"]
                if not students:
                    continue
                fused = [
                    variant(e, "fusion-cache", "fusion-aware image cache", fusion_cache=True)
                    for e in students
                ]
                members = members + fused
                sizes = ctx.plan.gallery_sizes_for(teacher, students)
                for n in sizes:
                    if all(ctx.is_done(e, NAME, n, dtype, n) for e in members):
                        continue
                    task = progress.add_task(
                        f"gallery N={n} {dtype}: " + ", ".join(e.name for e in members), total=None
                    )
                    ctx.record(
                        members,
                        NAME,
                        n,
                        dtype,
                        partial(self.measure, ctx, teacher, members, n, max(sizes), dtype, stores),
                        gallery=n,
                    )
                    progress.remove_task(task)
        finally:
            stores.drop()

    @torch.inference_mode()
    def measure(
        self, ctx: RunContext, teacher: Entry | None, members: list[Entry], n: int, n_max: int, dtype, stores
    ) -> Rows:
        budget = ctx.plan.teacher_gallery_budget_s
        fns, skipped = {}, {}
        for e in members:
            if e.kind != "student":
                est = n * ctx.teacher_per_item_s(e, dtype)
                if est > budget:
                    skipped[e.name] = (
                        f"not measured: one query needs {n} joint passes, estimated {est:.3g} s "
                        f"(> teacher_gallery_budget_s={budget:g})"
                    )
                    continue
                fns[e.name] = _teacher_query(ctx, e, n, dtype)
            else:
                fns[e.name] = _student_query(ctx, e, stores.get(e, n_max), n, dtype)
        # enough rounds for the speedup intervals the report prints (stats.MIN_ROUNDS_FOR_INTERVAL), within a
        # per-size time cap: a size whose rounds are slower stops at the cap and its rows say how many they hold.
        # No precision target (rel_ci): gallery speedups run 5-100x, where 2% buys nothing for the time it costs
        rule = ctx.plan.rule
        rule = rule.replace(
            min_iters=MIN_ROUNDS_FOR_INTERVAL,
            min_time_s=min(rule.min_time_s, 0.5),
            max_time_s=min(rule.max_time_s, GALLERY_SIZE_MAX_S),
            rel_ci=0.0,
        )
        meas = timing.measure_interleaved(fns, device=ctx.device, items_per_call=n, **rule.to_dict())
        flops = {name: count_flops(fn) / n if n <= FLOPS_MAX_N else None for name, fn in fns.items()}
        out: Rows = []
        for e in members:
            row = ctx.base_row(e, NAME, n, dtype, n)
            if e.name in skipped:
                row.update(status="skipped", error=skipped[e.name])
                out.append((row, None))
                continue
            m = meas[e.name]
            row.update(m.to_row(), status="ok", flops_per_item=flops[e.name])
            row.update(ctx.utilisation(flops[e.name], m.throughput_per_s, dtype))
            if e.fusion_cache and e.plain in meas:
                row.update(vs_plain(meas, e.name, ctx.seed))
            if e.kind == "student":
                row.update(ctx.features.cost(e, dtype))
                row.update(stores.info(e))
                row["note"] = (row["note"] + "; " if row["note"] else "") + (
                    "features read from an on-disk store shard by shard (OS page cache warm); "
                    f"ranked by class {GALLERY_LABEL[ctx.workload.task]}'s score"
                )
                # this gallery's cache: N items at the per-image build time measured on the cache set
                images = n * ctx.workload.n_images
                row["cache_build_s"] = row["cache_build_ms_per_image"] / 1e3 * images
                row["cache_images"] = images
                if teacher is not None and teacher.name in meas:
                    tm = meas[teacher.name]
                    s = speedup(tm.samples_s, m.samples_s, seed=ctx.seed)
                    row.update(speedup_vs_teacher=s.ratio, speedup_ci_low=s.ci_low, speedup_ci_high=s.ci_high)
                    if flops.get(teacher.name) and flops[e.name]:
                        row["speedup_flop_bound"] = flops[teacher.name] / flops[e.name]
                    row["break_even_queries"] = break_even_queries(
                        row["cache_build_s"], tm.median_s, m.median_s
                    )
            out.append((row, m.samples_ms))
        return out


def _student_query(ctx: RunContext, e: Entry, store, n: int, dtype: str):
    """One query: text tower (+ the fusion layer's text half), then the store's first n images shard by shard,
    scoring the ranking class only."""
    from dde_bench.bench.featurestore import score_text_against_store

    x = inputs(e, ctx.workload, 1, ctx.device, DTYPES[dtype], ctx.seed)
    ids, am = x["input_ids"][:1], x["attention_mask"][:1]
    label = GALLERY_LABEL[ctx.workload.task]
    return lambda: score_text_against_store(e.model, ids, am, store, batch=16384, limit=n, label=label)


def _teacher_query(ctx: RunContext, e: Entry, n: int, dtype: str):
    """One query for the teacher: N joint passes of the text with each image, in chunks of 32."""
    chunk = min(n, 32)
    x = inputs(e, ctx.workload, chunk, ctx.device, DTYPES[dtype], ctx.seed)
    xx = dict(
        x,
        input_ids=x["input_ids"][:1].expand(chunk, -1),
        attention_mask=x["attention_mask"][:1].expand(chunk, -1),
    )
    full = full_call(e, xx)
    last = n - chunk * (n // chunk)
    tail = full_call(e, {k: v[:last] for k, v in xx.items()}) if last else None

    def call():
        for _ in range(n // chunk):
            full()
        if tail is not None:
            tail()

    return call


class _Stores:
    """The gallery's feature stores on disk (RUN/stores/MODEL-KIND-DTYPE): the cache set's features (the
    evaluation images; 16 random paper-shape images for speed-only models) repeated to the sweep's largest N,
    pooled or fusion-aware. Written once per model, kind and dtype; queries read its first N rows. Deleted after
    the scenario (derived data, GBs at paper size) unless --keep-stores."""

    def __init__(self, ctx: RunContext, dtype: str):
        self.ctx, self.dtype = ctx, dtype
        self._stores: dict[str, tuple] = {}  # model -> (store, row info)

    def get(self, e: Entry, n_max: int):
        from dde_bench.bench.featurestore import RepeatedFeatures, build_store, open_store

        if e.name not in self._stores:
            kind = "fusion" if e.fusion_cache else "pooled"
            base, _ = self.ctx.features.pooled(e, self.dtype)
            path = self.ctx.plan.run_dir / "stores" / f"{e.plain}-{kind}-{self.dtype}"
            shard = self.ctx.plan.store_shard_size
            t0 = time.perf_counter()
            build_store(
                e.model,
                RepeatedFeatures(base, n_max),
                path,
                shard_size=shard,
                kind=kind,
                batch_size=shard,
                progress=False,
                resume=False,
                model_name=e.plain,
            )
            write_s = time.perf_counter() - t0
            store = open_store(
                path, e.model, checksum=False
            )  # just written: its sizes are checked, not hashed
            info = {
                "store_kind": kind,
                "store_images": store.count,
                "store_shards": len(store.shard_files),
                "store_bytes": store.nbytes,
                "store_write_s": write_s,
            }
            self._stores[e.name] = (store, info)
        return self._stores[e.name][0]

    def info(self, e: Entry) -> dict:
        return self._stores[e.name][1]

    def drop(self) -> None:
        if not self.ctx.plan.keep_stores:
            for store, _ in self._stores.values():
                shutil.rmtree(store.path, ignore_errors=True)
            stores = self.ctx.plan.run_dir / "stores"
            if stores.is_dir() and not any(stores.iterdir()):
                stores.rmdir()
        self._stores = {}


SCENARIOS = (GalleryScenario(),)
