"""The chat page in a real browser: Debian's chromium, headless, driven by Playwright with the
system browser (no browser download), through the chat example as README.md runs it.

``bash examples/chat/run.sh`` starts gunicorn behind HAProxy; HAProxy listens on
127.0.0.1 and connects to gunicorn from 127.0.0.3. The browser connects from 127.0.0.1, so
the page can show 127.0.0.1 only if the worker took it from HAProxy's PROXY header;
without the header it would show 127.0.0.3. Two pages then exchange messages, each shown
with its sender's address.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.clients import WARNING
from tests.example_scripts import Script, run_script
from tests.haproxy import free_port, haproxy_available

playwright = pytest.importorskip(
    "playwright.sync_api", reason="playwright is not installed (pip install playwright)"
)

# Playwright's types, named without importing them: mypy passes where playwright is missing.
Browser = Any
Page = Any

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(not haproxy_available(), reason="haproxy is not installed; CI installs it"),
    pytest.mark.skipif(
        not Path(CHROMIUM).exists(), reason="chromium is not installed (apt-get install chromium)"
    ),
]

BROWSER_FLAGS = [
    "--no-sandbox",  # the tests run as root
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
WAIT_MS = 15_000
"""The longest any step may take in the browser."""


@pytest.fixture(scope="module")
def chat(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Script, int]]:
    """``bash examples/chat/run.sh`` on free ports; the script and HAProxy's port."""
    front_port = free_port()
    script = run_script(
        ["bash", "examples/chat/run.sh"],
        tmp_path_factory.mktemp("chat") / "run.log",
        {"FRONT_PORT": str(front_port), "APP_PORT": str(free_port())},
    )
    try:
        script.wait_for("Ctrl-C stops the example.", timeout=60)
        yield script, front_port
    finally:
        script.stop()
    output = script.output()
    for fault in ("[ALERT]", "Traceback", WARNING):
        assert fault not in output, output


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    """Debian's chromium, headless, with an empty profile of its own."""
    with playwright.sync_playwright() as driver:
        launched = driver.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=BROWSER_FLAGS, timeout=WAIT_MS
        )
        try:
            yield launched
        finally:
            launched.close()


def open_chat(browser: Browser, front_port: int) -> Page:
    """A new page (its own browser context: its own connection) showing the chat."""
    page = browser.new_context().new_page()
    page.set_default_timeout(WAIT_MS)
    page.goto(f"http://127.0.0.1:{front_port}/")
    page.wait_for_function("document.getElementById('you').textContent !== 'connecting...'")
    return page


def send(page: Page, text: str) -> None:
    """Type ``text`` into the chat's input and press Enter, as a person would."""
    page.fill("#text", text)
    page.press("#text", "Enter")


def wait_for_message(page: Page, line: str) -> None:
    """Wait until the page lists ``line`` among its messages."""
    page.wait_for_function(
        "line => [...document.querySelectorAll('#messages li')]"
        ".some(item => item.textContent === line)",
        arg=line,
    )


def test_the_page_shows_the_browser_address_and_two_pages_talk(
    chat: tuple[Script, int], browser: Browser
) -> None:
    script, front_port = chat
    alice = open_chat(browser, front_port)
    bob = open_chat(browser, front_port)
    try:
        # The browser's own address, taken from HAProxy's header; not HAProxy's 127.0.0.3.
        assert alice.inner_text("#you") == "127.0.0.1"
        assert bob.inner_text("#you") == "127.0.0.1"

        send(alice, "hello from the first page")
        wait_for_message(bob, "127.0.0.1: hello from the first page")
        wait_for_message(alice, "127.0.0.1: hello from the first page")
        send(bob, "and hello back")
        wait_for_message(alice, "127.0.0.1: and hello back")

        messages = alice.eval_on_selector_all(
            "#messages li", "items => items.map(item => item.textContent)"
        )
        assert messages == [
            "127.0.0.1: hello from the first page",
            "127.0.0.1: and hello back",
        ]
        assert "127.0.0.3" not in alice.content() + bob.content()
    finally:
        alice.context.close()
        bob.context.close()
    assert "Traceback" not in script.output(), script.output()
