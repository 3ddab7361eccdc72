"""The web console in a real browser: headless Chromium driven by Debian's chromedriver
(``make browser-deps`` installs both; ``make test`` runs it first). One server on an ephemeral
port over the small world of :mod:`tests.pipeline.console_world`.

Without Chromium these tests are skipped, unless VISTREAM_REQUIRE_BROWSER=1 (``make test``)
makes that a failure. ``VISTREAM_CONSOLE_SCREENSHOT=docs/img/console.png`` saves the page
there after a search (the README's picture)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from vistream.pipeline.serve import background_server
from vistream.stages.records import encode_image
from tests.pipeline import console_world as world

pytestmark = pytest.mark.browser

CHROMEDRIVER = os.environ.get("VISTREAM_CHROMEDRIVER") or shutil.which("chromedriver")
CHROMIUM = os.environ.get("VISTREAM_CHROMIUM") or shutil.which("chromium")
WAIT_S = 20  # an upper bound for slow machines, never a speed assertion


def _need_browser() -> None:
    if CHROMEDRIVER and CHROMIUM:
        return
    msg = "no chromium/chromedriver: run `make browser-deps` (Debian packages)"
    if os.environ.get("VISTREAM_REQUIRE_BROWSER") == "1":
        pytest.fail(msg)
    pytest.skip(msg)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    _need_browser()
    root = tmp_path_factory.mktemp("console")
    app, _index, _store, frames = world.build(root)
    with background_server(app, startup_timeout=WAIT_S) as url:
        yield url, frames, root


@pytest.fixture(scope="module")
def browser(server):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1280,1100", "--disable-extensions", "--no-first-run"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(WAIT_S)
    yield driver
    driver.quit()


def _wait(driver, condition, what: str):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, WAIT_S, poll_frequency=0.05).until(
        condition, message=f"the page never showed {what}")


def _open(browser, url: str) -> None:
    browser.get(url + "/console")
    _wait(browser, lambda d: len(d.find_elements("css selector", ".stream img[data-frame-id]")) == 2,
          "two stream frames")


def _error_text(browser) -> str:
    return _wait(browser, lambda d: (el := d.find_element("id", "search-error")).is_displayed()
                 and el.text, "an error message")


def _upload(browser, path: Path) -> None:
    browser.find_element("id", "search-error")  # the page is there
    browser.find_element("id", "upload").send_keys(str(path))


def test_page_loads_with_streams_and_index(server, browser):
    url = server[0]
    _open(browser, url)
    assert browser.title == "vistream console"
    names = [e.get_attribute("data-stream") for e in browser.find_elements("css selector", ".stream")]
    assert names == list(world.STREAMS)
    rows = _wait(browser, lambda d: d.find_elements("css selector", "#index-stats th"), "index stats")
    assert "codes indexed" in [r.text for r in rows]
    paint = browser.execute_script(
        "const p = performance.getEntriesByName('first-contentful-paint')[0]; return p && p.startTime;")
    print(f"first contentful paint: {paint} ms")  # figure for the report, not an assertion


def test_stream_frame_shows_boxes_ids_and_caption(server, browser):
    _open(browser, server[0])
    gate = browser.find_element("css selector", '.stream[data-stream="gate"]')
    img = gate.find_element("css selector", "img")
    assert img.get_attribute("data-frame-id") == f"gate:{world.FRAMES_PER_STREAM - 1:08d}"
    assert browser.execute_script("return arguments[0].naturalWidth", img) == 160
    boxes = _wait(browser, lambda d: gate.find_elements("css selector", ".box"), "track boxes")
    assert [b.text for b in boxes] == ["#1"]
    # the box sits where the track is: x = 150 of 320 px in the frame
    frame = gate.find_element("css selector", ".frame")
    left = boxes[0].rect["x"] - frame.rect["x"]
    assert abs(left / frame.rect["width"] - 150 / 320) < 0.02
    assert gate.find_element("css selector", ".caption").text == "a white box"


def test_uploaded_image_returns_hits_with_thumbnails(server, browser):
    url, frames, root = server
    _open(browser, url)
    query = root / "query.png"
    fid = "yard:00000005"
    query.write_bytes(encode_image(frames[fid], "image/png"))
    _upload(browser, query)
    hits = _wait(browser, lambda d: d.find_elements("css selector", ".hit"), "search results")
    assert hits[0].get_attribute("data-frame-id") == fid
    assert "d=0" in hits[0].text and "yard" in hits[0].text
    _wait(browser, lambda d: d.execute_script(
        "return [...document.querySelectorAll('.hit img')].every(i => i.complete && i.naturalWidth > 0)"),
        "every hit's thumbnail")
    assert not browser.find_element("id", "search-error").is_displayed()
    shot = os.environ.get("VISTREAM_CONSOLE_SCREENSHOT")
    if shot:
        Path(shot).parent.mkdir(parents=True, exist_ok=True)
        browser.execute_script("window.scrollTo(0, 0)")
        assert browser.save_screenshot(shot)


def test_filters_keep_one_stream(server, browser):
    url, frames, root = server
    _open(browser, url)
    from selenium.webdriver.support.ui import Select

    Select(browser.find_element("id", "stream-filter")).select_by_value("gate")
    query = root / "query-gate.png"
    query.write_bytes(encode_image(frames["yard:00000002"], "image/png"))
    _upload(browser, query)
    hits = _wait(browser, lambda d: d.find_elements("css selector", ".hit"), "filtered results")
    assert {h.get_attribute("data-frame-id").split(":")[0] for h in hits} == {"gate"}


def test_box_drawn_on_a_stream_frame_searches(server, browser):
    from selenium.webdriver.common.action_chains import ActionChains

    _open(browser, server[0])
    frame = browser.find_element("css selector", '.stream[data-stream="yard"] .frame')
    w, h = frame.rect["width"], frame.rect["height"]
    ActionChains(browser).move_to_element_with_offset(frame, int(-w * 0.4), int(-h * 0.4)) \
        .click_and_hold().move_by_offset(int(w * 0.7), int(h * 0.7)).release().perform()
    _wait(browser, lambda d: d.find_elements("css selector", ".hit"), "results of the box")
    assert browser.find_element("css selector", "#query-preview img").is_displayed()


@pytest.mark.parametrize("case", ["not-an-image", "oversized", "unknown-frame"])
def test_bad_input_shows_a_message(server, browser, case):
    url, _frames, root = server
    _open(browser, url)
    if case == "not-an-image":
        bad = root / "notes.txt"
        bad.write_text("this is not a picture\n")
        _upload(browser, bad)
        expected = "415: not a JPEG or PNG image"
    elif case == "oversized":
        big = root / "big.png"
        noise = np.random.default_rng(0).integers(0, 256, (400, 400, 3), dtype=np.uint8)
        big.write_bytes(encode_image(noise, "image/png"))  # ~480 KB > the 300 KB limit
        _upload(browser, big)
        expected = "413: upload of"
    else:
        box = browser.find_element("id", "frame-id")
        box.send_keys("nope:00000001")
        browser.find_element("id", "search-frame").click()
        expected = "404: unknown frame id 'nope:00000001'"
    assert expected in _error_text(browser)
    assert browser.find_elements("css selector", ".hit") == []
