"""A person with a browser (issue 16): headless Debian Chromium, driven by selenium through
Debian's chromedriver, opens one-time links on the embedded default (real gunicorn) and
through the stack's nginx. The page names the file and uses no download; its Download
button saves the very bytes; reloading shows the link used up. A password-protected
file asks for its password on the page, and a wrong one is an error there.

Screenshots of the pages go to the test's tmp directory and to var/test-artifacts/.
``make test`` installs chromium and chromium-driver when they are missing
(scripts/install-nginx); a missing browser fails the run.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from test_resume import Live, live  # noqa: F401  (the deployments: gunicorn, stack)

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "var" / "test-artifacts"
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=900,700",
)


@pytest.fixture
def browser(tmp_path):
    """A fresh headless Chromium with its own profile, saving downloads to tmp_path/downloads."""
    chromium = shutil.which("chromium")
    chromedriver = shutil.which("chromedriver")
    assert chromium and chromedriver, "chromium and chromium-driver are missing: run make test-tools"
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'profile'}")
    options.add_experimental_option("prefs", {
        "download.default_directory": str(downloads),
        "download.prompt_for_download": False,
        "safebrowsing.enabled": False,
    })
    service = Service(executable_path=chromedriver, log_output=str(tmp_path / "chromedriver.log"))
    driver = webdriver.Chrome(options=options, service=service)
    driver.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
    # An element looked for after a form's answer is waited for, up to this long.
    driver.implicitly_wait(10)
    driver.downloads = downloads
    yield driver
    driver.quit()


def screenshot(driver, tmp_path: Path, name: str) -> Path:
    """The page as a person sees it, kept in the test's tmp dir and var/test-artifacts/."""
    path = tmp_path / f"{name}.png"
    assert driver.save_screenshot(str(path))
    assert path.stat().st_size > 1000
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shutil.copy(path, ARTIFACTS / path.name)
    return path


def saved_file(directory: Path, name: str, size: int, timeout: float = 30) -> bytes:
    """The downloaded file once Chromium has finished writing it."""
    deadline = time.monotonic() + timeout
    target = directory / name
    while time.monotonic() < deadline:
        partial = [p for p in directory.iterdir() if p.suffix == ".crdownload"]
        if target.exists() and not partial and target.stat().st_size == size:
            return target.read_bytes()
        time.sleep(0.1)
    raise AssertionError(f"no complete download of {name}: {sorted(p.name for p in directory.iterdir())}")


def test_a_browser_opens_a_one_time_link_downloads_once_and_sees_it_used_up(live, browser, tmp_path):  # noqa: F811
    data = os.urandom(300_000)
    body = live.upload(data)
    url = live.url(body)
    browser.get(url)
    assert browser.find_element(By.ID, "filename").text == "big.bin"
    assert browser.find_element(By.ID, "size").get_attribute("data-bytes") == str(len(data))
    assert "293.0 KiB" in browser.find_element(By.ID, "size").text
    assert browser.find_element(By.ID, "downloads-left").text == "1 of 1"
    # The page's stylesheet applies: the Content-Security-Policy admits it by its hash.
    assert browser.find_element(By.ID, "download").value_of_css_property("background-color") == "rgba(29, 78, 216, 1)"
    screenshot(browser, tmp_path, f"landing-{live.name}")
    assert live.downloads(body) == 0
    assert os.listdir(browser.downloads) == []

    browser.find_element(By.ID, "download").click()
    assert saved_file(browser.downloads, "big.bin", len(data)) == data
    assert live.downloads(body) == 1

    browser.refresh()
    gone = browser.find_element(By.ID, "gone")
    assert gone.get_attribute("data-reason") == "downloaded"
    assert "used up" in gone.text
    screenshot(browser, tmp_path, f"landing-used-up-{live.name}")
    assert live.downloads(body) == 1


def test_a_browser_is_asked_for_the_password_on_the_page(live, browser, tmp_path):  # noqa: F811
    data = os.urandom(50_000)
    body = live.upload(data, password="s3cret")
    browser.get(live.url(body))
    assert 'id="filename"' not in browser.page_source  # nothing the password protects
    field = browser.find_element(By.ID, "password")
    field.send_keys("wrong guess")
    browser.find_element(By.ID, "download").click()
    error = browser.find_element(By.ID, "error")
    assert "not right" in error.text
    screenshot(browser, tmp_path, f"landing-wrong-password-{live.name}")
    assert os.listdir(browser.downloads) == []
    assert live.downloads(body) == 0

    browser.find_element(By.ID, "password").send_keys("s3cret")
    browser.find_element(By.ID, "download").click()
    assert saved_file(browser.downloads, "big.bin", len(data)) == data
    assert live.downloads(body) == 1
