"""A printable one-page case report: one self-contained HTML file per analysed slice.

:func:`case_report_html` lays out what the Case Explorer shows for a
:class:`~neurostack.pipeline.CaseResult` — decision, each model's probabilities,
the slice with its green overlay and binary mask, the measurements with their
units and pixel-spacing source, the mask settings and the model versions — as
one HTML document with the images embedded as PNG data URIs, so it can be
saved, mailed or printed to PDF from a browser without the dashboard.

The report identifies the image by its SHA-256 only: it never receives a file
name or DICOM tags, so it cannot contain them. Every text value is HTML-escaped.
"""

from __future__ import annotations

import argparse
import base64
import html
import sys
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from morphology import format_record
from neurostack import CLASS_NAMES, MODEL_LABELS, __version__
from neurostack.formatting import final_answer_label, format_probability
from neurostack.pipeline import CaseResult
from neurostack.render import encode_png

SPACING_SOURCE_TEXT: dict[str, str] = {
    "dicom": "read from the DICOM file (Pixel Spacing)",
    "user": "entered by the user",
    "assumed": "assumed from the usual figshare acquisition (an assumption, not a measurement)",
    "none": "unknown — measurements in pixel units",
}
"""How each ``spacing_source`` value is worded for a reader."""

DISCLAIMER = (
    "Research tool — not a diagnostic device. These predictions, masks and measurements "
    "come from machine-learning models for research and teaching; they have not been "
    "validated for clinical use and must not be used to diagnose, treat or triage patients."
)


def spacing_sentence(spacing_cm: tuple[float, float] | None, source: str) -> str:
    """One sentence saying which pixel spacing the measurements use and where it came from.

    Args:
        spacing_cm: ``(row, column)`` pixel size in cm, or ``None`` when unknown.
        source: One of :data:`SPACING_SOURCE_TEXT`'s keys (other values are shown as given).

    Returns:
        E.g. ``"Pixel spacing 0.5 × 0.8 mm (row × column), read from the DICOM file
        (Pixel Spacing)."``
    """
    if not spacing_cm:
        return f"Pixel spacing {SPACING_SOURCE_TEXT['none']}."
    row, col = spacing_cm
    return (f"Pixel spacing {row * 10:.4g} × {col * 10:.4g} mm (row × column), "
            f"{SPACING_SOURCE_TEXT.get(source, source)}.")


def intensity_sentence(intensity: Mapping[str, float] | None) -> str:
    """Say how a slice's grey levels compare with the training slices' (``CaseResult.intensity``).

    ``None`` (no reference loaded) -> says the check was not made.
    """
    if intensity is None:
        return "Input check not made: no intensity reference in the artifacts."
    a, t, g = intensity["atypicality"], intensity["threshold"], intensity["relative_gamma"]
    if a <= t:
        return (f"Input check: grey levels typical of the training slices (atypicality "
                f"{a:.3f} ≤ {t:.3f}; relative gamma {g:.2f}).")
    text = (f"Input check: grey levels unlike the training slices (atypicality {a:.3f} > "
            f"{t:.3f}; relative gamma {g:.2f}); the classification may be unreliable.")
    if intensity.get("corrected"):
        text += (" Classified and outlined as a copy with its grey levels mapped to the "
                 "training curve; as given, the ensemble says "
                 f"{intensity['uncorrected_class']} "
                 f"({format_probability(intensity['uncorrected_confidence'])}).")
    return text


def quality_sentence(quality: Mapping[str, Any] | None) -> str:
    """Say how a slice's noise and fine detail compare with the training slices'.

    ``quality`` is ``CaseResult.quality``; ``None`` (no reference loaded) -> says the
    check was not made.
    """
    if quality is None:
        return "Noise and detail check not made: no quality reference in the artifacts."
    n, nl = quality["noise_sigma"], quality["noise_limit"]
    d, dl = quality["detail_level"], quality["detail_limit"]
    noise = (f"noisier than the training slices (noise sd {n:.1f} > {nl:.1f} grey levels)"
             if quality["noisy"] else f"noise sd {n:.1f} ≤ {nl:.1f} grey levels")
    detail = (f"less fine detail than the training slices ({d:.2f} < {dl:.2f}: blurred or "
              "up-sampled)" if quality["smooth"] else f"detail level {d:.2f} ≥ {dl:.2f}")
    verdict = ("within the training slices' range" if not (quality["noisy"] or quality["smooth"])
               else "outside the training slices' range")
    return f"Noise and detail check: {verdict} ({noise}; {detail})."


def review_sentence(result: Any) -> str:
    """Say whether the classification should be double-checked (``CaseResult.review_*``)."""
    conf, limit = result.confidence, result.review_threshold
    how = ("chosen on the validation split against the ensemble's errors"
           if result.review_measured else "a fixed limit, not measured against errors")
    if result.review_flagged:
        return (f"Review: the top probability {conf:.2f} is below {limit:.2f} ({how}); "
                "double-check this answer.")
    return f"Review: not flagged (top probability {conf:.2f} ≥ {limit:.2f}, {how})."


def outline_sentence(result: Any) -> str:
    """Say how far to trust a slice's outline (``CaseResult.outline_*``).

    Returns ``""`` for a slice that was not segmented.
    """
    if not result.segmented:
        return ""
    conf, flagged, limit = (result.outline_confidence, result.outline_flagged,
                            result.outline_flag_threshold)
    if conf is None:
        return "Outline confidence: no outline."
    text = (f"Outline confidence {conf:.2f} (the segmenter's mean probability inside the "
            "outline)")
    if flagged is True:
        return f"{text}: below the flag threshold {limit:.2f}; check the outline by eye."
    if flagged is False:
        return (f"{text}: at or above the flag threshold {limit:.2f} chosen on the validation "
                "patients.")
    if limit is None:
        return f"{text}; no flag threshold recorded for these weights."
    return (f"{text}; the flag threshold {limit:.2f} holds at the segmenter's own mask "
            "threshold and post-processing, so it is not applied here.")


def format_value(value: Any) -> str:
    """Format a measurement or flag for display.

    ``None`` -> ``"—"``, booleans -> yes/no, integers with thousands separators,
    floats to 4 significant digits, anything else via ``str``.
    """
    if value is None:
        return "—"
    if isinstance(value, bool | np.bool_):
        return "yes" if value else "no"
    if isinstance(value, int | np.integer):
        return f"{int(value):,}"
    if isinstance(value, float | np.floating):
        return f"{float(value):.4g}"
    return str(value)


def png_data_uri(image: np.ndarray) -> str:
    """``(H, W)`` or ``(H, W, 3)`` uint8 RGB array -> ``data:image/png;base64,...``."""
    arr = np.asarray(image)
    if arr.dtype != np.uint8 or arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] != 3):
        raise ValueError(
            f"image must be (H, W) or (H, W, 3) uint8; received {arr.dtype} {arr.shape}"
        )
    return "data:image/png;base64," + base64.b64encode(encode_png(arr)).decode("ascii")


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;color:#111;
max-width:980px;margin:24px auto;padding:0 16px;line-height:1.4}
h1{font-size:1.5em;margin:0 0 4px}h2{font-size:1.1em;margin:22px 0 6px;
border-bottom:1px solid #ccc;padding-bottom:2px}
.meta{color:#555;font-size:.9em}.disclaimer{border:1px solid #b00;background:#fff4f4;
padding:8px 10px;font-size:.9em;margin:12px 0}.warn{color:#8a4b00}
table{border-collapse:collapse;font-size:.92em}td,th{border:1px solid #ccc;padding:3px 8px;
text-align:left}td.num{text-align:right;font-variant-numeric:tabular-nums}th{background:#f3f3f3}
.top{font-weight:700}.figs{display:flex;gap:12px;flex-wrap:wrap}
figure{margin:0;flex:1 1 280px;max-width:320px}figure img{width:100%;image-rendering:auto;
border:1px solid #999}figcaption{font-size:.85em;color:#444;text-align:center}
.summary td:first-child{font-weight:600}
@media print{body{margin:0;max-width:none}h2{break-after:avoid}figure,table{break-inside:avoid}}
"""


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _table(header: list[str] | None, rows: list[list[str]], numeric_from: int = 1,
           bold: list[set[int]] | None = None) -> str:
    """Build an escaped HTML table.

    No header row when ``header`` is ``None``; columns from ``numeric_from`` on are
    right-aligned; ``bold[i]`` holds the bold columns of row ``i``.
    """
    head = ("<thead><tr>" + "".join(f"<th>{_esc(h)}</th>" for h in header) + "</tr></thead>"
            if header else "")
    body = []
    for i, row in enumerate(rows):
        cells = []
        for j, cell in enumerate(row):
            cls = ["num"] if j >= numeric_from else []
            if bold and j in bold[i]:
                cls.append("top")
            attr = f' class="{" ".join(cls)}"' if cls else ""
            cells.append(f"<td{attr}>{_esc(cell)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table>{head}<tbody>{''.join(body)}</tbody></table>"


def _figure(image: np.ndarray, caption: str) -> str:
    return (f'<figure><img alt="{_esc(caption)}" src="{png_data_uri(image)}">'
            f"<figcaption>{_esc(caption)}</figcaption></figure>")


def _probability_rows(result: CaseResult, labels: Mapping[str, str],
                      classes: tuple[str, ...]) -> tuple[list[list[str]], list[set[int]]]:
    rows, bold = [], []
    named = [*result.per_model.items(), ("ensemble", result.ensemble)]
    for name, probs in named:
        values = [float(probs[c]) for c in classes]
        rows.append([labels.get(name, name), *(f"{v:.3f}" for v in values)])
        bold.append({1 + int(np.argmax(values))})
    return rows, bold


def case_report_html(
    result: CaseResult,
    *,
    display: np.ndarray | None = None,
    overlay: np.ndarray | None = None,
    model_labels: Mapping[str, str] | None = None,
    generated_at: datetime | None = None,
    title: str = "NeuroStack case report",
    display_note: str | None = None,
) -> str:
    """Render one analysed slice as a self-contained, printable HTML document.

    Args:
        result: The analysis (:meth:`~neurostack.pipeline.Pipeline.analyse`).
        display: ``(H, W)`` or ``(H, W, 3)`` uint8 image shown as the original (e.g. the
            DICOM window on screen); ``None`` leaves the original out.
        overlay: ``(H, W, 3)`` uint8 overlay to show instead of ``result.overlay`` (e.g.
            drawn on the on-screen window).
        model_labels: Display names of the models (``name -> label``); ``None`` uses
            :data:`neurostack.MODEL_LABELS`; names without a label are shown as they are.
        generated_at: Time stamp printed in the header (UTC now when ``None``).
        title: Document title and heading.
        display_note: How ``display`` was rendered (e.g. the window chosen on screen),
            printed under it so the printed image can be reproduced.

    Returns:
        The HTML document as text (UTF-8 when encoded).

    Raises:
        ValueError: If an image is not uint8 (H, W) / (H, W, 3).
    """
    labels = dict(MODEL_LABELS if model_labels is None else model_labels)
    labels["ensemble"] = final_answer_label(result.method, labels.get("ensemble", "ensemble"))
    when = (generated_at or datetime.now(timezone.utc)).astimezone(timezone.utc)
    classes = tuple(c for c in CLASS_NAMES if c in result.ensemble) or tuple(result.ensemble)
    parts: list[str] = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_esc(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{_esc(title)}</h1>",
        f'<div class="meta">Generated {_esc(when.strftime("%Y-%m-%d %H:%M UTC"))} by '
        f"NeuroStack {_esc(__version__)} · image SHA-256 {_esc(result.image_sha256)} · "
        f"{result.shape[1]} × {result.shape[0]} px</div>",
        f'<div class="disclaimer">{_esc(DISCLAIMER)}</div>',
        "<h2>Decision</h2>",
    ]
    summary = [
        ["Predicted class", result.predicted_class],
        ["Confidence", format_probability(result.confidence)],
        ["Final decision", result.method],
        ["Base models agree", "yes" if result.models_agree else "NO"],
        ["Review", review_sentence(result).removeprefix("Review: ")],
        ["Input check", intensity_sentence(result.intensity).removeprefix("Input check: ")],
        ["Noise and detail",
         quality_sentence(result.quality).removeprefix("Noise and detail check: ")],
        ["Tumour found", "yes" if result.tumor_found else "no"],
        ["Segmented", "yes" if result.segmented else "no"],
        *([["Frame", f"{result.frame_index + 1} of {result.n_frames}"]]
          if result.frame_index is not None else []),
    ]
    if result.segmented:
        summary.append(["Outline confidence", outline_sentence(result)
                        .removeprefix("Outline confidence").strip(" :")])
    parts.append(f'<div class="summary">{_table(None, summary, numeric_from=2)}</div>')
    if result.warnings:
        parts.append("<ul>" + "".join(f'<li class="warn">{_esc(w)}</li>'
                                       for w in result.warnings) + "</ul>")

    figures = []
    if display is not None:
        figures.append(_figure(np.asarray(display), "Original" + (
            f" ({display_note})" if display_note else "")))
    shown = overlay if overlay is not None else result.overlay
    if result.segmented and shown is not None:
        figures.append(_figure(np.asarray(shown), "Tumour overlay (green)"))
    if result.segmented and result.mask_png is not None:
        figures.append(_figure(result.mask_png, "Mask (white = tumour)"))
    if figures:
        parts += ["<h2>Images</h2>", f'<div class="figs">{"".join(figures)}</div>']

    rows, bold = _probability_rows(result, labels, classes)
    parts += ["<h2>Class probabilities</h2>",
              _table(["model", *classes], rows, bold=bold),
              '<p class="meta">Highest probability of each model in bold. The final class is '
              f"the {_esc(labels.get('ensemble', 'ensemble'))} row.</p>"]

    parts.append("<h2>Measurements</h2>")
    if result.morphology:
        parts.append(f"<p>{_esc(spacing_sentence(result.spacing_cm, result.spacing_source))}</p>")
        feats = [[name, format_value(value), unit]
                 for name, value, unit in format_record(result.morphology)]
        parts.append(_table(["feature", "value", "unit"], feats, numeric_from=1))
    elif result.segmented:
        parts.append("<p>The mask is empty at this threshold: nothing to measure.</p>")
    else:
        why = ("the segmentation model is not available" if result.tumor_found
               else "no tumour was predicted")
        parts.append(f"<p>No measurements: the slice was not segmented ({why}).</p>")

    parts.append("<h2>Settings and model versions</h2>")
    if result.segmented:
        parts.append(f"<p>Mask threshold {result.threshold:.2f} (probability at or above); "
                     f"post-processing: {_esc(result.postprocess)}.</p>")
    versions = [[labels.get(name, name), str(info.get("sha256", ""))[:12],
                 format_value(info.get("input_size"))]
                for name, info in result.models.items()]
    if versions:
        parts.append(_table(["model", "weights SHA-256 (prefix)", "input size"], versions,
                            numeric_from=2))
    parts.append('<p class="meta">This report holds no file name and no DICOM tags; the image '
                 "is identified by its SHA-256 only.</p></body></html>")
    return "\n".join(parts)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m neurostack.report",
        description="Analyse one MRI slice and write its printable one-page HTML report "
                    "(no file name, no DICOM tags).",
    )
    p.add_argument("image", type=Path, help="PNG, JPEG, TIFF, BMP or DICOM slice")
    p.add_argument("--out", required=True, type=Path, help="HTML file to write")
    p.add_argument("--artifacts", type=Path, default=Path("artifacts"), help="model artifacts")
    p.add_argument("--frame", type=int, default=None,
                   help="frame of a multi-frame file, numbered from 1 (default: the middle)")
    p.add_argument("--spacing-mm", type=float, nargs=2, metavar=("ROW", "COL"), default=None,
                   help="pixel spacing in mm (a DICOM file's own spacing is used otherwise)")
    p.add_argument("--threshold", type=float, default=None,
                   help="mask threshold in (0, 1) (default: the segmenter's operating point)")
    p.add_argument("--postprocess", choices=["none", "largest_component"], default=None,
                   help="mask post-processing (default: the segmenter's operating point)")
    p.add_argument("--force-segmentation", action="store_true",
                   help="segment even when the ensemble predicts no tumour")
    return p


def write_case_report(
    image: Path,
    out: Path,
    *,
    artifacts: Path = Path("artifacts"),
    frame: int | None = None,
    spacing_mm: tuple[float, float] | None = None,
    threshold: float | None = None,
    postprocess: str | None = None,
    force_segmentation: bool = False,
) -> CaseResult:
    """Analyse ``image`` with the models in ``artifacts`` and write its report to ``out``.

    Args:
        image: The slice file.
        out: HTML file to write (its folder must exist); nothing is written on error.
        artifacts: Root of the artifact tree (every SHA-256 is checked).
        frame: Frame of a multi-frame file, numbered from 1; ``None`` takes the middle.
        spacing_mm: ``(row, column)`` pixel spacing in mm given by the user.
        threshold: Mask threshold; ``None`` uses the segmenter's operating point.
        postprocess: Mask post-processing; ``None`` uses the segmenter's operating point.
        force_segmentation: Segment even when no tumour is predicted.

    Returns:
        The analysis the report shows.

    Raises:
        InputImageError: If the image cannot be read.
        ValueError: For invalid options (e.g. frame < 1, non-positive spacing), or if
            ``out`` cannot be written (e.g. it is a folder).
        FileNotFoundError: If the image or the folder of ``out`` does not exist.
    """
    from neurostack.imaging import load_image
    from neurostack.pipeline import load_pipeline

    if frame is not None and frame < 1:
        raise ValueError(f"frame is numbered from 1; received {frame}")
    if not out.parent.is_dir():
        raise FileNotFoundError(f"the folder of --out does not exist: {out.parent}")
    spacing_cm = None if spacing_mm is None else (spacing_mm[0] / 10.0, spacing_mm[1] / 10.0)
    pipeline = load_pipeline(artifacts, strict=True)
    loaded = load_image(image, frame=None if frame is None else frame - 1,
                        limits=pipeline.limits)
    result = pipeline.analyse(loaded, spacing_cm=spacing_cm,
                              spacing_source=None if spacing_cm is None else "user",
                              threshold=threshold, force_segmentation=force_segmentation,
                              postprocess=postprocess)
    text = case_report_html(result, display=loaded.display)
    tmp = out.with_name(out.name + ".part")
    try:
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(out)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise ValueError(f"cannot write the report to {out}: {exc.strerror or exc}") from exc
    return result


def main(argv: list[str] | None = None) -> int:
    """Run the report CLI: 0 on success, 2 for bad input, options or artifacts."""
    from neurostack.cli import USER_ERRORS

    args = _parser().parse_args(argv)
    try:
        result = write_case_report(
            args.image, args.out, artifacts=args.artifacts, frame=args.frame,
            spacing_mm=None if args.spacing_mm is None else tuple(args.spacing_mm),
            threshold=args.threshold, postprocess=args.postprocess,
            force_segmentation=args.force_segmentation)
    except USER_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    confidence = format_probability(result.confidence)
    print(f"{result.predicted_class} ({confidence}); report written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
