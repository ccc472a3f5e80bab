from __future__ import annotations

import io
import json

import numpy as np
import pandas as pd

from dashboard import tables
from morphology import measure
from neurostack import CLASS_NAMES
from neurostack.pipeline import CaseResult


def _probs(top: str) -> dict[str, float]:
    return {c: (0.7 if c == top else 0.1) for c in CLASS_NAMES}


def _case() -> CaseResult:
    mask = np.zeros((40, 40), bool)
    mask[5:15, 10:30] = True  # 10 x 20 pixels of 1 mm: 2 cm2
    return CaseResult(
        image_sha256="ab" * 32, shape=(40, 40),
        per_model={"xception": _probs("glioma"), "vgg19": _probs("notumor")},
        ensemble=_probs("glioma"), predicted_class="glioma", confidence=0.7,
        method="test", models_agree=False, warnings=[], tumor_found=True, segmented=True,
        threshold=0.5, spacing_cm=(0.1, 0.1), spacing_source="user",
        morphology=measure(mask, spacing_cm=(0.1, 0.1), spacing_source="user"),
        timings_s={"decode": 0.0123, "total": 0.5},
        models={"xception": {"sha256": "0123456789abcdef" * 4, "input_size": 299},
                "meta": {"sha256": "fedcba9876543210" * 4}},
    )


def test_model_votes_are_each_base_models_top_class() -> None:
    assert tables.model_votes(_case()) == {"xception": "glioma", "vgg19": "notumor"}


def test_morphology_frame_shows_values_with_their_units() -> None:
    frame = tables.morphology_frame(_case().morphology).set_index("feature")
    assert frame.loc["area_cm2", "value"] == "2" and frame.loc["area_cm2", "unit"] == "cm2"
    assert frame.loc["width_cm", "value"] == "2" and frame.loc["height_cm", "value"] == "1"
    assert list(frame.columns) == ["value", "unit"]


def test_record_downloads_round_trip_the_identifier_free_record() -> None:
    case = _case()
    csv, js = tables.record_downloads(case)
    back = pd.read_csv(io.BytesIO(csv))
    assert len(back) == 1 and back["predicted_class"][0] == "glioma"
    assert back["area_cm2"][0] == 2.0
    assert json.loads(js) == json.loads(json.dumps(case.to_record(), default=str))


def test_timings_and_versions_tables() -> None:
    case = _case()
    timings = tables.timings_frame(case)
    assert timings.to_dict("records") == [{"stage": "decode", "milliseconds": 12.3},
                                          {"stage": "total", "milliseconds": 500.0}]
    versions = tables.versions_frame(case.models | {"unknown": {}}).set_index("model")
    assert versions.loc["xception", "weights sha256"] == "0123456789ab"
    assert versions.loc["xception", "input size"] == 299
    assert versions.loc["unknown", "weights sha256"] == "—"
    assert tables.sha_prefix("abcdef", 3) == "abc" and tables.sha_prefix(None) == "—"
