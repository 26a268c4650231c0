"""The teacher stays signed in, in a real browser (issue 30): a server in classroom mode with a teacher passphrase.

The teacher types the passphrase once on the Trainer, sees the badge, deletes a finished run on Compare without
typing it again, reloads the page (the signed, expiring unlock in the address holds; the passphrase is in no
address), then locks: deleting is refused again, with its sentence.
"""

from __future__ import annotations

import pytest

from tests.test_browser import _no_exception, _open, _sidebar, _wait_text, browser, streamlit_server  # noqa: F401

# selenium after test_browser, which skips this module where chromium is not installed
from selenium.common.exceptions import StaleElementReferenceException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

pytestmark = [pytest.mark.browser, pytest.mark.slow]

PASS = "correct horse battery staple"
BADGE = "classroom limits lifted in this browser"
REFUSED = "In classroom mode deleting runs needs the teacher"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The app in classroom mode (forced on behind loopback) with a teacher passphrase and two finished runs."""
    env = {"CXRDEMO_CLASSROOM": "1", "CXRDEMO_TEACHER_PASSPHRASE": PASS, "CXRDEMO_DATA_ROOTS": ""}
    with streamlit_server(tmp_path_factory.mktemp("classroom"), env, trained_runs=2) as started:
        yield started


def _body(driver) -> str:
    return driver.find_element(By.TAG_NAME, "body").text


def _wait_gone(driver, text: str, timeout: float = 60) -> None:
    # a rerun keeps the old elements (faded) until the new ones are drawn
    WebDriverWait(driver, timeout, poll_frequency=0.5).until(lambda d: text not in _body(d))


def _idle(driver) -> None:
    WebDriverWait(driver, 90).until(lambda d: not d.find_elements(By.CSS_SELECTOR, "[data-testid='stStatusWidget']"))


def _until(driver, step, timeout: float = 60) -> None:
    """Retry `step` until it returns True: a rerun may replace an element between finding and clicking it."""
    WebDriverWait(driver, timeout, poll_frequency=0.5, ignored_exceptions=(StaleElementReferenceException,)).until(step)


def _press(driver, text: str) -> None:
    def step(d) -> bool:
        # a button with an icon reads "lock\nLock" (the icon font's ligature first): match its label's line
        found = [b for b in d.find_elements(By.TAG_NAME, "button")
                 if text in b.text.strip().splitlines() and b.is_enabled()]
        return bool(found) and (found[0].click() or True)

    _until(driver, step)
    _idle(driver)


def _switch_on(driver, label: str) -> None:
    """Turn a toggle or a checkbox on, and see that it is on."""
    def step(d) -> bool:
        box = d.find_element(By.XPATH, f'//label[contains(., "{label}")]')
        if not box.find_element(By.TAG_NAME, "input").is_selected():  # the input's own `checked`
            box.click()
            return False  # look again once the page has redrawn
        return True

    _until(driver, step)
    _idle(driver)


def _open_delete(driver) -> None:
    def step(d) -> bool:
        found = [e for e in d.find_elements(By.CSS_SELECTOR, "[data-testid='stExpander'] summary")
                 if "Delete a run" in e.text]
        if found and found[0].find_element(By.XPATH, "..").get_attribute("open") is None:
            found[0].click()
        return bool(found)

    _until(driver, step)


def test_the_teacher_unlocks_once_deletes_on_compare_and_locks(server, browser):
    url, tmp = server
    runs_before = sorted(d.name for d in (tmp / "runs").iterdir() if (d / "model.pt").is_file())
    assert len(runs_before) == 2
    _open(browser, url + "/trainer", "Teacher passphrase")
    assert BADGE not in _body(browser)
    box = browser.find_element(By.CSS_SELECTOR, "input[aria-label='Teacher passphrase']")
    box.send_keys(PASS, Keys.ENTER)
    _wait_text(browser, BADGE, 60)
    _wait_gone(browser, "Teacher passphrase")

    _sidebar(browser, "Compare", "Compare runs")  # another page: no passphrase asked
    assert BADGE in _body(browser)
    _switch_on(browser, "Everyone's runs")
    _open_delete(browser)
    _wait_text(browser, "Yes, permanently delete run", 60)
    assert REFUSED not in _body(browser)
    _switch_on(browser, "Yes, permanently delete run")  # a click during a rerun can be lost: look at the box itself
    _press(browser, "Delete run")
    _wait_text(browser, "was deleted, with all its files", 60)
    left = sorted(d.name for d in (tmp / "runs").iterdir() if (d / "model.pt").is_file())
    assert len(left) == 1 and set(left) < set(runs_before)
    _no_exception(browser)

    browser.refresh()  # a reload: a new session; the signed unlock in the address holds, not the passphrase
    _wait_text(browser, "Compare runs")
    _idle(browser)
    _wait_text(browser, BADGE, 60)
    assert "teacher=" in browser.current_url and "horse" not in browser.current_url

    _press(browser, "Lock")
    _wait_text(browser, "Teacher passphrase", 60)
    _wait_gone(browser, BADGE)
    _idle(browser)
    assert "teacher=" not in browser.current_url
    _switch_on(browser, "Everyone's runs")
    _open_delete(browser)
    _wait_text(browser, REFUSED + ": enter the teacher passphrase in the sidebar.", 60)
    assert not [b for b in browser.find_elements(By.TAG_NAME, "button") if b.text.strip() == "Delete run"]
    assert sorted(d.name for d in (tmp / "runs").iterdir() if (d / "model.pt").is_file()) == left
    _no_exception(browser)
