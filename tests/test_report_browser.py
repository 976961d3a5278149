"""The HTML report renders in a real browser: headless Chromium, its table and every plot."""

import contextlib
import shutil

import pytest

from ragtune.config import RunConfig
from ragtune.pipeline import run

CHROMIUM_FLAGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1200,2400",
]


@pytest.fixture(scope="module")
def report(tiny_model, pubmedqa_path, tmp_path_factory):
    out = tmp_path_factory.mktemp("report") / "run"
    cfg = RunConfig.model_validate(
        {
            "base_model": str(tiny_model),
            "output_dir": str(out),
            "allow_regression": True,
            "data": {"path": str(pubmedqa_path), "format": "pubmedqa", "max_pairs": 60},
            "train": {"epochs": 1, "batch_size": 8, "evals_per_epoch": 2},
        }
    )
    run(cfg)
    return out / "report.html"


@contextlib.contextmanager
def chrome(profile_dir):
    """Headless Debian Chromium driven by chromedriver, as the machine's probe starts it (no network chatter)."""
    if not shutil.which("chromium") or not shutil.which("chromedriver"):
        pytest.fail("Chromium is missing: install Debian's chromium and chromium-driver (.ci/run does)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in CHROMIUM_FLAGS + [f"--user-data-dir={profile_dir}/chrome-profile"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    with chrome(tmp_path_factory.mktemp("chrome")) as driver:
        yield driver


def test_report_table_and_every_plot_render(report, browser, tmp_path):
    from selenium.webdriver.common.by import By

    browser.get(report.as_uri())
    rows = browser.find_elements(By.CSS_SELECTOR, "#metrics tr")
    systems = [r.find_elements(By.TAG_NAME, "td")[0].text for r in rows[1:]]
    assert systems == ["bm25", "base", "tuned", "base+bm25", "tuned+bm25"]
    fusion = browser.find_element(By.ID, "fusion").text
    assert "tuned" in fusion and ("RRF" in fusion or "BM25 weight" in fusion)
    assert browser.find_element(By.ID, "recommendation").text.startswith("Serve ")
    comparisons = browser.find_element(By.ID, "comparisons").text
    assert "significant" in comparisons
    images = browser.find_elements(By.TAG_NAME, "img")
    assert {i.get_attribute("id") for i in images} == {"plot-bars", "plot-training", "plot-scores"}
    for image in images:
        width, height = browser.execute_script("return [arguments[0].naturalWidth, arguments[0].naturalHeight]", image)
        assert width > 300 and height > 150, image.get_attribute("id")  # decoded and drawn, not a broken icon
        assert image.is_displayed()
    assert browser.find_element(By.ID, "verdict").text.strip()
    assert browser.save_screenshot(str(tmp_path / "report.png"))
