"""Training loop for the 2D slice classifier: AdamW + one-cycle LR, optional bf16 autocast,
resumable from ``last.pt``.

Which epoch is exported (``best.pt``) is ``TrainConfig.checkpoint``: ``"best"`` keeps the epoch
with the best validation accuracy, which makes the validation figures optimistic (the split
both chooses and judges); ``"last"`` keeps the final epoch of the fixed schedule, so the
validation split only measures.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from tumorlens_train import slices
from tumorlens_train.nets2d import NetConfig, SliceNet, count_parameters

log = logging.getLogger(__name__)

#: Which epoch ``best.pt`` holds (see the module docstring).
CHECKPOINT_CHOICES: tuple[str, ...] = ("best", "last")


@dataclass
class TrainConfig:
    data_dir: Path
    work_dir: Path
    split_file: Path
    size: int = 128
    epochs: int = 30
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 0.05
    label_smoothing: float = 0.05
    bf16: bool = False
    threads: int = 2
    seed: int = 0
    split_seed: int = slices.SPLIT_SEED
    val_fraction: float = slices.VAL_FRACTION
    device: str = "auto"
    resume: bool = False
    limit_per_class: int = 0  # >0: use only this many images per class (smoke tests)
    init_from: Path | None = None  # start from these weights (fine-tuning), fresh optimiser
    checkpoint: str = "best"  # "best": best validation epoch; "last": final epoch
    net: NetConfig = field(default_factory=NetConfig)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        return {k: str(v) if isinstance(v, Path) else v for k, v in data.items()}


@dataclass
class TrainResult:
    best_checkpoint: Path
    best_epoch: int
    best_val_accuracy: float
    history: list[dict[str, Any]]


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    # Decay conv/linear weights only; decaying BN scales and biases just hurts from scratch.
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def prepare_split(cfg: TrainConfig) -> tuple[list[slices.Sample], list[slices.Sample]]:
    """Discover the data, split it (or reuse ``cfg.split_file`` when resuming) and write the
    split file."""
    samples = slices.discover(cfg.data_dir)
    if cfg.limit_per_class:
        samples = [
            s
            for label in range(len(slices.CLASSES))
            for s in [x for x in samples if x.label == label][: cfg.limit_per_class]
        ]
    if cfg.resume and cfg.split_file.exists():
        train, val = slices.apply_split(samples, slices.read_split(cfg.split_file))
    else:
        keys = [slices.near_duplicate_key(s.path) for s in tqdm(samples, desc="hash", leave=False)]
        train, val = slices.stratified_split(samples, cfg.val_fraction, cfg.split_seed, keys)
        slices.write_split(cfg.split_file, val, len(train), cfg.split_seed, cfg.val_fraction)
    return train, val


@torch.no_grad()
def predict(
    model: nn.Module, loader: DataLoader[tuple[torch.Tensor, int]], device: torch.device
) -> tuple[np.ndarray, np.ndarray]:
    """fp32 logits and labels for a whole loader (eval mode, no autocast)."""
    model.eval()
    logits, labels = [], []
    for x, y in loader:
        out, _ = model(x.to(device).contiguous(memory_format=torch.channels_last))
        logits.append(out.float().cpu().numpy())
        labels.append(y.numpy())
    return np.concatenate(logits), np.concatenate(labels)


def train(cfg: TrainConfig) -> TrainResult:
    if cfg.checkpoint not in CHECKPOINT_CHOICES:
        raise ValueError(f"checkpoint must be one of {CHECKPOINT_CHOICES}, got {cfg.checkpoint!r}")
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    device = pick_device(cfg.device)
    cfg.work_dir.mkdir(parents=True, exist_ok=True)

    train_s, val_s = prepare_split(cfg)
    log.info("split: %d train / %d validation images", len(train_s), len(val_s))
    train_ds = slices.SliceDataset(
        slices.load_grids(train_s, cfg.size, "decode train"),
        [s.label for s in train_s],
        slices.AugmentConfig(),
        seed=cfg.seed,
    )
    val_ds = slices.SliceDataset(
        slices.load_grids(val_s, cfg.size, "decode val"), [s.label for s in val_s]
    )
    generator = torch.Generator().manual_seed(cfg.seed)
    train_dl = DataLoader(
        train_ds, batch_size=cfg.batch_size, shuffle=True, drop_last=True, generator=generator
    )
    val_dl = DataLoader(val_ds, batch_size=128)

    model = SliceNet(cfg.net)
    if cfg.init_from is not None:
        init = torch.load(cfg.init_from, map_location="cpu", weights_only=True)
        model.load_state_dict(init["state_dict"])
        log.info("initialised from %s (epoch %s)", cfg.init_from, init.get("epoch"))
    # Channels-last convolutions are faster on CPU; torch's stubs omit memory_format here.
    model = model.to(device).to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    log.info("SliceNet: %d parameters, device %s", count_parameters(model), device)
    optimiser = torch.optim.AdamW(_param_groups(model, cfg.weight_decay), lr=cfg.lr)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimiser, max_lr=cfg.lr, total_steps=cfg.epochs * len(train_dl), pct_start=0.15
    )
    weights = slices.class_weights(train_ds.labels, cfg.net.num_classes).to(device)
    criterion = nn.CrossEntropyLoss(weight=weights, label_smoothing=cfg.label_smoothing)

    best_path, last_path = cfg.work_dir / "best.pt", cfg.work_dir / "last.pt"
    history: list[dict[str, Any]] = []
    start_epoch, best_acc, best_loss, best_epoch = 0, -1.0, float("inf"), -1
    if cfg.resume and last_path.exists():
        state = torch.load(last_path, map_location=device, weights_only=False)
        model.load_state_dict(state["state_dict"])
        optimiser.load_state_dict(state["optimiser"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch, history = state["epoch"] + 1, state["history"]
        best_acc, best_loss, best_epoch = state["best"]
        train_ds.rng = np.random.default_rng(cfg.seed + start_epoch)
        log.info("resumed after epoch %d", start_epoch)

    for epoch in range(start_epoch, cfg.epochs):
        model.train()
        started = time.perf_counter()
        running, seen = 0.0, 0
        bar = tqdm(train_dl, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="batch", leave=False)
        for batch_x, batch_y in bar:
            x = batch_x.to(device).contiguous(memory_format=torch.channels_last)
            y = batch_y.to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.bf16):
                logits, _ = model(x)
            loss = criterion(logits.float(), y)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            scheduler.step()
            running += float(loss.detach()) * len(y)
            seen += len(y)
            bar.set_postfix(loss=f"{running / seen:.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}")

        val_logits, val_labels = predict(model, val_dl, device)
        val_loss = float(
            nn.functional.cross_entropy(torch.from_numpy(val_logits), torch.from_numpy(val_labels))
        )
        pred = val_logits.argmax(1)
        acc = float((pred == val_labels).mean())
        recall = {
            name: float((pred[val_labels == k] == k).mean()) if (val_labels == k).any() else 0.0
            for k, name in enumerate(slices.CLASSES)
        }
        row = {
            "epoch": epoch + 1,
            "train_loss": running / max(seen, 1),
            "val_loss": val_loss,
            "val_accuracy": acc,
            "val_recall": recall,
            "seconds": time.perf_counter() - started,
        }
        history.append(row)
        improved = acc > best_acc or (acc == best_acc and val_loss < best_loss)
        if improved:
            best_acc, best_loss, best_epoch = acc, val_loss, epoch + 1
        keep = improved if cfg.checkpoint == "best" else epoch + 1 == cfg.epochs
        if keep:
            torch.save(
                {
                    "config": cfg.net.to_dict(),
                    "state_dict": model.state_dict(),
                    "epoch": epoch + 1,
                    "val_accuracy": acc,
                    "val_recall": recall,
                    "selection": cfg.checkpoint,
                    "size": cfg.size,
                    "classes": list(slices.CLASSES),
                    "train_config": cfg.to_dict(),
                },
                best_path,
            )
        torch.save(
            {
                "state_dict": model.state_dict(),
                "optimiser": optimiser.state_dict(),
                "scheduler": scheduler.state_dict(),
                "epoch": epoch,
                "history": history,
                "best": (best_acc, best_loss, best_epoch),
            },
            last_path,
        )
        (cfg.work_dir / "history.json").write_text(json.dumps(history, indent=1))
        tqdm.write(
            f"epoch {epoch + 1:3d}  loss {row['train_loss']:.4f}  val_loss {val_loss:.4f}  "
            f"val_acc {acc:.4f}  glioma_recall {recall['glioma']:.4f}  "
            f"{row['seconds']:.0f}s{'  *' if improved else ''}"
        )
    if cfg.checkpoint == "last":
        last = history[-1]
        return TrainResult(best_path, int(last["epoch"]), float(last["val_accuracy"]), history)
    return TrainResult(best_path, best_epoch, best_acc, history)
