"""The benchmark harness: `dde-bench run` measures every model of a suite in every scenario.

For each (model, scenario, batch size, dtype) it writes one row (see schema.py) as soon as it is measured:
accuracy on the suite's evaluation split (official metric, bootstrap 95% interval), latency statistics from
raw samples, throughput, peak memory (own pass), energy (NVIDIA only), FLOPs per item, and for students and
the transformers reference row the speedup over the teacher of the same size measured interleaved in one
process, with its bootstrap interval and its FLOP bound.

Scenarios:
  online   every call brings raw images and text; the student runs both towers.
  cached   image features were computed once; the student runs the text tower, fusion MLP and head.
           The teacher cannot cache: its row runs the full model (the baseline the student is compared with).
  gallery  one text scored against N cached images (N swept); the teacher runs N joint passes. The students'
           features are read from a sharded feature store on disk (dde_bench.bench.featurestore), shard by
           shard with bounded memory, as pooled features and as the fusion-aware cache (`@fusion-cache`).
           A query ranks the images by one class's score (GALLERY_LABEL); students compute only that class.

Variants of a model carry a suffix and are measured in the same interleaved group as the plain model, with
`speedup_vs_plain` (plain time / variant time): `@fusion-cache` (gallery) and, with --compile, `@compiled`
(online and cached: the same call through torch.compile, outputs checked against the plain path first).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from dde_bench.bench import timing
from dde_bench.bench.energy import EnergyMeter
from dde_bench.bench.flops import count_flops, model_flop_utilisation
from dde_bench.bench.guard import free_memory, is_oom
from dde_bench.bench.memory import MemoryTracker
from dde_bench.bench.results import ResultWriter, match_key
from dde_bench.bench.schema import plain_name
from dde_bench.bench.stats import mean_ci, speedup
from dde_bench.env import resolve_device
from dde_bench.errors import UserError
from dde_bench.modeling import Student, Teacher, size_config
from dde_bench.modeling.hf import teacher_to_hf
from dde_bench.resources import REPO_ROOT, model_card, suite_card

SCENARIOS = ("online", "cached", "gallery")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
PAPER_TEXT_LEN = 40  # speed-only (random-weight) models get inputs of paper shape: 40 tokens, 384x384 images
PAPER_IMAGE = 384
# the class whose score ranks a gallery: NLVR2 True, SNLI-VE entailment, VQA the first (most frequent) answer
GALLERY_LABEL = {"nlvr2": 1, "snli-ve": 0, "vqa": 0}


def default_cache_root() -> Path:
    """Where synthetic data and quick-recipe checkpoints are cached: $DDE_BENCH_CACHE or reports/cache."""
    env = os.environ.get("DDE_BENCH_CACHE")
    return Path(env) if env else REPO_ROOT / "reports" / "cache"


@dataclass
class RunConfig:
    """Settings of one `dde-bench run` (all recorded in run.json)."""

    suite: str
    device: str = "auto"
    models: list[str] | None = None  # model card names; default: the suite's list
    scenarios: list[str] | None = None
    batch_sizes: list[int] | None = None
    dtypes: list[str] | None = None
    gallery_sizes: list[int] | None = None
    out: Path | None = None
    quick: bool = False
    resume: bool = False
    threads: int | None = None
    seed: int = 0
    cache_root: Path = field(default_factory=lambda: default_cache_root())
    report: bool = True
    # timing rule (defaults depend on --quick)
    min_iters: int | None = None
    min_time_s: float | None = None
    # fast paths: compile = a torch.compile backend ("inductor") adds `@compiled` variants (online, cached)
    compile: str | None = None
    keep_stores: bool = False  # keep the gallery's on-disk feature stores in RUN/stores (deleted by default)
    store_shard_size: int = 4096


@dataclass
class Entry:
    """One model of the run."""

    name: str
    kind: str  # teacher | student | hf-vilt
    size: str
    model: Any
    teacher: str | None = None  # the teacher this row's speedup is measured against
    trained: bool = False  # accuracy is measurable (trained or loaded weights); random weights -> n/a
    batch_sizes: list[int] | None = None
    paper_inputs: bool = False  # random inputs of paper shape instead of suite data (speed-only models)
    note: str = ""
    gallery_sizes: list[int] | None = None  # card override of the run's gallery sizes
    min_iters: int | None = None  # card override of the timing rule's minimum calls (slow paper-size models)
    fusion_cache: bool = (
        False  # gallery only: cache the fusion MLP's image half too (dde_bench.modeling.fastpath)
    )
    compile: str | None = None  # torch.compile backend of a `@compiled` variant


def compiled_variant(e: Entry, backend: str, names: set[str]) -> Entry:
    """`e` through torch.compile; a compiled student is compared with the compiled teacher (like with like),
    the compiled teacher with the plain one (the gain of compiling)."""
    if e.kind == "teacher":
        teacher = e.name
    else:
        teacher = f"{e.teacher}@compiled" if f"{e.teacher}@compiled" in names else e.teacher
    return dataclasses.replace(
        e,
        name=f"{e.name}@compiled",
        compile=backend,
        teacher=teacher,
        note=(e.note + "; " if e.note else "") + f"torch.compile(backend={backend!r})",
    )


# ---------------------------------------------------------------------------------------------- set-up
class Suite:
    """The suite's data: evaluation examples, tokenizer and image processor, batched on demand."""

    def __init__(self, card: dict, cfg: RunConfig, console: Console):
        from dde_bench.data import TaskDataset, ensure_data, load_split, load_tokenizer, suite_eval_split
        from dde_bench.data.images import ImageProcessor

        self.card = card
        self.task = card.get("task", card["name"])
        console.print(
            f"[bold]data[/]: preparing {card['name']} ({(card.get('data') or {}).get('source', 'synthetic')})"
        )
        self.data_dir = ensure_data(card, Path(cfg.cache_root), progress=True)
        split = suite_eval_split(card)
        vocab = self.data_dir / "vocab.txt"
        if not vocab.exists():
            raise UserError(
                f"{self.data_dir}: no vocab.txt (tiny models need the suite's WordPiece vocabulary)"
            )
        self.tokenizer = load_tokenizer(self.data_dir)
        opts = {}
        self.answer_vocab = None
        if self.task == "vqa":
            from dde_bench.data import build_vqa_answer_vocab

            self.answer_vocab = build_vqa_answer_vocab(
                self.data_dir, min_count=int((card.get("data") or {}).get("answer_min_count", 9))
            )
            opts["answer_vocab"] = self.answer_vocab
        self.split = split
        self.examples = load_split(self.task, self.data_dir, split, **opts)
        tiny = size_config("tiny")
        img = int((card.get("data") or {}).get("image_size", tiny.image_size))
        self.processor = ImageProcessor(img, img, tiny.patch_size)
        self.dataset = TaskDataset(
            self.task,
            self.examples,
            self.tokenizer,
            self.processor,
            max_len=tiny.max_text_len,
            answer_vocab=self.answer_vocab,
        )

    @property
    def num_labels(self) -> int | None:
        return len(self.answer_vocab) if self.answer_vocab is not None else None

    @property
    def vocab_size(self) -> int:
        return len(self.tokenizer)


def _card_batch_sizes(card: dict) -> list[int] | None:
    bs = card.get("batch_sizes")
    return [int(b) for b in bs] if bs else None


def build_entries(
    suite: Suite, names: list[str], cfg: RunConfig, device: torch.device, console: Console
) -> list[Entry]:
    """Instantiate every model of the run: trained tiny models, checkpoints, random paper-size models, and
    transformers reference rows carrying another model's weights."""
    cards = {n: model_card(n) for n in names}
    entries: dict[str, Entry] = {}
    torch.manual_seed(cfg.seed)
    for name in sorted(names, key=lambda n: cards[n].get("kind") == "hf-vilt"):  # references last
        card = cards[name]
        kind = card.get("kind")
        size = str(card.get("size", "tiny"))
        if kind not in ("teacher", "student", "hf-vilt"):
            raise UserError(f"model card {name!r}: unknown kind {kind!r} (teacher, student or hf-vilt)")
        if kind == "hf-vilt":
            src = card.get("same_weights_as")
            if src not in entries:
                raise UserError(
                    f"model card {name!r}: same_weights_as {src!r} must be a teacher in the same run"
                )
            base = entries[src]
            hf = teacher_to_hf(base.model)
            entries[name] = Entry(
                name,
                kind,
                size,
                hf,
                teacher=src,
                trained=base.trained,
                batch_sizes=base.batch_sizes,
                paper_inputs=base.paper_inputs,
                note=f"transformers {type(hf).__name__} with {src}'s weights",
            )
            continue
        weights = str(card.get("weights", "random"))
        model, trained, note = _load_or_build(suite, card, kind, size, weights, cfg, device, console)
        entries[name] = Entry(
            name,
            kind,
            size,
            model,
            trained=trained,
            batch_sizes=_card_batch_sizes(card),
            paper_inputs=(weights == "random" and size != "tiny"),
            note=note,
        )
    for e in entries.values():
        card = cards[e.name]
        e.gallery_sizes = [int(n) for n in card["gallery_sizes"]] if card.get("gallery_sizes") else None
        e.min_iters = int(card["min_iters"]) if card.get("min_iters") else None
    # each student / reference is compared with the teacher of its size (or the one its card names)
    teachers = {e.size: e.name for e in entries.values() if e.kind == "teacher"}
    for e in entries.values():
        if e.kind == "student":
            named = cards[e.name].get("teacher")
            e.teacher = named if named in entries else teachers.get(e.size)
    for e in entries.values():
        e.model = e.model.to(device).eval()
    return [entries[n] for n in names]


def _load_or_build(
    suite: Suite,
    card: dict,
    kind: str,
    size: str,
    weights: str,
    cfg: RunConfig,
    device: torch.device,
    console: Console,
):
    from dde_bench.modeling.checkpoint import load_student, load_teacher

    cls = Teacher if kind == "teacher" else Student
    if weights == "random":
        vl = size_config(size, vocab_size=suite.vocab_size) if size == "tiny" else size_config(size)
        num_labels = suite.num_labels if suite.task == "vqa" else None
        if suite.task == "vqa" and size != "tiny":
            num_labels = 3129  # the real answer vocabulary's size: speed-only models match the paper's head
        return cls(vl, suite.task, num_labels), False, "random weights: speed only, accuracy n/a"
    if weights == "trained":
        from dde_bench.training import ensure_trained

        path = ensure_trained(suite.card, card, Path(cfg.cache_root), device=str(device), progress=True)
        note = f"trained with the quick recipe ({path.name})"
    else:
        path = Path(weights).expanduser()
        note = f"loaded from {path}"
    model = load_teacher(path, task=suite.task) if kind == "teacher" else load_student(path)
    if model.task != suite.task:
        raise UserError(f"{path}: a {model.task} model cannot be measured on suite {suite.card['name']}")
    return model, True, note


# ------------------------------------------------------------------------------------------- inputs
def _inputs(entry: Entry, suite: Suite, batch: int, device, dtype, seed: int) -> dict:
    """One batch of inputs: the suite's evaluation examples, or random inputs of paper shape."""
    n_img = 2 if suite.task == "nlvr2" else 1
    if entry.paper_inputs:
        g = torch.Generator().manual_seed(seed)
        cfg = entry.model.config if hasattr(entry.model, "config") else None
        vocab = getattr(cfg, "vocab_size", 30522)
        ids = torch.randint(1000, min(vocab, 30000), (batch, PAPER_TEXT_LEN), generator=g)
        ids[:, 0] = 101
        am = torch.ones(batch, PAPER_TEXT_LEN, dtype=torch.long)
        shape = (
            (batch, n_img, 3, PAPER_IMAGE, PAPER_IMAGE)
            if n_img == 2
            else (batch, 3, PAPER_IMAGE, PAPER_IMAGE)
        )
        pv = torch.randn(shape, generator=g)
        pm = torch.ones(shape[:-3] + shape[-2:], dtype=torch.long)
    else:
        idx = torch.arange(batch) % len(suite.dataset)
        b = suite.dataset.batch(idx)
        ids, am, pv, pm = b["input_ids"], b["attention_mask"], b["pixel_values"], b["pixel_mask"]
    return {
        "input_ids": ids.to(device),
        "attention_mask": am.to(device),
        "pixel_values": pv.to(device=device, dtype=dtype),
        "pixel_mask": pm.to(device),
    }


def _call_full(entry: Entry, x: dict):
    if entry.kind == "hf-vilt":
        return lambda: entry.model(**x).logits
    if not entry.compile:
        return lambda: entry.model(x["input_ids"], x["attention_mask"], x["pixel_values"], x["pixel_mask"])
    model = _compiled(entry.model, entry.compile)
    # an all-ones pixel mask means no padding, i.e. None; deciding that inside the graph would be a
    # data-dependent branch (per-image patch grids), so it is decided here, once, outside the timed call
    pm = None if bool(x["pixel_mask"].all()) else x["pixel_mask"]
    return lambda: model(x["input_ids"], x["attention_mask"], x["pixel_values"], pm)


def _compiled(fn, backend: str):
    """torch.compile with static shapes and the whole call as one graph (a graph break raises instead of
    silently measuring a half-eager call)."""
    return torch.compile(fn, backend=backend, dynamic=False, fullgraph=True)


def scenario_call(entry: Entry, scenario: str, x: dict):
    """The callable measured for (entry, scenario) on inputs x. Students in `cached` run against features
    computed here once, outside the timed call."""
    if entry.kind != "student" or scenario == "online":
        return _call_full(entry, x)
    feats = entry.model.encode_images(x["pixel_values"], x["pixel_mask"])
    fwd = entry.model.forward_cached
    if entry.compile:
        fwd = _compiled(fwd, entry.compile)
    fn = lambda: fwd(x["input_ids"], x["attention_mask"], feats)  # noqa: E731
    return _inject_slowdown(fn, scenario)


def _inject_slowdown(fn, scenario: str):
    """Test-only: DDE_BENCH_INJECT_SLOWDOWN=cached=0.3 makes the student's cached call 30% slower (it busy-waits
    for 0.3 x its own duration), so the CI gate can be shown to catch a real regression. Never set in use."""
    spec = os.environ.get("DDE_BENCH_INJECT_SLOWDOWN", "")
    if not spec.startswith(f"{scenario}="):
        return fn
    frac = float(spec.split("=", 1)[1])

    def slowed():
        t0 = time.perf_counter()
        out = fn()
        until = time.perf_counter() + frac * (time.perf_counter() - t0)
        while time.perf_counter() < until:
            pass
        return out

    return slowed


def scenario_modules(entry: Entry, scenario: str) -> list:
    """The modules a scenario's call needs resident: a cached student needs no image tower."""
    m = entry.model
    if entry.kind == "student" and scenario != "online":
        return [m.text_tower, m.fusion, m.head]
    return [m]


def tensor_memory(fn, modules: list, device) -> dict:
    """Peak bytes of live tensors during one call (weights of `modules` + activations and temporaries), tracked
    per tensor by torch's MemTracker, so the figure does not depend on what the allocator keeps cached.
    On CPU this is `peak_mem_mb`; on CUDA it is reported beside max_memory_allocated."""
    try:
        from torch.distributed._tools.mem_tracker import MemTracker, _MemRefType
    except ImportError:  # a private torch API: absent in some builds
        return {"tensor_peak_mb": None, "weights_mb": None, "activation_peak_mb": None}
    mt = MemTracker()
    for mod in modules:
        mt.track_external(mod)
    with mt:
        fn()
    peaks = mt.get_tracker_snapshot("peak")
    dev = torch.device(device)
    snap = next((v for k, v in peaks.items() if torch.device(k).type == dev.type), {})
    mb = 1e6
    return {
        "tensor_peak_mb": snap.get("Total", 0) / mb if snap else None,
        "weights_mb": (snap.get(_MemRefType.PARAM, 0) + snap.get(_MemRefType.BUFFER, 0)) / mb
        if snap
        else None,
        "activation_peak_mb": (snap.get(_MemRefType.ACT, 0) + snap.get(_MemRefType.TEMP, 0)) / mb
        if snap
        else None,
    }


# ---------------------------------------------------------------------------------------- accuracy
@torch.inference_mode()
def evaluate(entry: Entry, suite: Suite, device, dtype, batch_size: int = 64) -> dict:
    """Official metric on the suite's evaluation split with a bootstrap 95% interval (None = not measured)."""
    from dde_bench import metrics

    if not entry.trained:
        return {"accuracy": None, "accuracy_ci_low": None, "accuracy_ci_high": None, "accuracy_metric": None}
    preds, ids = [], []
    for b in suite.dataset.batches(batch_size):
        x = {
            "input_ids": b["input_ids"].to(device),
            "attention_mask": b["attention_mask"].to(device),
            "pixel_values": b["pixel_values"].to(device=device, dtype=dtype),
            "pixel_mask": b["pixel_mask"].to(device),
        }
        preds.append(_call_full(entry, x)().float().argmax(-1).cpu())
        ids.extend(b["ids"])
    pred = torch.cat(preds).tolist()
    out: dict[str, Any] = {}
    if suite.task == "vqa":
        vocab = suite.answer_vocab
        scores = [
            metrics.vqa_accuracy(vocab[p], e.answers or []) for p, e in zip(pred, suite.examples, strict=True)
        ]
        out["accuracy_metric"] = "vqa_accuracy"
        out["_predictions"] = [
            (e.meta.get("question_id", e.id), vocab[p]) for p, e in zip(pred, suite.examples, strict=True)
        ]
    else:
        labels = [e.label for e in suite.examples]
        scores = [float(p == y) for p, y in zip(pred, labels, strict=True)]
        out["accuracy_metric"] = "accuracy"
        if suite.task == "nlvr2":
            out["consistency"] = metrics.nlvr2_metrics(ids, pred, labels)["consistency"]
            out["_predictions"] = list(zip(ids, pred, strict=True))
    est = mean_ci(scores, seed=0)
    out.update(accuracy=est.mean, accuracy_ci_low=est.ci_low, accuracy_ci_high=est.ci_high)
    return out


def _write_predictions(run_dir: Path, entry: Entry, suite: Suite, acc: dict) -> None:
    from dde_bench import metrics

    preds = acc.pop("_predictions", None)
    if not preds:
        return
    d = run_dir / "predictions"
    d.mkdir(exist_ok=True)
    if suite.task == "vqa":
        metrics.write_vqa_predictions(d / f"{entry.name}.json", preds)
    elif suite.task == "nlvr2":
        metrics.write_nlvr2_predictions(d / f"{entry.name}.csv", preds)


# ------------------------------------------------------------------------------------------ the run
class Runner:
    def __init__(self, cfg: RunConfig, console: Console | None = None):
        self.cfg = cfg
        # wide enough for the summary table when the output is not a terminal (logs, CI)
        self.console = console or Console(width=None if Console().is_terminal else 160)
        self.card = suite_card(cfg.suite)
        self.device = resolve_device(cfg.device)
        self.scenarios = cfg.scenarios or list(self.card.get("scenarios", SCENARIOS))
        for s in self.scenarios:
            if s not in SCENARIOS:
                raise UserError(f"unknown scenario {s!r}; known: {', '.join(SCENARIOS)}")
        self.dtypes = cfg.dtypes or list(self.card.get("dtypes", ["fp32"]))
        for d in self.dtypes:
            if d not in DTYPES:
                raise UserError(f"unknown dtype {d!r}; known: {', '.join(DTYPES)}")
            if d == "fp16" and self.device.type == "cpu":
                raise UserError("fp16 is a CUDA dtype here; on CPU use fp32 or bf16")
        if cfg.compile:
            from torch import _dynamo

            backends = _dynamo.list_backends(exclude_tags=())
            if cfg.compile not in backends:
                raise UserError(
                    f"unknown torch.compile backend {cfg.compile!r}; known: {', '.join(backends)}"
                )
        quick = cfg.quick
        suite_sizes = [int(b) for b in self.card.get("batch_sizes", [1, 8, 32])]
        self.batch_sizes = cfg.batch_sizes or ([b for b in suite_sizes if b <= 8] if quick else suite_sizes)
        default_gallery = [10, 100, 1000, 10000] if quick else [10, 100, 1000, 10000, 100000]
        self.gallery_sizes = cfg.gallery_sizes or list(self.card.get("gallery_sizes", default_gallery))
        # the teacher's gallery query costs N joint passes: sizes whose estimated time per query exceeds this
        # budget are recorded as not measured (with the estimate) instead of stalling the run for minutes
        self.teacher_gallery_budget_s = float(
            self.card.get("teacher_gallery_budget_s", 0.5 if quick else 3.0)
        )
        self._per_item_s: dict[str, float] = {}
        self.rule = {
            "min_iters": cfg.min_iters or (5 if quick else 10),
            "min_time_s": cfg.min_time_s if cfg.min_time_s is not None else (0.3 if quick else 1.0),
            "warmup_iters": 2 if quick else 3,
            "warmup_s": 0.05 if quick else 0.2,
            "max_time_s": 60.0,
        }
        names = cfg.models or list(self.card.get("models", []))
        if quick and cfg.models is None:
            names = [n for n in names if str(model_card(n).get("size", "tiny")) == "tiny"]
        if not names:
            raise UserError(f"suite {cfg.suite!r} names no models (and none were given with --models)")
        for n in names:
            model_card(n)  # unknown model: one clear line before any work starts
        self.names = names
        self._cache_costs: dict = {}
        self._pooled_cache: dict = {}  # (model, dtype) -> (pooled features of the cache set, build seconds)
        self._stores: dict = {}  # (model, dtype) -> (FeatureStore, row info) of the gallery scenario
        threads = cfg.threads or (os.cpu_count() or 1)
        if self.device.type == "cpu":
            torch.set_num_threads(threads)
        self.threads = torch.get_num_threads()
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        self.run_dir = (
            Path(cfg.out)
            if cfg.out
            else REPO_ROOT / "reports" / "runs" / f"{cfg.suite}-{self.device.type}-{stamp}"
        )

    # -- rows ---------------------------------------------------------------------------------------
    def _base_row(self, e: Entry, scenario: str, batch: int, dtype: str, gallery: int | None = None) -> dict:
        return {
            "suite": self.cfg.suite,
            "task": self.suite.task,
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
            "note": e.note,
            **self.accuracy.get(plain_name(e.name), {}),  # a fusion-cache variant scores like its student
        }

    def _done(self, e: Entry, scenario: str, batch: int, dtype: str, gallery: int | None = None) -> bool:
        key = match_key(
            {
                "suite": self.cfg.suite,
                "model": e.name,
                "scenario": scenario,
                "batch_size": batch,
                "gallery_size": gallery,
                "dtype": dtype,
                "device": str(self.device),
            }
        )
        return key in self.done

    def run(self) -> Path:
        cfg = self.cfg
        t0 = time.perf_counter()
        self.suite = Suite(self.card, cfg, self.console)
        entries = build_entries(self.suite, self.names, cfg, self.device, self.console)
        if self.device.type == "cpu":  # (re)apply: training or loading must not change what is measured
            torch.set_num_threads(self.threads)
        settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()}
        settings.update(
            scenarios=self.scenarios,
            dtypes=self.dtypes,
            batch_sizes=self.batch_sizes,
            gallery_sizes=self.gallery_sizes,
            models=self.names,
            timing_rule=self.rule,
            data_dir=str(self.suite.data_dir),
            eval_split=self.suite.split,
            inject_slowdown=os.environ.get("DDE_BENCH_INJECT_SLOWDOWN") or None,
        )
        self.writer = ResultWriter(self.run_dir, settings, device=self.device, resume=cfg.resume)
        self.done = self.writer.done_keys()
        self.console.print(f"[bold]run folder[/]: {self.run_dir}")
        _point_latest(self.run_dir, cfg.suite)
        for dtype_name in self.dtypes:
            dtype = DTYPES[dtype_name]
            models = {e.name: e for e in entries}
            if dtype != torch.float32:
                models = {n: _cast(e, dtype) for n, e in models.items()}
            self.accuracy = {}
            self._accuracy(list(models.values()), dtype_name, dtype)
            with _progress(self.console) as progress:
                for scenario in self.scenarios:
                    if scenario == "gallery":
                        self._gallery(list(models.values()), dtype_name, dtype, progress)
                    else:
                        self._scenario(list(models.values()), scenario, dtype_name, dtype, progress)
        self.console.print(f"measured in {time.perf_counter() - t0:.0f} s")
        print_summary(self.writer.rows, self.console)
        if cfg.report:
            self._report()
        return self.run_dir

    def _accuracy(self, entries: list[Entry], dtype_name: str, dtype) -> None:
        for e in entries:
            if e.trained:
                self.console.print(
                    f"[bold]accuracy[/]: {e.name} on {self.suite.split} ({len(self.suite.examples)} examples)"
                )
            acc = evaluate(e, self.suite, self.device, dtype)
            _write_predictions(self.run_dir, e, self.suite, acc)
            self.accuracy[e.name] = acc

    # -- online / cached -------------------------------------------------------------------------------
    def _groups(self, entries: list[Entry], scenario: str):
        """Teachers with the rows compared against them: measured together, interleaved."""
        for t in [e for e in entries if e.kind == "teacher"]:
            members = [t] + [
                e for e in entries if e.teacher == t.name and (e.kind == "student" or scenario == "online")
            ]
            sizes = self.cfg.batch_sizes or t.batch_sizes or self.batch_sizes
            yield t, members, sizes
        for e in entries:  # students without a teacher in this run are measured alone
            if e.kind == "student" and e.teacher is None:
                yield None, [e], self.cfg.batch_sizes or e.batch_sizes or self.batch_sizes

    def _scenario(self, entries: list[Entry], scenario: str, dtype_name: str, dtype, progress) -> None:
        for _teacher, members, sizes in self._groups(entries, scenario):
            if self.cfg.compile:
                # transformers' reference row stays eager: it is a reference, not a contender
                names = {f"{e.name}@compiled" for e in members if e.kind != "hf-vilt"}
                members = members + [
                    compiled_variant(e, self.cfg.compile, names) for e in members if e.kind != "hf-vilt"
                ]
            for batch in sizes:
                todo = [e for e in members if not self._done(e, scenario, batch, dtype_name)]
                if not todo:
                    continue
                label = f"{scenario} b={batch} {dtype_name}: " + ", ".join(e.name for e in members)
                task = progress.add_task(label, total=None)
                try:
                    rows = self._measure_group(members, scenario, batch, dtype_name, dtype)
                except Exception as exc:  # noqa: BLE001 - recorded per row, the sweep goes on
                    if not is_oom(exc) and not isinstance(exc, RuntimeError):
                        raise
                    free_memory()
                    status = "oom" if is_oom(exc) else "error"
                    rows = [
                        dict(
                            self._base_row(e, scenario, batch, dtype_name),
                            status=status,
                            error=str(exc).splitlines()[0][:300],
                        )
                        for e in members
                    ]
                    rows = [(r, None) for r in rows]
                for row, samples in rows:
                    if not self._done_row(row):
                        self.writer.append(row, samples)
                progress.remove_task(task)

    def _done_row(self, row: dict) -> bool:
        return match_key(row) in self.done

    @torch.inference_mode()
    def _measure_group(self, members: list[Entry], scenario: str, batch: int, dtype_name: str, dtype):
        seed = self.cfg.seed
        x = {e.name: _inputs(e, self.suite, batch, self.device, dtype, seed) for e in members}
        plain = [e for e in members if not e.compile]
        fns = {e.name: scenario_call(e, scenario, x[e.name]) for e in plain}
        flops = {n: count_flops(fn) / batch for n, fn in fns.items()}
        compiled, failed = self._compile_group([e for e in members if e.compile], scenario, x, fns, dtype)
        fns.update({n: c["fn"] for n, c in compiled.items()})
        flops.update({n: flops[plain_name(n)] for n in compiled})  # the same arithmetic, compiled
        rule = dict(self.rule)
        overrides = [e.min_iters for e in members if e.min_iters]
        if overrides:
            rule["min_iters"] = min(overrides)
        meas = timing.measure_interleaved(fns, device=self.device, items_per_call=batch, **rule)
        for name, m in meas.items():
            self._per_item_s[name] = m.median_s / batch
        out = []
        for e in members:
            row = self._base_row(e, scenario, batch, dtype_name)
            if e.name in failed:
                row.update(status="error", error=failed[e.name])
                out.append((row, None))
                continue
            m = meas[e.name]
            row.update(m.to_row())
            row.update(
                status="ok",
                flops_per_item=flops[e.name],
                flop_utilisation=model_flop_utilisation(
                    flops[e.name], m.throughput_per_s, self.device, dtype
                ),
            )
            row.update(
                self._memory_energy(
                    fns[e.name], batch, scenario_modules(e, scenario), track_tensors=not e.compile
                )
            )
            row["stage_ms"] = None if e.compile else self._stages(e, x[e.name], scenario, m)
            if e.teacher in meas and e.teacher != e.name:
                s = speedup(meas[e.teacher].samples_s, m.samples_s, seed=seed)
                row.update(
                    speedup_vs_teacher=s.ratio,
                    speedup_ci_low=s.ci_low,
                    speedup_ci_high=s.ci_high,
                    speedup_flop_bound=flops[e.teacher] / flops[e.name] if flops[e.name] else None,
                )
            if e.compile:
                row.update(
                    _vs_plain(meas, e.name, seed),
                    compile_s=compiled[e.name]["compile_s"],
                    max_abs_diff_vs_plain=compiled[e.name]["max_abs_diff"],
                )
            if e.kind == "student" and scenario == "cached":
                row.update(self._cache_cost(e, dtype))
            out.append((row, m.samples_ms))
        return out

    def _compile_group(self, entries: list[Entry], scenario: str, x: dict, plain_fns: dict, dtype):
        """Compile each `@compiled` entry's call and check its output against the plain path on the same
        inputs (fp32: 1e-4; bf16/fp16: 3e-2, absolute and relative). Returns ({name: {fn, compile_s,
        max_abs_diff}}, {name: error}): a call that fails to compile or disagrees becomes an error row."""
        if not entries:
            return {}, {}
        from torch import _dynamo

        _dynamo.reset()  # a fresh cache per group: recompile limits never turn a call silently eager
        tol = 1e-4 if dtype == torch.float32 else 3e-2
        done, failed = {}, {}
        for e in entries:
            try:
                fn = scenario_call(e, scenario, x[e.name])
                t0 = time.perf_counter()
                out = fn()  # compiles
                _sync(self.device)
                compile_s = time.perf_counter() - t0
                ref = plain_fns[plain_name(e.name)]()
                diff = float((out.float() - ref.float()).abs().max()) if out.numel() else 0.0
                torch.testing.assert_close(out, ref, atol=tol, rtol=tol)
            except AssertionError:
                failed[e.name] = f"compiled output differs from the plain path (max abs diff {diff:.3g})"
                continue
            except Exception as exc:  # noqa: BLE001 - e.g. no C++ compiler for inductor: an error row
                if is_oom(exc):
                    raise
                msg = " ".join(str(exc).split())[:300]
                failed[e.name] = f"torch.compile failed: {type(exc).__name__}: {msg}"
                self.console.print(f"[yellow]{e.name}[/]: {failed[e.name]}")
                continue
            done[e.name] = {"fn": fn, "compile_s": compile_s, "max_abs_diff": diff}
        return done, failed

    def _memory_energy(self, fn, batch: int, modules: list, track_tensors: bool = True) -> dict:
        with MemoryTracker(self.device) as mem:
            fn()
        row = mem.report.to_row()
        if track_tensors:
            row.update(tensor_memory(fn, modules, self.device))
        else:  # MemTracker's dispatch mode would retrace a compiled call (and measure that, not the call)
            row.update(tensor_peak_mb=None, weights_mb=None, activation_peak_mb=None)
        if self.device.type == "cpu":
            # RSS barely moves once the allocator holds its pages; the tensor peak says what the call needs
            # (n/a where it could not be tracked)
            row["peak_mem_mb"] = row["tensor_peak_mb"]
        meter = EnergyMeter(self.device)
        if self.device.type == "cuda":
            m = timing.measure(
                fn,
                device=self.device,
                items_per_call=batch,
                warmup_iters=1,
                min_iters=5,
                min_time_s=1.0,
                window=meter,
            )
            row["energy_j_per_item"] = meter.report.per_item(m.items)
        else:
            with meter:
                pass
            row["energy_j_per_item"] = None
        row["energy_note"] = meter.report.reason or meter.report.note
        return row

    def _stages(self, e: Entry, x: dict, scenario: str, whole: timing.Measurement) -> dict:
        """Median time of each stage of one call, measured stage by stage (milliseconds)."""
        if e.kind != "student":
            return {"joint": whole.median_s * 1e3}
        m = e.model
        rule = dict(warmup_iters=1, warmup_s=0.0, min_iters=5, min_time_s=0.1, max_time_s=10.0)
        text = m.encode_text(x["input_ids"], x["attention_mask"])
        img = m.encode_images(x["pixel_values"], x["pixel_mask"])
        stages = {
            "text_tower": lambda: m.encode_text(x["input_ids"], x["attention_mask"]),
            "fusion_head": lambda: m.score(text, img),
        }
        if scenario == "online":
            stages = {"image_tower": lambda: m.encode_images(x["pixel_values"], x["pixel_mask"]), **stages}
        res = timing.measure_interleaved(stages, device=self.device, **rule)
        return {k: v.median_s * 1e3 for k, v in res.items()}

    def _cache_cost(self, e: Entry, dtype) -> dict:
        """Build the image-feature cache once per model: time per image and bytes per image.

        Suite models encode the whole evaluation split; speed-only paper-size models encode 16 random images of
        paper shape. The fusion-aware variant reuses its student's pooled features and adds the time of
        precomputing the fusion layer's image half."""
        key = (e.name, str(dtype))
        if key in self._cache_costs:
            return self._cache_costs[key]
        n_img = 2 if self.suite.task == "nlvr2" else 1
        f, build = self._pooled(e, dtype)
        if e.fusion_cache:
            from dde_bench.modeling import fastpath

            t0 = time.perf_counter()
            f = fastpath.precompute_image(e.model, f)
            _sync(self.device)
            build += time.perf_counter() - t0
        n_items = f.shape[0]
        self._cache_costs[key] = {
            "cache_build_s": build,
            "cache_images": n_items * n_img,
            "cache_build_ms_per_image": build * 1e3 / (n_items * n_img),
            "cache_bytes_per_image": f.element_size() * f.shape[-1],
        }
        return self._cache_costs[key]

    def _pooled(self, e: Entry, dtype) -> tuple[torch.Tensor, float]:
        """Pooled image features of the cache set (once per student and dtype) and the seconds they took."""
        key = (plain_name(e.name), str(dtype))
        if key not in self._pooled_cache:
            t0 = time.perf_counter()
            feats = []
            if e.paper_inputs:
                for start in range(0, 16, 8):
                    x = _inputs(e, self.suite, 8, self.device, dtype, start)
                    feats.append(e.model.encode_images(x["pixel_values"], x["pixel_mask"]))
            else:
                for b in self.suite.dataset.batches(64):
                    pv, pm = b["pixel_values"].to(self.device, dtype), b["pixel_mask"].to(self.device)
                    feats.append(e.model.encode_images(pv, pm))
            f = torch.cat(feats)
            _sync(self.device)
            self._pooled_cache[key] = (f, time.perf_counter() - t0)
        return self._pooled_cache[key]

    # -- gallery ---------------------------------------------------------------------------------------
    @torch.inference_mode()
    def _gallery(self, entries: list[Entry], dtype_name: str, dtype, progress) -> None:
        """One text against N cached images: the student's fusion over N features vs N teacher passes."""
        for teacher, members, _ in self._groups(entries, "gallery"):
            students = [e for e in members if e.kind == "student"]
            if not students:
                continue
            # each student twice: plain cached pooled features, and the fusion-aware cache (issue: fast paths)
            fused = [
                dataclasses.replace(
                    e,
                    name=f"{e.name}@fusion-cache",
                    fusion_cache=True,
                    note=(e.note + "; " if e.note else "") + "fusion-aware image cache",
                )
                for e in students
            ]
            members = members + fused
            sizes = (
                self.cfg.gallery_sizes
                or (teacher.gallery_sizes if teacher else None)
                or students[0].gallery_sizes
                or self.gallery_sizes
            )
            for n in sizes:
                todo = [e for e in members if not self._done(e, "gallery", n, dtype_name, n)]
                if not todo:
                    continue
                task = progress.add_task(
                    f"gallery N={n} {dtype_name}: " + ", ".join(e.name for e in members), total=None
                )
                fns, flops, skipped = {}, {}, {}
                for e in members:
                    if e.kind != "student":
                        est = n * self._teacher_per_item_s(e, dtype)
                        if est > self.teacher_gallery_budget_s:
                            skipped[e.name] = (
                                f"not measured: one query needs {n} joint passes, estimated {est:.3g} s "
                                f"(> teacher_gallery_budget_s={self.teacher_gallery_budget_s:g})"
                            )
                            continue
                    fn = self._gallery_call(e, n, dtype, dtype_name, max(sizes))
                    fns[e.name] = fn
                rule = dict(self.rule, min_iters=3, min_time_s=min(self.rule["min_time_s"], 0.5))
                try:
                    meas = timing.measure_interleaved(fns, device=self.device, items_per_call=n, **rule)
                except Exception as exc:  # noqa: BLE001
                    if not is_oom(exc):
                        raise
                    free_memory()
                    for e in members:
                        self.writer.append(
                            dict(
                                self._base_row(e, "gallery", n, dtype_name, n),
                                status="oom",
                                error=str(exc).splitlines()[0][:300],
                            )
                        )
                    progress.remove_task(task)
                    continue
                for name, fn in fns.items():
                    flops[name] = count_flops(fn) / n if n <= 1000 else None
                for e in members:
                    row = self._base_row(e, "gallery", n, dtype_name, n)
                    if e.name in skipped:
                        row.update(status="skipped", error=skipped[e.name])
                        self.writer.append(row)
                        continue
                    m = meas[e.name]
                    row.update(m.to_row(), status="ok", flops_per_item=flops[e.name])
                    if e.fusion_cache and plain_name(e.name) in meas:
                        row.update(_vs_plain(meas, e.name, self.cfg.seed))
                    if e.kind == "student":
                        row.update(self._cache_cost(e, dtype))
                        row.update(self._stores[(e.name, dtype_name)][1])
                        row["note"] = (row["note"] + "; " if row["note"] else "") + (
                            "features read from an on-disk store shard by shard (OS page cache warm); "
                            f"ranked by class {GALLERY_LABEL.get(self.suite.task)}'s score"
                        )
                        # this gallery's cache: N items at the per-image build time measured on real images
                        n_img = 2 if self.suite.task == "nlvr2" else 1
                        row["cache_build_s"] = row["cache_build_ms_per_image"] / 1e3 * n * n_img
                        row["cache_images"] = n * n_img
                        if teacher is not None and teacher.name in meas:
                            tm = meas[teacher.name]
                            s = speedup(tm.samples_s, m.samples_s, seed=self.cfg.seed)
                            row.update(
                                speedup_vs_teacher=s.ratio, speedup_ci_low=s.ci_low, speedup_ci_high=s.ci_high
                            )
                            if flops.get(teacher.name) and flops[e.name]:
                                row["speedup_flop_bound"] = flops[teacher.name] / flops[e.name]
                            row["break_even_queries"] = _break_even(row, tm.median_s, m.median_s, n)
                    self.writer.append(row, m.samples_ms)
                progress.remove_task(task)
        self._drop_stores()

    def _teacher_per_item_s(self, e: Entry, dtype) -> float:
        """Per-item time of the teacher: from its online/cached rows in this run, else one timed call."""
        if e.name not in self._per_item_s:
            x = _inputs(e, self.suite, 1, self.device, dtype, self.cfg.seed)
            m = timing.measure(
                _call_full(e, x),
                device=self.device,
                warmup_iters=1,
                warmup_s=0.0,
                min_iters=3,
                min_time_s=0.0,
            )
            self._per_item_s[e.name] = m.median_s
        return self._per_item_s[e.name]

    def _gallery_call(self, e: Entry, n: int, dtype, dtype_name: str, n_max: int):
        if e.kind != "student":
            return self._teacher_gallery(e, n, dtype)
        from dde_bench.bench.featurestore import score_text_against_store

        store = self._store(e, dtype, dtype_name, n_max)
        x = _inputs(e, self.suite, 1, self.device, dtype, self.cfg.seed)
        ids, am = x["input_ids"][:1], x["attention_mask"][:1]
        # one query: text tower (+ the fusion layer's text half), then the store's first n images shard by shard,
        # scoring the ranking class only
        label = GALLERY_LABEL.get(self.suite.task)
        return lambda: score_text_against_store(e.model, ids, am, store, batch=16384, limit=n, label=label)

    def _store(self, e: Entry, dtype, dtype_name: str, n_max: int):
        """The gallery's feature store on disk (RUN/stores/MODEL-KIND-DTYPE): the cache set's features (the
        evaluation images; 16 random paper-shape images for speed-only models) repeated to the sweep's largest
        N, pooled or fusion-aware. Written once per model, kind and dtype; queries read its first N rows."""
        from dde_bench.bench.featurestore import RepeatedFeatures, build_store, open_store

        key = (e.name, dtype_name)
        if key not in self._stores:
            kind = "fusion" if e.fusion_cache else "pooled"
            base, _ = self._pooled(e, dtype)
            path = self.run_dir / "stores" / f"{plain_name(e.name)}-{kind}-{dtype_name}"
            t0 = time.perf_counter()
            build_store(
                e.model,
                RepeatedFeatures(base, n_max),
                path,
                shard_size=self.cfg.store_shard_size,
                kind=kind,
                batch_size=self.cfg.store_shard_size,
                progress=False,
                resume=False,
                model_name=plain_name(e.name),
            )
            write_s = time.perf_counter() - t0
            store = open_store(path, e.model)
            info = {
                "store_kind": kind,
                "store_images": store.count,
                "store_shards": len(store.shard_files),
                "store_bytes": store.nbytes,
                "store_write_s": write_s,
            }
            self._stores[key] = (store, info)
        return self._stores[key][0]

    def _drop_stores(self) -> None:
        """Delete the gallery's stores (derived data, up to GBs at paper size) unless --keep-stores."""
        if not self.cfg.keep_stores:
            import shutil

            for store, _ in self._stores.values():
                shutil.rmtree(store.path, ignore_errors=True)
            stores = self.run_dir / "stores"
            if stores.is_dir() and not any(stores.iterdir()):
                stores.rmdir()
        self._stores = {}

    def _teacher_gallery(self, e: Entry, n: int, dtype):
        chunk = min(n, 32)
        x = _inputs(e, self.suite, chunk, self.device, dtype, self.cfg.seed)
        ids = x["input_ids"][:1].expand(chunk, -1)
        am = x["attention_mask"][:1].expand(chunk, -1)
        xx = dict(x, input_ids=ids, attention_mask=am)
        full = _call_full(e, xx)
        last = n - chunk * (n // chunk)
        tail = _call_full(e, {k: v[:last] for k, v in xx.items()}) if last else None

        def call():
            for _ in range(n // chunk):
                full()
            if tail is not None:
                tail()

        return call

    def _report(self) -> None:
        from dde_bench.report.render import render_report

        out = render_report([self.run_dir], self.run_dir / "report")
        self.console.print(f"[bold]report[/]: {out}")


def _vs_plain(meas: dict, variant: str, seed: int) -> dict:
    """A variant's speedup over its plain model measured in the same interleaved group (ratio of medians)."""
    p = speedup(meas[plain_name(variant)].samples_s, meas[variant].samples_s, seed=seed)
    return {
        "speedup_vs_plain": p.ratio,
        "speedup_vs_plain_ci_low": p.ci_low,
        "speedup_vs_plain_ci_high": p.ci_high,
    }


def _break_even(row: dict, teacher_s: float, student_s: float, n: int) -> float | None:
    """Queries after which building the cache for N images plus student queries costs less than teacher
    queries: N * build_per_image / (teacher_per_query - student_per_query)."""
    per_image = row.get("cache_build_ms_per_image")
    if per_image is None or teacher_s <= student_s:
        return None
    n_img = 2 if row.get("task") == "nlvr2" else 1
    return (per_image / 1e3) * n * n_img / (teacher_s - student_s)


def _cast(e: Entry, dtype) -> Entry:
    e2 = copy.copy(e)
    e2.model = copy.deepcopy(e.model).to(dtype)
    return e2


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def _point_latest(run_dir: Path, suite: str) -> None:
    """reports/runs/latest-<suite> -> the newest run folder (best effort)."""
    link = run_dir.parent / f"latest-{suite}"
    try:
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(run_dir.name)
    except OSError:
        pass


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), console=console, transient=True
    )


def _fmt(v, spec: str) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return format(v, spec)


def print_summary(rows: list[dict], console: Console) -> None:
    t = Table(
        title="results (latency per call; speedup = teacher median / model median, interleaved; "
        "vs plain = the model's plain path / this variant)"
    )
    for col in (
        "model",
        "scenario",
        "batch",
        "p50 ms",
        "items/s",
        "speedup [95% CI]",
        "FLOP bound",
        "vs plain",
        "accuracy",
        "status",
    ):
        t.add_column(col)
    for r in rows:
        if r.get("scenario") == "gallery" and r.get("status") != "ok":
            continue
        sp = r.get("speedup_vs_teacher")
        sp_s = (
            ""
            if sp is None
            else f"{sp:.2f}x [{_fmt(r.get('speedup_ci_low'), '.2f')}, {_fmt(r.get('speedup_ci_high'), '.2f')}]"
        )
        acc = r.get("accuracy")
        t.add_row(
            r["model"],
            r["scenario"],
            str(r.get("gallery_size") or r.get("batch_size"))
            if r["scenario"] == "gallery"
            else str(r["batch_size"]),
            _fmt(r.get("latency_p50_ms"), ".3g"),
            _fmt(r.get("throughput_per_s"), ".4g"),
            sp_s,
            "" if r.get("speedup_flop_bound") is None else f"{r['speedup_flop_bound']:.2f}x",
            "" if r.get("speedup_vs_plain") is None else f"{r['speedup_vs_plain']:.2f}x",
            "n/a" if acc is None else f"{100 * acc:.1f}%",
            r.get("status", ""),
        )
    console.print(t)
