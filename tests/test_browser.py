"""End to end in a real browser: `streamlit run app.py` on loopback, driven by headless Chromium (Selenium).

Opens every page, diagnoses an example radiograph (prediction + heatmap visible), queues a 1-epoch job
on the Trainer and waits for it to finish, and saves screenshots (to $CXRDEMO_SCREENSHOTS or tmp): home,
diagnosis, diagnosis-out-of-domain, trainer, compare (1400 px wide) and lessons, the files the README shows.
With $CXRDEMO_SEED_RUNS (a run store, e.g. the lessons' example runs) the server starts with a copy of those
runs: a Compare page worth a screenshot.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from cxrdemo.views import compare

pytestmark = [pytest.mark.browser, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
if not (CHROMIUM and CHROMEDRIVER):
    pytest.skip("Debian's chromium and chromium-driver are not installed (scripts/test.sh installs them as root)",
                allow_module_level=True)
selenium = pytest.importorskip("selenium", reason="selenium is part of the test extra")
from selenium import webdriver  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.common.exceptions import StaleElementReferenceException  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def streamlit_server(tmp: Path, extra_env: dict[str, str] | None = None,
                     trained_runs: int = 0) -> Iterator[tuple[str, Path]]:
    """`streamlit run app.py` on a free loopback port with its own store in `tmp`: (url, tmp) while it runs.

    `extra_env` is added to the server's environment (classroom mode, a passphrase); `trained_runs` seeds the store
    with that many finished tiny runs (1-epoch cnn8 at 32 px); a checkout without the shipped demo model gets one.
    """
    port = _free_port()
    env = {**os.environ, "CXRDEMO_RUNS_DIR": str(tmp / "runs"), "CXRDEMO_CACHE_DIR": str(tmp / "cache"),
           "CXRDEMO_MAX_JOBS": "1", "CXRDEMO_JOB_NICE": "0", "PYTHONUNBUFFERED": "1",
           # lessons at 32 px, 1 epoch, 8 images per split; no shipped example runs: the lesson test sees its own
           "CXRDEMO_LESSON_TINY": "1", "CXRDEMO_EXAMPLES_DIR": str(tmp / "no-examples"), **(extra_env or {})}
    seed = os.environ.get("CXRDEMO_SEED_RUNS")  # finished runs to start from (realistic README screenshots)
    seeded = set()
    if seed:
        shutil.copytree(seed, tmp / "runs")
        seeded = {d.name for d in (tmp / "runs").iterdir()}
    # No shipped model in this checkout: give Diagnosis one real (tiny) run to use.
    for _ in range(max(trained_runs, 0 if (ROOT / "weights" / "demo" / "model.pt").is_file() else 1)):
        subprocess.run([sys.executable, "-m", "cxrdemo", "train", "--data", "demo", "--backbone", "cnn8",
                        "--img-size", "32" if trained_runs else "64", "--epochs", "1", "--quiet"], env=env,
                       check=True, cwd=ROOT, stdout=subprocess.DEVNULL, timeout=300)
    log = open(tmp / "streamlit.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port),
                             "--server.address", "127.0.0.1", "--server.headless", "true"],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 90
        while time.time() < deadline:
            try:
                if urllib.request.urlopen(url + "/_stcore/health", timeout=2).read() == b"ok":
                    break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("streamlit did not start:\n" + (tmp / "streamlit.log").read_text()[-2000:])
        yield url, tmp
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
        # stop any training job the test started (workers run in their own sessions); a seeded run's pid was
        # recorded on the machine that trained it and names some other process here
        subprocess.run([sys.executable, "-m", "cxrdemo", "jobs", "list"], env=env, cwd=ROOT, capture_output=True)
        for pid_file in (tmp / "runs").glob("*/status.json"):
            status = json.loads(pid_file.read_text())
            pid = status.get("pid")
            if pid and pid_file.parent.name not in seeded and status.get("state") in ("queued", "running"):
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except OSError:
                    pass


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with streamlit_server(tmp_path_factory.mktemp("browser")) as started:
        yield started


@pytest.fixture(scope="module")
def browser(server):
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                 "--no-first-run", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--window-size=1400,1800"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(options=opts, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    driver.set_page_load_timeout(60)
    # Home first: until app.py has run once, Streamlit serves a deep link (/compare) from the app_pages/ folder without
    # app.py (its own sidebar list, no wide layout); one -k selected test would otherwise see that.
    driver.get(server[0])
    WebDriverWait(driver, 120, poll_frequency=0.5).until(
        lambda d: "transfer learning" in d.find_element(By.TAG_NAME, "body").text)
    yield driver
    driver.quit()


def _shots(tmp: Path) -> Path:
    d = Path(os.environ.get("CXRDEMO_SCREENSHOTS") or tmp / "screenshots")
    d.mkdir(parents=True, exist_ok=True)
    return d


def _wait_text(driver, text: str, timeout: float = 90) -> None:
    WebDriverWait(driver, timeout, poll_frequency=0.5).until(lambda d: text in d.find_element(By.TAG_NAME, "body").text)


def _no_exception(driver) -> None:
    body = driver.find_element(By.TAG_NAME, "body").text
    assert "Traceback" not in body and not driver.find_elements(By.CSS_SELECTOR, "[data-testid='stException']")


def _download(driver, folder: Path, button: str, pattern: str, timeout: float) -> Path:
    """Press the download button whose text holds `button`; the one file it saves into `folder`."""
    folder.mkdir(exist_ok=True)
    driver.execute_cdp_cmd("Page.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(folder)})
    next(b for b in driver.find_elements(By.TAG_NAME, "button") if button in b.text).click()
    WebDriverWait(driver, timeout, poll_frequency=0.5).until(lambda d: list(folder.glob(pattern)))
    (found,) = folder.glob(pattern)
    return found


def _open(driver, url: str, ready: str) -> None:
    driver.get(url)
    _wait_text(driver, ready)
    # let the script run finish (the status widget disappears when it is idle)
    WebDriverWait(driver, 90).until(
        lambda d: not d.find_elements(By.CSS_SELECTOR, "[data-testid='stStatusWidget']"))


def test_home_page(server, browser):
    url, tmp = server
    _open(browser, url, "transfer learning")
    assert "not for clinical use" in browser.find_element(By.TAG_NAME, "body").text
    for page in ("Trainer", "Compare", "Diagnosis"):
        assert page in browser.find_element(By.CSS_SELECTOR, "[data-testid='stSidebar']").text
    _no_exception(browser)
    browser.save_screenshot(str(_shots(tmp) / "home.png"))


def test_diagnosis_shows_prediction_and_heatmap(server, browser):
    url, tmp = server
    _open(browser, url + "/diagnosis", "Upload a chest radiograph")
    example = next((ROOT / "cxrdemo" / "demo_data" / "test" / "PNEUMONIA").glob("*.jpg"))
    browser.find_element(By.CSS_SELECTOR, "input[type='file']").send_keys(str(example))
    _wait_text(browser, "Prediction:", 120)
    WebDriverWait(browser, 60).until(lambda d: any("GradCAM" in (c.text or "") for c in
                                                   d.find_elements(By.CSS_SELECTOR, "[data-testid='stImageCaption'], figcaption, [data-testid='stCaptionContainer']")) or "GradCAM for" in d.find_element(By.TAG_NAME, "body").text)
    images = browser.find_elements(By.CSS_SELECTOR, "[data-testid='stImage'] img, [data-testid='stFullScreenFrame'] img")
    assert len(images) >= 2, "the image and its heatmap overlay are shown"
    body = browser.find_element(By.TAG_NAME, "body").text
    assert "NORMAL" in body and "PNEUMONIA" in body
    # the calibrated bar with the decision threshold marked, and a prediction set
    _wait_text(browser, "Prediction set at 90% coverage", 60)
    assert browser.find_elements(By.CSS_SELECTOR, ".js-plotly-plot path[style*='dash'], .js-plotly-plot .shapelayer path")
    assert re.search(r"threshold \d+\.\d%", browser.find_element(By.TAG_NAME, "body").text)
    _no_exception(browser)
    time.sleep(1)
    browser.save_screenshot(str(_shots(tmp) / "diagnosis.png"))
    # at 1024 px the headline numbers are whole lines of text (they read "Accur… 0…" as metric tiles)
    browser.set_window_size(1024, 1800)
    time.sleep(1.5)
    heads = [e for e in browser.find_elements(By.CSS_SELECTOR, "[data-testid='stMarkdownContainer']")
             if e.text.startswith(("Shifted set", "In-distribution"))]
    assert heads and re.search(r"Accuracy \d+(\.\d)?%", heads[0].text), [e.text for e in heads]
    assert "…" not in " ".join(e.text for e in heads)
    assert all(browser.execute_script("return arguments[0].scrollWidth <= arguments[0].clientWidth + 1", e)
               for e in heads)
    browser.set_window_size(1400, 1800)
    # the downloaded overlay says what it is, in its name and in a footer drawn into the pixels
    png = _download(browser, tmp / "downloads", "Download the overlay", "*.png", 60)
    assert "NOT-FOR-CLINICAL-USE" in png.name and "-heatmap-predicted-" in png.name
    from PIL import Image

    pixels = np.asarray(Image.open(png).convert("L"))
    footer = pixels[-20:]
    assert (footer < 10).mean() > 0.5 and (footer > 200).any(), "a black footer with white text"
    # a heatmap for the class the model did not predict says so
    said = re.search(r"Prediction: (NORMAL|PNEUMONIA)", browser.find_element(By.TAG_NAME, "body").text).group(1)
    other = "NORMAL" if said == "PNEUMONIA" else "PNEUMONIA"
    _choose(browser, "Class to explain", other)
    _wait_text(browser, f"why it might be {other} — the model said {said}, p({other}) = ", 120)


def test_a_greyscale_photograph_is_flagged_as_unlike_the_training_images(server, browser):
    from PIL import Image
    from sklearn.datasets import load_sample_images

    url, tmp = server
    photo = tmp / "grey-photo.png"
    Image.fromarray(load_sample_images().images[0]).convert("L").save(photo)  # china.jpg, in grey
    _open(browser, url + "/diagnosis", "Upload a chest radiograph")
    browser.find_element(By.CSS_SELECTOR, "input[type='file']").send_keys(str(photo))
    _wait_text(browser, "unlike the", 120)
    _wait_text(browser, "run the model on this image anyway", 60)  # drawn under the film, which is shown
    body = browser.find_element(By.TAG_NAME, "body").text
    assert "Prediction:" not in body  # held back
    _no_exception(browser)
    browser.save_screenshot(str(_shots(tmp) / "diagnosis-out-of-domain.png"))
    browser.find_element(By.XPATH, "//label[contains(., 'run the model on this image anyway')]").click()
    _wait_text(browser, "Prediction set at 90% coverage", 120)
    body = browser.find_element(By.TAG_NAME, "body").text
    # outside the promise: whatever its probabilities, the set is "both" and says why
    assert "Prediction set at 90% coverage: both" in body and "unlike the training images; the 90% promise" in body
    _no_exception(browser)


@pytest.mark.skipif(not (ROOT / "weights" / "demo" / "model.pt").is_file(),
                    reason="the population check needs the shipped demo model (its population is stated)")
def test_an_adult_age_dicom_is_flagged_with_its_age_and_the_set_both(server, browser):
    from tests.adult_dicom import adult_dicom

    url, tmp = server
    film = tmp / "adult-chest.dcm"
    film.write_bytes(adult_dicom("055Y"))  # a chest film's pixels, a header saying 55 years
    _open(browser, url + "/diagnosis", "Upload a chest radiograph")
    browser.find_element(By.CSS_SELECTOR, "input[type='file']").send_keys(str(film))
    _wait_text(browser, "55 years old", 120)
    _wait_text(browser, "run the model on this image anyway", 60)  # the gate comes just after the warning
    body = browser.find_element(By.TAG_NAME, "body").text
    assert "The DICOM header says the patient is 55 years old; this model learnt from children aged 1–5 years" in body
    assert "run the model on this image anyway" in body and "Prediction:" not in body  # held back
    assert "Doe" not in body and "MRN" not in body  # the header's name and ID are never shown
    _no_exception(browser)
    browser.find_element(By.XPATH, "//label[contains(., 'run the model on this image anyway')]").click()
    _wait_text(browser, "Prediction set at 90% coverage", 120)
    body = browser.find_element(By.TAG_NAME, "body").text
    assert "Prediction set at 90% coverage: both" in body
    assert "outside the population the model learnt from" in body
    _no_exception(browser)


def _set_number(driver, label: str, value: str) -> None:
    # the page may still be drawing its form when its first text shows (a cold server): wait for the field
    box = WebDriverWait(driver, 60).until(lambda d: d.find_element(By.CSS_SELECTOR, f"input[aria-label='{label}']"))
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(value, Keys.ENTER)


def _choose(driver, label: str, option: str) -> None:
    box = driver.find_element(By.CSS_SELECTOR, f"input[aria-label^='Selected'][aria-label*='{label}'], "
                                               f"div[data-testid='stSelectbox'] input[aria-label*='{label}']")
    box.click()
    box.send_keys(option, Keys.ENTER)


def test_trainer_queues_a_job_that_finishes(server, browser):
    url, tmp = server
    _open(browser, url + "/trainer", "Start training")
    _choose(browser, "Backbone", "cnn8")
    time.sleep(2)
    _choose(browser, "Image size", "64")
    time.sleep(1)
    _set_number(browser, "Epochs", "1")
    time.sleep(2)
    buttons = [b for b in browser.find_elements(By.TAG_NAME, "button") if b.text.strip() == "Start training"]
    assert buttons, "the Start button is on the page"
    buttons[0].click()
    _wait_text(browser, "Queued run", 60)
    run_id = re.search(r"Queued run (\S+?);", browser.find_element(By.TAG_NAME, "body").text).group(1)
    done = re.compile(re.escape(run_id) + r"[^\n]*\nCompleted")
    # the live panel (a fragment on a timer) must show this very job completed, with no reload
    WebDriverWait(browser, 300, poll_frequency=1).until(
        lambda d: done.search(d.find_element(By.TAG_NAME, "body").text))
    status = json.loads((tmp / "runs" / run_id / "status.json").read_text())
    assert status["state"] == "completed" and status["epoch"] == 1
    _no_exception(browser)
    browser.save_screenshot(str(_shots(tmp) / "trainer.png"))


def _sidebar(driver, page: str, ready: str) -> None:
    link = next(a for a in driver.find_elements(By.CSS_SELECTOR, "[data-testid='stSidebar'] a")
                if (a.get_attribute("href") or "").rstrip("/").endswith("/" + page.lower()))
    link.click()
    _wait_text(driver, ready)
    WebDriverWait(driver, 90).until(
        lambda d: not d.find_elements(By.CSS_SELECTOR, "[data-testid='stStatusWidget']"))
    time.sleep(1)


def _value(driver, label: str) -> str:
    return driver.find_element(By.CSS_SELECTOR, f"input[aria-label='{label}']").get_attribute("value")


def test_trainer_settings_survive_a_page_switch_and_a_reload(server, browser):
    url, _ = server
    _open(browser, url + "/trainer", "Start training")
    _set_number(browser, "Epochs", "3")
    time.sleep(2)
    _sidebar(browser, "Compare", "Compare runs")
    _sidebar(browser, "Trainer", "Start training")
    assert _value(browser, "Epochs") == "3"
    assert "**3 epochs**" not in browser.find_element(By.TAG_NAME, "body").text  # rendered, not raw Markdown
    browser.refresh()
    _wait_text(browser, "Start training")
    WebDriverWait(browser, 90).until(lambda d: not d.find_elements(By.CSS_SELECTOR, "[data-testid='stStatusWidget']"))
    assert "epochs=3" in browser.current_url and _value(browser, "Epochs") == "3"
    # every choice fits its box at 1400 px: none is cut with '…' ("automatic (fastest this mach…" was)
    assert browser.execute_script("return window.innerWidth") == 1400
    more = next(e for e in browser.find_elements(By.CSS_SELECTOR, "[data-testid='stExpander'] summary")
                if "More options" in e.text)
    more.click()
    _wait_text(browser, "Arithmetic precision")
    time.sleep(1)
    # Streamlit shows a select's value in an <input>: measure its text in the input's own font against its room
    boxes = browser.execute_script(
        "const c = document.createElement('canvas').getContext('2d'); const out = [];"
        "for (const inp of document.querySelectorAll(\"[data-testid='stSelectbox'] input\")) {"
        "  const cs = getComputedStyle(inp); c.font = cs.font;"
        "  const room = inp.clientWidth - parseFloat(cs.paddingLeft) - parseFloat(cs.paddingRight);"
        "  out.push([inp.value, c.measureText(inp.value).width, room,"
        "            c.measureText('automatic (fastest this machine runs well)').width]); }"
        "return out;")
    values = {value: (width, room, old) for value, width, room, old in boxes}
    assert len(values) >= 10 and "automatic (measured here)" in values, values  # the check sees the chosen values
    _, room, old = values["automatic (measured here)"]
    assert old > room, "the old label would not fit here: the check can fail"
    cut = [(v, round(w), round(r)) for v, (w, r, _) in values.items() if w > r]
    assert not cut, cut


def test_compare_page_lists_runs(server, browser):
    url, tmp = server
    browser.set_window_size(1400, 1800)  # a projector's width: the compact table and legends below the plots
    _open(browser, url + "/compare", "Compare")
    WebDriverWait(browser, 60).until(lambda d: d.find_elements(By.CSS_SELECTOR, "[data-testid='stDataFrame']"))
    WebDriverWait(browser, 60).until(lambda d: d.find_elements(By.CSS_SELECTOR, ".js-plotly-plot"))
    _no_exception(browser)
    time.sleep(2)
    assert browser.execute_script("return window.innerWidth") == 1400
    # the compact table fits: no sideways scrolling, its test metrics in view (its widths are declared to fit this)
    table_px, content_px, scroll_px = WebDriverWait(browser, 60).until(lambda d: d.execute_script(
        "const t = document.querySelector(\"[data-testid='stDataFrame']\"); const s = t && t.querySelector('.dvn-scroller');"
        "return s ? [t.offsetWidth, s.scrollWidth, s.clientWidth] : null;"))
    assert table_px >= compare.PROJECTOR_TABLE_PX and content_px <= scroll_px + 2, (table_px, content_px, scroll_px)
    browser.save_screenshot(str(_shots(tmp) / "compare.png"))  # the top: table and learning curves
    tab = WebDriverWait(browser, 60).until(lambda d: next(
        (t for t in d.find_elements(By.CSS_SELECTOR, "[role='tab']")
         if "ROC curve" in (t.get_attribute("textContent") or "")), None))
    browser.execute_script("arguments[0].scrollIntoView(); arguments[0].click();", tab)
    ranges = WebDriverWait(browser, 60).until(lambda d: d.execute_script(
        "for (const p of document.querySelectorAll('.js-plotly-plot')) {"
        "  const l = p._fullLayout; if (l && l.title && /ROC/.test(l.title.text) && p.offsetWidth > 0)"
        "    return [l.xaxis.range, l.yaxis.range]; } return null;"))
    assert ranges == [[0, 1], [0, 1]], ranges


def test_lessons_page(server, browser):
    url, tmp = server
    _open(browser, url + "/lessons", "Each lesson queues ordinary training runs")
    WebDriverWait(browser, 60).until(lambda d: d.find_elements(By.CSS_SELECTOR, "[role='tab']"))
    _wait_text(browser, "What to look for")
    _no_exception(browser)
    time.sleep(1)
    browser.save_screenshot(str(_shots(tmp) / "lessons.png"))


def test_compare_confusion_cell_opens_its_images(server, browser):
    """A click on a cell of the clickable confusion matrix opens that cell's test images (AppTest cannot click)."""
    from selenium.webdriver.common.action_chains import ActionChains

    url, tmp = server
    # a finished run of its own, with per-image test predictions (the test does not rely on the Trainer test's)
    env = {**os.environ, "CXRDEMO_RUNS_DIR": str(tmp / "runs"), "CXRDEMO_CACHE_DIR": str(tmp / "cache")}
    subprocess.run([sys.executable, "-m", "cxrdemo", "train", "--data", "demo", "--backbone", "cnn8", "--img-size",
                    "64", "--epochs", "1", "--quiet", "--name", "gallery"], env=env, check=True, cwd=ROOT,
                   stdout=subprocess.DEVNULL, timeout=900)  # seconds when idle; minutes on a shared, loaded CPU
    browser.get(url + "/compare")  # a first Compare page of a fresh server: minutes on a shared, loaded CPU
    _wait_text(browser, "Click a cell to see its test images", 300)
    WebDriverWait(browser, 300).until(lambda d: not d.find_elements(By.CSS_SELECTOR, "[data-testid='stStatusWidget']"))
    # the plot whose plotly layout is the clickable matrix (its SVG title is not reliably in Selenium's .text)
    plot = WebDriverWait(browser, 60).until(lambda d: d.execute_script(
        "for (const p of document.querySelectorAll('.js-plotly-plot')) {"
        "  const l = p._fullLayout; if (l && l.title && /click a cell/.test(l.title.text) && p.offsetWidth > 0)"
        "    return p; } return null;"))
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'});", plot)
    time.sleep(1)
    points = [p for p in plot.find_elements(By.CSS_SELECTOR, "g.trace.scatter path.point") if p.size["width"]]
    assert len(points) == 4, "one square marker per cell of the 2x2 matrix"
    true, said, counts = browser.execute_script("const t = arguments[0].data[0]; return [t.y, t.x, t.text];", plot)
    counts = [int(n) for n in counts]
    wrong = [i for i in range(4) if true[i] != said[i] and counts[i]]
    pick = max(wrong or range(4), key=counts.__getitem__)  # a cell of wrong answers when the model made any
    ActionChains(browser).move_to_element(points[pick]).click().perform()
    said = WebDriverWait(browser, 60, poll_frequency=0.5).until(
        lambda d: re.search(r"(\d+) \S+ image\(s\) (classified right|the model called)",
                            d.find_element(By.TAG_NAME, "body").text))
    assert int(said.group(1)) == counts[pick]
    # its images, each with the probability of the predicted class: most confidently wrong (or least sure) first
    WebDriverWait(browser, 60).until(lambda d: d.find_elements(By.CSS_SELECTOR, "[data-testid='stImage'] img"))
    # the captions in reading order (row by row: the page's text runs column by column through its 4 columns)
    captions = browser.execute_script(
        "return [...document.querySelectorAll(\"[data-testid='stImageCaption']\")].map(e => {"
        "  const r = e.getBoundingClientRect(); return [Math.round(r.top), Math.round(r.left), e.textContent]; });")
    columns: dict[int, list] = {}
    for top, left, text in captions:  # image n sits in column n % 4, row n // 4 (rows need not line up in height)
        columns.setdefault(left, []).append((top, text))
    ordered = sorted((row, left, text) for left, cells in columns.items() for row, (_, text) in enumerate(sorted(cells)))
    shown = [float(v) for _, _, text in ordered for v in re.findall(r"p\(\S+\) = (\d+(?:\.\d)?)%", text)]
    assert len(shown) == min(counts[pick], 8)
    assert shown == sorted(shown, reverse=bool(wrong)), shown
    browser.execute_script("arguments[0].scrollIntoView({block: 'start'});", plot)  # the matrix and its images
    time.sleep(1)
    _no_exception(browser)
    browser.save_screenshot(str(_shots(tmp) / "compare_gallery.png"))


def test_a_lesson_runs_end_to_end_and_shows_its_result_view(server, browser):
    """The shortcut lesson on tiny settings: one click queues its 3 runs; its result view appears when they finish."""
    url, tmp = server
    _open(browser, url + "/lessons", "Lessons")
    tab = WebDriverWait(browser, 60, poll_frequency=0.5).until(  # the title is drawn before the tabs
        lambda d: next((t for t in d.find_elements(By.CSS_SELECTOR, "[role='tab']")
                        if "Shortcut learning" in (t.get_attribute("textContent") or "")), None))
    browser.execute_script("arguments[0].click();", tab)
    time.sleep(1)
    _wait_text(browser, "Not run yet", 60)
    assert re.search(r"Running it yourself takes about \d", browser.find_element(By.TAG_NAME, "body").text)
    button = next(b for b in browser.find_elements(By.TAG_NAME, "button")
                  if b.text.strip() == "Start “Shortcut learning”" and b.is_displayed())
    button.click()
    _wait_text(browser, "waiting or training", 60)
    # the fragment refreshes by itself: results show from the first finished run, complete once all have finished
    WebDriverWait(browser, 600, poll_frequency=2).until(
        lambda d: "Your results" in (t := d.find_element(By.TAG_NAME, "body").text) and "waiting or training" not in t)
    body = browser.find_element(By.TAG_NAME, "body").text
    assert re.search(r"Result\. The model trained with the marker on every VIRUS image: clean \d", body)
    assert "95% interval" in body and "clean accuracy" in body
    tagged = [json.loads(p.read_text())["config"]["tag"] for p in (tmp / "runs").glob("*/config.json")]
    assert sorted(t for t in tagged if t.startswith("lesson:shortcut:")) == [
        "lesson:shortcut:clean", "lesson:shortcut:marked-100", "lesson:shortcut:marked-50"]
    _no_exception(browser)
    browser.save_screenshot(str(_shots(tmp) / "lesson.png"))
    # A teacher starts it again and cancels: the results already earned stay, the cancellation is said beside them.
    result = re.search(r"Result\. [^\n]+", body).group(0)
    _press_button(browser, "Start “Shortcut learning”")
    _wait_text(browser, "waiting or training", 60)
    _press_button(browser, "Cancel the lesson's runs")
    WebDriverWait(browser, 120, poll_frequency=1).until(
        lambda d: "waiting or training" not in (t := d.find_element(By.TAG_NAME, "body").text) and "cancelled" in t)
    body = browser.find_element(By.TAG_NAME, "body").text
    assert "Your results" in body and result in body
    assert "results below are from your earlier finished runs" in body
    _no_exception(browser)


def _press_button(driver, label: str) -> None:
    """Click the visible button with this label once it is there and enabled (a rerun may redraw it meanwhile)."""
    def step(d) -> bool:
        found = [b for b in d.find_elements(By.TAG_NAME, "button")
                 if label in b.text.strip().splitlines() and b.is_displayed() and b.is_enabled()]
        return bool(found) and (found[0].click() or True)

    WebDriverWait(driver, 60, poll_frequency=0.5, ignored_exceptions=(StaleElementReferenceException,)).until(step)
