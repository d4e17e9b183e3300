"""The fine-tuning loop: cross entropy on labels, or distillation from the float model.

- With ``labels`` in the training data: cross entropy of the first output (logits, or
  probabilities: see ``_log_probs``) against them.
- Without: distillation, KL(teacher || student) on the softmax of the first output, the
  teacher being the float model as a ``QATModule`` (frozen).
- Either way, optionally feature distillation: values named in ``TrainConfig.features`` (the
  same names in the student and the float teacher) add their relative squared error.
- AdamW (weight decay on weights only, not on biases or log-scales), cosine learning-rate
  schedule over all steps, shuffled mini-batches from a seeded generator: on CPU the same
  seed gives the same bits (``torch.use_deterministic_algorithms`` is not needed there; the
  thread count is fixed by ``TrainConfig.threads``).
- With eval data: the metric after each epoch (top-1 accuracy on labels, else top-1
  agreement with the teacher), the best epoch's state kept, and an early stop after
  ``patience`` epochs without improvement.
- Progress: ``qgraph.progress.Progress`` (a tqdm bar with the loss and metric on a terminal,
  one log line per epoch otherwise).
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from qgraph.progress import Progress
from qgraph.qat.module import QATModule

log = logging.getLogger("qgraph")


@dataclass
class TrainConfig:
    """Options of ``train`` (the CLI's flags)."""

    epochs: int = 10
    lr: float = 1e-3
    #: learning rate of the log-scales (None: ``lr``). A step is a relative change of a scale. At
    #: 4-bit activations the PTQ scales are far from the best ones and 1e-2 (1% per step at most)
    #: helps (W4A4 digits: 96.8% -> 97.9% on half the held-out digits, where 1e-3 left 96.8-97.6%);
    #: at 8 bits it did not help (W4A8: 98.2% where 1e-3 read 98.5%, before bias correction):
    #: bench/qat_digits.py
    scale_lr: float | None = None
    batch_size: int = 32
    weight_decay: float = 1e-4
    seed: int = 0
    patience: int | None = None  # epochs without eval improvement before stopping (None: never)
    temperature: float = 1.0  # distillation
    #: values (by name, as in the float model) whose student / float-teacher mismatch joins the
    #: loss: ``feature_weight`` x the mean over them of ``mean((s - t)^2) / mean(t^2)`` (scale-free)
    features: tuple[str, ...] = ()
    feature_weight: float = 1.0
    threads: int | None = None
    show_progress: bool | None = None


@dataclass
class TrainHistory:
    """Per epoch: mean training loss and (with eval data) the eval metric; the best epoch."""

    loss: list[float] = field(default_factory=list)
    metric: list[float] = field(default_factory=list)
    metric_name: str = ""
    best_epoch: int | None = None
    initial_metric: float | None = None


def _log_probs(y: torch.Tensor) -> torch.Tensor:
    """Log-probabilities of an output on its last axis: outputs that already are probabilities
    (a Softmax at the end, as PP-OCR's recognizer) are logged, logits go through log_softmax."""
    with torch.no_grad():
        probs = bool((y.min() >= 0) & (y.max() <= 1)) and torch.allclose(y.sum(-1), torch.ones(()), atol=1e-3)
    return torch.log(y.clamp_min(1e-12)) if probs else F.log_softmax(y, dim=-1)


def _flatten_classes(y: torch.Tensor) -> torch.Tensor:
    return y.reshape(-1, y.shape[-1])


def train(module: QATModule, feeds: dict[str, np.ndarray], labels: np.ndarray | None = None, *,
          teacher: QATModule | None = None, eval_feeds: dict[str, np.ndarray] | None = None,
          eval_labels: np.ndarray | None = None, config: TrainConfig | None = None,
          loss_fn: Callable | None = None) -> TrainHistory:
    """Fine-tune ``module`` in place (module doc); returns the history.

    Args:
        module: the QAT module (``QATModule(ptq.qdq, ptq.float_model)``).
        feeds: training inputs by name, samples on axis 0.
        labels: class indices (int), one per sample (or per row of the first output's
            leading dims); None: distillation from ``teacher``.
        teacher: the float model as a module (needed without labels; eval agreement too).
        eval_feeds, eval_labels: held-out data for the metric, the best state and early stop.
        config: ``TrainConfig``.
        loss_fn: ``(outputs dict, labels or teacher outputs) -> loss``, replacing the default.
    """
    cfg = config or TrainConfig()
    if labels is None and teacher is None and loss_fn is None:
        raise ValueError("training without labels needs a teacher (distillation) or a loss_fn")
    features = tuple(cfg.features)
    if features and teacher is None:
        raise ValueError("feature distillation (TrainConfig.features) needs the float model as teacher")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    x = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in feeds.items()}
    n = next(iter(x.values())).shape[0]
    y = torch.from_numpy(np.asarray(labels).astype(np.int64)) if labels is not None else None
    out0 = module.output_names[0]
    weights, biases, scales = module.parameter_groups()
    opt = torch.optim.AdamW([
        {"params": weights, "weight_decay": cfg.weight_decay},
        {"params": biases, "weight_decay": 0.0},
        {"params": scales, "weight_decay": 0.0, "lr": cfg.scale_lr if cfg.scale_lr is not None else cfg.lr},
    ], lr=cfg.lr)
    steps_per_epoch = max(1, math.ceil(n / cfg.batch_size))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs * steps_per_epoch)
    history = TrainHistory(metric_name="top1" if eval_labels is not None else "top1 agreement")
    if teacher is not None:
        teacher.eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
    best_state, best = None, -math.inf
    if eval_feeds is not None:
        best = history.initial_metric = evaluate(module, eval_feeds, eval_labels, teacher)
        best_state = copy.deepcopy(module.state_dict())
    since_best = 0
    with Progress("qat", total=cfg.epochs * n, unit="samples", enabled=cfg.show_progress) as bar:
        for epoch in range(cfg.epochs):
            module.train()
            order = torch.randperm(n, generator=gen)
            total, seen = 0.0, 0
            for s in range(0, n, cfg.batch_size):
                idx = order[s:s + cfg.batch_size]
                batch = {k: v[idx] for k, v in x.items()}
                out = module(batch, features)
                taught = _teacher(teacher, batch, features) if teacher is not None and (
                    features or y is None) else None
                if loss_fn is not None:
                    loss = loss_fn(out, y[idx] if y is not None else taught)
                elif y is not None:
                    logp = _flatten_classes(_log_probs(out[out0]))
                    loss = F.nll_loss(logp, y[idx].reshape(-1))
                else:
                    loss = _kl(out[out0], taught[out0], cfg.temperature)
                if features:
                    loss = loss + cfg.feature_weight * feature_loss(out, taught, features)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                total += float(loss.detach()) * len(idx)
                seen += len(idx)
                bar.advance(len(idx))
                bar.show(epoch=epoch + 1, loss=f"{total / seen:.4f}")
            history.loss.append(total / seen)
            line = f"qat epoch {epoch + 1}/{cfg.epochs}: loss {total / seen:.4f}"
            if eval_feeds is not None:
                m = evaluate(module, eval_feeds, eval_labels, teacher)
                history.metric.append(m)
                bar.show(epoch=epoch + 1, loss=f"{total / seen:.4f}", **{history.metric_name: f"{m:.4f}"})
                line += f", eval {history.metric_name} {m:.4f}"
                if m > best:
                    best, best_state, since_best = m, copy.deepcopy(module.state_dict()), 0
                    history.best_epoch = epoch + 1
                else:
                    since_best += 1
            log.info(line)
            if cfg.patience is not None and eval_feeds is not None and since_best >= cfg.patience:
                log.info("qat: early stop after epoch %d (best %s %.4f at epoch %s)", epoch + 1,
                         history.metric_name, best, history.best_epoch)
                break
    if best_state is not None:
        module.load_state_dict(best_state)
    module.eval()
    return history


def _teacher(teacher: QATModule, batch, features: tuple[str, ...] = ()) -> dict:
    with torch.no_grad():
        return teacher(batch, features)


def feature_loss(student: dict, teacher: dict, features: tuple[str, ...]) -> torch.Tensor:
    """Mean over ``features`` of ``mean((s - t)^2) / mean(t^2)``: each value's mismatch relative to
    its own power, so that a wide tensor and a narrow one weigh alike (1 / SQNR, linear)."""
    terms = []
    for name in features:
        s, t = student[name], teacher[name]
        terms.append(torch.mean((s - t) ** 2) / (torch.mean(t ** 2) + 1e-12))
    return torch.stack(terms).mean()


def _kl(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    s = _flatten_classes(_log_probs(student / temperature if temperature != 1.0 else student))
    t = _flatten_classes(_log_probs(teacher / temperature if temperature != 1.0 else teacher))
    return F.kl_div(s, t, log_target=True, reduction="batchmean") * temperature ** 2


def predict(module: QATModule, feeds: dict[str, np.ndarray], batch_size: int = 256) -> dict[str, np.ndarray]:
    """The module's outputs on ``feeds`` (no gradient), in batches."""
    x = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in feeds.items()}
    n = next(iter(x.values())).shape[0]
    parts: dict[str, list] = {}
    was = module.training
    module.eval()
    with torch.no_grad():
        for s in range(0, n, batch_size):
            for k, v in module({k: t[s:s + batch_size] for k, t in x.items()}).items():
                parts.setdefault(k, []).append(v.numpy())
    module.train(was)
    return {k: np.concatenate(v) for k, v in parts.items()}


def evaluate(module: QATModule, feeds, labels, teacher: QATModule | None) -> float:
    """Top-1 accuracy of the first output on ``labels``, else top-1 agreement with ``teacher``."""
    out0 = module.output_names[0]
    pred = predict(module, feeds)[out0]
    pred = pred.reshape(-1, pred.shape[-1]).argmax(-1)
    if labels is not None:
        return float((pred == np.asarray(labels).reshape(-1)).mean())
    ref = predict(teacher, feeds)[out0]
    return float((pred == ref.reshape(-1, ref.shape[-1]).argmax(-1)).mean())
