"""In a real browser (the server and Chromium of tests/test_browser.py): five films uploaded at once, one opened from
the worklist's table (a click on its row marker: AppTest cannot click a grid), and the worklist's PDF downloaded."""

from __future__ import annotations

import shutil
import subprocess
import time

import pytest

from tests.test_browser import ROOT, _no_exception, _open, _shots, _wait_text, browser, server  # noqa: F401

pytestmark = [pytest.mark.browser, pytest.mark.slow]

from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

DOUBTFUL = "IM-0608-0001-0001.jpg"  # the demo model answers "both": the table's first row
ROW_PX, HEADER_PX, MARKER_PX = 35, 35, 15  # st.dataframe's default row and header heights; the row marker's middle


def test_a_worklist_of_five_films_opens_one_and_downloads_its_report(server, browser):  # noqa: F811
    from cxrdemo.diagnosis import predict, result
    from cxrdemo.views import numbers

    url, tmp = server
    if not (ROOT / "weights" / "demo" / "model.pt").is_file():
        pytest.skip("the worklist's expectations are the shipped demo model's")
    test = ROOT / "cxrdemo" / "demo_data" / "test"
    films = [test / "NORMAL" / DOUBTFUL, *sorted((test / "NORMAL").glob("IM-03*"))[:2],
             *sorted((test / "PNEUMONIA").glob("*bacteria*"))[:2]]
    _open(browser, url + "/diagnosis", "Upload a chest radiograph")
    next(lb for lb in browser.find_elements(By.CSS_SELECTOR, "[data-testid='stRadio'] label")
         if "Several films" in lb.text).click()
    _wait_text(browser, "several at once")
    box = WebDriverWait(browser, 60).until(lambda d: d.find_element(By.CSS_SELECTOR, "input[type='file'][multiple]"))
    box.send_keys("\n".join(str(f) for f in films))
    _wait_text(browser, "5 films read: 1 needs a look.", 300)
    WebDriverWait(browser, 120).until(lambda d: not d.find_elements(By.CSS_SELECTOR, "[data-testid='stStatusWidget']"))
    grid = WebDriverWait(browser, 120).until(  # the table is drawn after the summary line: wait for it too
        lambda d: d.find_element(By.CSS_SELECTOR, "[data-testid='stDataFrame']"))
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'});", grid)
    time.sleep(1)
    w, h = grid.size["width"], grid.size["height"]
    ActionChains(browser).move_to_element_with_offset(grid, MARKER_PX - w / 2,
                                                      HEADER_PX + ROW_PX / 2 - h / 2).click().perform()
    r = result.assess(predict.load_model("demo"), predict.read_radiograph(str(films[0]), DOUBTFUL))
    _wait_text(browser, f"p(PNEUMONIA) = {numbers.percent(r.probs[1])}", 180)  # the single view of that film
    _wait_text(browser, "Prediction set at 90% coverage: both", 60)
    _no_exception(browser)
    browser.save_screenshot(str(_shots(tmp) / "diagnosis_worklist.png"))
    downloads = tmp / "downloads-worklist"
    downloads.mkdir(exist_ok=True)
    browser.execute_cdp_cmd("Page.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
    next(b for b in browser.find_elements(By.TAG_NAME, "button") if "Download report (PDF)" in b.text).click()
    WebDriverWait(browser, 180, poll_frequency=0.5).until(lambda d: list(downloads.glob("*.pdf")))
    (pdf,) = downloads.glob("*.pdf")
    assert "NOT-FOR-CLINICAL-USE" in pdf.name
    if shutil.which("pdftotext"):
        text = " ".join(subprocess.run(["pdftotext", str(pdf), "-"], capture_output=True, text=True).stdout.split())
        assert all(f.name in text for f in films) and "not for clinical use" in text
