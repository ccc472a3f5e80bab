"""The end-to-end analysis of one slice: classify, segment, measure.

:func:`load_pipeline` rebuilds every model from ``artifacts/`` alone (checking
each weight file's SHA-256); :meth:`Pipeline.analyse` runs one slice and
returns a :class:`CaseResult` with per-model and ensemble probabilities, the
mask, a green overlay, the black-and-white mask image, the morphology record,
per-stage timings and the versions/checksums of the models used.

Models are only read after loading, never mutated, so one pipeline can serve
several threads (dashboard sessions) at once. Every compiled function has a
fixed input signature and is traced and run once while loading
(:meth:`Pipeline.warm_up`), so no request pays for tracing or graph optimisation.
The brain crop box is found once per slice and shared by the classifiers and
the segmenter. Measurements: ``benchmarks/README.md``.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ensemble.review import FALLBACK_THRESHOLD, ensemble_entries, review_warning
from morphology.spacing import figshare_assumption_caveat
from neurostack import CLASS_NAMES, __version__
from neurostack.artifacts import WEIGHTS_FILE, sha256_file
from neurostack.errors import ArtifactError, InputImageError
from neurostack.formatting import format_probability, format_probability_floor
from neurostack.imaging import InputLimits, LoadedImage, load_image
from neurostack.preprocess import CropBox, almost_blank, crop, find_brain_box, resize_square
from neurostack.render import colourfulness, mask_image, overlay_mask

NO_TUMOR = "notumor"
LOW_CONFIDENCE = FALLBACK_THRESHOLD
"""Fixed "low confidence" limit, used only where ``ensemble.review`` has no measured
threshold for the meta-learner that answered."""
COLOUR_LIMIT = 8.0
"""Mean channel difference above which an image is flagged as not a greyscale MRI."""
SPACING_SOURCES = ("dicom", "user", "assumed", "none")
TTA_ENV = "NEUROSTACK_TTA"
"""Environment variable giving :func:`load_pipeline`'s default test-time augmentation."""



@dataclass
class CaseResult:
    """Everything computed for one slice.

    Arrays are on the original image grid: ``mask`` and ``probability`` are
    ``(H, W)``; ``overlay`` is ``(H, W, 3)`` uint8 RGB; ``mask_png`` is
    ``(H, W)`` uint8 with tumour = 255.
    """

    image_sha256: str
    shape: tuple[int, int]
    per_model: dict[str, dict[str, float]]
    ensemble: dict[str, float]
    predicted_class: str
    confidence: float
    method: str
    models_agree: bool
    warnings: list[str]
    tumor_found: bool
    segmented: bool
    threshold: float
    spacing_cm: tuple[float, float] | None
    spacing_source: str
    morphology: dict[str, Any] | None = None
    mask: np.ndarray | None = None
    probability: np.ndarray | None = None
    overlay: np.ndarray | None = None
    mask_png: np.ndarray | None = None
    crop_box: tuple[int, int, int, int] | None = None
    timings_s: dict[str, float] = field(default_factory=dict)
    models: dict[str, dict[str, Any]] = field(default_factory=dict)
    postprocess: str = "none"
    """Mask post-processing applied (``segmentation.postprocess.POSTPROCESS_MODES``)."""
    intensity: dict[str, Any] | None = None
    """Grey-level check against the training slices (``ensemble.intensity``):
    ``atypicality``, ``threshold``, ``relative_gamma``, ``flagged`` (warned: atypical
    and not almost blank) and ``corrected`` (the networks analysed a copy mapped to
    the training curve, so the classification, outline and measurements come from
    it); a corrected slice also has ``uncorrected_class`` / ``uncorrected_confidence``
    (the ensemble on the slice as given). ``None`` without a reference."""
    escalated: bool | None = None
    """In the classifiers' cascade mode (``tta="cascade"``): whether the single-crop pass
    was unsure, so that the mirror-averaged default mode gave the answer. ``None`` in
    the other modes."""
    outline_confidence: float | None = None
    """Mean segmenter probability over the outline's pixels
    (:func:`segmentation.confidence.outline_confidence`); ``None`` without an outline."""
    outline_flagged: bool | None = None
    """Whether that confidence is below the flag threshold recorded for the shipped
    segmenter (``outline_confidence.json``, chosen on the validation patients); ``None``
    without an outline, without a record, or at another mask threshold or
    post-processing than the record's operating point."""
    outline_flag_threshold: float | None = None
    """The recorded flag threshold when the segmenter has a record for its weights."""
    review_flagged: bool = False
    """The ensemble's top probability is below ``review_threshold``: double-check the answer."""
    review_threshold: float = LOW_CONFIDENCE
    """The threshold of the meta-learner that answered, chosen on its out-of-fold
    validation outputs (``ensemble.review``), or the fixed :data:`LOW_CONFIDENCE`."""
    review_measured: bool = False
    """Whether ``review_threshold`` was measured against errors (``review.json``) or is
    the fixed fallback."""
    frame_index: int | None = None
    """0-based frame analysed in a multi-frame file; ``None`` for a single-frame image."""
    n_frames: int = 1
    """Frames in the file."""
    quality: dict[str, Any] | None = None
    """Noise and fine-detail check of the slice as given against the training slices
    (``ensemble.quality``): ``noise_sigma``, ``detail_level`` (grey levels),
    ``noise_limit``, ``detail_limit``, ``noisy``, ``smooth``. ``None`` without a
    reference."""

    @property
    def mask_empty(self) -> bool:
        """The slice was segmented but no pixel reached the mask threshold."""
        return bool(self.segmented and self.morphology
                    and self.morphology.get("n_components") == 0)

    def to_record(self) -> dict[str, Any]:
        """Flat, identifier-free record for CSV export and the case database."""
        rec: dict[str, Any] = {
            "image_sha256": self.image_sha256,
            "height_px_image": self.shape[0],
            "width_px_image": self.shape[1],
            "predicted_class": self.predicted_class,
            "confidence": round(self.confidence, 6),
            "review_flagged": self.review_flagged,
            "review_threshold": self.review_threshold,
            "method": self.method,
            "models_agree": self.models_agree,
            "tumor_found": self.tumor_found,
            "segmented": self.segmented,
            "mask_threshold": self.threshold,
            "warnings": "; ".join(self.warnings),
            "intensity_atypicality": None if self.intensity is None
            else round(self.intensity["atypicality"], 4),
            "relative_gamma": None if self.intensity is None
            else round(self.intensity["relative_gamma"], 4),
            "intensity_corrected": bool((self.intensity or {}).get("corrected")),
            "uncorrected_class": (self.intensity or {}).get("uncorrected_class"),
            "uncorrected_confidence": None
            if (self.intensity or {}).get("uncorrected_confidence") is None
            else round(self.intensity["uncorrected_confidence"], 6),
            "noise_sigma_grey": None if self.quality is None
            else round(self.quality["noise_sigma"], 3),
            "detail_level_grey": None if self.quality is None
            else round(self.quality["detail_level"], 4),
            "quality_flags": None if self.quality is None else ";".join(
                k for k in ("noisy", "smooth") if self.quality[k]),
        }
        if self.escalated is not None:  # cascade mode only: older results files lack it
            rec["escalated"] = self.escalated
        if self.segmented:
            rec["outline_confidence"] = (
                None if self.outline_confidence is None else round(self.outline_confidence, 4)
            )
            rec["outline_flagged"] = self.outline_flagged
        for c in CLASS_NAMES:
            rec[f"ensemble_{c}"] = round(self.ensemble[c], 6)
        for model, probs in self.per_model.items():
            for c in CLASS_NAMES:
                rec[f"{model}_{c}"] = round(probs[c], 6)
        if self.morphology:
            rec.update(self.morphology)
        else:
            rec["spacing_source"] = self.spacing_source
        rec["spacing_source"] = self.spacing_source
        if self.frame_index is not None:  # multi-frame files only (kept in extra_json)
            rec["frame"] = self.frame_index + 1
            rec["n_frames"] = self.n_frames
        rec["model_versions"] = ";".join(
            f"{k}:{v['sha256'][:12]}" for k, v in sorted(self.models.items())
        )
        return rec


def empty_mask_warning(result: CaseResult, max_probability: float) -> str:
    """Say that the segmenter outlined nothing, with the slice's highest tumour probability.

    The probability is rounded down (:func:`~neurostack.formatting.format_probability_floor`),
    so it never reads as reaching the threshold it missed.

    Args:
        result: The case (its class, whether a tumour was found, the threshold).
        max_probability: Highest tumour probability on the slice, in ``[0, 1]``.
    """
    highest = format_probability_floor(max_probability)
    text = (
        f"segmentation found no tumour pixels at threshold {result.threshold:g} "
        f"(highest tumour probability on this slice: {highest})"
    )
    if not result.tumor_found:
        return text
    return (
        f"{text}, although the ensemble says {result.predicted_class}: no outline and no "
        "measurements. The segmenter misses some tumours entirely (most often faint "
        "gliomas); read the slice yourself"
    )


class Pipeline:
    """Classifier ensemble + segmenter + morphology, loaded once and shared."""

    def __init__(self, ensemble: Any, segmenter: Any | None, *, missing: list[str] | None = None,
                 limits: InputLimits | None = None, intensity: Any | None = None,
                 quality: Any | None = None) -> None:
        self.ensemble = ensemble
        self.segmenter = segmenter
        self.missing = list(missing or [])
        self.limits = limits or InputLimits()
        self.intensity = intensity
        """``ensemble.intensity.IntensityReference`` checking each slice's grey levels."""
        self.quality = quality
        """``ensemble.quality.QualityReference`` checking each slice's noise and detail."""
        self.review = ensemble_entries(ensemble)
        """Review-flag entries (``ensemble.review``) by who answers a slice: key ``None``
        for a single mode, ``False`` / ``True`` for the cascade's two passes."""

    def with_tta(self, tta: str) -> Pipeline:
        """Return a pipeline whose classifiers use test-time augmentation ``tta``.

        Shares every loaded model (:meth:`ensemble.inference.Ensemble.with_tta`);
        ``"none"`` halves the classifiers' compute and uses the meta-learner fitted on
        single crops when the artifacts hold one; ``"cascade"`` runs single crops and the
        default mode only for the slices they leave unsure (:mod:`ensemble.cascade`).
        ``self`` when nothing changes.
        """
        ensemble = self.ensemble.with_tta(tta)
        if ensemble is self.ensemble:
            return self
        missing = [*self.missing, *(m for m in ensemble.missing if m not in self.missing)]
        return Pipeline(ensemble, self.segmenter, missing=missing, limits=self.limits,
                        intensity=self.intensity, quality=self.quality)

    @property
    def classifier_modes(self) -> list[str]:
        """Modes :meth:`with_tta` can switch to: this pipeline's own first.

        The default mirror-averaged mode, ``"cascade"`` when the artifacts hold a
        cascade threshold (:func:`ensemble.cascade.cascade_available`) and ``"none"``
        (single crop).
        """
        from ensemble.cascade import cascade_available

        own = self.ensemble.tta
        modes = [own]
        meta = getattr(self.ensemble, "meta", None)
        if meta is not None and cascade_available(meta.folder.parent):
            modes.append("cascade")
        modes.append("hflip")
        modes.append("none")
        return list(dict.fromkeys(modes))

    # ------------------------------------------------------------------ info
    @property
    def model_info(self) -> dict[str, dict[str, Any]]:
        """Name -> ``{"sha256", "folder", "weights_file", ...}`` for every loaded model.

        Classifiers also carry ``input_size`` and their inference ``precision`` and
        ``runtime``; in the cascade, ``precision_single_crop`` is the precision of
        the single-crop pass, and ``meta_single_crop`` (the meta-learner that answers
        for the slices the first pass is sure of) is listed beside ``meta``.
        """
        def entry(model: Any) -> dict[str, Any]:
            config = model.config
            folder = getattr(model, "folder", None)
            weights = (str(Path(folder) / config.get("weights_file", WEIGHTS_FILE))
                       if folder is not None else None)
            return {"sha256": config["weights_sha256"],
                    "folder": str(folder) if folder is not None else None,
                    "weights_file": weights}

        first = getattr(self.ensemble, "first", None)
        info: dict[str, dict[str, Any]] = {}
        for name, clf in self.ensemble.members.items():
            info[name] = entry(clf) | {
                "input_size": clf.input_size,
                "precision": getattr(clf, "precision", "float32"),
                "runtime": getattr(clf, "runtime", "tensorflow"),
            }
            if first is not None and name in first.members:
                info[name]["precision_single_crop"] = getattr(
                    first.members[name], "precision", "float32")
        if self.ensemble.meta is not None:
            info["meta"] = entry(self.ensemble.meta)
        if first is not None and first.meta is not None:
            info["meta_single_crop"] = entry(first.meta)
        if self.segmenter is not None:
            info["resunet"] = entry(self.segmenter) | {"input_size": self.segmenter.input_size}
        return info

    def verify_weights(self) -> list[dict[str, str]]:
        """Hash every loaded model's weight file on disk again.

        Returns:
            One row per model of :attr:`model_info`: ``model``, ``weights_file`` and
            ``status``, which is ``"matches"`` when the file still has the SHA-256
            the model was loaded with, ``"weight file missing"``, ``"MISMATCH"``, or
            ``"unknown file"`` for a model built without a folder.
        """
        rows = []
        for name, info in self.model_info.items():
            path = info.get("weights_file")
            if path is None:
                status = "unknown file"
            elif not Path(path).is_file():
                status = "weight file missing"
            else:
                status = "matches" if sha256_file(path) == info["sha256"] else "MISMATCH"
            rows.append({"model": name, "weights_file": str(path), "status": status})
        return rows

    def warm_up(self) -> None:
        """Run every compiled model once on a blank input.

        The first call of a ``tf.function`` optimises its graph and creates the
        oneDNN kernels (seconds for the full-size models); :func:`load_pipeline`
        pays that here so the first real request does not.
        """
        blank = np.zeros((64, 64), np.uint8)
        self.ensemble.predict_crops([blank])
        if self.segmenter is not None and hasattr(self.segmenter, "predict_crops"):
            s = int(self.segmenter.input_size)
            self.segmenter.predict_crops(np.zeros((1, s, s), np.float32))

    # --------------------------------------------------------------- analyse
    def resolve_threshold(self, threshold: float | None) -> float:
        """Validate ``threshold``; ``None`` becomes the segmenter's operating point.

        Raises:
            ValueError: Unless the result is in (0, 1).
        """
        if threshold is None:
            threshold = self.segmenter.default_threshold if self.segmenter is not None else 0.5
        _check_threshold(threshold)
        return float(threshold)

    def analyse(
        self,
        source: LoadedImage | str | Path | bytes,
        *,
        spacing_cm: tuple[float, float] | None = None,
        spacing_source: str | None = None,
        threshold: float | None = None,
        force_segmentation: bool = False,
        frame: int | None = None,
        postprocess: str | None = None,
    ) -> CaseResult:
        """Analyse one slice.

        Args:
            source: A decoded image, a path or the file's bytes.
            spacing_cm: ``(row, col)`` pixel spacing in cm given by the user; a DICOM
                file's own spacing is used when this is ``None``.
            spacing_source: Where ``spacing_cm`` came from: ``"user"`` or ``"assumed"``.
            threshold: Probability threshold of the tumour mask, in (0, 1); ``None``
                uses the segmenter's own operating point (``default_threshold``, chosen
                on the validation patients), 0.5 without a segmenter.
            force_segmentation: Segment even when the ensemble says "notumor".
            frame: Frame of a multi-frame file.
            postprocess: Mask post-processing (``"none"`` or ``"largest_component"``);
                ``None`` uses the segmenter's own operating point.

        Raises:
            InputImageError: For unreadable input (message says why).
            ValueError: For invalid options.
        """
        threshold = self.resolve_threshold(threshold)
        t0 = time.perf_counter()
        if isinstance(source, LoadedImage):
            img = source
        else:
            img = load_image(source, frame=frame, limits=self.limits)
        decode_s = time.perf_counter() - t0
        out = self.analyse_many([img], spacing_cm=spacing_cm, spacing_source=spacing_source,
                                threshold=threshold, force_segmentation=force_segmentation,
                                postprocess=postprocess)[0]
        if isinstance(out, BaseException):
            raise out
        out.timings_s = {"decode": round(decode_s, 4), **out.timings_s}
        out.timings_s["total"] = round(out.timings_s["total"] + decode_s, 4)
        return out

    def analyse_many(
        self,
        images: Sequence[LoadedImage],
        *,
        spacing_cm: tuple[float, float] | None = None,
        spacing_source: str | None = None,
        threshold: float | None = None,
        force_segmentation: bool = False,
        postprocess: str | None = None,
    ) -> list[CaseResult | Exception]:
        """Analyse decoded slices with one classifier call and one segmenter call.

        Gives the results of :meth:`analyse` on each image, up to float rounding
        (the networks run in inference mode, so a slice's output does not depend
        on its batch), but the four backbones, the meta-learner and the segmenter
        each see the whole list at once. Measured gain on this 2-core CPU: +1.8 %
        batch throughput at 8 slices per call (``benchmarks/README.md``).

        Args:
            images: Decoded slices (:func:`~neurostack.imaging.load_image`).
            spacing_cm: As in :meth:`analyse`, for every image.
            spacing_source: As in :meth:`analyse`.
            threshold: As in :meth:`analyse`.
            force_segmentation: As in :meth:`analyse`.
            postprocess: As in :meth:`analyse`.

        Returns:
            One entry per image, in order: its :class:`CaseResult`, or the exception
            that stopped it (the other images are still analysed). ``timings_s`` of
            each result holds its share of each batched stage (stage time / images).

        Raises:
            ValueError: For invalid options (nothing is analysed).
        """
        threshold = self.resolve_threshold(threshold)
        _check_spacing(spacing_cm, spacing_source)  # once, before any work
        if postprocess is not None:
            from segmentation.postprocess import check_postprocess

            check_postprocess(postprocess)
        out: list[CaseResult | Exception] = [ValueError("not analysed")] * len(images)
        ready: list[tuple[int, _Prepared]] = []
        for i, img in enumerate(images):
            try:
                ready.append((i, self._prepare(img, spacing_cm, spacing_source)))
            except Exception as exc:  # noqa: BLE001 - reported for this image only
                out[i] = exc
        if not ready:
            return out
        t0 = time.perf_counter()
        # the networks see the mapped copy of a corrected slice; its copy as given is
        # classified in the same call (rows after the first len(ready)) for comparison
        corrected = [j for j, (_, p) in enumerate(ready) if p.corrected is not None]
        crops = [p.brain if p.corrected is None else p.corrected.brain for _, p in ready]
        try:
            pred = self.ensemble.predict_crops(crops + [ready[j][1].brain for j in corrected])
        except Exception as exc:  # noqa: BLE001 - isolate the image that breaks the batch
            if len(ready) == 1:
                out[ready[0][0]] = exc
            else:
                for i, _ in ready:
                    out[i] = self._analyse_one(images[i], spacing_cm, spacing_source, threshold,
                                               force_segmentation, postprocess)
            return out
        classify_s = (time.perf_counter() - t0) / (len(ready) + len(corrected))
        as_given = {j: len(ready) + q for q, j in enumerate(corrected)}
        to_segment: list[tuple[int, _Prepared, CaseResult]] = []
        for j, (i, prep) in enumerate(ready):
            prep.t["classify"] = classify_s * (2 if j in as_given else 1)
            try:
                result = self._result(prep, pred, j, threshold, as_given.get(j))
            except Exception as exc:  # noqa: BLE001
                out[i] = exc
                continue
            out[i] = result
            if result.tumor_found or force_segmentation:
                if self.segmenter is None:
                    result.warnings.append("segmentation model not available")
                else:
                    to_segment.append((i, prep, result))
        if to_segment:
            self._segment_many(to_segment, threshold, postprocess, out)
        for i, prep in ready:
            res = out[i]
            if isinstance(res, CaseResult):
                res.timings_s = {k: round(v, 4) for k, v in prep.t.items()}
                res.timings_s["total"] = round(sum(prep.t.values()), 4)
        return out

    def network_view(self, img: LoadedImage) -> tuple[np.ndarray, CropBox]:
        """Return the ``(H, W)`` slice the networks analyse for ``img`` and its head box.

        The slice as given, or its copy mapped to the training curve when the input
        check corrects it (as in :meth:`analyse_many`); e.g. for Grad-CAM.
        """
        prep = self._prepare(img, None, None)
        if prep.corrected is None:
            return img.gray, prep.box
        return prep.corrected.gray, prep.corrected.box

    def _analyse_one(self, img: LoadedImage, spacing_cm: tuple[float, float] | None,
                     spacing_source: str | None, threshold: float,
                     force_segmentation: bool, postprocess: str | None) -> CaseResult | Exception:
        try:
            return self.analyse(img, spacing_cm=spacing_cm, spacing_source=spacing_source,
                                threshold=threshold, force_segmentation=force_segmentation,
                                postprocess=postprocess)
        except Exception as exc:  # noqa: BLE001
            return exc

    def _prepare(self, img: LoadedImage, spacing_cm: tuple[float, float] | None,
                 spacing_source: str | None) -> _Prepared:
        spacing, s_source = _resolve_spacing(img, spacing_cm, spacing_source)
        t0 = time.perf_counter()
        box = find_brain_box(img.gray)
        brain = crop(img.gray, box)
        check, corrected = None, None
        if self.intensity is not None:
            from ensemble.intensity import check_slice, corrected_slice

            check = check_slice(self.intensity, img.gray, brain)
            mapped = corrected_slice(img.gray, check)
            if mapped is not None:  # a new head box: the darkened slice's box is too tight
                mapped_box = find_brain_box(mapped)
                corrected = _Mapped(mapped, mapped_box, crop(mapped, mapped_box))
        quality = None
        if self.quality is not None:
            from ensemble.quality import quality_features

            quality = self.quality.check(quality_features(img.gray, brain))
        return _Prepared(img, box, brain, spacing, s_source,
                         {"preprocess": time.perf_counter() - t0}, check, corrected, quality)

    def _result(self, prep: _Prepared, pred: Any, j: int, threshold: float,
                j_as_given: int | None = None) -> CaseResult:
        """Build the classification part of one slice's result from row ``j`` of ``pred``.

        ``j_as_given`` is the row of a corrected slice's copy as given (compared in a
        warning and kept as ``uncorrected_class``).
        """
        img = prep.img
        probs = pred.ensemble[j]
        k = int(probs.argmax())
        per_model = {m: dict(zip(CLASS_NAMES, map(float, p[j]), strict=True))
                     for m, p in pred.per_model.items()}
        votes = {CLASS_NAMES[int(np.argmax(p[j]))] for p in pred.per_model.values()}
        warnings = []
        escalated = None if getattr(pred, "escalated", None) is None else bool(pred.escalated[j])
        review = self.review.get(escalated)
        review_threshold = LOW_CONFIDENCE if review is None else float(review["threshold"])
        review_flagged = float(probs[k]) < review_threshold
        if review_flagged:
            warnings.append(review_warning(float(probs[k]), review))
        if len(votes) > 1:
            warnings.append("base models disagree: " + ", ".join(sorted(votes)))
        if colourfulness(img.display) > COLOUR_LIMIT:
            warnings.append("colour image: this does not look like a greyscale MRI slice; "
                            "the prediction is unreliable")
        if self.ensemble.meta is None:
            warnings.append(pred.method)
        flagged = False
        if almost_blank(img.gray):
            warnings.append("almost blank image")
        elif prep.intensity is not None and not prep.intensity.typical:
            warnings.append(prep.intensity.warning())
            flagged = True
        predicted = CLASS_NAMES[k]
        check = None if prep.intensity is None else {
            "atypicality": prep.intensity.atypicality, "threshold": prep.intensity.threshold,
            "relative_gamma": prep.intensity.relative_gamma, "flagged": flagged,
            "corrected": prep.corrected is not None}
        if flagged and prep.corrected is None:
            warnings.append("the intensity curve cannot be inverted: analysed as given")
        if prep.quality is not None and not almost_blank(img.gray):
            warnings.extend(prep.quality.warnings())
        if j_as_given is not None:
            k0 = int(np.argmax(pred.ensemble[j_as_given]))
            check["uncorrected_class"] = CLASS_NAMES[k0]
            check["uncorrected_confidence"] = float(pred.ensemble[j_as_given][k0])
            same = "the same class" if k0 == k else "a DIFFERENT class"
            warnings.append(
                f"analysed as a copy with its grey levels mapped to the training curve (gamma "
                f"1/{prep.intensity.relative_gamma:.2f}); masks are drawn on the slice as "
                f"given. As given, the ensemble says {CLASS_NAMES[k0]} "
                f"({format_probability(check['uncorrected_confidence'])}): {same}")
        return CaseResult(
            image_sha256=hashlib.sha256(np.ascontiguousarray(img.gray).tobytes()).hexdigest(),
            shape=img.shape, per_model=per_model,
            frame_index=img.frame_index if img.n_frames > 1 else None, n_frames=img.n_frames,
            ensemble=dict(zip(CLASS_NAMES, map(float, probs), strict=True)),
            predicted_class=predicted, confidence=float(probs[k]), method=pred.method,
            models_agree=len(votes) == 1, warnings=warnings,
            tumor_found=predicted != NO_TUMOR, segmented=False, threshold=threshold,
            spacing_cm=prep.spacing, spacing_source=prep.spacing_source,
            crop_box=(prep.box if prep.corrected is None else prep.corrected.box).as_tuple(),
            models=self.model_info, intensity=check,
            quality=None if prep.quality is None else prep.quality.to_dict(),
            escalated=escalated, review_flagged=review_flagged,
            review_threshold=review_threshold, review_measured=review is not None,
        )

    def _segment_many(self, items: list[tuple[int, _Prepared, CaseResult]], threshold: float,
                      postprocess: str | None, out: list[CaseResult | Exception]) -> None:
        """Segment ``items`` in one network call and finish their results in ``out``."""
        t0 = time.perf_counter()
        try:
            segs = self._run_segmenter([p for _, p, _ in items], threshold, postprocess)
        except Exception as exc:  # noqa: BLE001 - isolate the image that breaks the batch
            if len(items) == 1:
                out[items[0][0]] = exc
            else:
                for item in items:
                    self._segment_many([item], threshold, postprocess, out)
            return
        segment_s = (time.perf_counter() - t0) / len(items)
        for (i, prep, result), seg in zip(items, segs, strict=True):
            prep.t["segment"] = segment_s
            try:
                self._finish_segment(prep, result, seg)
            except Exception as exc:  # noqa: BLE001
                out[i] = exc

    def _finish_segment(self, prep: _Prepared, result: CaseResult, seg: Any) -> None:
        from morphology import measure

        t0 = time.perf_counter()
        result.segmented = True
        result.mask = seg.mask
        result.probability = seg.probability
        result.postprocess = getattr(seg, "postprocess", "none")
        result.outline_confidence = getattr(seg, "confidence", None)
        flag = getattr(self.segmenter, "outline_flagged", None)
        result.outline_flagged = flag(seg) if callable(flag) else None
        record = getattr(self.segmenter, "confidence_record", None)
        result.outline_flag_threshold = None if record is None else float(record["flag_threshold"])
        if result.outline_flagged:
            from segmentation.confidence import flag_warning

            result.warnings.append(flag_warning(result.outline_confidence, record))
        removed = int(getattr(seg, "removed_components", 0))
        if removed:
            result.warnings.append(
                f"post-processing kept the largest tumour component and removed {removed} "
                "smaller one(s); switch it off to see every component"
            )
        result.morphology = measure(
            seg.mask, spacing_cm=result.spacing_cm, image=prep.img.gray,
            spacing_source=result.spacing_source if result.spacing_cm else None,
        )
        if result.spacing_source == "assumed" and seg.mask.any():
            caveat = figshare_assumption_caveat(prep.img.shape)
            if caveat:
                result.warnings.append("assumed pixel spacing: " + caveat)
        prep.t["morphology"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        result.overlay = overlay_mask(prep.img.display, seg.mask)
        result.mask_png = mask_image(seg.mask)
        prep.t["render"] = time.perf_counter() - t0
        if not seg.mask.any():
            result.warnings.append(empty_mask_warning(result, float(np.max(seg.probability))))

    def _run_segmenter(self, preps: list[_Prepared], threshold: float,
                       postprocess: str | None = None) -> list[Any]:
        """``Segmenter.predict`` for several slices, reusing the classifiers' crop boxes.

        Same arithmetic as :meth:`segmentation.predict.Segmenter.predict_batch`
        (crop -> resize -> /255 -> network -> :meth:`~segmentation.predict.Segmenter.result`)
        in one network call, without finding the boxes a second time. A slice the
        input check mapped to the training curve (``_Prepared.corrected``) is
        segmented from that mapped crop, as ``segmentation.evaluate`` scores it.
        """
        seg = self.segmenter
        if not hasattr(seg, "predict_crops") or not hasattr(seg, "input_size"):
            return [seg.predict(p.img.gray if p.corrected is None else p.corrected.gray,
                                threshold=threshold, postprocess=postprocess) for p in preps]
        s = int(seg.input_size)
        boxes = [p.box if p.corrected is None else p.corrected.box for p in preps]
        crops = [p.brain if p.corrected is None else p.corrected.brain for p in preps]
        x = np.stack([resize_square(c, s) for c in crops]).astype(np.float32) / 255.0
        probs = seg.predict_crops(x)
        return [seg.result(prob, box, p.img.gray.shape, threshold, postprocess)
                for p, box, prob in zip(preps, boxes, probs, strict=True)]


@dataclass(frozen=True)
class _Mapped:
    """A flagged slice mapped to the training curve: whole slice, its head box and crop."""

    gray: np.ndarray
    box: CropBox
    brain: np.ndarray


@dataclass
class _Prepared:
    """One decoded slice ready for the networks: its crop box, brain crop and spacing."""

    img: LoadedImage
    box: CropBox
    brain: np.ndarray
    spacing: tuple[float, float] | None
    spacing_source: str
    t: dict[str, float]
    intensity: Any | None = None
    """``ensemble.intensity.IntensityCheck`` of the slice, when a reference is loaded."""
    corrected: _Mapped | None = None
    """The slice mapped to the training curve, for a slice the input check corrects."""
    quality: Any | None = None
    """``ensemble.quality.QualityCheck`` of the slice as given, when a reference is loaded."""


def _check_threshold(threshold: float) -> None:
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must be in (0, 1); received {threshold}")


def _check_spacing(
    spacing_cm: tuple[float, float] | None, source: str | None
) -> tuple[float, float] | None:
    """Validate a user-given ``(row, col)`` spacing in cm; ``None`` passes through."""
    if spacing_cm is None:
        return None
    if source not in ("user", "assumed"):
        raise ValueError(
            f"spacing_source for a given spacing must be one of ['assumed', 'user']; "
            f"received {source!r}"
        )
    r, c = (float(v) for v in spacing_cm)
    if not (np.isfinite(r) and np.isfinite(c) and r > 0 and c > 0):
        raise ValueError(f"spacing_cm must be two positive finite numbers; received {spacing_cm}")
    return r, c


def _resolve_spacing(
    img: LoadedImage, spacing_cm: tuple[float, float] | None, source: str | None
) -> tuple[tuple[float, float] | None, str]:
    given = _check_spacing(spacing_cm, source)
    if given is not None:
        return given, str(source)
    if img.spacing_cm is not None:
        return img.spacing_cm, "dicom"
    return None, "none"


def _load_optional(folder: Path, what: str, loader: Any, missing: list[str],
                   strict: bool) -> Any | None:
    """``loader(folder)`` when ``folder/config.json`` exists; else note it in ``missing``.

    Raises:
        ArtifactError: If it is absent and ``strict`` (naming everything missing so far).
    """
    if (folder / "config.json").exists():
        return loader(folder)
    missing.append(f"{folder} ({what})")
    if strict:
        raise ArtifactError("Missing artifacts: " + "; ".join(missing))
    return None


def load_pipeline(artifacts_dir: str | Path = "artifacts", *, strict: bool = False,
                  limits: InputLimits | None = None, precision: str | None = None,
                  warm_up: bool = True, tta: str | None = None,
                  runtime: str | None = None) -> Pipeline:
    """Load every model from ``artifacts_dir`` (``classification/`` and ``segmentation/resunet``).

    ``classification/intensity_reference`` (``python -m ensemble.intensity``), when
    present, adds a check of each slice's grey levels against the training slices'
    (a warning, and ``CaseResult.intensity``); ``classification/quality_reference``
    (``python -m ensemble.quality``) one of its noise and fine detail (warnings, and
    ``CaseResult.quality``).

    Args:
        artifacts_dir: Root of the artifact tree.
        strict: Raise if anything is missing; otherwise work with what is present
            and list the rest in ``Pipeline.missing``. Corrupt files always raise.
        limits: Input size limits for decoding.
        precision: Precision of the base classifiers, ``"float32"`` or ``"bfloat16"``,
            or per model such as ``"resnet50=bfloat16,vgg19=bfloat16"`` (see
            :func:`ensemble.inference.parse_precision`), or ``"auto"``: bfloat16 only
            for the models whose test-split accuracy ``benchmarks/precision_check.py
            --record`` found unchanged, and only on a CPU with native bfloat16
            (:func:`ensemble.precision.auto_precision`). ``None`` (default) reads
            ``$NEUROSTACK_PRECISION`` and falls back to ``"auto"``.
        warm_up: Run every model once before returning (:meth:`Pipeline.warm_up`).
        tta: The base classifiers' test-time augmentation (``"none"`` or ``"hflip"``),
            or ``"cascade"`` (single crops, ``"hflip"`` for the unsure slices).
            ``None`` (default) reads ``$NEUROSTACK_TTA`` and falls back to the one the
            meta-learner was fitted with; ``"none"`` halves the classifiers' compute.
        runtime: Where the base classifiers run: ``"auto"``, ``"tensorflow"``,
            ``"litert"`` or per model (see :func:`ensemble.inference.parse_runtime`).
            ``None`` (default) reads ``$NEUROSTACK_RUNTIME`` and falls back to ``"auto"``
            (:func:`ensemble.inference.load_ensemble`).

    Raises:
        ArtifactError: Naming missing (strict) or corrupt artifacts.
    """
    from ensemble import quality as quality_check
    from ensemble.inference import load_ensemble
    from ensemble.intensity import REFERENCE_FOLDER, load_reference
    from ensemble.precision import default_precision
    from segmentation.predict import load_segmenter

    if precision is None:
        precision = default_precision()
    if tta is None:
        tta = os.environ.get(TTA_ENV, "").strip() or None
    root = Path(artifacts_dir)
    ensemble = load_ensemble(
        root / "classification", strict=strict, precision=precision, tta=tta, runtime=runtime
    )
    missing = list(ensemble.missing)
    segmenter = _load_optional(root / "segmentation" / "resunet", "segmentation model",
                               load_segmenter, missing, strict)
    intensity = _load_optional(root / "classification" / REFERENCE_FOLDER,
                               "intensity check of the input", load_reference, missing, strict)
    quality = _load_optional(root / "classification" / quality_check.REFERENCE_FOLDER,
                             "noise and detail check of the input",
                             quality_check.load_reference, missing, strict)
    pipeline = Pipeline(ensemble, segmenter, missing=missing, limits=limits, intensity=intensity,
                        quality=quality)
    if warm_up:
        pipeline.warm_up()
    return pipeline


__all__ = ["CaseResult", "InputImageError", "Pipeline", "load_pipeline", "__version__"]
