"""The page of ``metamodal serve`` in a real browser: headless Chromium driven by Selenium.

A tiny image + caption model is trained on the embedded synthetic dataset and served on a free
loopback port. The test opens the page, makes two classes from the dataset's images (dropped on
a class's card, or chosen with its file picker), adds an example with an image and a typed
caption, sees API errors explained on the page, drops two query images at once and checks the
predicted label, the probability bars, the nearest examples' thumbnails and the missing caption.

The screenshot is written under ``$METAMODAL_TEST_ARTIFACTS`` (the test's temporary directory
when unset); ``METAMODAL_UPDATE_SCREENSHOT=1`` also copies it to ``docs/images/serve-page.png``.
Without Chromium, chromedriver or Selenium the test is skipped, except when ``CI`` is set: there
it fails.
"""

from __future__ import annotations

import csv
import os
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from metamodal.config import TrainConfig
from metamodal.datasets.synthetic import make_synthetic
from metamodal.train.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
CLASS_A = "species-000"  # red triangle
CLASS_B = "species-003"  # blue square: differs from A in both attributes an image shows
TOKEN = "open-sesame"


def _missing(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set, so the browser test must run)")
    pytest.skip(reason)


def _browser_paths() -> tuple[str, str]:
    """(Chromium binary, chromedriver), or skip (fail under CI) naming what is absent."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        _missing("selenium is not installed (pip install selenium)")
    binary = os.environ.get("METAMODAL_CHROMIUM") or next(
        (found for name in ("chromium", "chromium-browser", "google-chrome", "chrome")
         if (found := shutil.which(name))), None)
    if binary is None:
        _missing("no Chromium binary on PATH (apt-get install chromium)")
    driver = os.environ.get("METAMODAL_CHROMEDRIVER") or shutil.which("chromedriver")
    if driver is None:
        _missing("no chromedriver on PATH (apt-get install chromium-driver)")
    return binary, driver


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    binary, driver_path = _browser_paths()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,1000", "--force-device-scale-factor=1"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(data dir, run dir): an image + caption model trained a few dozen steps."""
    root = tmp_path_factory.mktemp("serve-browser")
    data = make_synthetic(root / "data", classes=12, per_class=3, image_size=32, seed=0,
                          missing_rate=0.0)
    config = TrainConfig(data=str(data), modalities=["image", "caption"], steps=60, ways=3,
                         shots=1, queries=2, dim=16, val_every=0, val_episodes=2, device="cpu",
                         cache=False, preprocess={"image": {"size": 16}})
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        Trainer(config, root / "run", progress=False).fit()
    finally:
        torch.set_num_threads(threads)
    return data, root / "run"


@contextmanager
def serving(run: Path, state: Path, **options: object) -> Iterator[str]:
    """The base URL of ``create_app(run, ...)`` served by uvicorn on a free loopback port."""
    import uvicorn

    from metamodal.api.serve import create_app

    app = create_app(run, state=str(state), **options)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    uv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=uv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not uv.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            pytest.fail("the server did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        uv.should_exit = True
        thread.join(10)
        sock.close()


@pytest.fixture(scope="module")
def server(trained: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The server of the run, measuring its test accuracy on a few episodes."""
    with serving(trained[1], tmp_path_factory.mktemp("serve-state"), eval_episodes=10) as url:
        yield url


@pytest.fixture
def token_server(trained: tuple[Path, Path], tmp_path: Path) -> Iterator[str]:
    """The server of the run with a token (writes need it), and 3 soft k-means steps."""
    with serving(trained[1], tmp_path / "state", token=TOKEN, eval_episodes=0,
                 transduction=3) as url:
        yield url


# ---------------------------------------------------------------------------- helpers
def wait_for(driver, condition: Callable[[], object], what: str, timeout: float = 90.0):
    """Poll ``condition`` until it returns something truthy; on timeout fail with ``what``, the
    errors the page shows and the browser's console."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = condition()
            if value:
                return value
        except Exception as err:  # stale elements while the page re-renders
            last = err
        time.sleep(0.1)
    shown = [e.text for e in driver.find_elements("css selector", "[data-testid=error]")]
    console = [entry["message"] for entry in driver.get_log("browser")]
    pytest.fail(f"timed out waiting for {what}; last exception {last!r}; errors shown {shown}; "
                f"console {console}")


def wait_ready(driver, what: str) -> None:
    """Wait until the page has (re)loaded the model and the tasks."""
    body = driver.find_element("tag name", "body")
    wait_for(driver, lambda: body.get_attribute("data-ready") == "true", what)


def by_testid(scope, testid: str, **attrs: str) -> list:
    selector = f"[data-testid={testid}]" + "".join(f'[data-{k}="{v}"]' for k, v in attrs.items())
    return scope.find_elements("css selector", selector)


def card(driver, label: str):
    cards = by_testid(driver, "class-card", label=label)
    return cards[0] if cards else None


def loaded_images(driver, elements: list) -> list:
    return [e for e in elements
            if driver.execute_script("return arguments[0].complete && "
                                     "arguments[0].naturalWidth > 0", e)]


def examples_of(driver, label: str) -> list:
    found = card(driver, label)
    return by_testid(found, "example") if found else []


def drop_files(driver, target, paths: list[str]) -> None:
    """Drop files onto ``target`` as a drag from the desktop does: the files are read by a
    scratch file input, then a ``drop`` event carrying them is dispatched on the target."""
    scratch = driver.execute_script(
        "const i = document.createElement('input'); i.type = 'file'; i.multiple = true;"
        "i.id = 'test-drop-source'; i.style.display = 'none'; document.body.append(i);"
        "return i;")
    scratch.send_keys("\n".join(paths))
    driver.execute_script(
        "const [target, input] = arguments; const data = new DataTransfer();"
        "for (const f of input.files) data.items.add(f);"
        "for (const type of ['dragenter', 'dragover', 'drop']) target.dispatchEvent("
        "  new DragEvent(type, {dataTransfer: data, bubbles: true, cancelable: true}));"
        "input.remove();", target, scratch)


def rows_by_class(data: Path) -> dict[str, list[dict[str, str]]]:
    out: dict[str, list[dict[str, str]]] = {}
    with (data / "samples.csv").open(newline="") as f:
        for row in csv.DictReader(f):
            out.setdefault(row["species"], []).append(row)
    return out


def artifacts_dir() -> Path:
    folder = Path(os.environ.get("METAMODAL_TEST_ARTIFACTS") or ROOT / "test-artifacts")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def save_screenshot(driver) -> Path:
    """A full-height screenshot of the page; copied to docs/images when asked to refresh it."""
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
        "width": 1280, "height": max(800, min(int(height), 3000)), "deviceScaleFactor": 1,
        "mobile": False})
    driver.execute_script("document.activeElement && document.activeElement.blur();"
                          "window.scrollTo(0, 0)")
    time.sleep(0.3)
    path = artifacts_dir() / "serve-page.png"
    try:
        assert driver.save_screenshot(str(path)), "the screenshot could not be written"
    finally:
        driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    print(f"serve page screenshot: {path}")
    if os.environ.get("METAMODAL_UPDATE_SCREENSHOT") == "1":
        target = ROOT / "docs" / "images" / "serve-page.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
        print(f"serve page screenshot copied to {target}")
    return path


# ---------------------------------------------------------------------------- the test
def exercise_page(driver, url: str, data: Path, scratch: Path) -> None:
    """Everything a person does on the page, checked as they would see it."""
    rows = rows_by_class(data)
    a_rows, b_rows = rows[CLASS_A], rows[CLASS_B]
    image = lambda row: str(data / row["image"])  # noqa: E731

    driver.get(url + "/")
    wait_ready(driver, "the page to load the model")
    assert driver.find_element("id", "model-learner").text == "protonet"
    assert driver.find_element("id", "model-test-time").text == "plain"
    names = {e.get_attribute("data-modality") for e in by_testid(driver, "model-modality")}
    assert names == {"image", "caption"}
    assert driver.execute_script("return document.querySelectorAll('script[src^=http], "
                                 "link[href^=http]').length") == 0  # works offline

    # a new task, named on the page; its first example creates it
    driver.find_element("id", "task-name").send_keys("field guide")
    driver.find_element("id", "task-create").click()
    wait_for(driver, lambda: "field guide" in driver.find_element("id", "task-summary").text,
             "the new task's name")

    # two classes, named on the page
    for label in (CLASS_A, CLASS_B):
        driver.find_element("id", "class-name").send_keys(label)
        driver.find_element("id", "class-add").click()
        wait_for(driver, lambda label=label: card(driver, label), f"the card of {label}")

    # fast path: two image files dropped at once onto A's card = two examples
    drop_files(driver, card(driver, CLASS_A), [image(r) for r in a_rows[:2]])
    wait_for(driver, lambda: len(examples_of(driver, CLASS_A)) == 2, "two examples of A")
    wait_for(driver, lambda: all(words in driver.find_element(
        "css selector", "#task-select option:checked").text for words in (
            "field guide", "2 examples")), "the task's line: its name and 2 examples")
    wait_for(driver, lambda: len(loaded_images(driver, by_testid(
        card(driver, CLASS_A), "example-thumbnail"))) == 2, "A's two thumbnails")

    # one class is not enough to predict: the API's error and its fix are shown on the page
    driver.find_element("id", "query-files").send_keys(image(a_rows[0]))
    error = wait_for(driver, lambda: by_testid(driver, "error"), "the error of a one-class task")
    assert error[0].find_element("css selector", "[data-testid=error-message]").text
    assert error[0].find_element("css selector", "[data-testid=error-fix]").text
    error[0].find_element("css selector", "button.close").click()

    # a corrupt image is refused with a readable error, and nothing is added
    broken = scratch / "broken.png"
    broken.write_bytes(b"this is not a picture")
    by_testid(card(driver, CLASS_B), "class-files")[0].send_keys(str(broken))
    error = wait_for(driver, lambda: by_testid(driver, "error"), "the error of a corrupt image")
    assert error[0].find_element("css selector", "[data-testid=error-message]").text
    assert not examples_of(driver, CLASS_B)
    error[0].find_element("css selector", "button.close").click()

    # the composer: one example of B with an image and a typed caption, one with an image only
    b_card = card(driver, CLASS_B)
    composer = b_card.find_element("css selector", ".composer")
    if not b_card.find_element("css selector", "details.composer-box").get_attribute("open"):
        b_card.find_element("css selector", "details.composer-box > summary").click()
    by_testid(composer, "composer-input", modality="image")[0].send_keys(image(b_rows[0]))
    by_testid(composer, "composer-input", modality="caption")[0].send_keys(b_rows[0]["caption"])
    by_testid(composer, "add-example")[0].click()
    wait_for(driver, lambda: len(examples_of(driver, CLASS_B)) == 1, "B's composed example")
    texts = by_testid(card(driver, CLASS_B), "example-text")
    assert [t.text for t in texts] == [b_rows[0]["caption"]]
    assert by_testid(composer, "composer-input", modality="caption")[0].get_attribute("value") == ""
    by_testid(card(driver, CLASS_B), "class-files")[0].send_keys(image(b_rows[1]))
    wait_for(driver, lambda: len(examples_of(driver, CLASS_B)) == 2, "B's second example")

    # an example can be removed, and added again with the card's file picker
    by_testid(examples_of(driver, CLASS_A)[1], "remove-example")[0].click()
    wait_for(driver, lambda: len(examples_of(driver, CLASS_A)) == 1, "A's example removed")
    by_testid(card(driver, CLASS_A), "class-files")[0].send_keys(image(a_rows[1]))
    wait_for(driver, lambda: len(examples_of(driver, CLASS_A)) == 2, "A's example added again")
    counts = [c.text for c in by_testid(driver, "class-count")]
    assert counts == ["2 examples", "2 examples"]

    # two query images dropped at once = two queries: a support image of A (its label is
    # certain) and a held-out image of B (only shown, not checked: the model is tiny)
    drop_files(driver, driver.find_element("id", "query-drop"),
               [image(a_rows[0]), image(b_rows[2])])
    wait_for(driver, lambda: len(by_testid(driver, "prediction")) == 2, "two predictions")
    first = by_testid(driver, "prediction", files=Path(a_rows[0]["image"]).name)[0]
    second = by_testid(driver, "prediction", files=Path(b_rows[2]["image"]).name)[0]
    assert by_testid(first, "prediction-label")[0].text == CLASS_A
    assert by_testid(second, "prediction-label")[0].text in (CLASS_A, CLASS_B)

    bars = by_testid(first, "probability-bar")
    assert [b.get_attribute("data-label") for b in bars][0] == CLASS_A
    assert sorted(b.get_attribute("data-label") for b in bars) == [CLASS_A, CLASS_B]
    probabilities = [float(b.get_attribute("data-probability")) for b in bars]
    assert probabilities == sorted(probabilities, reverse=True)
    assert sum(probabilities) == pytest.approx(1.0, abs=1e-3)
    fill = bars[0].find_element("css selector", ".bar-fill")
    assert fill.size["width"] > 0 and fill.is_displayed()

    assert by_testid(first, "missing-modalities")[0].get_attribute("data-missing") == "caption"
    assert "caption" in by_testid(first, "missing-modalities")[0].text
    nearest = by_testid(first, "nearest-item")
    assert 1 <= len(nearest) <= 3
    assert nearest[0].get_attribute("data-label") == CLASS_A
    wait_for(driver, lambda: loaded_images(driver, by_testid(first, "nearest-thumbnail")),
             "the nearest examples' thumbnails")
    assert not by_testid(driver, "error")

    severe = [entry["message"] for entry in driver.get_log("browser")
              if entry["level"] == "SEVERE" and "Failed to load resource" not in entry["message"]]
    assert not severe, f"the page logged errors: {severe}"


def test_page_in_a_browser(browser, server: str, trained: tuple[Path, Path],
                           tmp_path: Path) -> None:
    try:
        exercise_page(browser, server, trained[0], tmp_path)
    finally:
        save_screenshot(browser)


def test_token_and_class_removal(browser, token_server: str, trained: tuple[Path, Path]) -> None:
    """A write without the token is refused with a readable 401; the token typed on the page is
    kept in localStorage and sent; a class (all its examples) can be removed."""
    driver, data = browser, trained[0]
    a_image = str(data / rows_by_class(data)[CLASS_A][0]["image"])
    driver.get(token_server + "/")
    wait_ready(driver, "the page to load the model")
    assert "change" in driver.find_element("id", "token-state").text
    assert driver.find_element("id", "model-test-time").text == "3 soft k-means steps"

    driver.find_element("id", "class-name").send_keys(CLASS_A)
    driver.find_element("id", "class-add").click()
    drop_files(driver, wait_for(driver, lambda: card(driver, CLASS_A), "A's card"), [a_image])
    error = wait_for(driver, lambda: by_testid(driver, "error"), "the 401 of a write")[0]
    assert "401" in error.text and "Authorization" in error.text
    assert not examples_of(driver, CLASS_A)
    error.find_element("css selector", "button.close").click()

    driver.find_element("id", "token-input").send_keys(TOKEN)
    driver.find_element("id", "token-save").click()
    wait_ready(driver, "the page to reload")
    assert driver.execute_script("return localStorage.getItem('metamodal.token')") == TOKEN
    drop_files(driver, wait_for(driver, lambda: card(driver, CLASS_A), "A's card"), [a_image])
    wait_for(driver, lambda: len(examples_of(driver, CLASS_A)) == 1, "A's example, with the token")

    by_testid(card(driver, CLASS_A), "remove-class")[0].click()
    driver.switch_to.alert.accept()
    wait_for(driver, lambda: card(driver, CLASS_A) is None, "A's card removed")
    assert "0 classes" in driver.find_element("id", "task-summary").text
    assert not by_testid(driver, "error")


def test_a_damaged_task_is_listed_with_its_error(browser, trained: tuple[Path, Path],
                                                 tmp_path: Path) -> None:
    """The server lists a task whose stored rows are damaged apart (``damaged``); the page
    dropped it without a word. It now lists it, not openable, with the error and the fix."""
    import sqlite3

    from fastapi.testclient import TestClient

    from metamodal.api.serve import create_app
    from metamodal.serve.store import DATABASE

    state = tmp_path / "state"
    with TestClient(create_app(trained[1], state=str(state), eval_episodes=0)) as c:
        ids = [c.post("/api/tasks", data={"name": name, "e0.label": "a",
                                          "e0.caption": "a red bird", "e1.label": "b",
                                          "e1.caption": "a blue fish"}).json()["id"]
               for name in ("kept", "broken")]
    db = sqlite3.connect(state / DATABASE)
    db.execute("UPDATE tasks SET name = ? WHERE id = ?", (b"\xff", ids[1]))
    db.commit()
    db.close()
    driver = browser
    with serving(trained[1], state, eval_episodes=0) as url:
        driver.get(url + "/")
        wait_ready(driver, "the page to load the model")
        damaged = wait_for(driver, lambda: by_testid(driver, "task-damaged"), "the damaged task")
        assert [d.get_attribute("data-task") for d in damaged] == [ids[1]]
        assert damaged[0].get_attribute("disabled") is not None
        assert ids[1] in damaged[0].text and "damaged" in damaged[0].text
        assert "fix" in damaged[0].get_attribute("title")
        texts = [o.text for o in driver.find_elements("css selector", "#task-select option")]
        assert any(t.startswith("kept") for t in texts)
