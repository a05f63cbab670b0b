"""The web page in a real headless Chromium: sign in, upload a query, see ranked patients with thumbnails, α badges, QC.

With RETRIEVAL_UPDATE_SCREENSHOT=1 the screenshot of the results is written to docs/serve.png (the README's).
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

import pytest
from serve_support import TOKEN, running

from retrieval.serve import ServeConfig, create_app

pytestmark = pytest.mark.archive
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
QUERY = "ct/dcm_qa_ct/GE/12.dcm"
README_SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "serve.png"
ALL_IMAGES_LOADED = "return [...document.querySelectorAll(arguments[0])].every(i => i.complete && i.naturalWidth > 0)"


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)):
        pytest.skip("Debian's chromium and chromium-driver are not installed (scripts/setup_test_env.sh installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM  # with the driver's path given too, selenium-manager never downloads anything
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--no-first-run",
                     "--disable-background-networking", "--disable-component-update", "--disable-sync", "--window-size=1366,900",
                     "--hide-scrollbars", f"--user-data-dir={tmp_path_factory.mktemp('chromium')}"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(120)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def url(served_index, token_file):
    with running(create_app(ServeConfig(index=str(served_index), token_file=str(token_file)))) as base:
        yield base


def test_upload_a_query_and_see_ranked_patients_with_thumbnails(archive, browser, url, served_index, tmp_path) -> None:
    from selenium.webdriver.common.by import By

    from indexer.directory import IndexDirectory
    from indexer.summary import quality_control
    from retrieval import TAU
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 120)
    browser.get(url + "/")
    browser.find_element(By.ID, "token").send_keys(TOKEN)
    browser.find_element(By.CSS_SELECTOR, "form button[type=submit]").click()
    wait.until(lambda d: "slices of 7 patients" in d.find_element(By.ID, "summary").text)

    browser.find_element(By.ID, "files").send_keys(str(archive / QUERY))
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#results li.result")) == 7)
    wait.until(lambda d: d.execute_script(ALL_IMAGES_LOADED, "#results img, #query-image"))
    assert browser.execute_script("return document.querySelectorAll('#results img').length") >= 7
    assert browser.find_element(By.ID, "error").get_attribute("hidden") is not None

    results = browser.find_elements(By.CSS_SELECTOR, "#results li.result")
    assert results[0].find_element(By.CSS_SELECTOR, ".who a").text == "dcm_qa_ct-QMNx85rKkkg"
    distances = [float(r.find_element(By.CSS_SELECTOR, ".distance").text.split()[-1]) for r in results]
    assert distances[0] == 0.0 and distances == sorted(distances)
    badges = browser.find_elements(By.CSS_SELECTOR, "#results .badge")
    assert len(badges) == len(browser.find_elements(By.CSS_SELECTOR, "#results img"))
    for badge in badges:
        alpha = float(re.fullmatch(r"α (\d\.\d\d)", badge.text).group(1))
        level = badge.get_attribute("class").split()[-1]
        assert level == ("ok" if alpha <= 0.3 else "warn" if alpha <= 0.6 else "bad"), (alpha, level)
    assert re.fullmatch(r"12\.dcm: 1 slice, predicted α \d\.\d\d", browser.find_element(By.ID, "query-caption").text.replace("\n", " "))
    shot = README_SCREENSHOT if os.environ.get("RETRIEVAL_UPDATE_SCREENSHOT") else tmp_path / "serve.png"
    browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000

    results[0].find_element(By.CSS_SELECTOR, ".who a").click()
    wait.until(lambda d: d.find_element(By.ID, "patient").get_attribute("open") is not None)
    assert "28 slices in 1 series" in browser.find_element(By.ID, "patient-title").text
    browser.find_element(By.ID, "patient-close").click()

    browser.find_element(By.ID, "tab-qc").click()
    wait.until(lambda d: d.find_element(By.ID, "qc-status").text.endswith("worst first"))  # TAU by default
    with IndexDirectory.open(served_index) as directory:  # a threshold under the index's highest â, as `retrieval qc` reads it
        above = math.floor(quality_control(directory, 0.0)["series"][0]["max_alpha"] * 50) / 100  # half, in the field's 0.01 steps
        worst = quality_control(directory, above)["series"][0]
    field = browser.find_element(By.ID, "qc-above")
    field.clear()
    field.send_keys(str(above))
    browser.find_element(By.CSS_SELECTOR, "#qc-form button[type=submit]").click()
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#qc-table tbody tr"))
    row = browser.find_element(By.CSS_SELECTOR, "#qc-table tbody tr")
    assert worst["patient_id"] in row.text and worst["series_id"] in row.text
    level = "ok" if worst["max_alpha"] <= TAU else "warn" if worst["max_alpha"] <= 0.6 else "bad"
    assert row.find_element(By.CSS_SELECTOR, "td .badge").get_attribute("class").split()[-1] == level
    wait.until(lambda d: d.execute_script(ALL_IMAGES_LOADED, "#qc-table img"))
