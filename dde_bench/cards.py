"""Suite and model cards: the YAML files of ``suites/`` and ``models/``, read once and validated.

A card is a frozen pydantic model. Every setting has one home and one default, here; the rest of the code reads
typed attributes (``suite.data.answer_min_count``), never ``dict.get`` with a local default. An unknown key (with
a "did you mean"), a wrong type, a missing required field or an unknown model name is one :class:`UserError`
line naming the file and the key, before any work starts.

``card.raw`` keeps the mapping exactly as written (no defaults filled in): the training cache keys hash it, so a
default added here later does not retrain every cached checkpoint. ``card.to_dict()`` is the full card with its
defaults, which is what ``run.json`` and checkpoints record.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveFloat,
    PositiveInt,
    PrivateAttr,
    ValidationError,
    model_validator,
)

from dde_bench.errors import UserError
from dde_bench.resources import list_names, load_yaml, models_dir, suites_dir
from dde_bench.tasks import DEFAULT_EVAL_SPLIT, PAPER_IMAGE, SPLITS, TASKS, VQA_ANSWER_MIN_COUNT

Task = Literal["nlvr2", "vqa", "snli-ve"]
Dtype = Literal["fp32", "bf16", "fp16"]
Kind = Literal["teacher", "student", "hf-vilt"]


class _Card(BaseModel):
    """What every card has beside its fields: the mapping as written and the file it came from."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)
    _raw: dict = PrivateAttr(default_factory=dict)
    _path: Path | None = PrivateAttr(default=None)
    _kind: ClassVar[str] = "card"

    @property
    def raw(self) -> dict:
        """The card exactly as written (no defaults filled in)."""
        return self._raw

    @property
    def path(self) -> Path | None:
        return self._path

    @property
    def where(self) -> str:
        """How messages name this card: its file, else its name."""
        return str(self._path) if self._path else f"{self._kind} {getattr(self, 'name', '?')!r}"

    def to_dict(self) -> dict:
        """The full card, defaults included (what run.json and checkpoints record)."""
        return self.model_dump(mode="json")

    @classmethod
    def of(cls, card):
        """A card as it is, or validated from a mapping (library callers may pass either)."""
        return card if isinstance(card, cls) else cls.from_dict(card)

    @classmethod
    def from_dict(cls, data: dict, where: str | None = None, path: Path | None = None):
        """Validate a mapping (a YAML file's content, or a card recorded in a checkpoint)."""
        where = where or f"{cls._kind}"
        if not isinstance(data, dict):
            raise UserError(f"{where}: expected a mapping at the top level")
        d = dict(data)
        if path is not None:
            d.setdefault("name", path.stem)
        card = _validate(cls, cls._prepare(d, where), where)
        card._raw = dict(data)
        card._path = path
        return card

    @classmethod
    def _prepare(cls, d: dict, where: str) -> dict:
        """Card-specific checks and conveniences before validation."""
        return d


class DataCard(_Card):
    """Where a suite's data comes from."""

    source: Literal["synthetic", "dir"] = "synthetic"
    # a folder in the dataset's official layout; setting it implies source: dir
    data_dir: str | None = None
    # the synthetic world's settings (split sizes, seed, families, colours, shapes, objects, ...): checked by the
    # generator (dde_bench.data.synth), which knows its own vocabulary
    synth: dict[str, Any] = Field(default_factory=dict)
    # VQA: answers whose normalised multiple_choice_answer occurs at least this often in the training split form the
    # answer vocabulary; one setting for training and the harness (default: tasks.VQA_ANSWER_MIN_COUNT)
    answer_min_count: PositiveInt = VQA_ANSWER_MIN_COUNT
    # a missing or undecodable image drops its example (listed and counted in run.json / the checkpoint) instead of
    # stopping the run or the training; off by default: a bad image is one line naming it
    skip_bad_images: bool = False

    @property
    def synthetic(self) -> bool:
        return not (self.data_dir or self.source == "dir")


class ServingCard(_Card):
    """The MLPerf LoadGen scenarios' settings (single-stream, server, offline; dde_bench.bench.scenarios.serving).

    A field left unset takes its profile's value from :attr:`PROFILES`: ``quick`` (seconds per test; CPU runs and
    ``--quick``) or ``mlperf`` (MLPerf Inference's rules: 10-minute tests; CUDA runs). ``profile: auto`` picks
    mlperf on CUDA without --quick, else quick."""

    profile: Literal["auto", "quick", "mlperf"] = "auto"
    # LoadGen's min_duration and min_query_count of every performance test (both must be reached). At p99 LoadGen's
    # early-stopping rule needs at least 459 queries before a Server run can be VALID, hence quick's 500
    min_duration_s: PositiveFloat | None = None
    min_query_count: PositiveInt | None = None
    # LoadGen's max_duration: every performance test stops there, reached or not (0: no limit, MLPerf's rule), so a
    # slow model cannot hold a quick run for min_query_count x its latency
    max_duration_s: float | None = Field(default=None, ge=0.0)
    # the Server bound: a run is VALID when this percentile of its latencies is at most latency_bound_ms
    latency_bound_ms: PositiveFloat | None = None
    latency_percentile: float = Field(default=0.99, gt=0.0, lt=1.0)
    # Server's dynamic batcher: at most max_batch samples per call, waiting at most max_delay_ms for the batch to fill
    max_batch: PositiveInt | None = None
    max_delay_ms: float | None = Field(default=None, ge=0.0)
    offline_batch: PositiveInt | None = None  # Offline: samples per call
    # the max-QPS search (per model and form): its wall-time budget, and the ratio of the lowest INVALID to the
    # highest VALID offered QPS at which it stops
    qps_search_budget_s: PositiveFloat | None = None
    qps_precision: PositiveFloat = 0.1
    accuracy: bool = (
        True  # also run LoadGen's accuracy mode for models with trained weights (every sample once)
    )

    PROFILES: ClassVar[dict[str, dict[str, float | int]]] = {
        "quick": dict(
            min_duration_s=2.0,
            min_query_count=500,
            max_duration_s=60.0,
            latency_bound_ms=50.0,
            max_batch=16,
            max_delay_ms=2.0,
            offline_batch=32,
            qps_search_budget_s=60.0,
        ),
        "mlperf": dict(
            min_duration_s=600.0,  # mlperf.conf: *.*.min_duration = 600000
            min_query_count=100,  # LoadGen's default; early stopping sets the real floor
            max_duration_s=0.0,
            latency_bound_ms=100.0,
            max_batch=64,
            max_delay_ms=5.0,
            offline_batch=64,
            qps_search_budget_s=7200.0,
        ),
    }
    _kind: ClassVar[str] = "serving block"

    def resolved(self, default_profile: str) -> dict[str, Any]:
        """Every setting with its value: the card's where given, else the profile's (``default_profile`` when
        ``profile`` is auto). ``profile`` names the profile used."""
        profile = default_profile if self.profile == "auto" else self.profile
        out: dict[str, Any] = self.model_dump()
        out.update({k: v for k, v in self.PROFILES[profile].items() if out[k] is None}, profile=profile)
        return out


class SuiteCard(_Card):
    """One suite: a task, its data, the models compared and what is measured."""

    name: str
    task: Task
    description: str = ""
    data: DataCard = Field(default_factory=DataCard)
    eval_split: str | None = None  # default: the task's evaluation split (dev / val2014)
    models: list[str] = Field(default_factory=list)
    # validated against the harness's scenario registry when a run starts (dde_bench.bench.scenarios)
    scenarios: list[str] = Field(default_factory=lambda: ["online", "cached", "gallery"])
    batch_sizes: list[PositiveInt] = Field(default_factory=lambda: [1, 8, 32])
    dtypes: list[Dtype] = Field(default_factory=lambda: ["fp32"])
    gallery_sizes: list[PositiveInt] | None = None  # default: the harness's sweep
    # the teacher's gallery query costs N joint passes: sizes whose estimated query time exceeds this budget are
    # recorded as not measured (with the estimate) instead of stalling the run; default 3 s (0.5 s with --quick)
    teacher_gallery_budget_s: PositiveFloat | None = None
    # paper-size speed rows: random inputs of this [height, width] (multiples of 32); default: the shape ViLT's
    # processor gives the task's real images (tasks.PAPER_IMAGE, where the choice is explained)
    paper_image: list[PositiveInt] | None = None
    # the LoadGen scenarios (single-stream, server, offline): test length, Server's latency bound, the dynamic
    # batcher and the max-QPS search; unset fields take the quick or MLPerf-like profile's value (ServingCard)
    serving: ServingCard = Field(default_factory=ServingCard)

    _kind: ClassVar[str] = "suite"

    @model_validator(mode="after")
    def _check(self) -> SuiteCard:
        if self.eval_split is not None and self.eval_split not in SPLITS[self.task]:
            raise ValueError(
                f"eval_split: {self.eval_split!r} is not a {self.task} split ({', '.join(SPLITS[self.task])})"
            )
        if self.data.source == "dir" and not self.data.data_dir:
            raise ValueError("data.data_dir: required when data.source is 'dir'")
        if self.paper_image is not None and (
            len(self.paper_image) != 2 or any(v % 32 for v in self.paper_image)
        ):
            raise ValueError(
                f"paper_image: expected [height, width], multiples of 32, got {self.paper_image}"
            )
        return self

    @property
    def split(self) -> str:
        """The split this suite evaluates on."""
        return self.eval_split or DEFAULT_EVAL_SPLIT[self.task]

    @property
    def paper_shape(self) -> tuple[int, int]:
        """(height, width) of the paper-size speed rows' random images."""
        return tuple(self.paper_image) if self.paper_image else PAPER_IMAGE[self.task]

    def with_data_dir(self, data_dir: str | Path | None) -> SuiteCard:
        """This suite on the dataset folder ``data_dir`` in its official layout (every command's ``--data-dir``);
        the card itself when None."""
        if data_dir is None:
            return self
        folder = str(Path(data_dir).expanduser())
        data = self.data.model_copy(update={"source": "dir", "data_dir": folder})
        card = self.model_copy(update={"data": data})
        card._raw = {
            **self._raw,
            "data": {**(self._raw.get("data") or {}), "source": "dir", "data_dir": folder},
        }
        card._path = self._path
        return card

    @classmethod
    def _prepare(cls, d: dict, where: str) -> dict:
        if "task" not in d and d.get("name") in TASKS:
            d["task"] = d["name"]  # suites named after their task may leave it out
        return d


class DistillCard(_Card):
    """Loss weights a trained student card is distilled with (the released DiDE code: soft + attention, no GT)."""

    ground_truth: float = 0.0
    soft: float = 1.0
    attention: float = 1.0
    temperature: PositiveFloat = 1.0
    # the attention KL over every query row, padded ones included (the authors'), or over real queries only
    attention_queries: Literal["all", "valid"] = "all"


class ModelCard(_Card):
    """One named model: its kind and size, and where its weights come from."""

    name: str
    kind: Kind
    size: str = "tiny"
    description: str = ""
    # trained: the quick recipe on the suite (cached); random: speed only, accuracy n/a; else a checkpoint path
    # (dde-bench, or a transformers ViLT folder saved with save_pretrained)
    weights: str = "random"
    teacher: str | None = None  # student: the teacher card it is measured against (and trained from)
    same_weights_as: str | None = (
        None  # hf-vilt: the teacher card whose weights transformers' ViltModel carries
    )
    distill: DistillCard = Field(default_factory=DistillCard)
    pretrain_distill: bool = False  # trained students: add the pre-training distillation stage
    seed: int = 0  # seeds the training of a trained card
    # overrides of the run's settings for this model (slow paper-size models)
    batch_sizes: list[PositiveInt] | None = None
    min_iters: PositiveInt | None = None
    gallery_sizes: list[PositiveInt] | None = None

    _kind: ClassVar[str] = "model card"

    @model_validator(mode="after")
    def _check(self) -> ModelCard:
        from dde_bench.modeling.config import SIZES

        if self.size not in SIZES:
            raise ValueError(f"size: unknown size {self.size!r}; known: {', '.join(SIZES)}")
        if self.kind == "hf-vilt" and not self.same_weights_as:
            raise ValueError("same_weights_as: required for an hf-vilt reference card")
        return self

    @property
    def random_weights(self) -> bool:
        return self.weights == "random"

    @property
    def speed_only(self) -> bool:
        """Random weights at paper size: measured on random inputs of paper shape, accuracy n/a."""
        return self.random_weights and self.size != "tiny"

    @classmethod
    def _prepare(cls, d: dict, where: str) -> dict:
        if d.get("kind") != "student" and "distill" in d:
            raise UserError(f"{where}: distill: only a student card has distillation weights")
        return d


# ------------------------------------------------------------------------------------------------- loading
def _field_names(model: type[BaseModel], loc: tuple) -> list[str]:
    """The keys allowed at ``loc`` (for "did you mean")."""
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        ann = getattr(field, "annotation", None)
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return []
        model = ann
    return list(model.model_fields)


def _validate(cls: type[_Card], data: dict, where: str):
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        err = e.errors(include_url=False)[0]
        loc = tuple(err.get("loc", ()))
        key = ".".join(str(p) if not isinstance(p, int) else f"[{p}]" for p in loc).replace(".[", "[")
        if err["type"] == "extra_forbidden":
            known = _field_names(cls, loc)
            close = difflib.get_close_matches(str(loc[-1]), known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; known keys: {', '.join(known)}"
            raise UserError(f"{where}: {key}: unknown key{hint}") from None
        if err["type"] == "missing":
            raise UserError(f"{where}: {key}: required") from None
        msg = err["msg"]
        if err["type"] in ("model_type", "dict_type"):
            msg = "expected a mapping"
        if err["type"] == "value_error":
            msg = msg.removeprefix("Value error, ")
            raise UserError(f"{where}: {msg}") from None
        got = err.get("input")
        shown = repr(got) if not isinstance(got, dict) else "a mapping"
        raise UserError(f"{where}: {key or 'card'}: {msg.lower()} (got {shown})") from None


def _resolve(kind: str, name_or_path: str | Path) -> Path:
    """A card name (looked up in suites/ or models/) or a path to a YAML file."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.is_file():
        if not p.is_file():
            raise UserError(f"{p}: no such {kind[:-1]} file")
        return p
    folder = suites_dir() if kind == "suites" else models_dir()
    path = folder / f"{name_or_path}.yaml"
    if not path.is_file():
        what = "suite" if kind == "suites" else "model"
        known = list_names(kind)
        close = difflib.get_close_matches(str(name_or_path), known, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise UserError(f"unknown {what} {str(name_or_path)!r}; {hint}known: {', '.join(known)}")
    return path


def load_model_card(name_or_path: str | Path) -> ModelCard:
    """A model card by name (``models/NAME.yaml``) or path."""
    path = _resolve("models", name_or_path)
    return ModelCard.from_dict(load_yaml(path), where=str(path), path=path)


def load_suite(name_or_path: str | Path, check_models: bool = True) -> SuiteCard:
    """A suite card by name (``suites/NAME.yaml``) or path. With ``check_models`` every model it names must have a
    valid card (one line naming the suite file, the key and the model otherwise)."""
    path = _resolve("suites", name_or_path)
    card = SuiteCard.from_dict(load_yaml(path), where=str(path), path=path)
    if check_models:
        check_model_names(card.models, where=f"{path}: models")
    return card


def check_model_names(names, where: str) -> list[ModelCard]:
    """Load the cards of ``names``; an unknown name is one line naming ``where`` and the name."""
    cards = []
    for i, n in enumerate(names):
        try:
            cards.append(load_model_card(n))
        except UserError as e:
            raise UserError(f"{where}[{i}]: {e}") from None
    return cards
