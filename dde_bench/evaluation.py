"""Scoring a model on a dataset with the task's official metric: one routine for training, reproduce and the harness.

:func:`evaluate` predicts every example of a :class:`~dde_bench.data.batching.TaskDataset` and returns an
:class:`Evaluation`: the per-example predictions and scores (VQA: the official accuracy of the predicted answer
against the 10 human answers; NLVR2 / SNLI-VE: 1 if the class is right), from which the accuracy, NLVR2's
consistency, a bootstrap interval and the official prediction files follow.

A VQA model predicts an index into *its own* answer list (``model.answer_vocab``, stored in its checkpoint); the
data's list is used only for a model that has none (random weights).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch

from dde_bench.errors import UserError


@dataclass
class Evaluation:
    """Per-example results of one model on one dataset."""

    task: str
    ids: list  # example ids (NLVR2 identifiers, VQA question ids, SNLI-VE pair ids)
    predictions: list[int]  # predicted class (VQA: index into ``answers``)
    scores: list[float]  # per-example score in [0, 1] under the official metric
    labels: list[int | None]
    answers: list[str] | None = None  # VQA: the model's answer list

    @property
    def accuracy(self) -> float:
        """The official metric as a fraction (VQA accuracy, NLVR2 / SNLI-VE accuracy)."""
        return sum(self.scores) / max(len(self.scores), 1)

    @property
    def consistency(self) -> float | None:
        """NLVR2's consistency (lil-lab/nlvr metrics): the share of sentences right on all their image pairs."""
        if self.task != "nlvr2":
            return None
        from dde_bench.metrics import nlvr2_metrics

        return nlvr2_metrics(self.ids, self.predictions, self.labels)["consistency"]

    @property
    def metric(self) -> str:
        return "vqa_accuracy" if self.task == "vqa" else "accuracy"

    def percent(self) -> dict[str, float]:
        """What training logs and checkpoints store: the metric (and NLVR2's consistency) in percent."""
        out = {"accuracy": 100.0 * self.accuracy}
        if self.task == "nlvr2":
            out["consistency"] = 100.0 * self.consistency
        return out

    def row(self, seed: int = 0) -> dict:
        """What a benchmark row stores: fractions, with a bootstrap 95% interval over examples."""
        from dde_bench.bench.stats import mean_ci

        est = mean_ci(self.scores, seed=seed)
        out = {
            "accuracy": est.mean,
            "accuracy_ci_low": est.ci_low,
            "accuracy_ci_high": est.ci_high,
            "accuracy_metric": self.metric,
        }
        if self.task == "nlvr2":
            out["consistency"] = self.consistency
        return out

    def write_predictions(self, folder: Path, name: str) -> Path | None:
        """The official submission file: VQA results JSON ([{question_id, answer}]), NLVR2 CSV (identifier,
        True/False). SNLI-VE has no official prediction format: None."""
        from dde_bench import metrics

        if self.task == "vqa":
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"{name}.json"
            metrics.write_vqa_predictions(
                path, [(i, self.answers[p]) for i, p in zip(self.ids, self.predictions, strict=True)]
            )
            return path
        if self.task == "nlvr2":
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"{name}.csv"
            metrics.write_nlvr2_predictions(path, list(zip(self.ids, self.predictions, strict=True)))
            return path
        return None


LogitsFn = Callable[[dict], torch.Tensor]


def logits_fn(model) -> LogitsFn:
    """The call that maps a batch to logits, for a dde-bench teacher or student."""
    return lambda b: model(b["input_ids"], b["attention_mask"], b["pixel_values"], b.get("pixel_mask"))


@torch.inference_mode()
def predict(
    fn: LogitsFn, dataset, device, batch_size: int = 64, dtype: torch.dtype | None = None, amp=None
) -> list[int]:
    """The predicted class of every example of ``dataset``, in order. ``dtype`` casts the pixels (a model cast to
    bf16 / fp16); ``amp`` is an autocast context factory (training's mixed precision)."""
    preds: list[int] = []
    for b in dataset.batches(batch_size):
        x = {
            "input_ids": b["input_ids"].to(device),
            "attention_mask": b["attention_mask"].to(device),
            "pixel_values": b["pixel_values"].to(device=device, dtype=dtype or b["pixel_values"].dtype),
            "pixel_mask": b["pixel_mask"].to(device) if b.get("pixel_mask") is not None else None,
        }
        with amp() if amp else nullcontext():
            preds += fn(x).float().argmax(-1).tolist()
    return preds


def evaluate(
    model,
    dataset,
    device,
    batch_size: int = 64,
    dtype: torch.dtype | None = None,
    amp=None,
    fn: LogitsFn | None = None,
) -> Evaluation:
    """Score ``model`` on ``dataset`` with the task's official metric. ``fn`` replaces the model's own call (e.g.
    transformers' ViltModel carrying the model's weights); the model still supplies the VQA answer list."""
    from dde_bench.metrics import vqa_accuracy

    was_training = getattr(model, "training", False)
    if hasattr(model, "eval"):
        model.eval()
    try:
        preds = predict(fn or logits_fn(model), dataset, device, batch_size, dtype, amp)
    finally:
        if was_training:
            model.train()
    examples = dataset.examples
    task = dataset.task
    # VQA's results file keys predictions by the official (integer) question_id
    ids = [e.meta.get("question_id", e.id) if task == "vqa" else e.id for e in examples]
    labels = [e.label for e in examples]
    if task == "vqa":
        answers = getattr(model, "answer_vocab", None) or dataset.answer_vocab
        if answers is None or max(preds, default=0) >= len(answers):
            raise UserError(
                f"a VQA model predicted answer {max(preds, default=0)} but its answer list has {len(answers or [])}"
            )
        scores = [vqa_accuracy(answers[p], e.answers or []) for p, e in zip(preds, examples, strict=True)]
        return Evaluation(task, ids, preds, scores, labels, list(answers))
    scores = [float(p == y) for p, y in zip(preds, labels, strict=True)]
    return Evaluation(task, ids, preds, scores, labels)
