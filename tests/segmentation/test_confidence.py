"""Known answers for segmentation.confidence (outline confidence and its flag)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from segmentation import confidence as oc


def test_outline_confidence_is_the_mean_probability_inside_the_mask():
    prob = np.array([[0.9, 0.3], [0.6, 0.1]], np.float32)
    mask = np.array([[True, True], [False, False]])
    assert oc.outline_confidence(prob, mask) == pytest.approx(0.6)
    assert oc.outline_confidence(prob, np.zeros((2, 2), bool)) is None
    with pytest.raises(ValueError, match="one shape"):
        oc.outline_confidence(prob, np.ones((3, 2), bool))


# six outlines: three poor (Dice < 0.5), three good; one slice without an outline
CONF = [0.2, 0.4, 0.55, 0.5, 0.8, 0.9, None]
DICE = [0.0, 0.3, 0.45, 0.7, 0.85, 0.9, 0.0]


def test_flag_summary_counts_by_hand():
    s = oc.flag_summary(CONF, DICE, 0.52)
    # flagged: 0.2, 0.4, 0.5 -> two poor caught (of three), one good flagged (of three)
    assert (s["n"], s["n_empty"], s["n_flagged"], s["n_poor"]) == (6, 1, 3, 3)
    assert s["sensitivity"] == pytest.approx(2 / 3)
    assert s["specificity"] == pytest.approx(2 / 3)
    assert s["youden"] == pytest.approx(1 / 3)
    assert s["mean_dice_flagged"] == pytest.approx((0.0 + 0.3 + 0.7) / 3)
    assert s["mean_dice_unflagged"] == pytest.approx((0.45 + 0.85 + 0.9) / 3)
    assert (s["misses"], s["misses_flagged"]) == (1, 1)  # the empty slice is left out
    assert s["spearman"] == pytest.approx(0.9428571, abs=1e-6)


def test_choose_flag_threshold_maximises_youden_and_breaks_ties_low():
    sweep = oc.confidence_sweep(CONF, DICE, grid=[0.3, 0.45, 0.6, 0.7, 0.85])
    # 0.45 catches two poor outlines and no good one; 0.6 and 0.7 all three poor and
    # one good one: J = 2/3 for all three, and the lowest wins
    assert list(sweep["youden"]) == pytest.approx([1 / 3, 2 / 3, 2 / 3, 2 / 3, 1 / 3])
    assert oc.choose_flag_threshold(sweep) == 0.45
    with pytest.raises(ValueError, match="undefined"):
        oc.choose_flag_threshold(oc.confidence_sweep([0.5, 0.6], [0.9, 0.8], grid=[0.55]))


def test_passes_rule_needs_correlation_and_a_dice_gap():
    good = {"spearman": 0.8, "mean_dice_flagged": 0.3, "mean_dice_unflagged": 0.8}
    assert oc.passes_rule(good)
    assert not oc.passes_rule({**good, "spearman": 0.4})
    assert not oc.passes_rule({**good, "mean_dice_flagged": 0.7})
    assert not oc.passes_rule({**good, "mean_dice_flagged": None})


def _evaluation(folder, split, point, sha, conf, dice):
    folder.mkdir(parents=True)
    pd.DataFrame(
        {"id": [f"{i:04d}" for i in range(len(dice))], "dice": dice, "outline_confidence": conf}
    ).to_csv(folder / "per_image.csv", index=False)
    (folder / "metrics.json").write_text(
        json.dumps({**point, "split": split, "artifact": {"weights_sha256": sha}})
    )
    return folder / "per_image.csv"


@pytest.fixture()
def artifact(tmp_path):
    from neurostack.artifacts import sha256_file

    folder = tmp_path / "resunet"
    folder.mkdir()
    (folder / "weights.npz").write_bytes(b"not really weights")
    sha = sha256_file(folder / "weights.npz")
    point = {
        "threshold": 0.2,
        "test_time_augmentation": "hflip",
        "postprocess": "largest_component",
    }
    (folder / "config.json").write_text(
        json.dumps({**point, "weights_sha256": sha, "weights_file": "weights.npz"})
    )
    return folder, point, sha


def test_fit_then_score_round_trip(tmp_path, artifact):
    folder, point, sha = artifact
    conf = [0.2, 0.3, 0.35, 0.8, 0.85, 0.9, 0.95, 0.7]
    dice = [0.0, 0.1, 0.2, 0.8, 0.85, 0.9, 0.9, 0.75]
    val = _evaluation(tmp_path / "val", "val", point, sha, conf, dice)
    record = oc.fit(val, folder)
    assert record["flag_threshold"] == 0.4  # lowest grid value flagging exactly the 3 poor
    assert record["passes_rule"] and record["weights_sha256"] == sha
    assert record["operating_point"] == point
    assert oc.read_record(folder, sha)["flag_threshold"] == 0.4
    assert oc.read_record(folder, "other") is None

    test = _evaluation(tmp_path / "test", "test", point, sha, [0.3, 0.9, None], [0.6, 0.9, 0.0])
    summary = oc.score(test, folder)
    assert (summary["n"], summary["n_flagged"], summary["n_empty"]) == (2, 1, 1)
    assert summary["specificity"] == pytest.approx(0.5) and summary["sensitivity"] is None
    stored = json.loads((folder / oc.RECORD_FILE).read_text())
    assert stored["flag_threshold"] == 0.4  # scoring never changes the threshold
    assert stored["evaluated"]["test"]["n_flagged"] == 1
    assert "0.40" in oc.flag_warning(0.31, stored) and "0.31" in oc.flag_warning(0.31, stored)


def test_fit_refuses_other_splits_points_and_weights(tmp_path, artifact):
    folder, point, sha = artifact
    args = ([0.2, 0.9], [0.1, 0.9])
    with pytest.raises(ValueError, match="validation split"):
        oc.fit(_evaluation(tmp_path / "t", "test", point, sha, *args), folder)
    with pytest.raises(ValueError, match="made at"):
        oc.fit(_evaluation(tmp_path / "p", "val", {**point, "threshold": 0.5}, sha, *args), folder)
    with pytest.raises(ValueError, match="evaluated weights"):
        oc.fit(_evaluation(tmp_path / "w", "val", point, "abc", *args), folder)
    with pytest.raises(ValueError, match="run fit first"):
        oc.score(_evaluation(tmp_path / "s", "test", point, sha, *args), folder)


def test_a_record_that_failed_its_rule_is_not_used(tmp_path, artifact):
    folder, point, sha = artifact
    # confidence unrelated to Dice: the rule fails, so nothing is flagged at run time
    val = _evaluation(
        tmp_path / "val", "val", point, sha, [0.9, 0.3, 0.8, 0.4], [0.1, 0.9, 0.2, 0.8]
    )
    assert oc.fit(val, folder)["passes_rule"] is False
    assert oc.read_record(folder, sha) is None


def test_cli_fit_reports_and_exit_code(tmp_path, artifact, capsys):
    folder, point, sha = artifact
    val = _evaluation(
        tmp_path / "val", "val", point, sha, [0.2, 0.3, 0.8, 0.9], [0.1, 0.2, 0.8, 0.9]
    )
    assert oc.main(["fit", str(val), "--artifacts", str(folder)]) == 0
    assert "passes the rule: True" in capsys.readouterr().out
    assert (
        oc.main(["score", str(tmp_path / "missing" / "per_image.csv"), "--artifacts", str(folder)])
        == 2
    )


def test_a_broken_record_is_ignored_with_a_warning(tmp_path, artifact, caplog):
    folder, point, sha = artifact
    path = folder / oc.RECORD_FILE
    path.write_text("{not json")
    with caplog.at_level("WARNING", logger="segmentation.confidence"):
        assert oc.read_record(folder, sha) is None
    assert "not valid JSON" in caplog.text
    caplog.clear()
    path.write_text(json.dumps({"flag_threshold": 0.8, "weights_sha256": sha}))
    with caplog.at_level("WARNING", logger="segmentation.confidence"):
        assert oc.read_record(folder, sha) is None
    assert "lacks" in caplog.text and "operating_point" in caplog.text


@pytest.mark.slow
def test_the_segmenter_still_loads_next_to_a_corrupt_record(tmp_path):
    from neurostack.testing import make_tiny_artifacts
    from segmentation.predict import load_segmenter

    root = make_tiny_artifacts(tmp_path / "a", with_evaluation=False)
    folder = root / "segmentation" / "resunet"
    (folder / oc.RECORD_FILE).write_bytes(b"\x00\xff truncated")
    seg = load_segmenter(folder)
    assert seg.confidence_record is None
    gray = (np.random.default_rng(0).random((64, 80)) * 255).astype(np.uint8)
    result = seg.predict(gray, threshold=0.0001)
    assert seg.outline_flagged(result) is None


def test_score_names_the_bad_cell_of_a_broken_table(tmp_path, artifact):
    folder, point, sha = artifact
    val = _evaluation(
        tmp_path / "val", "val", point, sha, [0.2, 0.3, 0.8, 0.9], [0.1, 0.2, 0.8, 0.9]
    )
    oc.fit(val, folder)
    test = _evaluation(tmp_path / "test", "test", point, sha, [0.5, 0.9], [0.7, 0.8])
    test.write_text("id,dice,outline_confidence\n0001,0.7,0.5\n0002,abc,0.9\n")
    with pytest.raises(ValueError, match=r"'dice' holds 1 non-numeric value\(s\), first in row 3"):
        oc.score(test, folder)
    assert oc.read_record(folder, sha)["evaluated"] == {}  # nothing written
