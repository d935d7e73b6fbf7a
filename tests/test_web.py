"""The web page at ``/`` in a REAL headless Chromium (Debian's ``chromium``, driven by
Playwright's Python API — no browser is ever downloaded), against a real server on 127.0.0.1
running the real tiny model.

Every page here records its console errors, page errors and every request it makes; the
``page`` fixture fails the test if any request left the server's origin or anything was logged
as an error. Screenshots go to ``$EDGECAP_WEB_SCREENSHOTS`` (default: a pytest tmp dir);
docs/web-page.png and docs/kiosk.png are copies of two of them.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image
from playwright.sync_api import BrowserContext, Page, Playwright, sync_playwright

from edgecap.config import Settings
from edgecap.records import ModelFiles
from tests.support.api import LiveServer, api_settings, install_model, live_server, new_uuid, post
from tests.support.images import data_uri

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
KEY = "web-key"
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}
WAIT_MS = 120_000  # a deadline on every wait in the browser (CI machines are busy)
MAX_TOKENS = 24
KIOSK_IDLE_S = 8.0


# ---------------------------------------------------------------------------- the browser


@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    assert CHROMIUM.exists(), (
        f"{CHROMIUM} is missing: the browser tests need Debian's chromium "
        "(apt-get install -y chromium; .ci/run does it)"
    )
    with sync_playwright() as driver:
        yield driver


@pytest.fixture
def browser(playwright: Playwright, tmp_path: Path) -> Iterator[BrowserContext]:
    """A fresh Chromium profile per test, so that no storage leaks between tests."""
    context = playwright.chromium.launch_persistent_context(
        str(tmp_path / "profile"),
        executable_path=str(CHROMIUM),
        headless=True,
        args=CHROMIUM_ARGS,
        viewport=DESKTOP,
    )
    try:
        yield context
    finally:
        context.close()


@pytest.fixture(scope="session")
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    chosen = os.environ.get("EDGECAP_WEB_SCREENSHOTS")
    folder = Path(chosen) if chosen else tmp_path_factory.mktemp("screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@dataclass
class Watched:
    """A page and what it did: console errors, uncaught errors, requests."""

    page: Page
    origin: str
    errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)

    def check(self) -> None:
        local = (self.origin + "/", f"blob:{self.origin}/", "data:")  # blob/data: never leave
        foreign = [url for url in self.requests if not url.startswith(local)]
        assert not foreign, f"requests left the server's origin: {foreign}"
        assert not self.errors, f"the page logged errors: {self.errors}"


OpenPage = Callable[..., Watched]


@pytest.fixture
def open_page(browser: BrowserContext) -> Iterator[OpenPage]:
    opened: list[Watched] = []

    def open_(server: LiveServer, viewport: dict[str, int] = DESKTOP) -> Watched:
        origin = f"http://127.0.0.1:{server.port}"
        page = browser.new_page()
        page.set_viewport_size(viewport)
        watched = Watched(page, origin)
        page.on("console", lambda m: m.type == "error" and watched.errors.append(m.text))
        page.on("pageerror", lambda e: watched.errors.append(str(e)))
        page.on("request", lambda r: watched.requests.append(r.url))
        page.goto(origin + "/")
        opened.append(watched)
        return watched

    yield open_
    for watched in opened:
        watched.check()


# ---------------------------------------------------------------------------- the servers


@pytest.fixture(scope="module")
def web_settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return api_settings(
        tmp_path_factory.mktemp("home"), api_keys=[KEY], n_threads=2, max_image_megapixels=1.0
    )


@pytest.fixture(scope="module")
def server(web_settings: Settings, tiny_model_files: ModelFiles) -> Iterator[LiveServer]:
    with live_server(web_settings, None, install_model(web_settings, tiny_model_files)) as srv:
        srv.wait_ready()
        yield srv


@pytest.fixture(scope="module")
def kiosk(
    tmp_path_factory: pytest.TempPathFactory, tiny_model_files: ModelFiles
) -> Iterator[LiveServer]:
    settings = api_settings(
        tmp_path_factory.mktemp("kiosk-home"),
        n_threads=2,
        kiosk=True,
        kiosk_idle_s=KIOSK_IDLE_S,
        max_tokens=MAX_TOKENS,
    )
    with live_server(settings, None, install_model(settings, tiny_model_files)) as srv:
        srv.wait_ready()
        yield srv


# ---------------------------------------------------------------------------- helpers


def photo(folder: Path, name: str = "photo.png", size: tuple[int, int] = (160, 112)) -> Path:
    """A small picture with some structure: a gradient and a few blocks."""
    width, height = size
    image = Image.new("RGB", size)
    image.putdata(
        [
            ((x * 255) // width, (y * 255) // height, 120)
            for y in range(height)
            for x in range(width)
        ]
    )
    for i, color in enumerate(((230, 40, 40), (30, 160, 70), (250, 210, 30))):
        image.paste(color, (10 + 45 * i, 30, 45 + 45 * i, 80))
    path = folder / name
    image.save(path)
    return path


def log_in(page: Page) -> None:
    """Answer the page's API key dialog."""
    page.get_by_label("Key", exact=True).fill(KEY)
    page.get_by_role("button", name="Use key").click()
    page.wait_for_function("() => !document.getElementById('key-dialog').open", timeout=WAIT_MS)


RECORD_PIECES = """() => {
  window.pieces = [];
  new MutationObserver((records) => {
    for (const r of records) for (const n of r.addedNodes) window.pieces.push(n.textContent);
  }).observe(document.getElementById('answer'), {childList: true});
}"""


def caption_and_wait(page: Page) -> str:
    page.get_by_role("button", name="Caption").click()
    page.wait_for_function(
        "() => document.getElementById('timings').textContent.includes('generated')",
        timeout=WAIT_MS,
    )
    return str(page.get_by_role("status").inner_text())


def api_caption(server: LiveServer, image: Path, prompt: str, **fields: Any) -> str:
    task = {
        "taskType": "caption",
        "taskUUID": new_uuid(),
        "inputs": {"image": data_uri(image.read_bytes())},
        "prompt": prompt,
        **fields,
    }
    answer = post(server, [task], headers={"Authorization": f"Bearer {KEY}"})
    assert answer.status_code == 200, answer.text
    return str(answer.json()["data"][0]["text"])


def queue(server: LiveServer) -> dict[str, int]:
    answer = httpx.get(
        f"http://127.0.0.1:{server.port}/v1/status",
        headers={"Authorization": f"Bearer {KEY}"},
        timeout=30,
    )
    result: dict[str, int] = answer.json()["queue"]
    return result


# ---------------------------------------------------------------------------- the tests


def test_a_picked_file_streams_its_caption_which_equals_the_apis(
    server: LiveServer, open_page: OpenPage, tmp_path: Path, screenshots: Path
) -> None:
    watched = open_page(server)
    page = watched.page
    log_in(page)
    picture = photo(tmp_path)
    page.locator("input[type=file]").set_input_files(str(picture))
    page.wait_for_function(
        "() => document.getElementById('preview-info').textContent.includes('image tokens')",
        timeout=WAIT_MS,
    )
    assert "160×112" in page.locator("#preview-info").inner_text()
    page.locator("#max-tokens").fill(str(MAX_TOKENS))
    prompt = page.locator("#prompt").input_value()
    page.evaluate(RECORD_PIECES)

    shown = caption_and_wait(page)

    pieces: list[str] = page.evaluate("window.pieces")
    assert len(pieces) >= 2, f"the text did not stream in: {pieces}"
    assert "".join(pieces).strip().startswith(shown)
    maximum = server.settings.max_pixels
    assert shown == api_caption(server, picture, prompt, maxTokens=MAX_TOKENS, maxPixels=maximum)
    timings = page.locator("#timings").inner_text()
    for stage in ("load image", "encode", "prefill", "generate"):
        assert stage in timings
    assert page.evaluate("sessionStorage.getItem('edgecap.apiKey')") == KEY
    assert KEY not in page.url
    # The history keeps it (this browser only), the status strip names model and backend.
    history = page.locator("#history li")
    assert history.count() == 1 and shown in history.first.inner_text()
    page.wait_for_function(
        "() => document.getElementById('st-backend').textContent.includes('CPU') && "
        "document.getElementById('st-queue').textContent.includes('0 waiting, 0 running')",
        timeout=WAIT_MS,
    )
    assert "random weights" in page.locator("#st-model").inner_text()
    page.screenshot(path=str(screenshots / "web-page.png"), full_page=True)
    page.set_viewport_size(PHONE)
    page.screenshot(path=str(screenshots / "web-page-phone.png"), full_page=True)


def test_stop_ends_the_caption_and_frees_the_server(
    server: LiveServer, open_page: OpenPage, tmp_path: Path
) -> None:
    page = open_page(server).page
    log_in(page)
    page.locator("input[type=file]").set_input_files(str(photo(tmp_path)))
    page.locator("#max-tokens").fill("8192")
    page.locator("#prompt").fill("Write a very long story about this picture.")
    page.get_by_role("button", name="Caption").click()
    page.wait_for_function(
        "() => document.getElementById('answer').textContent.length > 0", timeout=WAIT_MS
    )
    page.get_by_role("button", name="Stop").click()
    page.wait_for_function(
        "() => document.getElementById('timings').textContent === 'Stopped.'", timeout=WAIT_MS
    )
    deadline = time.monotonic() + 60
    while queue(server) != {"waiting": 0, "running": 0}:
        assert time.monotonic() < deadline, "the server kept generating after Stop"
        time.sleep(0.1)
    assert page.get_by_role("button", name="Caption").is_enabled()
    # The next caption runs: the slot is free.
    page.locator("#max-tokens").fill("4")
    caption_and_wait(page)


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("broken.png", b"\x89PNG\r\n\x1a\n this is not really a PNG"),
        ("huge.png", None),  # 1500x1000 = 1.5 MP; this server decodes at most 1 MP
    ],
)
def test_an_image_the_api_refuses_shows_the_apis_message(
    server: LiveServer, open_page: OpenPage, tmp_path: Path, name: str, content: bytes | None
) -> None:
    path = tmp_path / name
    if content is None:
        Image.new("RGB", (1500, 1000), (90, 90, 200)).save(path)
    else:
        path.write_bytes(content)
    expected = post(
        server,
        [
            {
                "taskType": "caption",
                "taskUUID": new_uuid(),
                "inputs": {"image": data_uri(path.read_bytes())},
            }
        ],
        headers={"Authorization": f"Bearer {KEY}"},
    ).json()["errors"][0]["message"]
    watched = open_page(server)
    page = watched.page
    log_in(page)
    page.locator("input[type=file]").set_input_files(str(path))
    page.get_by_role("button", name="Caption").click()
    alert = page.get_by_role("alert")
    alert.wait_for(state="visible", timeout=WAIT_MS)
    assert alert.inner_text() == expected
    # The browser logs the refused request itself (a 400 is a console error): that one is
    # expected, nothing else is.
    watched.errors = [e for e in watched.errors if "status of 400" not in e]


def test_kiosk_mode_is_single_purpose_and_clears_after_its_idle_timeout(
    kiosk: LiveServer, open_page: OpenPage, tmp_path: Path, screenshots: Path
) -> None:
    page = open_page(kiosk).page
    page.wait_for_function("() => document.body.classList.contains('kiosk')", timeout=WAIT_MS)
    assert not page.locator("#prompt").is_visible()  # no settings exposed
    assert not page.locator("#budget").is_visible()
    page.screenshot(path=str(screenshots / "kiosk-empty.png"))
    picture = photo(tmp_path)
    page.locator("input[type=file]").set_input_files(str(picture))
    shown = caption_and_wait(page)
    for name, viewport in (("kiosk.png", DESKTOP), ("kiosk-phone.png", PHONE)):
        page.set_viewport_size(viewport)
        page.dispatch_event("body", "pointerdown")  # a visitor is still there: no clearing yet
        assert page.get_by_role("status").inner_text() == shown
        page.screenshot(path=str(screenshots / name))
    assert shown == api_caption_kiosk(kiosk, picture)
    # Nobody touches it: the screen clears so the next visitor never sees this photo.
    page.wait_for_function(
        "() => document.getElementById('preview').hidden && "
        "document.getElementById('answer').textContent === ''",
        timeout=int((KIOSK_IDLE_S + 30) * 1000),
    )
    assert page.locator("input[type=file]").input_value() == ""
    assert page.evaluate("localStorage.length") == 0  # and no history is kept


def api_caption_kiosk(server: LiveServer, image: Path) -> str:
    task = {
        "taskType": "caption",
        "taskUUID": new_uuid(),
        "inputs": {"image": data_uri(image.read_bytes())},
        "prompt": server.settings.kiosk_prompt,
    }
    answer = post(server, [task])
    assert answer.status_code == 200, answer.text
    return str(answer.json()["data"][0]["text"])


def test_the_page_is_usable_by_keyboard_and_at_phone_width(
    server: LiveServer, open_page: OpenPage, tmp_path: Path
) -> None:
    page = open_page(server, PHONE).page
    log_in(page)
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= PHONE["width"], f"the page scrolls sideways at phone width ({width} px)"
    page.locator("input[type=file]").set_input_files(str(photo(tmp_path)))
    page.locator("#max-tokens").fill("8")
    page.locator("#prompt").focus()
    for _ in range(10):  # Tab from the prompt reaches the Caption button
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.id") == "caption":
            break
    assert page.evaluate("document.activeElement.textContent") == "Caption"
    page.keyboard.press("Enter")
    page.wait_for_function(
        "() => document.getElementById('timings').textContent.includes('generated')",
        timeout=WAIT_MS,
    )
    assert page.get_by_role("status").inner_text()


DROP_AND_PASTE = """async ([kind, bytes]) => {
  const file = new File([new Uint8Array(bytes)], kind + ".png", {type: "image/png"});
  const data = new DataTransfer();
  data.items.add(file);
  const event = kind === "dropped"
    ? new DragEvent("drop", {dataTransfer: data, bubbles: true, cancelable: true})
    : new ClipboardEvent("paste", {clipboardData: data, bubbles: true, cancelable: true});
  (kind === "dropped" ? document.getElementById("drop") : document).dispatchEvent(event);
}"""


def wait_for_preview(page: Page, name: str) -> None:
    """Until the preview names the file ``name`` and what it costs."""
    page.wait_for_function(
        """(name) => {
          const info = document.getElementById('preview-info').textContent;
          return info.startsWith(name) && info.includes('image tokens');
        }""",
        arg=name,
        timeout=WAIT_MS,
    )


def test_drop_paste_and_camera_each_choose_the_image(
    playwright: Playwright, server: LiveServer, tmp_path: Path
) -> None:
    context = playwright.chromium.launch_persistent_context(
        str(tmp_path / "profile"),
        executable_path=str(CHROMIUM),
        headless=True,
        # Chromium's own test camera, allowed without a prompt.
        args=[
            *CHROMIUM_ARGS,
            "--use-fake-device-for-media-stream",
            "--use-fake-ui-for-media-stream",
        ],
        viewport=DESKTOP,
    )
    try:
        origin = f"http://127.0.0.1:{server.port}"
        page = context.new_page()
        errors: list[str] = []
        page.on("console", lambda m: m.type == "error" and errors.append(m.text))
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(origin + "/")
        log_in(page)
        picture = list(photo(tmp_path).read_bytes())
        for kind in ("dropped", "pasted"):
            page.evaluate(DROP_AND_PASTE, [kind, picture])
            wait_for_preview(page, f"{kind}.png")
        page.get_by_role("button", name="Use camera").click()
        page.get_by_role("button", name="Take picture").click(timeout=WAIT_MS)
        wait_for_preview(page, "camera.jpg")
        assert page.locator("#camera-box").is_hidden()  # the camera is released
        assert not errors, errors
    finally:
        context.close()


def test_the_committed_screenshots_exist() -> None:
    docs = Path(__file__).resolve().parent.parent / "docs"
    for name in ("web-page.png", "kiosk.png"):
        with Image.open(docs / name) as image:
            assert image.width >= 390 and image.height >= 300
