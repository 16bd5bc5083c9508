"""Training loop for :class:`TumourNet3d`: segmentation (soft Dice on the BraTS regions WT/TC/ET +
cross-entropy) and tumour type (cross-entropy) trained jointly on one shared encoder.

Time-boxed: training stops at ``steps`` or ``minutes``, whichever comes first; the learning rate
follows a cosine decay over that budget (progress = max(step / steps, elapsed / minutes)), so a
run cut by the clock still ends with a low learning rate. The best checkpoint by validation score
(mean grid Dice WT/TC/ET on validation cases never trained on) is kept. Type accuracy is
reported but not scored: on a few validation cases one case moves it more than any Dice
change, and the type head is retrained on the frozen network afterwards
(:func:`train_type_head`), chosen on type accuracy there.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as nnf
from tqdm import tqdm

from tumorlens.inference.preprocess3d import GridSpec
from tumorlens_train.nets3d import (
    Net3dConfig,
    TumourNet3d,
    count_parameters,
    encode,
    load_checkpoint,
)
from tumorlens_train.volumes import UNKNOWN, AugmentConfig, Prepared, batches

log = logging.getLogger(__name__)

CHECKPOINT_CHOICES: tuple[str, ...] = ("best", "last")


@dataclass
class TrainConfig:
    work_dir: Path
    grid: GridSpec = field(default_factory=GridSpec)
    net: Net3dConfig = field(default_factory=Net3dConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    steps: int = 2000
    minutes: float = 0.0  # 0 = no time limit
    batch_size: int = 2
    lr: float = 2e-3
    weight_decay: float = 1e-4
    type_weight: float = 0.5
    # Soft Dice per case (each case's regions count alike) or over the whole batch (nnU-Net's
    # "batch Dice": a case without a region, e.g. a healthy brain or a glioma without
    # enhancement, no longer scores ~1 - 1/(sum p + 1), which pulls every voxel's tumour
    # probability down).
    batch_dice: bool = False
    # Weight of a tumour voxel relative to a background voxel in the cross-entropy; tumour is
    # ~0.5 % of the grid, so at 1.0 the CE says almost nothing about tumour voxels.
    ce_tumour_weight: float = 1.0
    bf16: bool = True
    threads: int = 2
    seed: int = 0
    device: str = "auto"
    val_every: int = 100
    # "best": best.pt is the step with the best validation score (the validation cases then
    # choose); "last": best.pt is the final step of the fixed schedule (they only measure).
    checkpoint: str = "best"
    # checkpoint whose weights start the run (same architecture; its net config is used)
    warm_start: str | None = None
    data: dict[str, Any] = field(default_factory=dict)  # provenance for the card

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["work_dir"] = str(self.work_dir)
        out["grid"] = self.grid.to_dict()
        return out


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def region_dice_loss(logits: Tensor, target: Tensor, batch: bool = False) -> Tensor:
    """1 - mean soft Dice over WT (1,2,3), TC (1,3), ET (3) from softmax probabilities, per case
    or (``batch``) over the batch as one volume."""
    probs = logits.float().softmax(dim=1)
    onehot = nnf.one_hot(target, probs.shape[1]).permute(0, 4, 1, 2, 3).float()
    dims = (0, 1, 2, 3) if batch else (1, 2, 3)
    losses = []
    for labels in ((1, 2, 3), (1, 3), (3,)):
        p = probs[:, list(labels)].sum(dim=1)
        t = onehot[:, list(labels)].sum(dim=1)
        inter = (p * t).sum(dim=dims)
        denom = p.sum(dim=dims) + t.sum(dim=dims)
        losses.append(1.0 - (2 * inter + 1.0) / (denom + 1.0))
    return torch.stack(losses).mean()


def weighted_cross_entropy(logits: Tensor, target: Tensor, tumour_weight: float) -> Tensor:
    """Voxel cross-entropy with tumour voxels (label > 0) weighted ``tumour_weight``: a weighted
    mean, so the loss stays on the scale of plain CE."""
    ce = nnf.cross_entropy(logits.float(), target, reduction="none")
    if tumour_weight == 1.0:
        return ce.mean()
    weights = torch.where(target > 0, tumour_weight, 1.0)
    return (ce * weights).sum() / weights.sum()


def loss_fn(
    outputs: tuple[Tensor, Tensor, Tensor],
    y_seg: Tensor,
    y_type: Tensor,
    type_weight: float,
    *,
    batch_dice: bool = False,
    ce_tumour_weight: float = 1.0,
) -> tuple[Tensor, dict[str, float]]:
    seg_logits, type_logits, _ = outputs
    ce = weighted_cross_entropy(seg_logits, y_seg, ce_tumour_weight)
    dl = region_dice_loss(seg_logits, y_seg, batch=batch_dice)
    known = y_type != UNKNOWN
    tl = (
        nnf.cross_entropy(type_logits.float()[known], y_type[known])
        if bool(known.any())
        else seg_logits.sum() * 0.0
    )
    total = ce + dl + type_weight * tl
    return total, {"ce": float(ce.detach()), "dice": float(dl.detach()), "type": float(tl.detach())}


def grid_dice(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    out = {}
    for name, labels in (("WT", (1, 2, 3)), ("TC", (1, 3)), ("ET", (3,))):
        p, t = np.isin(pred, labels), np.isin(truth, labels)
        total = p.sum() + t.sum()
        out[name] = 1.0 if total == 0 else float(2 * (p & t).sum() / total)
    return out


@torch.no_grad()
def validate(model: TumourNet3d, cases: list[Prepared], device: torch.device) -> dict[str, float]:
    model.eval()
    dices: list[dict[str, float]] = []
    correct = typed = 0
    for case in cases:
        x = torch.from_numpy(case.image.astype(np.float32))[None].to(device)
        seg, typ, _ = model(x)
        pred = seg.argmax(dim=1)[0].cpu().numpy()
        dices.append(grid_dice(pred, case.labels))
        if case.type_index != UNKNOWN:
            typed += 1
            correct += int(int(typ.argmax(dim=1)[0]) == case.type_index)
    model.train()
    result = {k: float(np.mean([d[k] for d in dices])) for k in ("WT", "TC", "ET")}
    result["type_accuracy"] = correct / typed if typed else float("nan")
    result["score"] = (result["WT"] + result["TC"] + result["ET"]) / 3
    return result


def save(path: Path, model: TumourNet3d, cfg: TrainConfig, **extra: Any) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(
        {"model": model.state_dict(), "net": cfg.net.to_dict(), "train": cfg.to_dict(), **extra},
        tmp,
    )
    tmp.replace(path)


def train(
    cfg: TrainConfig, train_cases: list[Prepared], val_cases: list[Prepared]
) -> dict[str, Any]:
    if cfg.checkpoint not in CHECKPOINT_CHOICES:
        raise ValueError(f"checkpoint must be one of {CHECKPOINT_CHOICES}, got {cfg.checkpoint!r}")
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    device = pick_device(cfg.device)
    cfg.work_dir.mkdir(parents=True, exist_ok=True)
    if cfg.warm_start:
        start_model, start_ckpt = load_checkpoint(cfg.warm_start)
        if Net3dConfig.from_dict(start_ckpt["net"]) != cfg.net:
            log.info("warm start: net config taken from %s", cfg.warm_start)
            cfg.net = Net3dConfig.from_dict(start_ckpt["net"])
        model = start_model.to(device)
        model.train()
        log.info("warm start from %s (step %s)", cfg.warm_start, start_ckpt.get("step"))
    else:
        model = TumourNet3d(cfg.net).to(device)
    log.info("TumourNet3d %d parameters on %s", count_parameters(model), device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    stream = batches(train_cases, cfg.batch_size, rng, cfg.augment)
    history: list[dict[str, Any]] = []
    best = {"score": -1.0}
    started = time.perf_counter()
    limit = cfg.minutes * 60 if cfg.minutes > 0 else math.inf
    step = 0
    bar = tqdm(total=cfg.steps, desc="train3d", unit="step")
    running: dict[str, float] = {}
    while step < cfg.steps:
        elapsed = time.perf_counter() - started
        if elapsed >= limit:
            log.info("time budget reached after %d steps", step)
            break
        progress = max(step / cfg.steps, elapsed / limit)
        warm = min(1.0, (step + 1) / 50)
        for group in opt.param_groups:
            group["lr"] = cfg.lr * warm * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
        x, y_seg, y_type = next(stream)
        xt = torch.from_numpy(x).to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.bf16):
            outputs = model(xt)
        loss, parts = loss_fn(
            outputs,
            torch.from_numpy(y_seg).to(device),
            torch.from_numpy(y_type).to(device),
            cfg.type_weight,
            batch_dice=cfg.batch_dice,
            ce_tumour_weight=cfg.ce_tumour_weight,
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        step += 1
        for k, v in parts.items():
            running[k] = 0.9 * running.get(k, v) + 0.1 * v
        bar.update()
        bar.set_postfix({k: f"{v:.3f}" for k, v in running.items()})
        if step % cfg.val_every == 0 or step == cfg.steps:
            best = _checkpoint(model, cfg, val_cases, device, step, started, running, history, best)
    bar.close()
    if not history or history[-1]["step"] != step:
        best = _checkpoint(model, cfg, val_cases, device, step, started, running, history, best)
    return {"steps": step, "best": best, "seconds": time.perf_counter() - started}


def _checkpoint(  # noqa: PLR0917
    model: TumourNet3d,
    cfg: TrainConfig,
    val_cases: list[Prepared],
    device: torch.device,
    step: int,
    started: float,
    running: dict[str, float],
    history: list[dict[str, Any]],
    best: dict[str, Any],
) -> dict[str, Any]:
    val = validate(model, val_cases, device) if val_cases else {"score": float(step)}
    entry = {
        "step": step,
        "seconds": round(time.perf_counter() - started, 1),
        "loss": {k: round(v, 4) for k, v in running.items()},
        "val": {k: round(v, 4) for k, v in val.items()},
    }
    history.append(entry)
    tqdm.write(json.dumps(entry))
    (cfg.work_dir / "history.json").write_text(json.dumps(history, indent=1) + "\n")
    save(cfg.work_dir / "last.pt", model, cfg, step=step, val=val, selection=cfg.checkpoint)
    if cfg.checkpoint == "last" or val["score"] > best["score"]:
        best = {"score": val["score"], "step": step, "val": val}
        save(cfg.work_dir / "best.pt", model, cfg, step=step, val=val, selection=cfg.checkpoint)
    return best


@torch.no_grad()
def _bottlenecks(model: TumourNet3d, cases: list[Prepared], flip: bool = False) -> Tensor:
    model.eval()
    out = []
    for case in tqdm(cases, desc="encode", leave=False):
        x = torch.from_numpy(case.image.astype(np.float32))[None]
        if flip:
            x = torch.flip(x, dims=(2,))
        out.append(encode(model, x)[0])
    return torch.stack(out)


def train_type_head(  # noqa: PLR0917
    checkpoint: Path,
    out: Path,
    train_cases: list[Prepared],
    val_cases: list[Prepared],
    width: int = 32,
    epochs: int = 80,
    lr: float = 3e-3,
    threads: int = 2,
    seed: int = 0,
) -> dict[str, Any]:
    """Stage 2: freeze the segmentation-trained network, add a conv type head of ``width``
    (see :mod:`tumorlens_train.nets3d`) and train only that head, full batch, on cached
    bottleneck features of the training cases; keep the epoch with the best validation type
    accuracy (ties: lower validation loss). Writes a checkpoint usable by ``export3d``."""
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    old, ckpt = load_checkpoint(str(checkpoint))
    net_cfg = Net3dConfig.from_dict({**ckpt["net"], "type_head_width": width})
    model = TumourNet3d(net_cfg)
    state = {k: v for k, v in old.state_dict().items() if not k.startswith("type_head.")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and all(k.startswith(("type_conv.", "type_head.")) for k in missing)
    # Cases without a known type (BraTS 2021/2023) cannot teach or judge the type head.
    train_cases = [c for c in train_cases if c.type_index != UNKNOWN]
    val_cases = [c for c in val_cases if c.type_index != UNKNOWN] or train_cases
    if not train_cases:
        raise ValueError("no training case has a known tumour type: no type head to train")
    started = time.perf_counter()
    feats = _bottlenecks(model, train_cases)
    labels = torch.tensor([c.type_index for c in train_cases])
    val_feats = _bottlenecks(model, val_cases)
    val_labels = torch.tensor([c.type_index for c in val_cases])
    params = [*model.type_conv.parameters(), *model.type_head.parameters()]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-3)
    best: dict[str, Any] = {"val_accuracy": -1.0, "val_loss": math.inf}
    best_state: dict[str, Tensor] = {}
    history = []

    def head(f: Tensor) -> Tensor:
        pooled: Tensor = model.type_conv(f).mean(dim=(2, 3, 4))
        logits: Tensor = model.type_head(model.dropout(pooled))
        return logits

    for epoch in range(epochs):
        model.train()
        for group in opt.param_groups:
            group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * epoch / epochs))
        order = torch.randperm(len(feats))
        for start in range(0, len(order), 32):
            idx = order[start : start + 32]
            loss = nnf.cross_entropy(head(feats[idx]), labels[idx], label_smoothing=0.05)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            vlog = head(val_feats)
            vloss = float(nnf.cross_entropy(vlog, val_labels))
            vacc = float((vlog.argmax(1) == val_labels).float().mean())
            tacc = float((head(feats).argmax(1) == labels).float().mean())
        history.append({"epoch": epoch, "train_acc": tacc, "val_acc": vacc, "val_loss": vloss})
        if (vacc, -vloss) > (best["val_accuracy"], -best["val_loss"]):
            best = {"epoch": epoch, "val_accuracy": vacc, "val_loss": vloss, "train_acc": tacc}
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    tqdm.write(json.dumps({"type_head": best}))
    model.load_state_dict(best_state)
    train_cfg = dict(ckpt.get("train", {}))
    train_cfg["net"] = net_cfg.to_dict()
    torch.save(
        {
            "model": model.state_dict(),
            "net": net_cfg.to_dict(),
            "train": train_cfg,
            "step": ckpt.get("step"),
            "selection": ckpt.get("selection", "best"),
            "val": {**(ckpt.get("val") or {}), "type_head_stage2": best},
            "type_head_stage2": {
                "width": width,
                "epochs": epochs,
                "lr": lr,
                "n_train": len(train_cases),
                "n_validation": len(val_cases),
                "seconds": round(time.perf_counter() - started, 1),
                "best": best,
                "history": history,
            },
        },
        out,
    )
    return best
