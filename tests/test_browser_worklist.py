"""In a real browser (the server and Chromium of tests/test_browser.py): five films uploaded at once, one opened from
the worklist's table (a click on its row marker: AppTest cannot click a grid), and the worklist's PDF downloaded; a
DICOM windowed in the viewer, and a box dragged on it (plotly's box select) read back with its score."""

from __future__ import annotations

import re
import shutil
import subprocess
import time

import pytest

from tests.test_browser import ROOT, _choose, _download, _no_exception, _open, _shots, _wait_text  # noqa: F401
from tests.test_browser import browser, server  # noqa: F401

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
    pdf = _download(browser, tmp / "downloads-worklist", "Download report (PDF)", "*.pdf", 180)
    assert "NOT-FOR-CLINICAL-USE" in pdf.name
    if shutil.which("pdftotext"):
        text = " ".join(subprocess.run(["pdftotext", str(pdf), "-"], capture_output=True, text=True).stdout.split())
        assert all(f.name in text for f in films) and "not for clinical use" in text


SCORE = re.compile(r"(\d+)% of the (\S+) heatmap lies in your box; a map spread evenly would put (\d+)% there\. "
                   r"Its peak is (inside|outside) your box\.")


def _viewer_plot(driver):
    """The viewer's plotly figure (the one with the invisible grid under the film), or None."""
    return driver.execute_script(
        "for (const p of document.querySelectorAll('.js-plotly-plot')) {"
        "  if (p.data && p.data.some(t => t.name === 'grid') && p.offsetWidth > 0) return p; } return null;")


def _verdict(driver) -> list[str]:
    return [e.text for e in driver.find_elements(By.CSS_SELECTOR, "[data-testid='stMarkdownContainer']")
            if e.text.startswith("Prediction:")]


def _shown_film(driver) -> str | None:
    """The film as the viewer shows it (its PNG data URL), or None."""
    plot = _viewer_plot(driver)
    return None if plot is None else driver.execute_script("return arguments[0].data[0].source", plot)


def _window_caption(driver) -> str | None:
    return next((e.text for e in driver.find_elements(By.CSS_SELECTOR, "[data-testid='stCaptionContainer']")
                 if e.text.startswith("Centre ")), None)


def test_a_dicom_is_windowed_and_a_box_drawn_on_it_is_scored(server, browser):  # noqa: F811
    """The viewer in Chromium: a window preset changes the film shown, never the answer; a box dragged on the film
    (plotly's box select, read by Streamlit's selection event) comes back scored as diagnosis/pointing scores it."""
    from cxrdemo.diagnosis import explain, pointing, predict, result
    from tests.adult_dicom import adult_dicom

    url, tmp = server
    if not (ROOT / "weights" / "demo" / "model.pt").is_file():
        pytest.skip("the score is recomputed with the shipped demo model, the page's default")
    raw = adult_dicom("004Y")  # a built-in film's pixels, a header within the demo model's population (1-5 years)
    film = tmp / "child-chest.dcm"
    film.write_bytes(raw)
    _open(browser, url + "/diagnosis", "Upload a chest radiograph")
    browser.find_element(By.CSS_SELECTOR, "input[type='file']").send_keys(str(film))
    _wait_text(browser, "Prediction set at 90% coverage", 180)
    verdict = _verdict(browser)
    assert len(verdict) == 1
    browser.find_element(By.XPATH, "//label[contains(., 'Viewer: window/level, zoom')]").click()
    _wait_text(browser, "never what the model reads", 120)
    WebDriverWait(browser, 60).until(_viewer_plot)
    before = (_window_caption(browser), _shown_film(browser))
    assert before[0] and before[1].startswith("data:image/png")
    _choose(browser, "Window", "Bone")
    WebDriverWait(browser, 120, poll_frequency=0.5).until(
        lambda d: None not in (now := (_window_caption(d), _shown_film(d))) and now[0] != before[0]
        and now[1] != before[1])
    assert _window_caption(browser).endswith("in the film's stored values.")  # the window, in the DICOM's own values
    WebDriverWait(browser, 120).until(lambda d: not d.find_elements(By.CSS_SELECTOR, "[data-testid='stStatusWidget']"))
    assert _verdict(browser) == verdict  # the window changes what is shown, never what the model answers
    # a box dragged across the film: the page's drag mode is plotly's box select
    plot = _viewer_plot(browser)
    assert browser.execute_script("return arguments[0]._fullLayout.dragmode", plot) == "select"
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'});", plot)
    time.sleep(1)
    area = plot.find_element(By.CSS_SELECTOR, "rect.nsewdrag")
    w, h = area.size["width"], area.size["height"]
    chain = ActionChains(browser).move_to_element_with_offset(area, round(-0.2 * w), round(-0.25 * h)).click_and_hold()
    for _ in range(8):  # plotly draws the selection on mouse moves: move in steps, as a hand does
        chain.move_by_offset(round(0.05 * w), round(0.05 * h))
    chain.release().perform()
    said = WebDriverWait(browser, 300, poll_frequency=0.5).until(
        lambda d: SCORE.search(d.find_element(By.TAG_NAME, "body").text))
    WebDriverWait(browser, 120).until(lambda d: not d.find_elements(By.CSS_SELECTOR, "[data-testid='stStatusWidget']"))
    _no_exception(browser)
    browser.save_screenshot(str(_shots(tmp) / "diagnosis_viewer_box.png"))
    # the box as drawn back on the figure (the shown film's pixels) and the page's score, recomputed here
    plot = _viewer_plot(browser)
    shape, xr, yr = browser.execute_script(
        "const l = arguments[0].layout; return [l.shapes[0], l.xaxis.range, l.yaxis.range];", plot)
    fw, fh = xr[1] - xr[0], yr[0] - yr[1]
    box = pointing.Box(shape["x0"] / fw, shape["y0"] / fh, shape["x1"] / fw, shape["y1"] / fh)
    assert 0.1 < box.area < 0.25  # the drag crossed 40% of the film's width and height (its plot area)
    share, method, even, peak = int(said.group(1)), said.group(2), int(said.group(3)), said.group(4)
    model = predict.load_model("demo")
    res = result.assess(model, predict.read_radiograph(raw, film.name))
    mine = pointing.score(explain.heatmap(model, res, method).cam, box, method)
    assert abs(share - 100 * mine.energy_share) <= 0.6 and abs(even - 100 * mine.uniform_share) <= 0.6
    assert abs(even - 100 * box.area) <= 1.5 and peak == ("inside" if mine.peak_inside else "outside")
    assert _verdict(browser) == verdict
