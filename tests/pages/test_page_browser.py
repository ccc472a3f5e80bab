"""A real Chromium drives the running dashboard: Case Explorer analyses a bundled sample.

Needs Debian's ``chromium`` and ``chromium-driver`` (installed by ``.ci/run``) and
``selenium`` (requirements.txt); nothing is downloaded at test time (Selenium
Manager is switched off and the Debian driver is used).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
from page_helpers import REPO, SAMPLES

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
CLASS_PATTERN = re.compile(r"Predicted class\s+(glioma|meningioma|notumor|pituitary)\b")
MEASUREMENTS = ("area_px", "perimeter_px", "max_feret_px", "circularity", "solidity")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_healthy(url: str, proc: subprocess.Popen, timeout_s: float = 90.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"streamlit exited with code {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:  # noqa: S310 - loopback only
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"streamlit did not answer {url} within {timeout_s:.0f} s")


def _chrome(profile: Path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run",
                "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--window-size=1500,2200"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)


def _button(driver, label: str):
    """The enabled button labelled ``label``, or ``None``.

    Streamlit re-renders while a page runs, so a button found a moment ago may be
    gone (stale) when its text is read: such a button is skipped, and the callers'
    waits try again.
    """
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By

    for button in driver.find_elements(By.TAG_NAME, "button"):
        try:
            if button.text.strip() == label and button.is_enabled():
                return button
        except StaleElementReferenceException:
            continue
    return None


def _wait(driver, seconds: float):
    """A ``WebDriverWait`` that retries through stale elements (Streamlit re-renders)."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, seconds, ignored_exceptions=(StaleElementReferenceException,))


def _click(driver, label: str, seconds: float) -> None:
    """Click the button ``label`` once it exists, retrying if it goes stale in between."""

    def attempt(d) -> bool:
        button = _button(d, label)
        if button is None:
            return False
        button.click()
        return True

    _wait(driver, seconds).until(attempt)


def test_case_explorer_in_chromium(dashboard_artifacts, tmp_path, monkeypatch):
    if not CHROMIUM.exists() or not CHROMEDRIVER.exists():
        pytest.skip("Debian chromium/chromium-driver not installed (/usr/bin/chromium, "
                    "/usr/bin/chromedriver); .ci/run installs them with "
                    "`apt-get install -y chromium chromium-driver`")
    pytest.importorskip("selenium", reason="selenium is not installed (pip, requirements.txt)")
    from selenium.webdriver.common.by import By

    monkeypatch.setenv("SE_OFFLINE", "true")  # Selenium Manager must never download anything
    sample = sorted(SAMPLES.glob("*.jpg"))[0].name
    port = _free_port()
    env = {**os.environ, "NEUROSTACK_ARTIFACTS": str(dashboard_artifacts),
           "NEUROSTACK_DATA_DIR": str(tmp_path / "data"), "PYTHONPATH": str(REPO)}
    env.pop("NEUROSTACK_DB_URL", None)
    log_path = tmp_path / "streamlit.log"
    profile = Path(tempfile.mkdtemp(prefix="chromium-profile-"))
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", "Home.py", "--server.headless", "true",
             "--server.port", str(port), "--server.address", "127.0.0.1"],
            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
        )
    driver = None
    try:
        _wait_healthy(f"http://127.0.0.1:{port}/_stcore/health", proc)
        driver = _chrome(profile)
        driver.get(f"http://127.0.0.1:{port}/Case_Explorer?sample={sample}")
        body = lambda d: d.find_element(By.TAG_NAME, "body").text  # noqa: E731
        _click(driver, "Analyse", 240)
        _wait(driver, 300).until(lambda d: CLASS_PATTERN.search(body(d)))
        if _button(driver, "Segment anyway") is not None:
            _click(driver, "Segment anyway", 60)
        _wait(driver, 300).until(lambda d: all(m in body(d) for m in MEASUREMENTS))
        time.sleep(1)  # let the images finish painting
        shot = tmp_path / "case_explorer.png"
        assert driver.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
        text = body(driver)
        assert CLASS_PATTERN.search(text), text[:2000]
        for name in MEASUREMENTS:
            assert name in text
        assert "not a diagnostic device" in text
        assert "Tumour overlay (green)" in text
    except Exception as exc:
        tail = log_path.read_text(errors="replace")[-3000:]
        raise AssertionError(f"{exc}\n--- streamlit log ---\n{tail}") from exc
    finally:
        if driver is not None:
            driver.quit()
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        shutil.rmtree(profile, ignore_errors=True)
