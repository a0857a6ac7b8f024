"""The demo page in a real headless Chromium, driven by Selenium and Debian's chromedriver.

Without Chromium, chromedriver or selenium these tests are skipped, except in
CI (CI=true), where they fail so that a missing install step cannot hide.
Set UPDATE_DEMO_SCREENSHOT=1 to copy the screenshot to docs/demo.png.
"""

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ROOT
from tests.samples import b64, encode, read, t1_image, t1_jpg, with_exif_orientation

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1280,1000",
]
RESULT_TIMEOUT = 180


def missing_browser_parts() -> list[str]:
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not Path(path).is_file()]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("the selenium package")
    return missing


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    missing = missing_browser_parts()
    if missing:
        reason = (
            f"demo test needs {', '.join(missing)}: apt-get install -y chromium "
            "chromium-driver, and pip install -r requirements/test.txt"
        )
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)

    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # An explicit driver path keeps Selenium Manager from looking for a driver online.
    service = Service(executable_path=CHROMEDRIVER)
    driver = webdriver.Chrome(options=options, service=service)
    yield driver
    driver.quit()


def wait_for_result(driver: Any, panel_id: str) -> str:
    """Wait until the photo panel leaves its loading state, and return the final state."""
    from selenium.webdriver.support.ui import WebDriverWait

    def finished(driver: Any) -> str | None:
        state = driver.find_element("id", panel_id).get_attribute("data-state")
        return state if state in ("done", "error") else None

    state: str = WebDriverWait(driver, RESULT_TIMEOUT, poll_frequency=0.2).until(finished)
    return state


def choose_file(driver: Any, panel_id: str, path: Path) -> None:
    driver.find_element("css selector", f"#{panel_id} input[type=file]").send_keys(str(path))


def panel_text(driver: Any, panel_id: str) -> str:
    text: str = driver.find_element("css selector", f"#{panel_id} .status").text
    return text


def save_screenshot(driver: Any, path: Path) -> None:
    """Save the whole page, resizing the window to the document's height first."""
    for _ in range(3):
        missing = driver.execute_script(
            "return document.documentElement.scrollHeight - window.innerHeight"
        )
        if missing <= 0:
            break
        size = driver.get_window_size()
        driver.set_window_size(size["width"], size["height"] + int(missing))
    assert driver.save_screenshot(str(path))


def largest_face_crop(client: httpx.Client, directory: Path) -> tuple[Path, tuple[int, int]]:
    """Write the largest face of t1.jpg, with margin, as a JPEG whose EXIF orientation is 6."""
    faces = client_faces(client)
    x1, y1, x2, y2 = faces[0]["bbox"]
    margin_x, margin_y = (x2 - x1) * 0.6, (y2 - y1) * 0.6
    image = t1_image()
    box = (
        int(max(0, x1 - margin_x)),
        int(max(0, y1 - margin_y)),
        int(min(image.width, x2 + margin_x)),
        int(min(image.height, y2 + margin_y)),
    )
    crop = image.crop(box)
    path = directory / "face-rotated.jpg"
    path.write_bytes(with_exif_orientation(crop, 6))
    return path, crop.size


def client_faces(client: httpx.Client) -> list[dict[str, Any]]:
    response = client.post("/", json={"inputs": [b64(read(t1_jpg()))]})
    assert response.status_code == 200, response.text
    faces: list[dict[str, Any]] = response.json()[0]
    return faces


def test_demo_page_not_in_schema(client: httpx.Client) -> None:
    response = client.get("/demo")

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert "connect-src 'self'" in response.headers["content-security-policy"]
    assert "/demo" not in client.get("/openapi.json").json()["paths"]


def test_demo_boxes_six_faces_and_compares(
    browser: Any, client: httpx.Client, tmp_path: Path
) -> None:
    crop_path, (crop_width, crop_height) = largest_face_crop(client, tmp_path)
    browser.get(str(client.base_url.join("/demo")))

    choose_file(browser, "photo-a", t1_jpg())
    assert wait_for_result(browser, "photo-a") == "done", panel_text(browser, "photo-a")
    panel_a = browser.find_element("id", "photo-a")
    assert panel_a.get_attribute("data-face-count") == "6"
    assert len(panel_a.find_elements("css selector", ".faces li")) == 6
    canvas_a = panel_a.find_element("tag name", "canvas")
    width, height = t1_image().size
    assert canvas_a.get_attribute("data-width") == str(width)
    assert canvas_a.get_attribute("data-height") == str(height)
    assert "6 faces" in panel_text(browser, "photo-a")

    choose_file(browser, "photo-b", crop_path)
    assert wait_for_result(browser, "photo-b") == "done", panel_text(browser, "photo-b")
    panel_b = browser.find_element("id", "photo-b")
    assert panel_b.get_attribute("data-face-count") == "1"
    # The crop's pixels are stored rotated, with EXIF orientation 6. The browser
    # shows it upright, as the service's coordinates assume.
    canvas_b = panel_b.find_element("tag name", "canvas")
    assert canvas_b.get_attribute("data-width") == str(crop_width)
    assert canvas_b.get_attribute("data-height") == str(crop_height)

    similarity = browser.find_element("id", "similarity")
    assert similarity.is_displayed()
    assert len(similarity.find_elements("css selector", "tr")) == 7
    assert len(similarity.find_elements("css selector", "td")) == 6
    assert similarity.get_attribute("data-best") == "A1-B1"
    best = similarity.find_element("css selector", "td.best")
    assert float(best.text) > 0.8

    screenshot = tmp_path / "demo.png"
    save_screenshot(browser, screenshot)
    assert screenshot.stat().st_size > 10_000
    if os.environ.get("UPDATE_DEMO_SCREENSHOT") == "1":
        shutil.copyfile(screenshot, ROOT / "docs" / "demo.png")

    severe = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert severe == []


def test_demo_shows_service_error(browser: Any, client: httpx.Client, tmp_path: Path) -> None:
    broken = tmp_path / "broken.png"
    broken.write_bytes(encode(t1_image(), "PNG")[:200])
    browser.get(str(client.base_url.join("/demo")))

    choose_file(browser, "photo-a", broken)

    assert wait_for_result(browser, "photo-a") == "error"
    message = panel_text(browser, "photo-a")
    assert "HTTP 422" in message
    assert browser.find_element("id", "photo-a").get_attribute("data-face-count") == "0"
    assert not browser.find_element("id", "similarity").is_displayed()
