from __future__ import annotations

import ast
from pathlib import Path

import pytest

from neurostack.imaging import InputLimits

REPO = Path(__file__).resolve().parents[2]
LIBRARY = ("neurostack", "ensemble", "segmentation", "morphology")
PURE_DASHBOARD = ("paths.py", "evaluation.py", "charts.py", "tables.py")


def _config() -> dict:
    # Only the two configuration tests need a TOML reader (standard from Python 3.11);
    # the rest of this file must also run on 3.10.
    tomllib = pytest.importorskip("tomllib")
    return tomllib.loads((REPO / ".streamlit" / "config.toml").read_text())


def test_upload_limit_matches_the_image_loader():
    assert _config()["server"]["maxUploadSize"] * 1024 * 1024 == InputLimits().max_bytes


def test_server_is_headless_and_private():
    cfg = _config()
    assert cfg["server"]["headless"] is True
    assert cfg["browser"]["gatherUsageStats"] is False
    assert cfg["browser"]["serverAddress"] == "localhost"  # no external-IP lookup at start-up


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_library_and_pure_dashboard_modules_never_import_streamlit():
    files = [p for pkg in LIBRARY for p in (REPO / pkg).rglob("*.py")]
    files += [REPO / "dashboard" / name for name in PURE_DASHBOARD]
    offenders = [str(p.relative_to(REPO)) for p in files if "streamlit" in _imports(p)]
    assert not offenders


def test_every_page_is_linked_from_home():
    from dashboard.components import PAGES

    linked = {page for page, *_ in PAGES}
    assert linked == {f"pages/{p.name}" for p in (REPO / "pages").glob("*.py")}


def test_paths_follow_the_environment(monkeypatch, tmp_path):
    from dashboard import paths

    monkeypatch.setenv("NEUROSTACK_ARTIFACTS", str(tmp_path))
    assert paths.artifacts_root() == tmp_path
    assert paths.samples_dir() == REPO / "artifacts" / "samples"  # falls back to the repo copy
    (tmp_path / "samples").mkdir()
    assert paths.samples_dir() == tmp_path / "samples"
    monkeypatch.delenv("NEUROSTACK_ARTIFACTS")
    assert paths.artifacts_root() == REPO / "artifacts"
    monkeypatch.setenv("NEUROSTACK_DB_URL", "sqlite:///x.db")
    monkeypatch.setenv("NEUROSTACK_DATA_DIR", "")
    assert paths.store_location() == ("sqlite:///x.db", None)


def test_figshare_assumption_caveat_known_answers():
    from dashboard.paths import figshare_assumption_caveat

    assert figshare_assumption_caveat((512, 512)) is None
    assert figshare_assumption_caveat((512, 512, 3)) is None
    assert figshare_assumption_caveat(None) is None
    assert "256×512 px" in figshare_assumption_caveat((512, 256))


def test_the_shared_pipeline_obeys_the_dashboard_pixel_limit(monkeypatch):
    """The analysis, not only the upload preview, uses ``NEUROSTACK_MAX_PIXELS``."""
    from dashboard import cache

    seen: dict = {}

    def fake_load(artifacts_dir, **kwargs):
        seen.update(kwargs, artifacts_dir=artifacts_dir)
        return object()

    monkeypatch.setattr(cache, "load_pipeline", fake_load)
    monkeypatch.setenv("NEUROSTACK_MAX_PIXELS", "1234")
    cache._pipeline_for.clear()
    try:
        cache._pipeline_for("some/artifacts")
    finally:
        cache._pipeline_for.clear()
    assert seen["artifacts_dir"] == "some/artifacts"
    assert seen["limits"] == cache.input_limits()
    assert seen["limits"].max_pixels == 1234
