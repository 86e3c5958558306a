"""One training loop for the teacher and the student, fine-tuning and pre-training, single process or DDP.

A run is described by one :class:`TrainConfig` (optimizer settings in :class:`OptimConfig`, loss weights in
:class:`LossWeights`) and executed by :func:`train`, which writes into ``cfg.out``:

* ``model.safetensors`` + ``config.json`` -- the final model (``save_model``; ``meta`` = the full training config,
  the eval metrics and the git commit);
* ``metrics.csv`` (one row per logged step / evaluation) and TensorBoard events under ``tb/``;
* ``last/`` -- the resumable state (model, optimizer, scheduler, step, RNG), rewritten every ``save_every``
  steps; ``resume=True`` continues from it.

Determinism: the data order is a permutation of (seed, epoch) and every random draw inside a step (ITM
negatives, MLM masks) comes from a generator seeded by (seed, step), so a resumed run sees exactly the batches an
uninterrupted run would; with no dropout in the models, resumed weights equal uninterrupted ones on CPU.

Distributed: under ``torchrun`` (``WORLD_SIZE`` > 1) the model is wrapped in DDP (gloo on CPU, nccl on CUDA);
each global batch of ``batch_size x world_size`` examples is cut into one contiguous shard per rank; only rank 0
evaluates, logs and writes.
"""

from __future__ import annotations

import csv
import json
import math
import os
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from dde_bench.cards import SuiteCard
from dde_bench.data.loader import default_workers, step_batches
from dde_bench.data.suite import image_processor_for, load_suite_data
from dde_bench.data.tokenize import model_tokenizer, save_vocab
from dde_bench.errors import UserError
from dde_bench.evaluation import evaluate
from dde_bench.modeling.checkpoint import (
    checkpoint_answers,
    load_state_checked,
    load_student,
    load_teacher,
    save_model,
)
from dde_bench.modeling.config import size_config
from dde_bench.modeling.models import Student, Teacher
from dde_bench.modeling.weights import load_safetensors, load_torch_weights
from dde_bench.tasks import TRAIN_SPLIT, num_images
from dde_bench.training.losses import (
    ATTENTION_QUERIES,
    cross_modal_attention_loss,
    soft_label_loss,
    task_loss,
)
from dde_bench.training.pretrain import CaptionDataset, PretrainHeads

KINDS = ("teacher", "student")
STAGES = ("finetune", "pretrain")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
HEADS_FILE = "pretrain_heads.safetensors"
STATE_DIR = "last"


@dataclass
class OptimConfig:
    """AdamW with linear warmup and linear decay to 0 (DiDE / ViLT recipe)."""

    lr: float = 1e-4
    head_lr_mult: float = 1.0  # task head (and pre-training heads) lr multiplier; VQA uses 10
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-8
    warmup_ratio: float = 0.1
    clip_norm: float = 1.0  # 0 = no clipping


@dataclass
class LossWeights:
    """Weights of the loss terms. Fine-tuning: ground truth, soft labels, attention. Pre-training: ITM (ground
    truth), MLM (teacher only), ITM soft labels, attention."""

    ground_truth: float = 1.0
    soft: float = 0.0
    attention: float = 0.0
    temperature: float = 1.0
    mlm: float = 1.0
    # attention KL averaged over every query row, padded ones included ("all", the authors' form; the text is
    # then padded to the model's full text length, as theirs is) or over real queries only ("valid")
    attention_queries: str = "all"


@dataclass
class TrainConfig:
    """Everything one training stage depends on (recorded in the checkpoint's meta)."""

    kind: str  # teacher | student
    suite: SuiteCard  # the suite: task, data, eval split
    out: str
    stage: str = "finetune"  # finetune | pretrain
    size: str = "tiny"
    init_std: float | None = None  # from-scratch teacher: override the size's init std (tiny worlds: 0.1)
    cache_root: str = "reports/cache"
    init: str = "scratch"  # teacher: scratch | dde-bench checkpoint | transformers ViLT folder;
    # student: "teacher" (towers from the teacher it is distilled from: --teacher, in the pre-training stage its
    # pre-trained stage), "finetuned-teacher" (towers from the fine-tuned --teacher), "pretrained-teacher"
    # (towers from --teacher's pre-training stage, --teacher/pretrain: the authors' start), or a student
    # checkpoint (e.g. from its pre-training stage)
    head_init: str = (
        "copy"  # student: the task head copied from the fine-tuned teacher, or "fresh" (the authors')
    )
    teacher: str | None = None  # student: the teacher checkpoint distilled from (and initialised from)
    steps: int = 1000
    batch_size: int = 32
    grad_accum: int = 1
    optim: OptimConfig = field(default_factory=OptimConfig)
    weights: LossWeights = field(default_factory=LossWeights)
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"  # auto = bf16 on CUDA, fp32 on CPU
    threads: int | None = 2  # torch.set_num_threads on CPU; None leaves it alone
    log_every: int = 50
    eval_every: int = 0  # 0 = only at the end
    save_every: int = 0  # resumable state every N steps; 0 = only at the end
    eval_limit: int | None = None  # evaluate on the first N eval examples (None = all)
    train_limit: int | None = None  # train on the first N training examples (tests, quick checks)
    resume: bool = False
    progress: bool = True
    stop_after: int | None = None  # stop (state saved) after this many steps, as an interruption would
    itm_hard: float = 0.0  # pre-training: share of ITM negatives that are minimal-edit false captions
    # DataLoader worker processes that build (decode) the batches; None = 0 when the images are held in memory,
    # else up to 4 (dde_bench.data.loader)
    loader_workers: int | None = None
    # keep the checkpoint of the best evaluation (every eval_every steps and at the end; task metric "accuracy")
    # instead of the last one; meta records best_step
    keep_best: bool = False
    # the split evaluated (and, with keep_best, selected on) instead of the suite's; a split spec:
    # "dev", or "val2014:first-half" / "val2014:second-half" (data.suite.split_spec)
    eval_split: str | None = None
    # pre-training: the folder holding the caption pool (captions_train2014.json and its images; with
    # captions_val2014.json the final ITM accuracy per negative kind is measured on it); None = the data folder
    pretrain_data: str | None = None

    def __post_init__(self) -> None:
        self.suite = SuiteCard.of(self.suite)

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        return {
            **d,
            "optim": asdict(self.optim),
            "weights": asdict(self.weights),
            "suite": self.suite.to_dict(),
        }

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        d = dict(d)
        d["suite"] = SuiteCard.from_dict(d["suite"], where="training config: suite")
        d["optim"] = OptimConfig(
            **{**d.get("optim", {}), "betas": tuple(d.get("optim", {}).get("betas", (0.9, 0.98)))}
        )
        d["weights"] = LossWeights(**d.get("weights", {}))
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


# --- distributed -----------------------------------------------------------------------------------------


@dataclass
class Dist:
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device: torch.device) -> Dist:
    """Join the process group torchrun set up (WORLD_SIZE > 1); a single process otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size())


# --- data ------------------------------------------------------------------------------------------------


def to_device(batch: dict, device: torch.device) -> dict:
    return {
        k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()
    }


def shard_indices(n: int, batch_size: int, step: int, seed: int, d: Dist) -> torch.Tensor:
    """The indices rank ``d.rank`` trains on at ``step``: epoch-wise permutations of (seed, epoch), global
    batches of ``batch_size * world`` drawn in order (the last incomplete one dropped), one shard per rank."""
    g = batch_size * d.world
    per_epoch = max(n // g, 1)
    epoch, pos = divmod(step, per_epoch)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
    if n < g:
        perm = perm.repeat(-(-g // n))
    glob = perm[pos * g : (pos + 1) * g]
    return glob[d.rank * batch_size : (d.rank + 1) * batch_size]


# --- models wrapped as loss modules (one forward per step, as DDP wants) --------------------------------


class _Frozen:
    """Holds the teacher outside the module tree (no gradients, not in the optimizer, not wrapped by DDP)."""

    def __init__(self, model: nn.Module | None):
        self.model = model


class TaskLoss(nn.Module):
    """Fine-tuning: the ground-truth loss, plus soft-label and attention distillation for a student."""

    def __init__(self, model: Teacher | Student, weights: LossWeights, teacher: Teacher | None = None):
        super().__init__()
        self.model = model
        self.weights = weights
        self.frozen = _Frozen(teacher)

    def forward(self, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        w = self.weights
        m = self.model
        teacher = self.frozen.model
        need_att = teacher is not None and w.attention > 0
        args = (batch["input_ids"], batch["attention_mask"], batch["pixel_values"], batch.get("pixel_mask"))
        parts: dict[str, float] = {}
        total = torch.zeros((), device=batch["input_ids"].device)
        if isinstance(m, Teacher):
            logits = m.forward_full(*args).logits
        else:
            out = m.forward_full(*args, explicit=need_att)
            logits = out.logits
        if w.ground_truth > 0 or teacher is None:
            gt = task_loss(m.task, logits, batch)
            total = total + (w.ground_truth if teacher is not None else 1.0) * gt
            parts["gt"] = float(gt.detach())
        if teacher is not None and (w.soft > 0 or need_att):
            with torch.no_grad():
                t_out = teacher.forward_full(*args, explicit=need_att)
            if w.soft > 0:
                soft = soft_label_loss(m.task, logits, t_out.logits, w.temperature)
                total = total + w.soft * soft
                parts["soft"] = float(soft.detach())
            if need_att:
                att, att_parts = cross_modal_attention_loss(
                    t_out.encoder, out.text, out.image, num_images(m.task), queries=w.attention_queries
                )
                total = total + w.attention * att
                parts["attention"] = float(att.detach())
                parts.update(att_parts)
        parts["loss"] = float(total.detach())
        return total, parts


def itm_accuracies(itm_logits: torch.Tensor, batch: dict) -> dict[str, float]:
    """ITM accuracy overall and, when the batch has minimal-edit negatives, on those alone (``itm_acc_hard``:
    chance is 0, a model that ignores the image says "match" to them) and on the other pairs."""
    right = itm_logits.argmax(-1) == batch["itm_labels"]
    out = {"itm_acc": float(right.float().mean())}
    hard = batch.get("hard_itm")
    if hard is not None and bool(hard.any()):
        out["itm_acc_hard"] = float(right[hard].float().mean())
        out["itm_acc_easy"] = float(right[~hard].float().mean())
    return out


ITM_EVAL_CAPTIONS = "captions_val2014.json"  # a caption pool's held-out captions (data.synth.captions)
ITM_KINDS = ("matched", "random", "minimal")


@torch.no_grad()
def evaluate_itm(
    module: PretrainLoss, dataset: CaptionDataset, device, hard: float = 0.5, batch_size: int = 64
):
    """ITM accuracy (percent) of a pre-training stage's model on held-out captions, overall and per pair kind:
    matched pairs, random-image negatives and minimal-edit false captions (``hard`` of the negatives). The
    negatives are drawn from fixed generators (seed = batch index), so every model meets the same pairs."""
    was = module.training
    module.eval()
    right = {k: 0 for k in ITM_KINDS}
    total = {k: 0 for k in ITM_KINDS}
    try:
        for i, lo in enumerate(range(0, len(dataset), batch_size)):
            idx = torch.arange(lo, min(lo + batch_size, len(dataset)))
            batch = to_device(
                dataset.batch(idx, torch.Generator().manual_seed(i), mlm_prob=0.0, hard=hard), device
            )
            ok = module.itm_logits(batch).argmax(-1) == batch["itm_labels"]
            kinds = {
                "matched": batch["itm_labels"] == 1,
                "random": batch["random_itm"],
                "minimal": batch["hard_itm"],
            }
            for k, mask in kinds.items():
                right[k] += int(ok[mask].sum())
                total[k] += int(mask.sum())
    finally:
        module.train(was)
    out = {"itm_acc": 100.0 * sum(right.values()) / max(sum(total.values()), 1)}
    out.update({f"itm_acc_{k}": 100.0 * right[k] / total[k] for k in ITM_KINDS if total[k]})
    out.update({f"itm_n_{k}": float(total[k]) for k in ITM_KINDS})
    return out


class PretrainLoss(nn.Module):
    """Pre-training: teacher ITM + MLM; student ITM with soft-label and attention distillation."""

    def __init__(self, model: Teacher | Student, heads: PretrainHeads, weights: LossWeights, teacher=None):
        super().__init__()
        self.model = model
        self.heads = heads
        self.weights = weights
        self.frozen = _Frozen(teacher)  # (Teacher, PretrainHeads) or None

    @staticmethod
    def teacher_forward(model: Teacher, heads: PretrainHeads, batch: dict, explicit: bool):
        enc = model.encoder(
            batch["input_ids"],
            batch["attention_mask"],
            batch["pixel_values"],
            batch.get("pixel_mask"),
            image_type=1,
            explicit=explicit,
        )
        return enc, heads.itm(enc.pooled)

    def itm_logits(self, batch: dict) -> torch.Tensor:
        """The model's ITM logits alone (evaluation: no distillation, no MLM)."""
        m = self.model
        if isinstance(m, Teacher):
            return self.teacher_forward(m, self.heads, batch, explicit=False)[1]
        text = m.encode_text_full(batch["input_ids"], batch["attention_mask"], explicit=False)
        image = m.image_tower(
            pixel_values=batch["pixel_values"],
            pixel_mask=batch.get("pixel_mask"),
            image_type=1,
            explicit=False,
        )
        return self.heads.itm(m.fusion(torch.cat([text.pooled, image.pooled], dim=-1)))

    def forward(self, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        w = self.weights
        m = self.model
        parts: dict[str, float] = {}
        if isinstance(m, Teacher):
            enc, itm_logits = self.teacher_forward(m, self.heads, batch, explicit=False)
            itm = F.cross_entropy(itm_logits.float(), batch["itm_labels"])
            text = enc.hidden[:, : enc.text_len]
            mlm_logits = self.heads.mlm(text).float()
            labels = batch["mlm_labels"]
            mlm = F.cross_entropy(
                mlm_logits.reshape(-1, mlm_logits.shape[-1]), labels.reshape(-1), ignore_index=-100
            )
            if not bool((labels != -100).any()):
                mlm = mlm_logits.sum() * 0.0
            total = w.ground_truth * itm + w.mlm * mlm
            parts.update(itm=float(itm.detach()), mlm=float(mlm.detach()))
            parts.update(itm_accuracies(itm_logits, batch))
        else:
            teacher = self.frozen.model
            need_att = teacher is not None and w.attention > 0
            text = m.encode_text_full(batch["input_ids"], batch["attention_mask"], explicit=need_att)
            image = m.image_tower(
                pixel_values=batch["pixel_values"],
                pixel_mask=batch.get("pixel_mask"),
                image_type=1,
                explicit=need_att,
            )
            fused = m.fusion(torch.cat([text.pooled, image.pooled], dim=-1))
            itm_logits = self.heads.itm(fused)
            total = torch.zeros((), device=itm_logits.device)
            if w.ground_truth > 0 or teacher is None:
                itm = F.cross_entropy(itm_logits.float(), batch["itm_labels"])
                total = total + w.ground_truth * itm
                parts["itm"] = float(itm.detach())
            if teacher is not None and (w.soft > 0 or need_att):
                t_model, t_heads = teacher
                with torch.no_grad():
                    t_enc, t_itm = self.teacher_forward(t_model, t_heads, batch, explicit=need_att)
                if w.soft > 0:
                    soft = soft_label_loss("itm", itm_logits, t_itm, w.temperature)
                    total = total + w.soft * soft
                    parts["soft"] = float(soft.detach())
                if need_att:
                    att, att_parts = cross_modal_attention_loss(
                        t_enc, text, image, 1, queries=self.weights.attention_queries
                    )
                    total = total + w.attention * att
                    parts["attention"] = float(att.detach())
                    parts.update(att_parts)
            parts.update(itm_accuracies(itm_logits, batch))
        parts["loss"] = float(total.detach())
        return total, parts


# --- optimizer --------------------------------------------------------------------------------------------


def param_groups(module: nn.Module, optim: OptimConfig) -> list[dict]:
    """AdamW groups: no weight decay on biases, norms and embedding tables/tokens; head lr x head_lr_mult.

    "Head" = the task head and the pre-training heads (the parts trained from scratch on top of the encoder)."""
    groups: dict[tuple[bool, bool], list] = {}
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        no_decay = (
            p.ndim < 2
            or "norm" in name
            or ".word." in name
            or ".position" in name
            or ".token_type." in name
            or "modality_type" in name
            or "cls_token" in name
        )
        is_head = name.startswith(("model.head.", "heads.", "head."))
        groups.setdefault((no_decay, is_head), []).append(p)
    out = []
    for (no_decay, is_head), params in sorted(groups.items()):
        out.append(
            {
                "params": params,
                "weight_decay": 0.0 if no_decay else optim.weight_decay,
                "lr": optim.lr * (optim.head_lr_mult if is_head else 1.0),
            }
        )
    return out


def lr_lambda(total: int, warmup_ratio: float):
    warm = int(total * warmup_ratio)

    def f(step: int) -> float:
        if warm > 0 and step < warm:
            return (step + 1) / warm
        return max(0.0, (total - step) / max(1, total - warm))

    return f


# --- building the models ------------------------------------------------------------------------------------


def _check_teacher(t: Teacher, task: str, size: str, where: str) -> None:
    if t.task != task:
        raise UserError(f"{where}: a {t.task} teacher cannot teach task {task}")

    def shape(c):  # what the towers' weights depend on (not the init std or the NLVR2 type rows)
        return c.replace(modality_type_vocab_size=0, init_std=0.0)

    if shape(t.config) != shape(size_config(size)):
        raise UserError(
            f"{where}: the teacher's sizes are not size {size!r} (hidden {t.config.hidden_size}, "
            f"{t.config.num_layers} layers)"
        )


def build_teacher(cfg: TrainConfig, task: str, num_labels: int | None) -> Teacher:
    """A teacher initialised from scratch, from a dde-bench checkpoint (task head re-initialised if the task
    differs), or from a transformers ViLT folder."""
    vl = size_config(cfg.size)
    if cfg.init == "scratch":
        if cfg.init_std is not None:
            vl = vl.replace(init_std=cfg.init_std)
        return Teacher(vl, task, num_labels)
    src = load_teacher(cfg.init)
    model = Teacher(src.config, task, num_labels)
    own = model.state_dict()
    state = {k: v for k, v in src.state_dict().items() if k in own and v.shape == own[k].shape}
    if src.task != task:
        state = {k: v for k, v in state.items() if not k.startswith("head.")}
    model.load_state_dict(state, strict=False)
    return model


def load_pretrain_heads(
    folder: Path, hidden: int, vocab: int | None, eps: float, std: float
) -> PretrainHeads:
    heads = PretrainHeads(hidden, vocab, eps, std)
    path = Path(folder) / HEADS_FILE
    if not path.is_file():
        raise UserError(f"{folder}: no {HEADS_FILE} (not the output of a pre-training stage)")
    state = load_safetensors(path)
    if vocab is None:
        state = {k: v for k, v in state.items() if not k.startswith("mlm.")}
    load_state_checked(heads, state, str(path))
    return heads


# --- the loop ---------------------------------------------------------------------------------------------


def _autocast(device: torch.device, precision: str):
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    if precision in ("bf16", "fp16") and device.type != "cuda":
        raise UserError(f"--precision {precision} needs CUDA; use fp32 on {device.type}")
    if precision == "fp32":
        return precision, None
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return precision, (lambda: torch.autocast("cuda", dtype=dtype))


def _save_state(
    folder: Path, module: nn.Module, optimizer, scheduler, step: int, scaler, cfg: TrainConfig
) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}
    save_file(state, str(folder / "module.safetensors.tmp"))
    (folder / "module.safetensors.tmp").replace(folder / "module.safetensors")
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    torch.save(
        {
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else None,
            "step": step,
            "rng": rng,
        },
        folder / "trainer.pt.tmp",
    )
    (folder / "trainer.pt.tmp").replace(folder / "trainer.pt")
    (folder / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))


def _load_state(folder: Path, module: nn.Module, optimizer, scheduler, scaler) -> int:
    """Restore the resumable state in ``folder``; a missing, garbage or foreign state is one line."""
    load_state_checked(module, load_safetensors(folder / "module.safetensors"), str(folder))
    st = load_torch_weights(folder / "trainer.pt")
    try:
        optimizer.load_state_dict(st["optimizer"])
        scheduler.load_state_dict(st["scheduler"])
        if scaler is not None and st.get("scaler"):
            scaler.load_state_dict(st["scaler"])
        torch.set_rng_state(st["rng"]["torch"])
        if "cuda" in st["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(st["rng"]["cuda"])
        return int(st["step"])
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise UserError(
            f"{folder / 'trainer.pt'}: not a dde-bench training state ({type(e).__name__}: {e})"
        ) from None


def train(cfg: TrainConfig) -> Path:
    """Run one training stage as ``cfg`` says; return the checkpoint folder ``cfg.out``.

    The process's torch thread count is restored afterwards: a benchmark that trains its models first
    (``ensure_trained``) must measure with its own thread setting, not the trainer's."""
    threads = torch.get_num_threads()
    try:
        return _train(cfg)
    finally:
        torch.set_num_threads(threads)


def _train(cfg: TrainConfig) -> Path:
    from dde_bench.env import git_commit, resolve_device

    if cfg.kind not in KINDS:
        raise UserError(f"unknown kind {cfg.kind!r}; expected teacher or student")
    if cfg.stage not in STAGES:
        raise UserError(f"unknown stage {cfg.stage!r}; expected finetune or pretrain")
    if cfg.precision not in PRECISIONS:
        raise UserError(f"unknown precision {cfg.precision!r}; expected one of {', '.join(PRECISIONS)}")
    if cfg.steps < 1 or cfg.batch_size < 1 or cfg.grad_accum < 1:
        raise UserError("--steps, --batch-size and --grad-accum must be at least 1")
    w = cfg.weights
    if cfg.kind == "student" and max(w.ground_truth, w.soft, w.attention) <= 0:
        raise UserError("a student needs at least one of --gt, --soft, --attention above 0")
    if w.temperature <= 0:
        raise UserError(f"--temperature must be positive, got {w.temperature}")
    if w.attention_queries not in ATTENTION_QUERIES:
        raise UserError(
            f"--attention-queries: expected one of {', '.join(ATTENTION_QUERIES)}, got {w.attention_queries!r}"
        )
    device = resolve_device(cfg.device)
    if cfg.head_init not in ("copy", "fresh"):
        raise UserError(f"--head-init: expected copy or fresh, got {cfg.head_init!r}")
    if cfg.kind == "student" and not cfg.teacher:
        raise UserError("a student needs --teacher (the checkpoint it is initialised and distilled from)")
    d = init_distributed(device)
    if device.type == "cuda" and d.world > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", d.rank)))
        torch.cuda.set_device(device)
    if device.type == "cpu" and cfg.threads:
        torch.set_num_threads(cfg.threads)
    precision, amp = _autocast(device, cfg.precision)
    torch.manual_seed(cfg.seed)
    out = Path(cfg.out)
    task = cfg.suite.task
    vl = size_config(cfg.size)

    # data: the task's splits (fine-tuning) or the caption pool (pre-training); the VQA answers either way, since
    # the model's head has one output per answer
    eval_split = cfg.eval_split or cfg.suite.split
    if cfg.keep_best and not (cfg.eval_every > 0 and cfg.stage == "finetune"):
        raise UserError("keep_best needs eval_every > 0 and the fine-tuning stage")
    splits = (TRAIN_SPLIT[task], eval_split) if cfg.stage == "finetune" else ()
    # the tokenizer a model brings wins over the data's: a student speaks its teacher's tokens, a teacher
    # fine-tuned from a checkpoint or a transformers folder keeps that folder's
    source = cfg.teacher if cfg.kind == "student" else (None if cfg.init == "scratch" else cfg.init)
    data = load_suite_data(
        cfg.suite,
        Path(cfg.cache_root),
        vl,
        splits,
        (cfg.train_limit, cfg.eval_limit),
        progress=cfg.progress and d.main,
        tokenizer=model_tokenizer(source) if source else None,
        # VQA: a model started from a checkpoint keeps that checkpoint's answer list (its head's rows), and a
        # student predicts its teacher's; the data's list (data.answer_min_count) only sizes a new head
        answers=checkpoint_answers(source) if source and task == "vqa" and Path(source).is_dir() else None,
    )
    tok, answer_vocab, num_labels = data.tokenizer, data.answer_vocab, data.num_labels
    if cfg.stage == "finetune":
        train_set, eval_set = data.datasets[TRAIN_SPLIT[task]], data.datasets[eval_split]
    else:
        pool = Path(cfg.pretrain_data) if cfg.pretrain_data else data.data_dir
        train_set = CaptionDataset(pool, tok, image_processor_for(vl), vl.max_text_len, limit=cfg.train_limit)
        eval_set, eval_split = None, None
        itm_eval = None
        if (pool / ITM_EVAL_CAPTIONS).is_file():
            itm_eval = CaptionDataset(
                pool, tok, image_processor_for(vl), vl.max_text_len, captions=pool / ITM_EVAL_CAPTIONS
            )

    # models
    teacher = None
    if cfg.kind == "teacher":
        model = build_teacher(cfg, task, num_labels)
    else:
        src = Path(cfg.teacher)
        if cfg.stage == "pretrain":
            src = src / "pretrain" if (src / "pretrain").is_dir() else src
        teacher = load_teacher(src)
        _check_teacher(teacher, task, cfg.size, str(cfg.teacher))
        if num_labels is not None and teacher.num_labels != num_labels:
            raise UserError(
                f"{cfg.teacher}: the teacher has {teacher.num_labels} answers, the data {num_labels}"
            )
        teacher = teacher.to(device).eval().requires_grad_(False)
        model = Student(teacher.config, task, teacher.num_labels)
        copy_head = cfg.head_init == "copy"
        if cfg.init == "teacher":
            model.init_from_teacher(teacher, head=copy_head)
        elif cfg.init in ("finetuned-teacher", "pretrained-teacher"):
            # towers from the fine-tuned teacher's weights, or from its pre-training stage (the authors' start:
            # their towers load the pre-trained ViLT); the fusion MLP starts fresh either way
            folder = Path(cfg.teacher) / ("pretrain" if cfg.init == "pretrained-teacher" else "")
            if not (folder / "config.json").is_file():
                raise UserError(
                    f"{folder}: no teacher checkpoint (--init {cfg.init} needs the teacher's stage there)"
                )
            start = load_teacher(folder)
            _check_teacher(start, task, cfg.size, str(folder))
            model.init_from_teacher(start, head=False)
            if copy_head:  # the task head of the fine-tuned teacher (a pre-trained one has none)
                tuned = teacher if cfg.stage == "finetune" else load_teacher(Path(cfg.teacher))
                model.head.load_state_dict(tuned.head.state_dict())
        else:
            init = load_student(cfg.init)
            load_state_checked(model, init.state_dict(), str(cfg.init))
            if copy_head and cfg.stage == "finetune" and getattr(init, "meta", {}).get("stage") == "pretrain":
                # its task head never trained: start from the fine-tuned teacher's, as init_from_teacher does
                model.head.load_state_dict(teacher.head.state_dict())
    if answer_vocab is not None:
        model.answer_vocab = answer_vocab
    if cfg.stage == "pretrain":
        hidden, eps, std = vl.hidden_size, vl.layer_norm_eps, vl.init_std
        heads = PretrainHeads(hidden, len(tok) if cfg.kind == "teacher" else None, eps, std)
        frozen = None
        if cfg.kind == "teacher" and cfg.init != "scratch" and (Path(cfg.init) / HEADS_FILE).is_file():
            heads = load_pretrain_heads(Path(cfg.init), hidden, len(tok), eps, std)
        if teacher is not None:
            t_heads = load_pretrain_heads(src, hidden, None, eps, std).to(device).requires_grad_(False)
            frozen = (teacher, t_heads)
            heads.itm.load_state_dict(t_heads.itm.state_dict())
        module: nn.Module = PretrainLoss(model, heads, cfg.weights, frozen)
    else:
        module = TaskLoss(model, cfg.weights, teacher)
    module.to(device).train()
    ddp_module = module
    if d.world > 1:
        ddp_module = nn.parallel.DistributedDataParallel(
            module, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=True
        )
    optimizer = torch.optim.AdamW(
        param_groups(module, cfg.optim), lr=cfg.optim.lr, betas=tuple(cfg.optim.betas), eps=cfg.optim.eps
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg.steps, cfg.optim.warmup_ratio))
    scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None
    start = 0
    state_dir = out / STATE_DIR
    if cfg.resume:
        if (state_dir / "trainer.pt").is_file():
            start = _load_state(state_dir, module, optimizer, scheduler, scaler)
        elif d.main:
            print(f"dde-bench: no saved state in {state_dir}; starting from step 0")

    # logging (rank 0 only)
    writer = csv_file = csv_writer = None
    if d.main:
        out.mkdir(parents=True, exist_ok=True)
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(out / "tb"))
        csv_path = out / "metrics.csv"
        new = not csv_path.exists() or start == 0
        csv_file = open(csv_path, "w" if new else "a", newline="")  # noqa: SIM115
        csv_writer = csv.writer(csv_file)
        if new:
            csv_writer.writerow(["step", "split", "name", "value", "time_s"])
    bar = None
    if cfg.progress and d.main:
        from tqdm import tqdm

        bar = tqdm(total=cfg.steps, initial=start, desc=f"{cfg.kind} {cfg.stage} {task}", unit="step")

    def log(step: int, split: str, values: dict) -> None:
        if not d.main:
            return
        for k, v in values.items():
            writer.add_scalar(f"{split}/{k}", v, step)
            csv_writer.writerow([step, split, k, f"{v:.6g}", f"{time.time() - t0:.1f}"])
        csv_file.flush()

    t0 = time.time()
    metrics: dict = {}
    best: dict = {"score": -math.inf, "step": None, "state": None, "metrics": {}}

    def consider(step_done: int, m: dict) -> None:
        """keep_best: remember the weights of the best evaluation so far (ties keep the earlier)."""
        if cfg.keep_best and m.get("accuracy", -math.inf) > best["score"]:
            best.update(
                score=m["accuracy"],
                step=step_done,
                metrics=dict(m),
                state={k: v.detach().clone() for k, v in model.state_dict().items()},
            )

    sums: dict[str, float] = {}
    count = 0
    end = cfg.steps if cfg.stop_after is None else min(cfg.steps, cfg.stop_after)
    step = start

    def make_batch(micro_step: int) -> dict:
        """The batch of one micro-step: a pure function of it (so workers may build it, and a resume too)."""
        idx = shard_indices(len(train_set), cfg.batch_size, micro_step, cfg.seed, d)
        if cfg.stage == "pretrain":
            g = torch.Generator().manual_seed((cfg.seed * 1_000_003 + micro_step) * 64 + d.rank)
            return train_set.batch(idx, g, hard=cfg.itm_hard)
        return train_set.batch(idx, full_length=full_length)

    # the authors' attention form averages over padded text queries too, with text padded to its full length
    full_length = (
        cfg.kind == "student" and cfg.weights.attention > 0 and cfg.weights.attention_queries == "all"
    )
    workers = cfg.loader_workers if cfg.loader_workers is not None else default_workers(train_set.cached)
    batches = step_batches(
        make_batch, start * cfg.grad_accum, end * cfg.grad_accum, workers, pin_memory=device.type == "cuda"
    )
    try:
        for step in range(start, end):
            for micro in range(cfg.grad_accum):
                batch = to_device(next(batches), device)
                sync = micro == cfg.grad_accum - 1 or d.world == 1
                ctx = nullcontext() if sync else ddp_module.no_sync()
                with ctx:
                    with amp() if amp else nullcontext():
                        loss, parts = ddp_module(batch)
                    loss = loss / cfg.grad_accum
                    if scaler is not None:
                        scaler.scale(loss).backward()
                    else:
                        loss.backward()
                for k, v in parts.items():
                    sums[k] = sums.get(k, 0.0) + v
                count += 1
            if scaler is not None:
                scaler.unscale_(optimizer)
            if cfg.optim.clip_norm > 0:
                gnorm = float(torch.nn.utils.clip_grad_norm_(module.parameters(), cfg.optim.clip_norm))
                sums["grad_norm"] = sums.get("grad_norm", 0.0) + gnorm * cfg.grad_accum
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            done = step + 1
            if not math.isfinite(parts["loss"]):
                raise RuntimeError(f"loss is {parts['loss']} at step {done}; lower the lr or check the data")
            if done % cfg.log_every == 0 or done == end:
                avg = {k: v / count for k, v in sums.items()}
                avg["lr"] = scheduler.get_last_lr()[0]
                log(done, "train", avg)
                if bar is not None:
                    bar.set_postfix(
                        {
                            k: f"{v:.3f}"
                            for k, v in avg.items()
                            if k in ("loss", "gt", "soft", "attention", "itm_acc")
                        }
                    )
                sums, count = {}, 0
            if bar is not None:
                bar.update(1)
            if (
                eval_set is not None
                and d.main
                and cfg.eval_every
                and done % cfg.eval_every == 0
                and done < cfg.steps
            ):
                metrics = evaluate(model, eval_set, device, amp=amp).percent()
                log(done, "eval", metrics)
                consider(done, metrics)
                if bar is not None:
                    bar.write(f"step {done}: " + ", ".join(f"{k} {v:.2f}" for k, v in metrics.items()))
            if d.main and cfg.save_every and done % cfg.save_every == 0:
                _save_state(state_dir, module, optimizer, scheduler, done, scaler, cfg)
        step = end
    finally:
        if bar is not None:
            bar.close()
    if d.main:
        _save_state(state_dir, module, optimizer, scheduler, step, scaler, cfg)
    if step < cfg.steps:  # stopped early (stop_after): the state is saved, the final model is not written
        _finish(writer, csv_file, d)
        return out
    if d.main:
        if eval_set is not None:
            metrics = evaluate(model, eval_set, device, amp=amp).percent()
            log(step, "eval", metrics)
            consider(step, metrics)
        best_step = None
        if cfg.keep_best and best["state"] is not None:
            best_step, metrics = best["step"], best["metrics"]
            model.load_state_dict(best["state"])
        if cfg.stage == "pretrain" and itm_eval is not None:
            metrics = evaluate_itm(module, itm_eval, device, hard=0.5)
            log(step, "eval", metrics)
        meta = {
            "training": cfg.to_dict(),
            "stage": cfg.stage,
            "metrics": metrics,
            "eval_split": eval_split if eval_set is not None else None,
            "git_commit": git_commit(),
            "train_seconds": round(time.time() - t0, 1),
            "world_size": d.world,
            "precision": precision,
            "data_dir": str(data.data_dir),
            "skipped_images": data.bad_images,
        }
        if cfg.keep_best:
            meta["best_step"] = best_step
        save_model(model, out, meta)
        save_vocab(tok, out)  # the checkpoint carries its tokenizer
        if cfg.stage == "pretrain":
            h = {k: v.detach().contiguous().cpu() for k, v in module.heads.state_dict().items()}
            save_file(h, str(out / HEADS_FILE))
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    _finish(writer, csv_file, d)
    return out


def _finish(writer, csv_file, d: Dist) -> None:
    if writer is not None:
        writer.close()
    if csv_file is not None:
        csv_file.close()
    if d.world > 1 and dist.is_initialized():
        dist.barrier()
