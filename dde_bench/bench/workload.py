"""What the harness measures: the suite's evaluation data, the models of a run, their inputs, and the call each
scenario times. Public: the profiler and the feature-store command build their inputs and calls from here too.

* :class:`Workload` -- the suite card and its evaluation split (tokenised, images processed, batched on demand).
* :class:`Entry` -- one model of a run: a teacher, a student, a transformers reference row, or a variant of one
  (``MODEL@compiled``, ``MODEL@fusion-cache``, ``MODEL@int8``, ``MODEL@ort``), with the teacher its speedup is measured against.
* :func:`build_entries` -- every model of a run from its card. ``weights: trained`` cards need a
  :data:`TrainedResolver` (the command layer passes one that trains with the quick recipe); this layer never trains.
* :func:`inputs`, :func:`scenario_call`, :func:`scenario_modules`, :func:`cast` -- a batch of inputs, the callable
  a scenario times on it, the modules that call needs resident, a model in another dtype.
"""

from __future__ import annotations

import copy
import dataclasses
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from dde_bench.bench.schema import VARIANT_SEP, plain_name
from dde_bench.cards import ModelCard, SuiteCard, load_model_card
from dde_bench.errors import UserError
from dde_bench.tasks import PAPER_TEXT_LEN, VQA_PAPER_NUM_ANSWERS, num_images

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

# (suite, model card, device) -> the checkpoint folder of a `weights: trained` card
TrainedResolver = Callable[[SuiteCard, ModelCard, torch.device], Path]


class Workload:
    """A suite's evaluation split: prepared for the tiny models with the suite's tokenizer (:attr:`dataset`), and
    for any model that brings its own tokenizer, answer list or input geometry (:meth:`dataset_for`). Paper-size
    speed rows use random inputs of paper shape instead."""

    def __init__(self, card: SuiteCard, cache_root: Path, console: Console | None = None):
        from dde_bench.data.suite import load_suite_data
        from dde_bench.modeling import size_config

        if console is not None:
            source = "synthetic" if card.data.synthetic else card.data.data_dir
            console.print(f"[bold]data[/]: preparing {card.name} ({source})")
        self.card = card
        self.split = card.split
        self.data = load_suite_data(card, Path(cache_root), size_config("tiny"), (self.split,), progress=True)
        self.dataset = self.data.datasets[self.split]
        tiny = size_config("tiny")
        self._fingerprints: dict[
            int, tuple[Any, str]
        ] = {}  # id(tokenizer) -> (tokenizer, its vocab fingerprint)
        self._datasets: dict[tuple, Any] = {
            self._key(self.data.tokenizer, self.data.answer_vocab, tiny): self.dataset
        }

    def dataset_for(self, e: Entry):
        """The evaluation split as ``e``'s model sees it: its own tokenizer (if it brought one), its answer list
        (VQA) and its text length and image geometry. Shared by every entry that agrees on those."""
        if e.base is not None:
            return self.dataset_for(e.base)
        cfg = getattr(e.model, "config", None)
        if cfg is None:
            return self.dataset
        tok = e.tokenizer or self.data.tokenizer
        answers = (
            (getattr(e.model, "answer_vocab", None) or self.data.answer_vocab) if self.task == "vqa" else None
        )
        key = self._key(tok, answers, cfg)
        if key not in self._datasets:
            self._datasets[key] = self.data.dataset(self.split, cfg, tokenizer=tok, answer_vocab=answers)
        return self._datasets[key]

    def _key(self, tokenizer, answers, cfg) -> tuple:
        """What a model's view of the split depends on: token ids, answer list, text length, image geometry.
        A tokenizer's fingerprint is computed once (it sorts the whole vocabulary)."""
        from dde_bench.data.tokenize import vocab_fingerprint

        if id(tokenizer) not in self._fingerprints:
            self._fingerprints[id(tokenizer)] = (tokenizer, vocab_fingerprint(tokenizer))
        return (
            self._fingerprints[id(tokenizer)][1],
            tuple(answers) if answers else None,
            cfg.max_text_len,
            cfg.image_size,
            cfg.patch_size,
        )

    @property
    def task(self) -> str:
        return self.card.task

    @property
    def data_dir(self) -> Path:
        return self.data.data_dir

    @property
    def examples(self) -> list:
        return self.dataset.examples

    @property
    def n_images(self) -> int:
        return num_images(self.task)


@dataclass
class Entry:
    """One model of the run."""

    name: str
    kind: str  # teacher | student | hf-vilt
    size: str
    model: Any
    teacher: str | None = None  # the teacher this row's speedup is measured against
    trained: bool = False  # accuracy is measurable (trained or loaded weights); random weights -> n/a
    paper_inputs: bool = False  # random inputs of paper shape instead of suite data (speed-only models)
    note: str = ""
    card: ModelCard | None = None  # its card's overrides: batch_sizes, gallery_sizes, min_iters
    fusion_cache: bool = False  # gallery only: cache the fusion MLP's image half too (modeling.fastpath)
    compile: str | None = None  # torch.compile backend of a `@compiled` variant
    runtime: str | None = (
        None  # "int8" | "ort": a run-option variant (bench.variants); its model is the variant's
    )
    tokenizer: Any = None  # the tokenizer its checkpoint brought (None: the suite's)
    base: Entry | None = (
        None  # a transformers reference row: the teacher whose weights (and inputs) it carries
    )

    @property
    def plain(self) -> str:
        """The model this row is a variant of (its own name for a plain row)."""
        return plain_name(self.name)

    @property
    def batch_sizes(self) -> list[int] | None:
        return self.card.batch_sizes if self.card else None

    @property
    def gallery_sizes(self) -> list[int] | None:
        return self.card.gallery_sizes if self.card else None

    @property
    def min_iters(self) -> int | None:
        return self.card.min_iters if self.card else None


def variant(e: Entry, suffix: str, note: str, **changes) -> Entry:
    """``e`` as its variant ``e.name@suffix``, measured beside it."""
    return dataclasses.replace(
        e, name=f"{e.name}{VARIANT_SEP}{suffix}", note=(e.note + "; " if e.note else "") + note, **changes
    )


def compiled_variant(e: Entry, backend: str, names: set[str]) -> Entry:
    """``e`` through torch.compile; a compiled student is compared with the compiled teacher (like with like),
    the compiled teacher with the plain one (the gain of compiling)."""
    if e.kind == "teacher":
        teacher = e.name
    else:
        teacher = f"{e.teacher}@compiled" if f"{e.teacher}@compiled" in names else e.teacher
    return variant(e, "compiled", f"torch.compile(backend={backend!r})", compile=backend, teacher=teacher)


def comparison_groups(entries: list[Entry], scenario: str) -> Iterator[tuple[Entry | None, list[Entry]]]:
    """Each teacher with the rows compared against it (measured together, interleaved): its students, and online
    the transformers reference rows; then each student without a teacher in the run, alone."""
    for t in [e for e in entries if e.kind == "teacher"]:
        members = [t] + [
            e for e in entries if e.teacher == t.name and (e.kind == "student" or scenario == "online")
        ]
        yield t, members
    for e in entries:
        if e.kind == "student" and e.teacher is None:
            yield None, [e]


# ---------------------------------------------------------------------------------------------- building
def build_entries(
    workload: Workload,
    names: list[str | ModelCard],
    device: torch.device,
    seed: int = 0,
    resolve_trained: TrainedResolver | None = None,
    console: Console | None = None,
) -> list[Entry]:
    """Instantiate every model of the run: trained tiny models, checkpoints, random paper-size models, and
    transformers reference rows carrying another model's weights (in the order of ``names``: card names, or
    cards already loaded)."""
    from dde_bench.modeling.hf import teacher_to_hf

    loaded = [n if isinstance(n, ModelCard) else load_model_card(n) for n in names]
    cards = {c.name: c for c in loaded}
    names = [c.name for c in loaded]
    entries: dict[str, Entry] = {}
    torch.manual_seed(seed)
    for name in sorted(names, key=lambda n: cards[n].kind == "hf-vilt"):  # references last
        card = cards[name]
        if card.kind == "hf-vilt":
            src = card.same_weights_as
            if src not in entries or entries[src].kind != "teacher":
                raise UserError(f"{card.where}: same_weights_as {src!r} must be a teacher in the same run")
            base = entries[src]
            hf = teacher_to_hf(base.model)
            entries[name] = Entry(
                name,
                card.kind,
                card.size,
                hf,
                teacher=src,
                trained=base.trained,
                paper_inputs=base.paper_inputs,
                note=f"transformers {type(hf).__name__} with {src}'s weights",
                card=base.card,
                tokenizer=base.tokenizer,
                base=base,
            )
            continue
        model, trained, note, tok = _load_or_build(workload, card, device, resolve_trained)
        if card.speed_only:
            h, w = workload.card.paper_shape
            note += f"; random inputs of paper shape: {PAPER_TEXT_LEN} tokens, {h}x{w} images"
        entries[name] = Entry(
            name,
            card.kind,
            card.size,
            model,
            trained=trained,
            paper_inputs=card.speed_only,
            note=note,
            card=card,
            tokenizer=tok,
        )
    # each student is compared with the teacher its card names, else the teacher of its size
    teachers = {e.size: e.name for e in entries.values() if e.kind == "teacher"}
    for e in entries.values():
        if e.kind == "student":
            named = cards[e.name].teacher
            e.teacher = named if named in entries else teachers.get(e.size)
    for e in entries.values():
        e.model = e.model.to(device).eval()
    return [entries[n] for n in names]


def _load_or_build(
    workload: Workload, card: ModelCard, device: torch.device, resolve_trained: TrainedResolver | None
):
    from dde_bench.modeling import Student, Teacher, size_config
    from dde_bench.modeling.checkpoint import load_student, load_teacher

    task = workload.task
    if card.random_weights:
        tiny = card.size == "tiny"
        vl = size_config(card.size, vocab_size=workload.data.vocab_size) if tiny else size_config(card.size)
        num_labels = workload.data.num_labels
        if task == "vqa" and not tiny:
            num_labels = VQA_PAPER_NUM_ANSWERS  # speed-only models carry the paper's answer head
        cls = Teacher if card.kind == "teacher" else Student
        return cls(vl, task, num_labels), False, "random weights: speed only, accuracy n/a", None
    if card.weights == "trained":
        if resolve_trained is None:
            raise UserError(
                f"{card.where}: weights: trained needs a trainer (run it through `dde-bench run`)"
            )
        path = resolve_trained(workload.card, card, device)
        note = f"trained with the quick recipe ({path.name})"
    else:
        path = Path(card.weights).expanduser()
        note = f"loaded from {path}"
    from dde_bench.data.tokenize import model_tokenizer

    model = load_teacher(path, task=task) if card.kind == "teacher" else load_student(path)
    if model.task != task:
        raise UserError(f"{path}: a {model.task} model cannot be measured on suite {workload.card.name}")
    tok = model_tokenizer(path)
    if tok is None:
        n = workload.data.vocab_size
        if n > model.config.vocab_size:
            raise UserError(
                f"{path}: brings no tokenizer, and the suite's ({n} tokens) does not fit its vocabulary "
                f"({model.config.vocab_size}); put the model's vocab.txt (or tokenizer files) in that folder"
            )
        note += f"; no tokenizer in its folder: the suite's ({n} tokens) is assumed"
        warnings.warn(f"{path}: brings no tokenizer; assuming the suite's ({n} tokens)", stacklevel=2)
    return model, True, note, tok


# ------------------------------------------------------------------------------------------------ inputs
def inputs(entry: Entry, workload: Workload, batch: int, device, dtype, seed: int) -> dict:
    """One batch of inputs: the suite's evaluation examples, or random inputs of paper shape."""
    n_img = workload.n_images
    if entry.paper_inputs:
        g = torch.Generator().manual_seed(seed)
        cfg = getattr(entry.model, "config", None)
        vocab = getattr(cfg, "vocab_size", 30522)
        ids = torch.randint(1000, min(vocab, 30000), (batch, PAPER_TEXT_LEN), generator=g)
        ids[:, 0] = 101
        am = torch.ones(batch, PAPER_TEXT_LEN, dtype=torch.long)
        img = (3, *workload.card.paper_shape)
        shape = (batch, n_img, *img) if n_img == 2 else (batch, *img)
        pv = torch.randn(shape, generator=g)
        pm = torch.ones(shape[:-3] + shape[-2:], dtype=torch.long)
    else:
        data = workload.dataset_for(entry)
        idx = torch.arange(batch) % len(data)
        b = data.batch(idx)
        ids, am, pv, pm = b["input_ids"], b["attention_mask"], b["pixel_values"], b["pixel_mask"]
    return {
        "input_ids": ids.to(device),
        "attention_mask": am.to(device),
        "pixel_values": pv.to(device=device, dtype=dtype),
        "pixel_mask": pm.to(device),
    }


def cast(e: Entry, dtype) -> Entry:
    """``e`` with its model copied into ``dtype``."""
    e2 = copy.copy(e)
    e2.model = copy.deepcopy(e.model).to(dtype)
    return e2


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


# ------------------------------------------------------------------------------------------------- calls
def full_call(entry: Entry, x: dict):
    """The whole model on x: the teacher's joint pass, the student's two towers + fusion, or transformers'."""
    if entry.kind == "hf-vilt":
        return lambda: entry.model(**x).logits
    if entry.runtime == "ort":  # exported on these inputs (bench.ort), then the session's call alone
        return entry.model.bind(
            "forward", x["input_ids"], x["attention_mask"], x["pixel_values"], x["pixel_mask"]
        )
    if not entry.compile:
        return lambda: entry.model(x["input_ids"], x["attention_mask"], x["pixel_values"], x["pixel_mask"])
    model = compiled(entry.model, entry.compile)
    # an all-ones pixel mask means no padding, i.e. None; deciding that inside the graph would be a
    # data-dependent branch (per-image patch grids), so it is decided here, once, outside the timed call
    pm = None if bool(x["pixel_mask"].all()) else x["pixel_mask"]
    return lambda: model(x["input_ids"], x["attention_mask"], x["pixel_values"], pm)


def logits_fn(entry: Entry):
    """batch -> logits, for scoring an entry on the evaluation split (dde_bench.evaluation)."""
    return lambda b: full_call(entry, b)()


def compiled(fn, backend: str):
    """torch.compile with static shapes and the whole call as one graph (a graph break raises instead of
    silently measuring a half-eager call)."""
    return torch.compile(fn, backend=backend, dynamic=False, fullgraph=True)


def scenario_call(entry: Entry, scenario: str, x: dict):
    """The callable measured for (entry, scenario) on inputs x. A student in ``cached`` runs against image
    features computed here once, outside the timed call; every other row runs its whole model."""
    if entry.kind != "student" or scenario == "online":
        return full_call(entry, x)
    feats = entry.model.encode_images(x["pixel_values"], x["pixel_mask"])
    if entry.runtime == "ort":
        return entry.model.bind("forward_cached", x["input_ids"], x["attention_mask"], feats)
    fwd = entry.model.forward_cached
    if entry.compile:
        fwd = compiled(fwd, entry.compile)
    fn = lambda: fwd(x["input_ids"], x["attention_mask"], feats)  # noqa: E731
    return inject_slowdown(fn, scenario)


def scenario_modules(entry: Entry, scenario: str) -> list:
    """The modules a scenario's call needs resident: a cached student needs no image tower."""
    m = entry.model
    if entry.runtime == "ort":
        return []  # its weights live in the ONNX Runtime session, not in torch modules
    if entry.kind == "student" and scenario != "online":
        return [m.text_tower, m.fusion, m.head]
    return [m]


def inject_slowdown(fn, scenario: str):
    """Test-only: DDE_BENCH_INJECT_SLOWDOWN=cached=0.3 makes the student's cached call 30% slower (a busy-wait of
    0.3 x its own duration), so the CI gate can be shown to catch a real regression. Never set in use. One home
    with the A/B gate's probe (dde_bench.gate_probe.slowed)."""
    from dde_bench.gate_probe import slowed

    return slowed(fn, scenario)
