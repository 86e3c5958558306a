"""What every scenario of a run shares: the plan (resolved settings), the workload, the result writer, the accuracy
of each model, the image features computed once per student, and the one policy for a sweep point that fails.

* :class:`TimingRule` -- when a measurement stops (warm-up, minimum calls and seconds, a time cap).
* :class:`RunPlan` -- the run's settings, resolved from the command line and the suite card; recorded in run.json.
* :class:`ImageFeatures` -- each student's image features of the cache set and what building them cost.
* :class:`RunContext` -- the row skeleton, the finished keys of a resumed run, :meth:`RunContext.record` (write
  rows, or on out-of-memory / a runtime error write status rows and let the sweep go on).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from rich.console import Console

from dde_bench.bench.guard import free_memory, is_oom
from dde_bench.bench.results import ResultWriter, match_key
from dde_bench.bench.timing import REL_CI_MAX_S
from dde_bench.bench.workload import DTYPES, Entry, Workload, inputs, plain_name, sync
from dde_bench.cards import ModelCard, SuiteCard

QUICK_GALLERY_SIZES = [10, 100, 1000, 10000]
# the default run measures a group on until each median's 95% interval is within 2% of it (ratios of two such
# medians: about +-3%), up to the time cap
DEFAULT_REL_CI = 0.02
GALLERY_SIZES = [10, 100, 1000, 10000, 100000]


@dataclass(frozen=True)
class TimingRule:
    """Warm up for ``warmup_iters`` calls and ``warmup_s`` seconds (or until ``warmup_max_s`` has passed after at
    least one call), then time until both ``min_iters`` calls and ``min_time_s`` seconds are reached, and on
    until every median's 95% interval is within ``rel_ci`` of it (0: off) for at most ``rel_ci_max_s`` more
    seconds, never past ``max_time_s``
    (:func:`dde_bench.bench.timing.measure_interleaved`). Tight measurements stop at the minimums; time goes
    to the noisy ones."""

    min_iters: int
    min_time_s: float
    warmup_iters: int
    warmup_s: float
    max_time_s: float = 60.0
    warmup_max_s: float | None = None  # None: no cap
    rel_ci: float = 0.0
    rel_ci_max_s: float = REL_CI_MAX_S  # at most this many seconds more per group chasing rel_ci

    @classmethod
    def default(
        cls,
        quick: bool,
        min_iters: int | None = None,
        min_time_s: float | None = None,
        rel_ci: float | None = None,
        max_time_s: float | None = None,
    ) -> TimingRule:
        return cls(
            min_iters=min_iters or (5 if quick else 10),
            min_time_s=min_time_s if min_time_s is not None else 0.3 if quick else 0.5,
            warmup_iters=2 if quick else 3,
            warmup_s=0.05 if quick else 0.2,
            warmup_max_s=1.0 if quick else 2.0,
            rel_ci=rel_ci if rel_ci is not None else 0.0 if quick else DEFAULT_REL_CI,
            max_time_s=max_time_s if max_time_s is not None else 60.0,
        )

    def to_dict(self) -> dict:
        return asdict(self)

    def replace(self, **kw) -> TimingRule:
        return replace(self, **kw)


def emulated_dtype_notes(dtypes: list[str], device: torch.device) -> dict[str, str]:
    """A note for each dtype this device only emulates (bf16 on a CPU without avx512_bf16 / AMX): its rows time
    the emulation, so they say so."""
    from dde_bench.env import native_bf16

    if "bf16" in dtypes and native_bf16(device) is False:
        what = (
            "CPU without avx512_bf16 / AMX" if device.type == "cpu" else "GPU before compute capability 8.0"
        )
        return {
            "bf16": f"bf16 is emulated in software on this {what}: these times are not a bf16 deployment's"
        }
    return {}


@dataclass(frozen=True)
class RunPlan:
    """The settings of one run, every default resolved (what run.json's ``settings`` record)."""

    suite: SuiteCard
    device: torch.device
    run_dir: Path
    model_cards: list[ModelCard]
    scenarios: list[str]
    dtypes: list[str]
    batch_sizes: list[int]
    gallery_sizes: list[int]
    # sizes given on the command line win over a model card's own; otherwise card > suite
    sizes_from_command_line: bool
    gallery_from_command_line: bool
    teacher_gallery_budget_s: float
    rule: TimingRule
    threads: int
    seed: int = 0
    compile: str | None = None  # a torch.compile backend: adds `@compiled` variants (online, cached)
    keep_stores: bool = False  # keep the gallery's on-disk feature stores in RUN/stores
    store_shard_size: int = 4096
    variants: list[str] = field(default_factory=list)  # run-option variants (bench.variants): int8, ort
    cache_root: Path | None = None  # where exports are cached (ORT's .onnx files); None: dde_bench.paths

    @property
    def models(self) -> list[str]:
        return [m.name for m in self.model_cards]

    def batch_sizes_for(self, e: Entry) -> list[int]:
        return self.batch_sizes if self.sizes_from_command_line else (e.batch_sizes or self.batch_sizes)

    def gallery_sizes_for(self, teacher: Entry | None, students: list[Entry]) -> list[int]:
        if self.gallery_from_command_line:
            return self.gallery_sizes
        cards = [teacher] if teacher else []
        for e in cards + students:
            if e.gallery_sizes:
                return e.gallery_sizes
        return self.gallery_sizes

    def settings(self) -> dict:
        """What run.json records (the suite as its full card)."""
        return {
            "suite": self.suite.name,
            "suite_card": self.suite.to_dict(),
            "device": str(self.device),
            "out": str(self.run_dir),
            "models": self.models,
            "model_cards": {m.name: m.to_dict() for m in self.model_cards},
            "scenarios": self.scenarios,
            "dtypes": self.dtypes,
            "batch_sizes": self.batch_sizes,
            "gallery_sizes": self.gallery_sizes,
            "teacher_gallery_budget_s": self.teacher_gallery_budget_s,
            "paper_image": list(self.suite.paper_shape),
            "timing_rule": self.rule.to_dict(),
            "threads": self.threads,
            "seed": self.seed,
            "compile": self.compile,
            "keep_stores": self.keep_stores,
            "store_shard_size": self.store_shard_size,
            "variants": self.variants,
        }


class ImageFeatures:
    """Pooled image features of the cache set, once per student (plain model) and dtype, and the cost of
    building each student's cache. Suite models encode the whole evaluation split; speed-only paper-size models
    encode 16 random images of paper shape. Shared by the cached and gallery scenarios."""

    def __init__(self, workload: Workload, device: torch.device):
        self.workload, self.device = workload, device
        self._pooled: dict[tuple[str, str], tuple[torch.Tensor, float]] = {}
        self._costs: dict[tuple[str, str], dict] = {}

    @torch.inference_mode()
    def pooled(self, e: Entry, dtype_name: str) -> tuple[torch.Tensor, float]:
        """(features, seconds they took) for ``e``'s plain model; variants share them, except an int8 variant,
        whose own (quantised) image tower builds its cache."""
        key = (e.name if e.runtime == "int8" else e.plain, dtype_name)
        if key not in self._pooled:
            dtype = DTYPES[dtype_name]
            t0 = time.perf_counter()
            feats = []
            if e.paper_inputs:
                for start in range(0, 16, 8):
                    x = inputs(e, self.workload, 8, self.device, dtype, start)
                    feats.append(e.model.encode_images(x["pixel_values"], x["pixel_mask"]))
            else:
                for b in self.workload.dataset_for(e).batches(64):
                    pv, pm = b["pixel_values"].to(self.device, dtype), b["pixel_mask"].to(self.device)
                    feats.append(e.model.encode_images(pv, pm))
            f = torch.cat(feats)
            sync(self.device)
            self._pooled[key] = (f, time.perf_counter() - t0)
        return self._pooled[key]

    @torch.inference_mode()
    def cost(self, e: Entry, dtype_name: str) -> dict:
        """Build time and bytes per image of ``e``'s cache. The fusion-aware variant adds the time of
        precomputing the fusion layer's image half to its student's pooled features."""
        key = (e.name, dtype_name)
        if key not in self._costs:
            f, build = self.pooled(e, dtype_name)
            if e.fusion_cache:
                from dde_bench.modeling import fastpath

                t0 = time.perf_counter()
                f = fastpath.precompute_image(e.model, f)
                sync(self.device)
                build += time.perf_counter() - t0
            images = f.shape[0] * self.workload.n_images
            self._costs[key] = {
                "cache_build_s": build,
                "cache_images": images,
                "cache_build_ms_per_image": build * 1e3 / images,
                "cache_bytes_per_image": f.element_size() * f.shape[-1],
            }
        return self._costs[key]


# (row, raw samples in ms or None) as a scenario measures them
Rows = list[tuple[dict, list[float] | None]]


@dataclass
class RunContext:
    """The state scenarios share within one run."""

    plan: RunPlan
    workload: Workload
    writer: ResultWriter
    console: Console
    accuracy: dict[str, dict] = field(
        default_factory=dict
    )  # plain model -> accuracy columns, this dtype pass
    # median seconds per item of each (model, dtype) measured so far, in any scenario (the gallery's estimate of a
    # teacher query's cost reads it)
    per_item_s: dict[tuple[str, str], float] = field(default_factory=dict)
    # dtype -> this device's measured dense matmul rate (flops.measure_gemm_peak), what rows' utilisation divides by
    gemm_peak: dict[str, dict] = field(default_factory=dict)
    # the run-option variants built so far (bench.variants.build memoises here): one int8 copy / ORT session
    # per model, shared by the accuracy pass and every scenario
    variant_cache: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.done = self.writer.done_keys()
        self.features = ImageFeatures(self.workload, self.plan.device)
        self.dtype_notes = emulated_dtype_notes(self.plan.dtypes, self.plan.device)
        for dtype, note in self.dtype_notes.items():
            self.console.print(f"[yellow]{dtype}[/]: {note}")

    @property
    def device(self) -> torch.device:
        return self.plan.device

    @property
    def seed(self) -> int:
        return self.plan.seed

    def base_row(self, e: Entry, scenario: str, batch: int, dtype: str, gallery: int | None = None) -> dict:
        """The columns every row of (entry, scenario, size, dtype) has, before anything is measured."""
        return {
            "suite": self.plan.suite.name,
            "task": self.workload.task,
            "model": e.name,
            "model_kind": e.kind,
            "size": e.size,
            "scenario": scenario,
            "batch_size": batch,
            "gallery_size": gallery,
            "dtype": dtype,
            "device": str(self.device),
            "threads": torch.get_num_threads(),  # as measured, not as asked
            "teacher_model": e.teacher,
            "note": "; ".join(n for n in (e.note, self.dtype_notes.get(dtype)) if n),
            # a variant scores like its plain model, unless it was scored itself (int8 changes the numerics)
            **(self.accuracy.get(e.name) or self.accuracy.get(plain_name(e.name), {})),
        }

    def is_done(self, e: Entry, scenario: str, batch: int, dtype: str, gallery: int | None = None) -> bool:
        """Whether a resumed run already holds this row."""
        return match_key(self.base_row(e, scenario, batch, dtype, gallery)) in self.done

    def record(
        self,
        members: list[Entry],
        scenario: str,
        size: int,
        dtype: str,
        measure: Callable[[], Rows],
        gallery: int | None = None,
        slots: list[tuple[Entry, str]] | None = None,
    ) -> None:
        """Write the rows ``measure()`` returns. Out of memory, or a runtime error inside torch, ends this sweep
        point only: every member gets a row with status "oom" / "error" and the first line of the message, and
        the sweep goes on. Anything else (a bug, a user error, Ctrl-C) propagates. ``slots`` (entry, scenario)
        are the rows of a measurement that spans scenarios (default: each member in ``scenario``)."""
        try:
            rows = measure()
        except Exception as exc:  # noqa: BLE001 - recorded per row, the sweep goes on
            if not (is_oom(exc) or isinstance(exc, RuntimeError)):
                raise
            free_memory()
            status = "oom" if is_oom(exc) else "error"
            message = (str(exc).splitlines() or [type(exc).__name__])[0][:300]
            rows = [
                (dict(self.base_row(e, scen, size, dtype, gallery), status=status, error=message), None)
                for e, scen in (slots or [(e, scenario) for e in members])
            ]
        for row, samples in rows:
            if match_key(row) not in self.done:
                self.writer.append(row, samples)

    def variants(self, entries: list[Entry], dtype: str):
        """The run-option variants (``--variants``) of ``entries`` for ``dtype``: a ``bench.variants.VariantSet``."""
        from dde_bench import paths
        from dde_bench.bench import variants

        root = self.plan.cache_root or paths.cache_root()
        return variants.build(self.plan.variants, entries, dtype, self.device, root, self.variant_cache)

    def utilisation(self, flops_per_item: float | None, items_per_s: float | None, dtype: str) -> dict:
        """A row's achieved FLOP/s and its share of the measured GEMM peak for ``dtype`` (None where unknown)."""
        if flops_per_item is None or items_per_s is None:
            return {"achieved_flops_per_s": None, "gemm_peak_share": None}
        achieved = flops_per_item * items_per_s
        peak = (self.gemm_peak.get(dtype) or {}).get("flops_per_s")
        return {"achieved_flops_per_s": achieved, "gemm_peak_share": achieved / peak if peak else None}

    def teacher_per_item_s(self, e: Entry, dtype_name: str) -> float:
        """Seconds per item of ``e``'s full call: from this run's measurements, else one short timed call."""
        from dde_bench.bench import timing
        from dde_bench.bench.workload import full_call

        key = (e.name, dtype_name)
        if key not in self.per_item_s:
            x = inputs(e, self.workload, 1, self.device, DTYPES[dtype_name], self.seed)
            m = timing.measure(
                full_call(e, x), device=self.device, warmup_iters=1, warmup_s=0.0, min_iters=3, min_time_s=0.0
            )
            self.per_item_s[key] = m.median_s
        return self.per_item_s[key]
