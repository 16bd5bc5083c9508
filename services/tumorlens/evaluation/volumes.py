"""Evaluate the 3D models (ONNX + card) on BraTS-layout cases: segmentation Dice/HD95 for WT, TC
and ET, grade (HGG vs LGG) AUC/accuracy and tumour-type accuracy. No torch.

Case layouts found under ``DIR`` (searched two folders deep):

* BraTS 2019/2020 and the phantoms: ``<id>/<id>_{t1,t1ce,t2,flair,seg}.nii.gz`` (optionally under
  ``HGG/`` and ``LGG/``, which give the grade); seg label 4 = enhancing.
* BraTS 2021: ``BraTS2021_xxxxx/BraTS2021_xxxxx_{t1,t1ce,t2,flair,seg}.nii.gz``; label 4.
* BraTS 2023: ``BraTS-GLI-xxxxx-000/BraTS-GLI-xxxxx-000-{t1n,t1c,t2w,t2f,seg}.nii.gz``; label 3.

Phantom ``meta.json`` (or the dataset's ``cases.json``) gives the type and grade. A case that
cannot be read (missing or unreadable file, image/label shape mismatch) is skipped with a message
naming the file and counted in the summary.

Models whose grid is placed in MNI space (card ``grid.placement == "mni"``) need the subject's
MNI affine and a brain mask: evaluation computes them exactly as the service does, with the
runtime brain extraction (:func:`tumorlens.pipeline.brain_mask.extract_brain`) on the case's
sequences put on one grid (:func:`aligned_study`; they normally share the label file's grid),
so registration error and mask quality count in the figures. Training uses the same helper
(:func:`case_brain`).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from numpy.typing import NDArray

from tumorlens.errors import EvaluationDataError, TumorlensError, VolumeError
from tumorlens.evaluation.metrics import (
    bootstrap_mean_interval,
    confusion_matrix,
    roc_auc,
    wilson_interval,
)
from tumorlens.evaluation.report import format_interval
from tumorlens.evaluation.seg_metrics import REGIONS, dice, hd95, region_mask
from tumorlens.inference.preprocess3d import (
    REFERENCE_ORDER,
    SEQUENCES,
    Affine,
    load_nifti,
    resample_to,
)
from tumorlens.inference.volume_model import VolumeModel, VolumePrediction
from tumorlens.pipeline.brain_mask import TEMPLATE_MASK_FILE, BrainMask, extract_brain
from tumorlens.pipeline.grid import AlignedSequence, AlignedStudy, align_sequences
from tumorlens.pipeline.volumes import SeriesVolume

log = logging.getLogger(__name__)

#: File suffixes per layout: model sequence -> file suffix (after ``<id>_`` or ``<id>-``).
LAYOUTS: dict[str, tuple[str, dict[str, str], int]] = {
    # name: (separator, {sequence: suffix, "seg": suffix}, enhancing label in the file)
    "brats2020": ("_", {"t1": "t1", "t1ce": "t1ce", "t2": "t2", "flair": "flair", "seg": "seg"}, 4),
    "brats2023": ("-", {"t1": "t1n", "t1ce": "t1c", "t2": "t2w", "flair": "t2f", "seg": "seg"}, 3),
}
NIFTI_SUFFIXES = (".nii.gz", ".nii")


@dataclass
class CaseFiles:
    case_id: str
    layout: str
    images: dict[str, Path]  # sequence -> file (missing sequences absent)
    seg: Path | None
    enhancing_label: int
    grade: str | None = None  # "HGG" / "LGG" / None
    tumour_type: str | None = None


def _find(folder: Path, stem: str) -> Path | None:
    for suffix in NIFTI_SUFFIXES:
        path = folder / f"{stem}{suffix}"
        if path.is_file():
            return path
    return None


def _case_in(folder: Path) -> CaseFiles | None:
    for layout, (sep, names, enhancing) in LAYOUTS.items():
        found = {
            kind: _find(folder, f"{folder.name}{sep}{suffix}") for kind, suffix in names.items()
        }
        images = {s: p for s in SEQUENCES if (p := found[s]) is not None}
        if images:
            return CaseFiles(folder.name, layout, images, found["seg"], enhancing)
    return None


def _read_meta(folder: Path, index: dict[str, dict[str, Any]]) -> dict[str, Any]:
    meta_file = folder / "meta.json"
    if meta_file.is_file():
        try:
            data = json.loads(meta_file.read_text())
            if isinstance(data, dict):
                return data
        except (OSError, json.JSONDecodeError):
            log.warning("cannot read %s; type and grade unknown", meta_file)
    return index.get(folder.name, {})


def find_cases(root: Path) -> list[CaseFiles]:
    """All cases under ``root`` (the folder itself, its children and grandchildren)."""
    if not root.is_dir():
        raise EvaluationDataError(f"{root} is not a directory")
    index: dict[str, dict[str, Any]] = {}
    cases_json = root / "cases.json"
    if cases_json.is_file():
        try:
            index = {c["case_id"]: c for c in json.loads(cases_json.read_text())["cases"]}
        except (OSError, ValueError, KeyError, TypeError):
            log.warning("cannot read %s", cases_json)
    folders = [root, *sorted(p for p in root.iterdir() if p.is_dir())]
    folders += [g for f in folders[1:] for g in sorted(p for p in f.iterdir() if p.is_dir())]
    cases: list[CaseFiles] = []
    for folder in folders:
        case = _case_in(folder)
        if case is None:
            continue
        meta = _read_meta(folder, index)
        grade = meta.get("grade")
        parent = folder.parent.name.upper()
        if grade is None and parent in ("HGG", "LGG"):
            grade = parent
        case.grade = str(grade) if grade else None
        ttype = meta.get("tumour_type")
        if ttype is None and case.grade in ("HGG", "LGG"):
            ttype = case.grade.lower()
        case.tumour_type = str(ttype) if ttype else None
        cases.append(case)
    return cases


def load_labels(case: CaseFiles) -> tuple[NDArray[np.uint8], NDArray[np.float64]]:
    """The case's label map in internal labels (0 bg, 1 core, 2 oedema, 3 enhancing)."""
    if case.seg is None:
        raise VolumeError(f"{case.case_id}: no label file")
    data, affine = load_nifti(case.seg)
    seg = np.rint(data).astype(np.int16)
    out = np.zeros(seg.shape, np.uint8)
    out[seg == 1] = 1
    out[seg == 2] = 2
    out[seg == case.enhancing_label] = 3
    unknown = set(np.unique(seg).tolist()) - {0, 1, 2, case.enhancing_label}
    if unknown:
        raise VolumeError(f"{case.seg}: unexpected labels {sorted(unknown)}")
    return out, affine


# --- brain extraction as in the service ---------------------------------------------------------

#: Model sequence name -> the pipeline's (:mod:`tumorlens.pipeline.grid`).
PIPELINE_NAMES: dict[str, str] = {"t1": "t1", "t1ce": "t1c", "t2": "t2", "flair": "flair"}


def aligned_study(images: Mapping[str, tuple[NDArray[Any], Affine]]) -> AlignedStudy:
    """``{model sequence: (array, affine)}`` -> the pipeline's :class:`AlignedStudy` on the
    reference sequence's grid (T1c, else FLAIR, T2, T1). Files of one case normally share a
    grid (BraTS, phantoms); others are resampled onto it by physical coordinates (no
    registration: the files are taken to be co-registered)."""
    ref_name = next((s for s in REFERENCE_ORDER if s in images), None)
    if ref_name is None:
        raise VolumeError(f"no usable sequence; expected some of {', '.join(SEQUENCES)}")
    ref, ref_affine = images[ref_name]
    shape = (int(ref.shape[0]), int(ref.shape[1]), int(ref.shape[2]))
    sequences: dict[str, AlignedSequence] = {}
    for name, (data, affine) in images.items():
        array = np.asarray(data, dtype=np.float32)
        if array.shape != shape or not np.allclose(affine, ref_affine, atol=1e-4):
            array = resample_to(array, affine, ref_affine, shape)
        method = "reference" if name == ref_name else "frame of reference"
        pipeline_name = PIPELINE_NAMES[name]
        sequences[pipeline_name] = AlignedSequence(pipeline_name, array, np.eye(4), method)
    return AlignedStudy(
        reference=PIPELINE_NAMES[ref_name],
        affine=np.asarray(ref_affine, dtype=np.float64),
        shape=shape,
        sequences=sequences,
    )


def motion_corrected(
    images: Mapping[str, tuple[NDArray[Any], Affine]],
) -> tuple[dict[str, tuple[NDArray[np.float32], Affine]], dict[str, str]]:
    """The case's sequences aligned as the service aligns a study
    (:func:`tumorlens.pipeline.grid.align_sequences` with motion correction: onto the
    reference sequence's grid, each kept rigidly corrected when that raises the match), and
    the method per sequence.

    For real data whose series moved between acquisitions (TCGA-FG-6692: T1 and FLAIR off
    T1c); the files' affines alone put such a FLAIR beside the lesion it shows. BraTS and the
    phantoms are co-registered already, so this is off by default.
    """
    volumes = {
        PIPELINE_NAMES[name]: SeriesVolume(
            PIPELINE_NAMES[name],
            name,
            "one frame of reference",  # files of one case: motion, not registration, is sought
            nib.Nifti1Image(np.asarray(array, dtype=np.float32), np.asarray(affine)),  # type: ignore[no-untyped-call]
            (),
        )
        for name, (array, affine) in images.items()
    }
    study = align_sequences(volumes, correct_motion=True)
    model_name = {v: k for k, v in PIPELINE_NAMES.items()}
    aligned = {
        model_name[name]: (np.asarray(seq.data, dtype=np.float32), study.affine)
        for name, seq in study.sequences.items()
    }
    return aligned, {model_name[name]: seq.method for name, seq in study.sequences.items()}


def case_brain(images: Mapping[str, tuple[NDArray[Any], Affine]], models_dir: Path) -> BrainMask:
    """The service's brain extraction (mask + subject<->MNI affines) for one case's arrays;
    ``models_dir`` holds the MNI template."""
    try:
        return extract_brain(aligned_study(images), models_dir)
    except ValueError as exc:
        raise VolumeError(f"brain extraction failed: {exc}") from exc


def template_dir(model_path: Path, models_dir: Path) -> Path:
    """Where the MNI template is: beside the model, else ``models_dir``."""
    for folder in (model_path.parent, models_dir):
        if (folder / TEMPLATE_MASK_FILE).is_file():
            return folder
    return models_dir


# --- running the model -------------------------------------------------------------------------


# --- the evaluation ------------------------------------------------------------------------------


@dataclass
class CaseResult:
    case_id: str
    dice: dict[str, float]
    hd95: dict[str, float]
    grade: str | None
    tumour_type: str | None
    predicted_type: str
    p_hgg: float  # P(HGG) / (P(HGG) + P(LGG))
    seconds: float  # preprocessing + model + resampling back (VolumeModel.predict_arrays)
    brain_seconds: float | None = None  # brain extraction (MNI-placed models only)


@dataclass
class VolumeReport:
    model: str
    n_cases: int
    n_skipped: int
    skipped: list[dict[str, str]]
    cases: list[CaseResult] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        def clean(v: Any) -> Any:
            if isinstance(v, float):
                return None if not np.isfinite(v) else round(v, 5)
            if isinstance(v, dict):
                return {k: clean(x) for k, x in v.items()}
            if isinstance(v, list):
                return [clean(x) for x in v]
            return v

        out: dict[str, Any] = clean(
            {
                "model": self.model,
                "n_cases": self.n_cases,
                "n_skipped": self.n_skipped,
                "skipped": self.skipped,
                "summary": self.summary,
                "cases": [vars(c) for c in self.cases],
            }
        )
        return out


def _mean(values: Sequence[float]) -> float:
    finite = [v for v in values if np.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")


def summarise(results: Sequence[CaseResult], type_labels: Sequence[str]) -> dict[str, Any]:
    """Means over cases, with 95% intervals (Dice: bootstrap over cases, seeded; type
    accuracy: Wilson) (a region absent in both truth and prediction is Dice 1, HD95 0, as in
    BraTS; a region absent in exactly one gives Dice 0 and HD95 nan, left out of the HD95 mean
    and counted in ``hd95_undefined``)."""
    summary: dict[str, Any] = {}
    for region in REGIONS:
        summary[f"dice_{region}"] = _mean([r.dice[region] for r in results])
        summary[f"dice_{region}_ci95"] = list(
            bootstrap_mean_interval([r.dice[region] for r in results])
        )
        summary[f"hd95_{region}_mm"] = _mean([r.hd95[region] for r in results])
        summary[f"hd95_{region}_undefined"] = sum(
            1 for r in results if not np.isfinite(r.hd95[region])
        )
        tumour = [r for r in results if r.tumour_type not in (None, "healthy")]
        summary[f"dice_{region}_tumour_cases"] = _mean([r.dice[region] for r in tumour])
    # Per tumour type: where the model fails (e.g. false positives on healthy brains).
    types = sorted({str(r.tumour_type) for r in results if r.tumour_type is not None})
    summary["dice_by_type"] = {
        t: {
            "n": sum(1 for r in results if r.tumour_type == t),
            **{
                region: _mean([r.dice[region] for r in results if r.tumour_type == t])
                for region in REGIONS
            },
        }
        for t in types
    }
    graded = [r for r in results if r.grade in ("HGG", "LGG")]
    if graded:
        is_hgg = np.array([r.grade == "HGG" for r in graded])
        p = np.array([r.p_hgg for r in graded])
        summary["grade_n"] = len(graded)
        summary["grade_auc"] = roc_auc(p, is_hgg)
        summary["grade_accuracy"] = float(np.mean((p >= 0.5) == is_hgg))
    typed = [r for r in results if r.tumour_type in type_labels]
    if typed:
        truth = [type_labels.index(str(r.tumour_type)) for r in typed]
        pred = [type_labels.index(r.predicted_type) for r in typed]
        cm = confusion_matrix(truth, pred, len(type_labels))
        summary["type_n"] = len(typed)
        summary["type_accuracy"] = float(np.trace(cm) / cm.sum())
        summary["type_accuracy_ci95"] = list(wilson_interval(int(np.trace(cm)), int(cm.sum())))
        summary["type_labels"] = list(type_labels)
        summary["type_confusion"] = cm.tolist()
    seconds = [r.seconds for r in results]
    summary["seconds_per_case_median"] = float(np.median(seconds)) if seconds else float("nan")
    brain = [r.brain_seconds for r in results if r.brain_seconds is not None]
    if brain:
        summary["brain_extraction_seconds_median"] = float(np.median(brain))
    return summary


def evaluate_volumes(
    root: Path,
    model: str | Path,
    models_dir: Path,
    *,
    threads: int = 0,
    sequences: Sequence[str] | None = None,
    limit: int = 0,
    correct_motion: bool = False,
) -> tuple[VolumeReport, list[VolumePrediction]]:
    """Run the model over every case under ``root``; ``sequences`` restricts the inputs (to
    measure a missing-sequence subset); ``correct_motion`` aligns each case's sequences as the
    service does (:func:`motion_corrected`) instead of trusting the files' affines."""
    cases = find_cases(root)
    if not cases:
        raise EvaluationDataError(
            f"no BraTS-layout case under {root} (expected <id>/<id>_flair.nii.gz or "
            "<id>/<id>-t2f.nii.gz files)"
        )
    if limit:
        cases = cases[:limit]
    net = VolumeModel(model, models_dir, threads)
    types = net.card.type_labels
    mni = net.card.grid.placement == "mni"
    templates = template_dir(net.path, models_dir)
    results: list[CaseResult] = []
    preds: list[VolumePrediction] = []
    skipped: list[dict[str, str]] = []
    for case in cases:
        images = {s: p for s, p in case.images.items() if sequences is None or s in sequences}
        try:
            truth, seg_affine = load_labels(case)
            arrays = {name: load_nifti(path) for name, path in images.items()}
            for name, (array, _) in arrays.items():
                if array.shape != truth.shape:
                    raise VolumeError(
                        f"{images[name]}: shape {array.shape} differs from the labels {truth.shape}"
                    )
            if correct_motion:
                arrays, methods = motion_corrected(arrays)
                log.info("%s: alignment %s", case.case_id, methods)
            brain_seconds: float | None = None
            if mni:
                started = time.perf_counter()
                brain = case_brain(arrays, templates)
                brain_seconds = time.perf_counter() - started
                pred = net.predict_arrays(
                    arrays,
                    seg_affine,
                    truth.shape,
                    subject_to_mni=brain.subject_to_mni,
                    brain_mask=(brain.mask, brain.affine),
                    activation=False,
                )
            else:
                pred = net.predict_arrays(arrays, seg_affine, truth.shape, activation=False)
        except TumorlensError as exc:  # VolumeError and the rest: skip the case, go on
            log.warning("skipping %s: %s", case.case_id, exc)
            skipped.append({"case": case.case_id, "reason": str(exc)})
            continue
        spacing = np.sqrt((seg_affine[:3, :3] ** 2).sum(axis=0))
        dices = {r: dice(region_mask(pred.labels, r), region_mask(truth, r)) for r in REGIONS}
        hds = {
            r: hd95(region_mask(pred.labels, r), region_mask(truth, r), spacing) for r in REGIONS
        }
        probs = pred.type_probs
        p_hgg = pred.hgg_probability(types)
        results.append(
            CaseResult(
                case.case_id,
                dices,
                hds,
                case.grade,
                case.tumour_type,
                types[int(np.argmax(probs))] if types else "",
                p_hgg,
                pred.seconds,
                brain_seconds,
            )
        )
        preds.append(pred)
        log.info("%s: %s", case.case_id, {k: round(v, 3) for k, v in dices.items()})
    report = VolumeReport(str(net.path.name), len(results), len(skipped), skipped, results)
    report.summary = summarise(results, types)
    return report, preds


def format_volume_table(report: VolumeReport) -> str:
    s = report.summary
    lines = [f"model {report.model}: {report.n_cases} cases, {report.n_skipped} skipped"]
    for item in report.skipped:
        lines.append(f"  skipped {item['case']}: {item['reason']}")
    lines.append(
        f"{'region':8} {'Dice all':>9} {'(95% CI)':>13} {'Dice tumour':>11} {'HD95 mm':>8} "
        f"{'HD95 n/a':>8}"
    )
    for region in REGIONS:
        interval = format_interval(s.get(f"dice_{region}_ci95", (float("nan"), float("nan"))))
        lines.append(
            f"{region:8} {s.get(f'dice_{region}', float('nan')):9.3f} "
            f"{interval:>13} "
            f"{s.get(f'dice_{region}_tumour_cases', float('nan')):11.3f} "
            f"{s.get(f'hd95_{region}_mm', float('nan')):8.2f} "
            f"{s.get(f'hd95_{region}_undefined', 0):8d}"
        )
    lines.append(
        "(Dice tumour: cases whose type is not 'healthy'; HD95 n/a: region empty in "
        "exactly one of truth and prediction; CI: bootstrap over cases, seed 0)"
    )
    for ttype, row in s.get("dice_by_type", {}).items():
        dices = " / ".join(f"{row[r]:.3f}" for r in REGIONS)
        lines.append(f"  {ttype} (n={row['n']}): Dice {'/'.join(REGIONS)} {dices}")
    if "grade_auc" in s:
        lines.append(
            f"grade (HGG vs LGG, n={s['grade_n']}): AUC {s['grade_auc']:.3f}, "
            f"accuracy {s['grade_accuracy']:.3f}"
        )
    if "type_accuracy" in s:
        interval = format_interval(s.get("type_accuracy_ci95", (float("nan"), float("nan"))))
        lines.append(
            f"type accuracy (n={s['type_n']}): {s['type_accuracy']:.3f} (95% CI {interval}, Wilson)"
        )
    lines.append(f"median seconds per case: {s.get('seconds_per_case_median', float('nan')):.2f}")
    if "brain_extraction_seconds_median" in s:
        lines.append(
            "median seconds of brain extraction per case (not included above): "
            f"{s['brain_extraction_seconds_median']:.2f}"
        )
    return "\n".join(lines)


# --- figures -------------------------------------------------------------------------------------

#: RGBA per internal label for overlays (core red, oedema yellow, enhancing blue).
OVERLAY_COLOURS: dict[int, tuple[float, float, float, float]] = {
    1: (0.9, 0.1, 0.1, 0.55),
    2: (1.0, 0.85, 0.0, 0.40),
    3: (0.1, 0.4, 1.0, 0.60),
}


def _overlay_rgba(labels: NDArray[np.integer]) -> NDArray[np.float32]:
    rgba = np.zeros((*labels.shape, 4), np.float32)
    for label, colour in OVERLAY_COLOURS.items():
        rgba[labels == label] = colour
    return rgba


def overlay_png(
    background: NDArray[np.floating],
    panels: Sequence[tuple[str, NDArray[np.integer]]],
    path: Path,
    *,
    title: str = "",
    slices: Sequence[int] | None = None,
    aspect: float = 1.0,
) -> Path:
    """Axial slices (z, RAS arrays indexed x, y, z) of ``background`` with each label map of
    ``panels`` drawn over it: one row per panel, one column per slice."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    bg = np.asarray(background, dtype=np.float32)
    if slices is None:
        tumour = np.zeros(bg.shape[2])
        for _, lab in panels:
            tumour = tumour + (np.asarray(lab) > 0).sum(axis=(0, 1))
        centre = int(np.argmax(tumour)) if tumour.any() else bg.shape[2] // 2
        step = max(1, bg.shape[2] // 16)
        slices = [int(np.clip(centre + d * step, 0, bg.shape[2] - 1)) for d in (-2, -1, 0, 1, 2)]
    lo, hi = np.percentile(bg[bg > 0], (1, 99.5)) if (bg > 0).any() else (0.0, 1.0)
    fig = Figure(figsize=(2.6 * len(slices), 2.8 * len(panels)), layout="constrained")
    for r, (name, lab) in enumerate(panels):
        for c, z in enumerate(slices):
            ax = fig.add_subplot(len(panels), len(slices), r * len(slices) + c + 1)
            # RAS arrays: x -> columns (patient left on the image left, neurological view),
            # y -> rows (anterior up); LAS files show patient right on the image left
            ax.imshow(np.rot90(bg[:, :, z]), cmap="gray", vmin=lo, vmax=hi, aspect=aspect)
            ax.imshow(np.rot90(_overlay_rgba(np.asarray(lab)[:, :, z])), aspect=aspect)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{name} z={z}", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=100)
    return path


def write_plots(
    root: Path,
    report: VolumeReport,
    preds: Sequence[VolumePrediction],
    out_dir: Path,
    max_cases: int = 4,
) -> list[Path]:
    """Overlays (truth vs prediction over FLAIR) for the first cases, type confusion matrix and
    grade ROC."""
    from tumorlens.evaluation import plots

    written: list[Path] = []
    cases = {c.case_id: c for c in find_cases(root)}
    for result, pred in list(zip(report.cases, preds, strict=True))[:max_cases]:
        case = cases[result.case_id]
        ref = case.images.get("flair") or next(iter(case.images.values()))
        try:
            flair, _ = load_nifti(ref)
            truth, _ = load_labels(case)
        except VolumeError as exc:
            log.warning("no overlay for %s: %s", case.case_id, exc)
            continue
        title = (
            f"{case.case_id} ({case.tumour_type}) predicted {result.predicted_type}; Dice "
            + ", ".join(f"{k} {v:.2f}" for k, v in result.dice.items())
        )
        written.append(
            overlay_png(
                flair,
                [("truth", truth), ("model", pred.labels)],
                out_dir / f"overlay_{case.case_id}.png",
                title=title,
            )
        )
    s = report.summary
    if "type_confusion" in s:
        written.append(
            plots.confusion_matrix_png(
                np.asarray(s["type_confusion"], dtype=np.int64),
                s["type_labels"],
                out_dir / "type_confusion.png",
            )
        )
    graded = [r for r in report.cases if r.grade in ("HGG", "LGG")]
    if graded:
        y = np.array([1 if r.grade == "HGG" else 0 for r in graded], dtype=np.int64)
        p = np.array([[1 - r.p_hgg, r.p_hgg] for r in graded], dtype=np.float64)
        written.append(plots.roc_png(y, p, ["LGG", "HGG"], out_dir / "grade_roc.png"))
    return written
