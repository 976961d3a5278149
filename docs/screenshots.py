"""Take the README's screenshots with headless Chromium (Debian chromium + chromium-driver).

ragtune run examples/pubmedqa.yaml
ragtune index runs/pubmedqa/model runs/pubmedqa/data --out runs/pubmedqa/index --cache-dir runs/pubmedqa/cache
python docs/screenshots.py
"""

from __future__ import annotations

import shutil
import socket
import tempfile
import threading
import time
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

RUN = Path("runs/pubmedqa")
QUESTION = "Should prostate specific antigen be adjusted for body mass index?"
FLAGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def browser(width: int, height: int):
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in FLAGS + [f"--window-size={width},{height}", f"--user-data-dir={tempfile.mkdtemp()}"]:
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)


def main() -> None:
    import uvicorn

    from ragtune.serve import create_app

    driver = browser(1200, 2200)
    driver.get((RUN / "report.html").resolve().as_uri())
    driver.save_screenshot("docs/report-pubmedqa.png")
    driver.quit()

    app = create_app(RUN / "index", base_model="default", data=str(RUN / "data"), cache_dir=RUN / "cache")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.1)
    driver = browser(1300, 900)
    driver.get(f"http://127.0.0.1:{port}/")
    driver.find_element(By.ID, "q").send_keys(QUESTION)
    driver.find_element(By.ID, "go").click()
    WebDriverWait(driver, 60).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".hit")) == 10)
    driver.save_screenshot("docs/page-pubmedqa.png")
    driver.quit()
    server.should_exit = True


if __name__ == "__main__":
    main()
