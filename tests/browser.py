"""Debian's headless chromium, driven by selenium through Debian's chromedriver (selenium's own
driver download is never used: nothing can be downloaded here), and screenshots saved as test
artifacts under ``test-artifacts/``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


def chromium(width: int = 1280, height: int = 1100) -> Any:
    """A new headless chromium (a context manager: it quits at the end of the block)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        f"--window-size={width},{height}",
    ):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


def screenshot(browser: Any, name: str) -> Path:
    """Save what the browser shows as ``test-artifacts/dashboard-NAME.png``."""
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"dashboard-{name}.png"
    browser.save_screenshot(str(path))
    return path
