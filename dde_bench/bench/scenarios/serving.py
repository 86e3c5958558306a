"""Serving under load: MLPerf LoadGen's ``single-stream``, ``server`` and ``offline`` scenarios (and ``serving``,
all three), through MLCommons' load generator (``mlcommons-loadgen``, imported as ``mlperf_loadgen``).

Every teacher and student of the run is served in each of its forms, one row per form and scenario:

* the teacher's full call (its only form: ``serving_form`` online);
* a student online (both towers per request) and cached (the row ``MODEL@cached``: text tower, fusion MLP and head
  against the image features of the evaluation split, computed once by ``ctx.features`` before any test and timed
  separately, ``cache_build_s``, as the gallery does). transformers' reference row is not served: it is a
  reference for one call's speed, not a contender.

The pieces, as LoadGen names them:

* :class:`SampleLibrary` (the QSL): the evaluation split as that model sees it (paper-size speed rows: the 16
  random paper-shape samples its image cache holds). LoadGen's load callback preprocesses the samples it asks for
  (tokenised text, normalised pixels or cached features, in the row's dtype, on the device) before the timed
  part starts; the unload callback drops them.
* :class:`BatchingSUT` (the SUT): ``issue_queries`` queues each sample with its arrival time; one worker thread
  takes the oldest, waits at most ``max_delay_ms`` after its arrival for up to ``max_batch`` samples, runs the
  model on the gathered batch and completes every sample through ``lg.QuerySamplesComplete`` (in accuracy mode with
  its logits as the response data, which LoadGen writes to ``mlperf_log_accuracy.json``). Single-stream runs it
  with batch 1 and no delay, Offline with ``offline_batch`` and no delay.
* The settings come from the suite card's ``serving`` block (:class:`dde_bench.cards.ServingCard`): LoadGen's
  minimum duration and query count, Server's latency bound and percentile, the batcher, the search budget.

What a row holds: LoadGen's verdict (``loadgen_result`` VALID / INVALID and its reasons), target and achieved QPS,
LoadGen's p50 / p90 / p99 / p99.9 latency, the batcher's settings and the batch size it formed. Single-stream and
Offline tests whose run LoadGen finds too short (its expected latency / QPS hint was off) are repeated, at most
twice, with twice the rate LoadGen measured as the hint. **Server** is a search for the highest offered QPS that
LoadGen judges VALID at the bound (``max_qps_at_bound``), like an MLPerf submission's: start at half the capacity a
short timing predicts, double until INVALID, halve until VALID (down to 1/64 of that capacity), then bisect
(geometrically) until the lowest INVALID and highest VALID QPS are within ``qps_precision``, or the budget or the
trial cap ends it (``qps_search``); a form whose single sample already takes longer than the bound gets one test,
at half its single-sample rate. A form that is VALID at no offered QPS is a row with ``qps_search`` "bound not met"
and ``max_qps_at_bound`` None, not an error. Each trial is kept in ``qps_trials``; the row's own percentiles are
those of the test at ``max_qps_at_bound`` (else of the lowest offered QPS).

**Accuracy mode** (models with trained weights): LoadGen sends every sample once; the logits it logged are scored
with the official metric (:func:`dde_bench.evaluation.evaluate`) and must equal the harness's accuracy of the same
model (``serving_accuracy``, ``serving_accuracy_matches``); the official prediction file is written beside the log.

LoadGen's logs stay in ``RUN/loadgen/<model>/<scenario>-<dtype>/<test>/``: ``mlperf_log_summary.txt`` and
``mlperf_log_detail.txt`` (accuracy mode: ``mlperf_log_accuracy.json`` and the predictions).
"""

from __future__ import annotations

import json
import math
import queue
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from functools import partial
from pathlib import Path
from typing import Any

import torch

from dde_bench.bench import timing
from dde_bench.bench.context import Rows, RunContext, RunPlan, TimingRule
from dde_bench.bench.flops import count_flops
from dde_bench.bench.workload import DTYPES, Entry, comparison_groups, full_call, inputs, sync, variant
from dde_bench.errors import UserError

LOADGEN_NAMES = {"single-stream": "SingleStream", "server": "Server", "offline": "Offline"}
PERFORMANCE_SAMPLES = 1024  # samples LoadGen keeps loaded in performance mode (MLPerf's ResNet-50 count)
SINGLE_STREAM_PERCENTILE = 0.9  # MLPerf's single-stream metric (mlperf.conf: *.SingleStream 90)
MAX_TRIALS = 12  # the Server search's trial cap
CALIBRATION_BATCH = (
    8  # the capacity hint is timed at most at this batch (paper-size calls on CPU take seconds)
)
PAPER_SAMPLES = 16  # speed-only paper-size models: the random samples ImageFeatures caches (two seeds of 8)
CACHED = "cached"


def loadgen():
    """The ``mlperf_loadgen`` module, or one UserError line saying how to install it."""
    try:
        import mlperf_loadgen
    except ImportError:
        raise UserError(
            "the LoadGen scenarios (single-stream, server, offline) need MLPerf LoadGen: "
            "pip install 'dde-bench[serving]' (the mlcommons-loadgen package)"
        ) from None
    return mlperf_loadgen


@dataclass(frozen=True)
class ServingSettings:
    """The suite card's ``serving`` block, every default resolved (see :class:`dde_bench.cards.ServingCard`)."""

    profile: str
    min_duration_s: float
    min_query_count: int
    max_duration_s: float
    latency_bound_ms: float
    latency_percentile: float
    max_batch: int
    max_delay_ms: float
    offline_batch: int
    qps_search_budget_s: float
    qps_precision: float
    accuracy: bool

    @classmethod
    def of(cls, plan: RunPlan) -> ServingSettings:
        """The run's settings: the card's, else its profile's; ``profile: auto`` is mlperf on CUDA unless the run
        is --quick (its timing rule is the quick one), else quick."""
        quick = TimingRule.default(True)
        is_quick = (plan.rule.warmup_iters, plan.rule.warmup_s) == (quick.warmup_iters, quick.warmup_s)
        default = "mlperf" if plan.device.type == "cuda" and not is_quick else "quick"
        values = plan.suite.serving.resolved(default)
        return cls(**{f.name: values[f.name] for f in fields(cls)})


# ------------------------------------------------------------------------------------- the sample library
class SampleLibrary:
    """LoadGen's query sample library for one model form: ``load`` / ``unload`` are its callbacks, ``batch`` gathers
    loaded samples into one model input (text trimmed to the batch's longest, as the harness's batches are)."""

    def __init__(self, ctx: RunContext, e: Entry, cached: bool, dtype_name: str):
        self.ctx, self.e, self.cached = ctx, e, cached
        self.dtype = DTYPES[dtype_name]
        self.device = ctx.device
        self.feats = ctx.features.pooled(e, dtype_name)[0] if cached else None
        self.data = None if e.paper_inputs else ctx.workload.dataset_for(e)
        self.count = PAPER_SAMPLES if e.paper_inputs else len(self.data)
        self.loaded: dict[str, torch.Tensor] = {}
        self.indices = torch.empty(0, dtype=torch.long)  # sample index of each loaded row
        self.where = torch.full((self.count,), -1, dtype=torch.long)  # sample index -> loaded row
        self.error: BaseException | None = None

    @property
    def performance_count(self) -> int:
        return min(self.count, PERFORMANCE_SAMPLES)

    def _prepare(self, idx: list[int]) -> dict[str, torch.Tensor]:
        """The samples ``idx`` preprocessed onto the device (text padded to the model's full length)."""
        if self.e.paper_inputs:
            wl = self.ctx.workload
            parts = [inputs(self.e, wl, 8, self.device, self.dtype, s) for s in range(0, PAPER_SAMPLES, 8)]
            x = {k: torch.cat([p[k] for p in parts])[idx] for k in parts[0]}
        else:
            b = self.data.batch(idx)
            full = self.data.input_ids.shape[1]
            pad = full - b["input_ids"].shape[1]
            x = {
                "input_ids": torch.nn.functional.pad(b["input_ids"], (0, pad)).to(self.device),
                "attention_mask": torch.nn.functional.pad(b["attention_mask"], (0, pad)).to(self.device),
                "pixel_values": b["pixel_values"].to(self.device, self.dtype),
                "pixel_mask": b["pixel_mask"].to(self.device),
            }
        if self.cached:
            x = {"input_ids": x["input_ids"], "attention_mask": x["attention_mask"], "feats": self.feats[idx]}
        return x

    def load(self, indices: list[int]) -> None:
        try:
            new = sorted(set(indices) - set(self.indices.tolist()))
            if not new:
                return
            x = self._prepare(new)
            self.loaded = {k: torch.cat([self.loaded[k], v]) if self.loaded else v for k, v in x.items()}
            self.indices = torch.cat([self.indices, torch.tensor(new, dtype=torch.long)])
            self.where[self.indices] = torch.arange(len(self.indices))
            sync(self.device)
        except BaseException as exc:  # noqa: BLE001 - LoadGen's thread must not see it; raised after the test
            self.error = self.error or exc

    def unload(self, indices: list[int]) -> None:
        drop = torch.zeros(self.count, dtype=torch.bool)
        drop[torch.as_tensor(list(indices), dtype=torch.long)] = True
        keep = ~drop[self.indices]
        self.where[self.indices] = -1
        self.indices = self.indices[keep]
        self.loaded = {k: v[keep.to(v.device)] for k, v in self.loaded.items()} if len(self.indices) else {}
        self.where[self.indices] = torch.arange(len(self.indices))

    def batch(self, indices: list[int]) -> dict[str, torch.Tensor]:
        rows = self.where[torch.as_tensor(indices, dtype=torch.long)]
        if bool((rows < 0).any()):
            raise RuntimeError(f"LoadGen asked for samples that are not loaded: {indices[:8]}")
        rows = rows.to(self.device)
        x = {k: v.index_select(0, rows) for k, v in self.loaded.items()}
        t = max(int(x["attention_mask"].sum(1).max()), 1)
        x["input_ids"], x["attention_mask"] = x["input_ids"][:, :t], x["attention_mask"][:, :t]
        return x


def forward_of(e: Entry, cached: bool) -> Callable[[dict], torch.Tensor]:
    """batch -> logits: the cached student's text tower + fusion + head, else the model's full call."""
    if cached:
        return lambda x: e.model.forward_cached(x["input_ids"], x["attention_mask"], x["feats"])
    return lambda x: full_call(e, x)()


# ------------------------------------------------------------------------------- the system under test
class BatchingSUT:
    """LoadGen's system under test: a queue fed by ``issue_queries`` and one worker thread that forms batches (at
    most ``max_batch`` samples, waiting at most ``max_delay_s`` after the oldest one's arrival), runs the model and
    completes them. ``keep_outputs`` (accuracy mode) hands LoadGen each sample's logits as its response data."""

    def __init__(self, lg, qsl: SampleLibrary, forward: Callable[[dict], torch.Tensor]):
        self.lg, self.qsl, self.forward = lg, qsl, forward
        self.max_batch, self.max_delay_s, self.keep_outputs = 1, 0.0, False
        self.batches = self.samples = 0
        self.error: BaseException | None = None
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._threads = torch.get_num_threads()
        self._worker = threading.Thread(target=self._work, name="dde-bench-batcher", daemon=True)
        self._worker.start()
        self.handle = lg.ConstructSUT(self.issue_queries, self.flush_queries)

    def configure(self, max_batch: int, max_delay_s: float, keep_outputs: bool) -> None:
        """Settings of the next test (the queue is empty between tests: LoadGen waits for every response)."""
        self.max_batch, self.max_delay_s, self.keep_outputs = max_batch, max_delay_s, keep_outputs
        self.batches = self.samples = 0

    @property
    def mean_batch(self) -> float | None:
        return self.samples / self.batches if self.batches else None

    def issue_queries(self, samples) -> None:
        now = time.perf_counter()
        for s in samples:
            self._queue.put((s.id, s.index, now))

    def flush_queries(self) -> None:
        pass  # every sample is answered as soon as its batch ran

    def close(self) -> None:
        self._queue.put(None)
        self._worker.join()
        self.lg.DestroySUT(self.handle)

    def _work(self) -> None:
        torch.set_num_threads(self._threads)  # the run's thread count, as measured everywhere else
        with torch.inference_mode():
            stop = False
            while not stop:
                first = self._queue.get()
                if first is None:
                    return
                batch = [first]
                deadline = first[2] + self.max_delay_s
                while len(batch) < self.max_batch:
                    wait = deadline - time.perf_counter()
                    try:
                        nxt = self._queue.get(timeout=wait) if wait > 0 else self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if nxt is None:
                        stop = True
                        break
                    batch.append(nxt)
                self._run(batch)

    def _run(self, batch: list[tuple[int, int, float]]) -> None:
        out = None
        try:
            logits = self.forward(self.qsl.batch([b[1] for b in batch]))
            if self.keep_outputs:
                out = logits.detach().float().contiguous().cpu()
            else:
                sync(self.qsl.device)
        except BaseException as exc:  # noqa: BLE001 - answered empty so LoadGen finishes; raised after the test
            self.error = self.error or exc
        responses = []
        for i, (qid, _, _) in enumerate(batch):
            if out is None:
                responses.append(self.lg.QuerySampleResponse(qid, 0, 0))
            else:
                row = out.shape[1] * out.element_size()
                responses.append(self.lg.QuerySampleResponse(qid, out.data_ptr() + i * row, row))
        self.lg.QuerySamplesComplete(responses)  # LoadGen copies the response data before returning
        self.batches += 1
        self.samples += len(batch)


# ------------------------------------------------------------------------------------------ one test
@dataclass
class TestResult:
    """One LoadGen test, read from its detail log."""

    scenario: str
    mode: str  # performance | accuracy
    log_dir: Path
    wall_s: float
    mean_batch: float | None
    valid: bool | None = None
    reason: str = ""
    target_qps: float | None = None
    achieved_qps: float | None = None
    p50_ms: float | None = None
    p90_ms: float | None = None
    p99_ms: float | None = None
    p999_ms: float | None = None
    queries: int | None = None
    too_short: bool = False  # LoadGen's minimum duration was not reached (its hint was off)

    @property
    def result(self) -> str | None:
        return None if self.valid is None else ("VALID" if self.valid else "INVALID")

    def columns(self, run_dir: Path) -> dict[str, Any]:
        """The row columns this test fills."""
        return {
            "target_qps": self.target_qps,
            "achieved_qps": self.achieved_qps,
            "serving_p50_ms": self.p50_ms,
            "serving_p90_ms": self.p90_ms,
            "serving_p99_ms": self.p99_ms,
            "serving_p999_ms": self.p999_ms,
            "loadgen_result": self.result,
            "loadgen_reason": self.reason,
            "batcher_mean_batch": self.mean_batch,
            "loadgen_log_dir": _relative(self.log_dir, run_dir),
        }

    def trial(self) -> dict[str, Any]:
        """One entry of a Server row's ``qps_trials``."""
        return {
            "target_qps": self.target_qps,
            "achieved_qps": self.achieved_qps,
            "p50_ms": self.p50_ms,
            "p90_ms": self.p90_ms,
            "p99_ms": self.p99_ms,
            "p999_ms": self.p999_ms,
            "result": self.result,
            "reason": self.reason,
            "queries": self.queries,
            "mean_batch": self.mean_batch,
            "wall_s": self.wall_s,
        }


def _relative(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


def read_detail_log(path: Path) -> dict[str, Any]:
    """The ``:::MLLOG`` entries of LoadGen's detail log as key -> value (the last entry of a key wins)."""
    out: dict[str, Any] = {}
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if line.startswith(":::MLLOG "):
            try:
                rec = json.loads(line[len(":::MLLOG ") :])
            except json.JSONDecodeError:
                continue
            out[rec.get("key")] = rec.get("value")
    return out


def _ms(ns: Any) -> float | None:
    return None if ns is None else float(ns) / 1e6


def invalid_reason(d: dict[str, Any]) -> str:
    """Why LoadGen judged a run INVALID, in its own words (failed checks, recommendation, early stopping)."""
    if d.get("result_validity") == "VALID":
        return ""
    parts = [
        what
        for key, what in (
            ("result_perf_constraints_met", "latency bound not met"),
            ("result_min_duration_met", "min duration not met"),
            ("result_min_queries_met", "min query count not met"),
            ("early_stopping_met", "early stopping not met"),
        )
        if d.get(key) is False
    ]
    rec = " ".join(str(d.get("result_invalid_reason") or "").split())
    if rec:
        parts.append(rec)
    if d.get("early_stopping_met") is False:
        early = " ".join(str(d.get("early_stopping_result") or "").replace("*", " ").split())
        if early:
            parts.append(f"early stopping: {early}")
    return "; ".join(parts)


def result_of(scenario: str, mode: str, log_dir: Path, wall_s: float, mean_batch) -> TestResult:
    """A test's outcome from its detail log."""
    d = read_detail_log(log_dir / "mlperf_log_detail.txt")
    r = TestResult(scenario, mode, log_dir, wall_s, mean_batch)
    if mode != "performance":
        return r
    r.valid = d.get("result_validity") == "VALID"
    r.reason = invalid_reason(d)
    r.too_short = d.get("result_min_duration_met") is False
    r.queries = d.get("result_query_count")
    if scenario == "server":
        r.target_qps = d.get("effective_target_qps")
        r.achieved_qps = d.get("result_completed_samples_per_sec")
    elif scenario == "offline":
        r.target_qps = d.get("effective_target_qps")
        r.achieved_qps = d.get("result_samples_per_second")
    else:
        r.achieved_qps = d.get("result_qps_with_loadgen_overhead")
    for attr, key in (("p50_ms", "50.00"), ("p90_ms", "90.00"), ("p99_ms", "99.00"), ("p999_ms", "99.90")):
        setattr(r, attr, _ms(d.get(f"result_{key}_percentile_latency_ns")))
    return r


class Session:
    """One model form under LoadGen: its sample library, system under test and LoadGen handles; runs tests."""

    def __init__(self, ctx: RunContext, e: Entry, cached: bool, dtype: str, scenario: str, log_root: Path):
        self.lg = loadgen()
        self.ctx, self.scenario, self.log_root = ctx, scenario, log_root
        self.qsl = SampleLibrary(ctx, e, cached, dtype)
        self.forward = forward_of(e, cached)
        self.sut = BatchingSUT(self.lg, self.qsl, self.forward)
        self.qsl_handle = self.lg.ConstructQSL(
            self.qsl.count, self.qsl.performance_count, self.qsl.load, self.qsl.unload
        )

    def close(self) -> None:
        self.lg.DestroyQSL(self.qsl_handle)
        self.sut.close()

    @torch.inference_mode()
    def calibrate(self, batch: int) -> tuple[float, float, float]:
        """(seconds of one sample alone, samples/s at ``batch`` (at most CALIBRATION_BATCH), FLOPs per sample)
        from a short timing: the starting hints of LoadGen's tests and of the Server search."""
        n = min(batch, CALIBRATION_BATCH, self.qsl.count)
        idx = list(range(n))
        self.qsl.load(idx)
        try:
            if self.qsl.error is not None:
                raise self.qsl.error
            one, full = self.qsl.batch(idx[:1]), self.qsl.batch(idx)
            rule = dict(warmup_iters=1, warmup_s=0.0, min_iters=3, min_time_s=0.1, max_time_s=10.0)
            dev = self.ctx.device
            single = timing.measure(lambda: self.forward(one), device=dev, **rule).median_s
            per_batch = timing.measure(lambda: self.forward(full), device=dev, **rule).median_s
            flops = count_flops(lambda: self.forward(one))
        finally:
            self.qsl.unload(idx)
        return single, n / per_batch, flops

    def test(self, name: str, mode: str, batcher: tuple[int, float], **settings) -> TestResult:
        """Run one LoadGen test (LoadGen's own TestSettings names as keyword arguments) into log folder ``name``."""
        lg = self.lg
        ts = lg.TestSettings()
        ts.scenario = getattr(lg.TestScenario, LOADGEN_NAMES[self.scenario])
        ts.mode = lg.TestMode.AccuracyOnly if mode == "accuracy" else lg.TestMode.PerformanceOnly
        seed = self.ctx.seed
        ts.qsl_rng_seed = ts.sample_index_rng_seed = ts.schedule_rng_seed = seed
        for k, v in settings.items():
            setattr(ts, k, v)
        out = self.log_root / name
        if out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True)
        log = lg.LogSettings()
        log.log_output.outdir = str(out)
        log.enable_trace = False
        self.sut.configure(*batcher, keep_outputs=mode == "accuracy")
        t0 = time.perf_counter()
        # a path that does not exist: LoadGen would otherwise apply ./audit.config of the working directory
        lg.StartTestWithLogSettings(self.sut.handle, self.qsl_handle, ts, log, str(out / "no-audit.config"))
        wall = time.perf_counter() - t0
        for err in (self.qsl.error, self.sut.error):
            if err is not None:
                raise err
        _tidy(out, mode)
        return result_of(self.scenario, mode, out, wall, self.sut.mean_batch)


def _cap(limit_ms: int, ms: int) -> int:
    """The tighter of two LoadGen max_duration values (0 = no limit)."""
    return min(limit_ms, ms) if limit_ms else ms


def _tidy(out: Path, mode: str) -> None:
    """Keep LoadGen's summary and detail logs (and accuracy mode's accuracy log); drop the empty trace and the
    empty accuracy log of a performance test."""
    (out / "mlperf_log_trace.json").unlink(missing_ok=True)
    if mode != "accuracy":
        (out / "mlperf_log_accuracy.json").unlink(missing_ok=True)


def read_accuracy_log(path: Path, count: int) -> torch.Tensor:
    """The logits LoadGen logged in accuracy mode (hex float32 per sample), ordered by sample index."""
    entries = json.loads(path.read_text(encoding="utf-8"))
    rows: dict[int, torch.Tensor] = {}
    for rec in entries:
        raw = bytearray.fromhex(rec["data"])
        rows[int(rec["qsl_idx"])] = torch.frombuffer(raw, dtype=torch.float32)
    missing = [i for i in range(count) if i not in rows]
    if missing:
        raise RuntimeError(f"{path}: LoadGen logged {len(rows)} of {count} samples (missing {missing[:5]})")
    return torch.stack([rows[i] for i in range(count)])


def score_accuracy_log(path: Path, e: Entry, data, device):
    """The official metric of the logits in LoadGen's accuracy log: :func:`dde_bench.evaluation.evaluate` replaying
    them in the dataset's order (so the scoring, answer list and prediction files are the harness's own)."""
    from dde_bench.evaluation import evaluate

    logits = read_accuracy_log(path, len(data))
    cursor = [0]

    def replay(b: dict) -> torch.Tensor:
        n = b["input_ids"].shape[0]
        out = logits[cursor[0] : cursor[0] + n]
        cursor[0] += n
        return out

    return evaluate(e.model, data, device, fn=replay)


# ------------------------------------------------------------------------------------------ the scenarios
@dataclass(frozen=True)
class LoadGenScenario:
    """One LoadGen scenario (``single-stream``, ``server`` or ``offline``) over every served model form."""

    name: str

    def run(self, ctx: RunContext, entries: list[Entry], dtype: str, progress) -> None:
        loadgen()  # one line, before any work, when the package is missing
        s = ServingSettings.of(ctx.plan)
        for _, members in comparison_groups(
            entries, self.name
        ):  # teacher first: students' ratios read its row
            for e in members:
                forms = [(e, False)]
                if e.kind == "student":
                    note = "image features of the evaluation split precomputed (cache_build_s), timed apart"
                    forms.append((variant(e, CACHED, note), True))
                for form, cached in forms:
                    batch = self.batch_size(s)
                    if ctx.is_done(form, self.name, batch, dtype):
                        continue
                    task = progress.add_task(f"{self.name} {dtype}: {form.name}", total=None)
                    measure = partial(self.measure, ctx, s, form, cached, dtype, batch)
                    ctx.record([form], self.name, batch, dtype, measure)
                    progress.remove_task(task)

    def batch_size(self, s: ServingSettings) -> int:
        return {"single-stream": 1, "server": s.max_batch, "offline": s.offline_batch}[self.name]

    def batcher(self, s: ServingSettings) -> tuple[int, float]:
        return (s.max_batch, s.max_delay_ms / 1e3) if self.name == "server" else (self.batch_size(s), 0.0)

    def measure(
        self, ctx: RunContext, s: ServingSettings, e: Entry, cached: bool, dtype: str, batch: int
    ) -> Rows:
        log_root = ctx.plan.run_dir / "loadgen" / e.name / f"{self.name}-{dtype}"
        session = Session(ctx, e, cached, dtype, self.name, log_root)
        t0 = time.perf_counter()
        try:
            single_s, capacity, flops = session.calibrate(batch)
            row = ctx.base_row(e, self.name, batch, dtype)
            row.update(
                status="ok",
                serving_form=CACHED if cached else "online",
                flops_per_item=flops,
                batcher_max_batch=self.batcher(s)[0],
                batcher_max_delay_ms=self.batcher(s)[1] * 1e3,
                loadgen_min_duration_s=s.min_duration_s,
                loadgen_min_query_count=s.min_query_count,
                serving_profile=s.profile,
                latency_percentile=s.latency_percentile
                if self.name == "server"
                else SINGLE_STREAM_PERCENTILE,
            )
            if self.name == "server":
                best, extra = self.search(session, s, single_s, capacity)
                row.update(
                    latency_bound_ms=s.latency_bound_ms, qps_search_budget_s=s.qps_search_budget_s, **extra
                )
            else:
                best = self.steady(session, s, single_s, capacity)
            row.update(best.columns(ctx.plan.run_dir))
            if s.accuracy and e.trained:
                row.update(self.accuracy(ctx, session, s, e, best))
        finally:
            session.close()
        row["note"] = (row["note"] + "; " if row["note"] else "") + (
            f"LoadGen {self.name}, {s.profile} settings; calibrated {single_s * 1e3:.3g} ms per sample alone, "
            f"{capacity:.4g} samples/s at batch {min(batch, CALIBRATION_BATCH)}; {time.perf_counter() - t0:.0f} s in all"
        )
        if cached:
            row.update(ctx.features.cost(e, dtype))
        row.update(self.vs_teacher(ctx, e, row, dtype))
        return [(row, None)]

    def base_settings(self, s: ServingSettings) -> dict[str, Any]:
        return dict(
            min_duration_ms=int(s.min_duration_s * 1e3),
            min_query_count=s.min_query_count,
            max_duration_ms=int(s.max_duration_s * 1e3),
        )

    def steady(self, session: Session, s: ServingSettings, single_s: float, capacity: float) -> TestResult:
        """Single-stream or Offline: one test with LoadGen's hint from the calibration (expected latency /
        expected QPS), repeated (at most twice) with twice the rate LoadGen measured when it found the run too
        short: LoadGen sizes the run from the hint, and a hint that is too slow ends it before the minimum
        duration."""
        settings = self.base_settings(s)
        rate = 1 / single_s if self.name == "single-stream" else capacity
        for attempt in range(1, 4):
            if self.name == "single-stream":
                settings["single_stream_expected_latency_ns"] = max(int(1e9 / rate), 1)
                settings["single_stream_target_latency_percentile"] = SINGLE_STREAM_PERCENTILE
            else:
                settings["offline_expected_qps"] = rate
            name = "performance" if attempt == 1 else f"performance-{attempt}"
            r = session.test(name, "performance", self.batcher(s), **settings)
            if not r.too_short or not r.achieved_qps:
                break
            rate = 2 * max(r.achieved_qps, rate)
        return r

    def search(
        self, session: Session, s: ServingSettings, single_s: float, capacity: float
    ) -> tuple[TestResult, dict[str, Any]]:
        """Server: the highest offered QPS LoadGen judges VALID at the latency bound, within the time budget.
        Returns the test the row reports (the highest VALID one, else the lowest offered) and the search's columns."""
        t0 = time.perf_counter()
        deadline = t0 + s.qps_search_budget_s
        bound_s = s.latency_bound_ms / 1e3
        cannot = single_s > bound_s  # one sample alone already takes longer than the bound
        q = 0.5 / single_s if cannot else 0.5 * capacity
        trials: list[TestResult] = []
        valid: TestResult | None = None  # the highest VALID
        invalid: TestResult | None = None  # the lowest INVALID
        status = "trial cap"
        for i in range(MAX_TRIALS):
            left = deadline - time.perf_counter()
            needs = max(s.min_duration_s, s.min_query_count / q) + bound_s
            if trials and needs > left:
                status = "budget spent"
                break
            settings = self.base_settings(s)
            settings.update(
                server_target_qps=q,
                server_target_latency_ns=int(s.latency_bound_ms * 1e6),
                server_target_latency_percentile=s.latency_percentile,
                max_duration_ms=_cap(
                    settings["max_duration_ms"], max(int(left * 1e3), settings["min_duration_ms"])
                ),
            )
            r = session.test(f"qps-{i + 1:02d}-{q:.4g}", "performance", self.batcher(s), **settings)
            r.target_qps = q
            trials.append(r)
            if r.valid:
                valid = r if valid is None or q > valid.target_qps else valid
            else:
                invalid = r if invalid is None or q < invalid.target_qps else invalid
            if valid and invalid and invalid.target_qps <= valid.target_qps * (1 + s.qps_precision):
                status = "converged"
                break
            if valid is None:
                if cannot or q < capacity / 64:
                    break
                q /= 2
            elif invalid is None:
                q *= 2
            else:
                q = math.sqrt(valid.target_qps * invalid.target_qps)
        if valid is None:
            status = "bound not met"
        best = valid or min(trials, key=lambda t: t.target_qps)
        extra = {
            "max_qps_at_bound": valid.target_qps if valid else None,
            "qps_search": status,
            "qps_search_s": time.perf_counter() - t0,
            "qps_trials": [t.trial() for t in trials],
        }
        return best, extra

    def accuracy(
        self, ctx: RunContext, session: Session, s: ServingSettings, e: Entry, best: TestResult
    ) -> dict:
        """LoadGen's accuracy mode in this scenario (Server: at the row's offered QPS): every sample once, its
        logged logits scored with the official metric and compared with the harness's accuracy."""
        settings = self.base_settings(s)
        if self.name == "server":
            settings.update(
                server_target_qps=best.target_qps,
                server_target_latency_ns=int(s.latency_bound_ms * 1e6),
                server_target_latency_percentile=s.latency_percentile,
            )
        elif self.name == "offline":
            settings["offline_expected_qps"] = best.achieved_qps or 1.0
        r = session.test("accuracy", "accuracy", self.batcher(s), **settings)
        data = ctx.workload.dataset_for(e)
        ev = score_accuracy_log(r.log_dir / "mlperf_log_accuracy.json", e, data, ctx.device)
        ev.write_predictions(r.log_dir, "predictions")
        harness = ctx.accuracy.get(e.plain, {}).get("accuracy")
        return {
            "serving_accuracy": ev.accuracy,
            "serving_accuracy_matches": None if harness is None else abs(ev.accuracy - harness) < 1e-12,
        }

    def vs_teacher(self, ctx: RunContext, e: Entry, row: dict, dtype: str) -> dict:
        """This scenario's metric over the teacher's (Server: max QPS at the bound; Offline: samples/s;
        single-stream: the teacher's p90 over this p90) and the FLOP ratio, from the teacher's row of this run."""
        if e.kind == "teacher" or e.teacher is None:
            return {}
        ref = None
        for r in ctx.writer.rows:
            if (r.get("model"), r.get("scenario"), r.get("dtype")) == (e.teacher, self.name, dtype):
                ref = r if r.get("status") == "ok" else ref
        if ref is None:
            return {}
        out = {}
        if ref.get("flops_per_item") and row.get("flops_per_item"):
            out["serving_flop_ratio"] = ref["flops_per_item"] / row["flops_per_item"]
        if self.name == "server":
            mine, theirs = row.get("max_qps_at_bound"), ref.get("max_qps_at_bound")
        elif self.name == "offline":
            mine, theirs = row.get("achieved_qps"), ref.get("achieved_qps")
        else:
            mine, theirs = ref.get("serving_p90_ms"), row.get("serving_p90_ms")
        out["serving_ratio_vs_teacher"] = mine / theirs if mine and theirs else None
        return out


@dataclass(frozen=True)
class AllServing:
    """``serving``: the three LoadGen scenarios one after another (rows carry each one's own name)."""

    name: str = "serving"

    def run(self, ctx: RunContext, entries: list[Entry], dtype: str, progress) -> None:
        for scenario in SERVING:
            scenario.run(ctx, entries, dtype, progress)


SERVING = tuple(LoadGenScenario(n) for n in LOADGEN_NAMES)
SCENARIOS = (*SERVING, AllServing())
