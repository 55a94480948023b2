"""The dashboard as a user opens it: ``lilypad network up``, then ``lilypad serve`` (a process of
its own), then Debian's headless chromium at the URL it printed: the network's providers, cowsay
and tiny SDXL run from their forms, progress shown while they run, the picture loaded from the
network's IPFS gateway. Screenshots go to ``test-artifacts/``."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from lilypad.localnet import key_file
from tests.browser import chromium, screenshot
from tests.e2e.conftest import Up

NETWORK = "e2e-dashboard"


@pytest.fixture
def served(network_up: Up, tmp_path: Path) -> Iterator[str]:
    """``lilypad serve`` on the network, as a process of its own; the URL it printed."""
    network_up(NETWORK, "--port-offset", "3500", "--executor", "process")
    said = tmp_path / "serve.log"
    with said.open("w") as stderr, subprocess.Popen(
        [sys.executable, "-m", "lilypad", "serve", "--network", NETWORK, "--port", "0", "--yes",
         "--key-file", str(key_file(NETWORK, "job_creator"))],
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
        env=os.environ.copy(),
    ) as process:  # fmt: skip
        try:
            assert process.stdout is not None
            url = process.stdout.readline().strip()
            assert url.startswith("http://127.0.0.1:"), url + said.read_text()
            yield url
        finally:
            process.terminate()
            process.wait(20)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_dashboard_runs_cowsay_and_tiny_sdxl_from_their_forms(
    served: str, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    with chromium() as browser:
        browser.get(served)  # the printed URL: its token becomes a cookie, and leaves the bar
        assert "token" not in browser.current_url
        assert int(browser.find_element(By.ID, "total-providers").text) >= 1
        screenshot(browser, "e2e-home")

        # cowsay, from its form
        browser.find_element(By.CSS_SELECTOR, "a[href='/modules/cowsay:v0.0.4']").click()
        message = browser.find_element(By.ID, "in-Message")
        message.clear()
        message.send_keys("hello from the dashboard")
        browser.find_element(By.ID, "run").click()
        _wait_status(browser, "succeeded", 300)
        WebDriverWait(browser, 30).until(
            lambda b: "hello from the dashboard" in _text(b, "figure pre")
        )
        screenshot(browser, "e2e-cowsay")

        # tiny SDXL, from its form: progress while it runs, then the picture from the gateway
        browser.get(served.split("/?")[0] + "/modules/sdxl:v1.0-lilypad1")
        prompt = browser.find_element(By.ID, "in-Prompt")
        prompt.clear()
        prompt.send_keys("a lighthouse at dusk")
        steps = browser.find_element(By.ID, "in-Steps")
        steps.clear()
        steps.send_keys("4")
        browser.find_element(By.CSS_SELECTOR, "select[name=verify] option[value=never]").click()
        browser.find_element(By.ID, "run").click()
        WebDriverWait(browser, 300).until(
            lambda b: (
                not b.find_element(By.ID, "progress").get_attribute("hidden")
                or b.find_element(By.ID, "status").text in ("succeeded", "failed", "canceled")
            )
        )
        progress = browser.find_element(By.ID, "progress-text").text
        screenshot(browser, "e2e-sdxl-running")
        _wait_status(browser, "succeeded", 600)
        image = browser.find_element(By.CSS_SELECTOR, "figure.output img")
        gateway = browser.find_element(By.ID, "gateway").get_attribute("href") or ""
        assert (image.get_attribute("src") or "").startswith(gateway)  # from the IPFS gateway
        WebDriverWait(browser, 30).until(
            lambda b: b.execute_script(
                "const i = document.querySelector('figure.output img');"
                "return i.complete && i.naturalWidth > 0;"
            )
        )
        assert progress.startswith(("base", "refiner", "step")), progress  # e.g. "base 3/4"
        screenshot(browser, "e2e-sdxl-done")

        # image to image: the picture uploaded through the form's file input
        photo = tmp_path / "photo.png"
        Image.new("RGB", (96, 64), (40, 90, 160)).save(photo)
        browser.get(served.split("/?")[0] + "/modules/sdxl-img2img:v1.1-lilypad1")
        browser.find_element(By.ID, "in-Image").send_keys(str(photo))
        browser.find_element(By.CSS_SELECTOR, "select[name=verify] option[value=never]").click()
        browser.find_element(By.ID, "run").click()
        _wait_status(browser, "succeeded", 600)
        assert "Image: ipfs://" in browser.find_element(By.ID, "steps").text  # staged, then run
        WebDriverWait(browser, 30).until(
            lambda b: b.execute_script(
                "const i = document.querySelector('figure.output img');"
                "return i !== null && i.complete && i.naturalWidth > 0;"
            )
        )
        screenshot(browser, "e2e-img2img-done")


def _text(browser: Any, selector: str) -> str:
    from selenium.webdriver.common.by import By

    return str(browser.find_element(By.CSS_SELECTOR, selector).text)


def _wait_status(browser: Any, status: str, seconds: float) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def settled(b: Any) -> bool:
        now = b.find_element(By.ID, "status").text
        assert now not in ("failed", "canceled"), b.find_element(By.ID, "error").text
        return bool(now == status)

    WebDriverWait(browser, seconds).until(settled)
