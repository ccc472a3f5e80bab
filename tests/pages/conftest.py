"""Fixtures for the dashboard page tests (``streamlit.testing.v1.AppTest``).

The pages read ``NEUROSTACK_ARTIFACTS`` (a tiny random artifact tree built
once per session) and ``NEUROSTACK_DATA_DIR`` (a fresh folder per test, so the
case registry starts empty). Models are cached per process by
``st.cache_resource`` and shared by every test, exactly as in a server.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # the pages import dashboard/ like `streamlit run Home.py` does
    sys.path.insert(0, str(REPO))

APP_TIMEOUT_S = 300


@pytest.fixture(scope="session")
def dashboard_artifacts(request: pytest.FixtureRequest,
                        tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session's tiny artifact tree (shared with other suites when they build one)."""
    try:
        return Path(request.getfixturevalue("tiny_artifacts"))
    except pytest.FixtureLookupError:
        testing = pytest.importorskip("neurostack.testing")
        return testing.make_tiny_artifacts(tmp_path_factory.mktemp("dashboard_artifacts"))


@pytest.fixture
def app_env(dashboard_artifacts: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point the dashboard at the tiny artifacts and an empty registry; returns the data dir."""
    data_dir = tmp_path / "data"
    monkeypatch.setenv("NEUROSTACK_ARTIFACTS", str(dashboard_artifacts))
    monkeypatch.setenv("NEUROSTACK_DATA_DIR", str(data_dir))
    monkeypatch.delenv("NEUROSTACK_DB_URL", raising=False)
    monkeypatch.chdir(REPO)
    return data_dir


@pytest.fixture
def make_app(app_env: Path) -> Callable[[str], object]:
    """Factory: ``make_app("pages/1_Case_Explorer.py")`` -> a not yet run ``AppTest``."""
    from streamlit.testing.v1 import AppTest

    def make(script: str) -> AppTest:
        return AppTest.from_file(str(REPO / script), default_timeout=APP_TIMEOUT_S)

    return make
