"""Patch classifier: an MLP head on frozen features, dynamic sampling, rounds of re-finetuning."""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from protorefine._atomic import atomic_write_bytes
from protorefine.errors import CancelledError, ProtorefineError
from protorefine.refine.config import RefineConfig
from protorefine.refine.prototypes import check_blocks

Progress = Callable[[int, int, str], None] | None
Cancel = Callable[[], bool] | None
OnRound = Callable[[dict], None] | None
OnEpoch = Callable[[dict], None] | None


class PatchHead(nn.Module):
    """Standardise features, then Linear-ReLU-Dropout-Linear to one tumour logit.

    ``groups`` (one int per input column) splits the columns into features of separate
    encoders: each group gets its own small net, trained on its own loss, and the
    head's probability is the mean of theirs (an ensemble over encoders).
    """

    def __init__(self, dim: int, hidden: int = 128, groups: torch.Tensor | None = None) -> None:
        super().__init__()
        g = torch.zeros(dim, dtype=torch.long) if groups is None else torch.as_tensor(groups)
        if g.shape != (dim,) or int(g.min()) != 0:
            raise ProtorefineError(f"column groups must label each of the {dim} columns from 0")
        self.mean: torch.Tensor
        self.scale: torch.Tensor
        self.groups: torch.Tensor
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("scale", torch.ones(dim))
        self.register_buffer("groups", g.long())
        widths = torch.bincount(self.groups).tolist()
        self.nets = nn.ModuleList(
            nn.Sequential(nn.Linear(w, hidden), nn.ReLU(), nn.Dropout(0.2), nn.Linear(hidden, 1))
            for w in widths
        )

    def group_logits(self, x: torch.Tensor) -> torch.Tensor:
        """(B, groups) tumour logits, one column per group's net."""
        z = (x - self.mean) / self.scale
        if len(self.nets) == 1:
            return self.nets[0](z)
        return torch.cat([net(z[:, self.groups == j]) for j, net in enumerate(self.nets)], dim=1)

    @staticmethod
    def combine(group_logits: torch.Tensor) -> torch.Tensor:
        """One logit per row: the logit of the groups' mean probability."""
        if group_logits.shape[1] == 1:
            return group_logits[:, 0]
        return torch.logit(torch.sigmoid(group_logits).mean(1), eps=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Tumour logit per row of ``x`` (of the groups' mean probability)."""
        return self.combine(self.group_logits(x))


def block_groups(blocks: Sequence[int] | None, dim: int) -> torch.Tensor | None:
    """Column groups for feature blocks of these widths, repeated when context doubled the columns."""
    if blocks is None or len(blocks) < 2:
        return None
    widths = [int(b) for b in blocks]
    repeats = max(1, dim // max(sum(widths), 1))
    check_blocks(widths * repeats, dim)
    groups = torch.arange(len(widths)).repeat(repeats)
    return torch.repeat_interleave(groups, torch.tensor(widths * repeats))


@dataclass
class ClassifierResult:
    """The trained head, its tumour probability per patch, the final pseudo-labels and history."""

    model: PatchHead
    prob: np.ndarray
    pseudo: np.ndarray
    confidence: np.ndarray
    history: list[dict] = field(default_factory=list)


def predict(model: PatchHead, x: torch.Tensor, batch: int = 65536) -> np.ndarray:
    """Tumour probability per row of ``x`` (eval mode, no gradients)."""
    model.eval()
    out = []
    with torch.no_grad():
        for a in range(0, x.shape[0], batch):
            out.append(torch.sigmoid(model(x[a : a + batch])).float().cpu())
    return torch.cat(out).numpy() if out else np.zeros(0, dtype=np.float32)


def sampling_weights(
    pseudo: np.ndarray, confidence: np.ndarray, corrected: np.ndarray, config: RefineConfig
) -> np.ndarray:
    """Per-patch sampling weight: confidence x class balance, corrections x ``correction_weight``."""
    w = confidence.astype(np.float64).copy()
    w = np.where(w > 0, config.min_weight + (1.0 - config.min_weight) * w, 0.0)
    if config.dynamic_sampling:
        for c in (0, 1) if config.class_balance else ():
            m = pseudo == c
            tot = w[m].sum()
            if tot > 0:
                w[m] /= tot
        w[corrected] = w[corrected].clip(min=w[w > 0].mean() if (w > 0).any() else 1.0)
        w[corrected] *= config.correction_weight
    else:
        w = (confidence > 0).astype(np.float64)
    return w


def _train_epochs(
    model: PatchHead,
    x: torch.Tensor,
    y: torch.Tensor,
    weights: np.ndarray,
    epochs: int,
    lr: float,
    config: RefineConfig,
    generator: torch.Generator,
    cancel: Cancel,
    held_out: np.ndarray | None = None,
    on_epoch: OnEpoch = None,
) -> float:
    """Train for some epochs on samples drawn by ``weights``; returns the last epoch's mean loss.

    With ``held_out`` (bool per row), those rows are not trained on; after each epoch the
    weighted loss on them is measured and the head ends with the weights of the best epoch
    (each group's net its own best epoch: encoders overfit at different speeds).
    ``on_epoch`` gets ``{epoch, loss}`` after each epoch, plus ``held_out_loss`` and
    ``held_out_agreement`` (confidence-weighted) when rows are held out.
    """
    opt = torch.optim.AdamW(
        model.parameters(), lr=lr, weight_decay=config.weight_decay, foreach=True
    )
    val = None
    if held_out is not None and (weights[held_out] > 0).any() and (weights[~held_out] > 0).any():
        vi = np.flatnonzero(held_out & (weights > 0))
        val = (
            torch.from_numpy(vi).to(x.device),
            torch.from_numpy(weights[vi]).float().to(x.device),
        )
        weights = np.where(held_out, 0.0, weights)
    k = len(model.nets)
    best = [float("inf")] * k
    best_state: list[dict | None] = [None] * k
    p = torch.from_numpy(weights / weights.sum()).float()
    # samples per epoch: ``samples_per_epoch``, or half the training patches on big
    # cohorts (finer grids), never more than twice the patches there are
    n_train = int((weights > 0).sum())
    m = max(config.train_batch, min(2 * n_train, max(config.samples_per_epoch, n_train // 2)))
    loss_fn = nn.BCEWithLogitsLoss()
    last = 0.0
    model.train()
    for epoch in range(epochs):
        if cancel is not None and cancel():
            raise CancelledError("classifier stage cancelled")
        idx = torch.multinomial(p, m, replacement=True, generator=generator).to(x.device)
        total, count = 0.0, 0
        for a in range(0, m, config.train_batch):
            if a and cancel is not None and cancel():  # per batch: a cancel stops within a second
                raise CancelledError("classifier stage cancelled")
            b = idx[a : a + config.train_batch]
            opt.zero_grad(set_to_none=True)
            logits = model.group_logits(x[b])  # every group's net learns on its own loss
            loss = loss_fn(logits, y[b, None].expand_as(logits))
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(b)
            count += len(b)
        last = total / max(count, 1)
        rec: dict = {"epoch": epoch + 1, "loss": last}
        if val is not None:
            model.eval()
            with torch.no_grad():
                yv, vw = y[val[0]], val[1]
                per_group = model.group_logits(x[val[0]])
                bce = nn.functional.binary_cross_entropy_with_logits
                group_loss = (
                    bce(per_group, yv[:, None].expand_as(per_group), reduction="none") * vw[:, None]
                ).sum(0) / vw.sum()
                logits = model.combine(per_group)
                score = float((bce(logits, yv, reduction="none") * vw).sum() / vw.sum())
                agree = float((((logits >= 0).float() == yv).float() * vw).sum() / vw.sum())
            model.train()
            rec.update(held_out_loss=score, held_out_agreement=agree)
            for j, gl in enumerate(group_loss.tolist()):
                if gl < best[j]:
                    best[j] = gl
                    best_state[j] = {
                        n: v.detach().clone() for n, v in model.nets[j].state_dict().items()
                    }
        if on_epoch is not None:
            on_epoch(rec)
    for net, state in zip(model.nets, best_state, strict=True):
        if state is not None:
            net.load_state_dict(state)
    return last


def train_classifier(
    features: torch.Tensor,
    pseudo: np.ndarray,
    confidence: np.ndarray,
    proto_score: np.ndarray,
    *,
    corrections: np.ndarray | None = None,
    config: RefineConfig,
    progress: Progress = None,
    cancel: Cancel = None,
    on_round: OnRound = None,
    on_epoch: OnEpoch = None,
    blocks: Sequence[int] | None = None,
) -> ClassifierResult:
    """Train the head on pseudo-labels for ``config.rounds`` rounds.

    ``blocks`` (widths of features from separate encoders, in column order) trains one
    net per encoder and averages them (see :class:`PatchHead`).

    Round 1 holds out a random ``early_stop`` share of the patches (never corrected
    ones) and keeps the epoch whose confidence-weighted loss on them is lowest, so the
    head stops before it memorises the noisy labels.

    After each round but the last, a patch's pseudo-label takes the classifier's
    label where the classifier is confident (``|2p-1| >= update_confidence``) and
    the prototype evidence agrees with it; the head is then finetuned at half the
    learning rate. Corrections never change. ``history`` holds loss, agreement with
    the current pseudo-labels and number of changed labels per round, and under
    ``epochs`` that round's per-epoch records (``epoch``, ``loss``, and with held-out
    rows ``held_out_loss``, ``held_out_agreement``). ``on_epoch`` gets each of those
    records (with ``round``) as it happens, so a live plot can follow the epochs;
    ``progress`` counts epochs.
    """
    pseudo = np.asarray(pseudo, dtype=np.int8).copy()
    confidence = np.asarray(confidence, dtype=np.float32).copy()
    n = len(pseudo)
    corrected = np.zeros(n, dtype=bool) if corrections is None else np.asarray(corrections) >= 0
    if corrections is not None:
        pseudo[corrected] = np.asarray(corrections)[corrected]
        confidence[corrected] = 1.0
    history: list[dict] = []
    total_epochs = config.epochs + config.finetune_epochs * max(config.rounds - 1, 0)
    epoch_recs: list[dict] = []  # this round's
    current: dict[str, int] = {"round": 0, "epochs": 0, "done": 0}

    def record_epoch(rec: dict) -> None:
        rec = {"round": current["round"], **rec}
        epoch_recs.append(rec)
        current["done"] += 1
        if on_epoch is not None:
            on_epoch(dict(rec))
        if progress is not None:
            text = f"round {rec['round']}/{config.rounds}, epoch {rec['epoch']}/{current['epochs']}"
            progress(current["done"], total_epochs, f"{text}: loss {rec['loss']:.3f}")

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        gen = torch.Generator().manual_seed(config.seed + 1)
        dim = features.shape[1]
        model = PatchHead(dim, config.hidden, block_groups(blocks, dim)).to(features.device)
        model.mean.copy_(features.mean(0))
        model.scale.copy_(features.std(0).clamp_min(1e-4))
        for r in range(config.rounds):
            y = torch.from_numpy(pseudo.astype(np.float32)).to(features.device)
            w = sampling_weights(pseudo, confidence, corrected, config)
            if w.sum() <= 0 or len(np.unique(pseudo[w > 0])) < 2:
                raise ProtorefineError(
                    "pseudo-labels hold only one class: the coarse annotation must leave "
                    "some tissue outside and some inside"
                )
            epochs = config.epochs if r == 0 else config.finetune_epochs
            lr = config.lr if r == 0 else config.lr * 0.5
            held = None
            if config.early_stop > 0 and r == 0:
                held = (torch.rand(n, generator=gen).numpy() < config.early_stop) & ~corrected
            epoch_recs.clear()
            current.update(round=r + 1, epochs=epochs)
            loss = _train_epochs(
                model, features, y, w, epochs, lr, config, gen, cancel, held, record_epoch
            )
            prob = predict(model, features)
            lab = (prob >= 0.5).astype(np.int8)
            used = confidence > 0
            agreement = float((lab[used] == pseudo[used]).mean()) if used.any() else 0.0
            changed = 0
            if r < config.rounds - 1:
                sure = np.abs(2 * prob - 1) >= config.update_confidence
                agree = (proto_score >= 0.5).astype(np.int8) == lab
                upd = sure & agree & ~corrected
                changed = int((pseudo[upd] != lab[upd]).sum())
                pseudo[upd] = lab[upd]
                confidence[upd] = np.maximum(confidence[upd], np.abs(2 * prob[upd] - 1))
            rec: dict[str, Any] = {"round": r + 1, "loss": loss, "agreement": agreement}
            rec["changed"] = changed
            rec["epochs"] = [{k: v for k, v in e.items() if k != "round"} for e in epoch_recs]
            history.append(rec)
            if on_round is not None:
                on_round(dict(rec))
            if progress is not None:
                progress(
                    current["done"],
                    total_epochs,
                    f"round {r + 1}: loss {loss:.3f}, agree {agreement:.3f}",
                )
    if corrected.any():
        prob = prob.copy()
        prob[corrected] = np.asarray(corrections)[corrected].astype(np.float32)
    return ClassifierResult(
        model=model,
        prob=prob.astype(np.float32),
        pseudo=pseudo,
        confidence=confidence,
        history=history,
    )


def save_checkpoint(model: PatchHead, path: str | Path) -> None:
    """Save the head's state dict (with its dimensions) atomically. Serialised in memory
    first (a few hundred kB): torch's own file writer turns a full disk into a RuntimeError
    that names no file; written by ``atomic_write_bytes``, it is an OSError naming ``path``."""

    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(path: str | Path, *, device: str | torch.device = "cpu") -> PatchHead:
    """Load a head saved by ``save_checkpoint`` (``weights_only=True``); one-line error if it fails."""
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if "net.0.weight" in state:  # a single-net head saved before column groups
            state = {k.replace("net.", "nets.0.", 1): v for k, v in state.items()}
            state["groups"] = torch.zeros(int(state["mean"].shape[0]), dtype=torch.long)
        dim = int(state["mean"].shape[0])
        hidden = int(state["nets.0.0.weight"].shape[0])
        model = PatchHead(dim, hidden, state["groups"])
        model.load_state_dict(state)
    except FileNotFoundError as exc:
        raise ProtorefineError(f"{path}: checkpoint not found") from exc
    except Exception as exc:  # noqa: BLE001 - any failure means the file is not a usable checkpoint
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ProtorefineError(f"{path}: checkpoint does not load ({msg[:160]})") from exc
    return model.to(device)
