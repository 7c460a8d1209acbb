"""Debian's headless Chromium through Debian's chromedriver (Selenium drives it; nothing is
downloaded), with the flags that keep it off the network: for the dashboard's tests and
benchmarks/dashboard.py. Also what those tests do with it: log in, wait for text, read it,
take screenshots (into test-artifacts/dashboard/)."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from typing import Any

from simulator.rig.server import REPO

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1300,900",
)
SCREENSHOTS = REPO / "test-artifacts" / "dashboard"


def open_chromium() -> Any:
    """A Selenium Chrome driver on Debian's Chromium (quit it when done)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    if CHROMIUM is None or CHROMEDRIVER is None:
        raise FileNotFoundError("apt-get install chromium chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)


def wait_for(check: Callable[[], Any], what: str, timeout: float = 20) -> Any:
    """``check()``'s first truthy answer, asked every 0.1 s (an exception counts as not yet:
    an element not there yet, or stale after a re-render) until ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if value := check():
                return value
        except Exception:
            if time.monotonic() > deadline:
                raise
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.1)


def text_of(driver: Any, css: str) -> str:
    """The element's text, read in one script call (the live pages re-render every 2 s, so a
    Selenium element handle may go stale between finding and reading)."""
    text = driver.execute_script(
        "const e = document.querySelector(arguments[0]); return e ? e.innerText : null", css
    )
    if text is None:
        raise LookupError(f"nothing matches {css}")
    return str(text)


def attribute_of(driver: Any, css: str, name: str) -> str:
    """An attribute of the element, read in one script call (as ``text_of``, for the same
    reason: a handle found, then read, may be of an element re-rendered away)."""
    value = driver.execute_script(
        "const e = document.querySelector(arguments[0]);"
        " return e ? e.getAttribute(arguments[1]) : null",
        css,
        name,
    )
    if value is None:
        raise LookupError(f"nothing matches {css}, or it has no {name}")
    return str(value)


def shows(driver: Any, css: str, text: str) -> bool:
    return text in text_of(driver, css)


def chart_series(driver: Any, css: str) -> dict[str, list[float | None]]:
    """The values each line of a chart draws, by series name."""
    return dict(
        driver.execute_script(
            "return Object.fromEntries([...document.querySelectorAll(arguments[0] + ' polyline')]"
            ".map(l => [l.dataset.series, JSON.parse(l.dataset.values)]))",
            css,
        )
    )


def log_in(driver: Any, url: str, token: str) -> None:
    """Open the dashboard at ``url`` and log in with ``token`` as a user would."""
    from selenium.webdriver.common.by import By

    driver.get(url + "/ui/")
    field = wait_for(lambda: driver.find_element(By.ID, "token"), "the token field")
    field.send_keys(token)
    driver.find_element(By.CSS_SELECTOR, "#login button").click()
    wait_for(lambda: driver.find_elements(By.ID, "fleet"), "the fleet page")


def screenshot(driver: Any, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(SCREENSHOTS / f"{name}.png"))
