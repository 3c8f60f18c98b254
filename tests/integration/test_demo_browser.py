"""The demo chat page end to end: a real `sohbet-server --demo` process, Debian's Chromium driven
by Playwright, one browser context per user.

Two users sign in, start a direct conversation and a group, see each other typing, read marks
and unread counts; then the server is killed with SIGKILL mid-chat and started again on the same
port and database: both pages show the reconnecting banner, recover by themselves, the message
sent during the outage goes from pending to sent, and every message is on both pages exactly once.
A phone-sized page shows one pane at a time and loads older history when scrolled to the top.

Screenshots are kept in $SOHBET_ARTIFACTS (default: test-artifacts/ at the repository root) for
a person to look at. Every wait is on a condition (Playwright's `expect`), none on the clock.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, BrowserContext, Locator, Page, Request, expect, sync_playwright

from ..conftest import IN_CI

CHROMIUM = "/usr/bin/chromium"
SERVER = [sys.executable, "-I", "-m", "sohbet.app.cli"]
#: What the server logs once it listens with --demo (sohbet.app.cli).
READY_LINE = "demo chat page at http://"
#: The longest any one condition is awaited. A restarted server is met by the client's backoff
#: (full jitter, ceilings doubling from 0.5 s), so recovery may take a few seconds.
WAIT_MS = 20_000
#: Recovery after a restart waits for the client's next attempt: at most its 30 s backoff ceiling.
RECOVERY_MS = 45_000
START_S = 30.0
ARTIFACTS = Path(os.environ.get("SOHBET_ARTIFACTS") or Path(__file__).resolve().parents[2] / "test-artifacts")
DESKTOP = {"width": 1100, "height": 720}
PHONE = {"width": 390, "height": 844}


class DemoServer:
    """`sohbet-server --demo` on a fixed port and data directory, so that it can be killed and
    started again where the pages expect it."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        self.proc: subprocess.Popen[str] | None = None
        self.log: list[str] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def start(self) -> None:
        environ = {k: v for k, v in os.environ.items() if not k.startswith("SOHBET_")}
        args = ["--port", str(self.port), "--data-dir", str(self.data_dir), "--demo"]
        self.proc = proc = subprocess.Popen(
            [*SERVER, *args], cwd=self.data_dir, env=environ, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        lines: queue.Queue[str | None] = queue.Queue()

        def drain() -> None:  # read to the end, so the server never blocks on a full pipe
            assert proc.stdout is not None
            for line in proc.stdout:
                self.log.append(line)
                lines.put(line)
            lines.put(None)

        threading.Thread(target=drain, daemon=True).start()
        while True:
            try:
                line = lines.get(timeout=START_S)
            except queue.Empty:
                raise AssertionError(f"no {READY_LINE!r} within {START_S} s:\n{''.join(self.log)}") from None
            if line is None:
                raise AssertionError(f"the server exited ({proc.wait()}):\n{''.join(self.log)}")
            if READY_LINE in line:
                return

    def kill(self) -> None:
        """SIGKILL: no close frames, no shutdown, the sockets just die."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def post(self, path: str, body: dict[str, Any], token: str | None = None) -> Any:
        headers = {"Content-Type": "application/json"}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        request = urllib.request.Request(self.url + path.lstrip("/"), json.dumps(body).encode(), headers)
        with urllib.request.urlopen(request, timeout=10) as answer:
            return json.loads(answer.read())


@pytest.fixture
def server(tmp_path: Path) -> Iterator[DemoServer]:
    demo = DemoServer(tmp_path)
    demo.start()
    try:
        yield demo
    finally:
        demo.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not shutil.which(CHROMIUM):
        if IN_CI:
            pytest.fail(f"{CHROMIUM} is missing; CI must run the browser tests (apt install chromium)")
        pytest.skip(f"{CHROMIUM} is missing (apt install chromium)")
    with sync_playwright() as p:
        chromium = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"],
        )
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture(autouse=True)
def bounded_waits() -> None:
    expect.set_options(timeout=WAIT_MS)


def open_page(browser: Browser, **options: Any) -> tuple[BrowserContext, Page, list[str]]:
    """A new browser context (a user of its own) and its page, with the page's uncaught errors."""
    context = browser.new_context(**options)
    context.set_default_timeout(WAIT_MS)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    return context, page, errors


def sign_in(page: Page, name: str) -> None:
    page.get_by_label("Your name").fill(name)
    page.get_by_role("button", name="Start chatting").click()
    expect(page.get_by_test_id("me")).to_have_text(name)
    expect(banner(page)).to_have_attribute("data-state", "open")
    expect(page.locator("ul.conversations")).to_have_attribute("aria-busy", "false")


def banner(page: Page) -> Locator:
    return page.locator(".banner")


def conversation(page: Page, name: str) -> Locator:
    return page.locator("a.conversation", has=page.locator(".conversation-name", has_text=name))


def composer(page: Page) -> Locator:
    return page.get_by_label("Message", exact=True)


def messages(page: Page) -> Locator:
    return page.locator("li.message")


def message(page: Page, text: str) -> Locator:
    return page.locator("li.message", has=page.locator(".bubble", has_text=text))


def shown(page: Page) -> list[tuple[int | None, str, str]]:
    """(seq, status, text) of every message on the page, in order."""
    return [
        (int(seq) if seq else None, status, text)
        for seq, status, text in messages(page).evaluate_all(
            "els => els.map(e => [e.dataset.seq, e.dataset.status, e.querySelector('.bubble').textContent])"
        )
    ]


def start_conversation(page: Page, people: str, title: str = "") -> None:
    field = page.get_by_label("People")
    if not field.is_visible():
        page.get_by_text("New conversation", exact=True).click()
    field.fill(people)
    page.get_by_label("Group title (optional)").fill(title)
    page.get_by_role("button", name="Start conversation").click()


def say(page: Page, text: str) -> None:
    """Write *text* in the composer (which tells the others this user is typing), send it with Enter."""
    box = composer(page)
    box.fill(text)
    box.press("Enter")
    expect(box).to_have_value("")


def token_requests(page: Page) -> list[Request]:
    """The page's requests for a token (`POST /demo/token`), from now on."""
    seen: list[Request] = []

    def record(request: Request) -> None:
        if request.method == "POST" and request.url.endswith("/demo/token"):
            seen.append(request)

    page.on("request", record)
    return seen


def snapshot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=ARTIFACTS / name)


def test_two_users_chat_through_a_server_kill_and_restart(browser: Browser, server: DemoServer) -> None:
    alice_context, alice, alice_errors = open_page(browser, viewport=DESKTOP)
    bob_context, bob, bob_errors = open_page(browser, viewport=DESKTOP, color_scheme="dark")
    tokens = {alice: token_requests(alice), bob: token_requests(bob)}
    for page, name in ((alice, "alice"), (bob, "bob")):
        page.goto(server.url)
        sign_in(page, name)
        assert len(tokens[page]) == 1  # the first connection uses the sign-in's token

    # alice starts a direct conversation; bob sees it arrive and opens it.
    start_conversation(alice, "bob")
    expect(alice.get_by_role("heading", name="bob")).to_be_visible()
    expect(alice.get_by_text("No messages yet")).to_be_visible()
    conversation(bob, "alice").click()
    expect(bob.get_by_text("No messages yet")).to_be_visible()
    expect(bob.get_by_test_id("presence")).to_have_text("Online")

    # Typing shows on the other page, and goes away when the message arrives (well before its
    # 6 s expiry would have hidden it).
    composer(alice).fill("Merhaba bob, çay içelim mi?")
    expect(bob.get_by_test_id("typing")).to_have_text("alice is typing…")
    composer(alice).press("Enter")
    expect(message(bob, "Merhaba bob, çay içelim mi?")).to_have_attribute("data-seq", "1")
    expect(bob.get_by_test_id("typing")).to_have_text("", timeout=3000)
    # bob has it in sight, so it is read: alice sees that.
    first = message(alice, "Merhaba bob, çay içelim mi?")
    expect(first).to_have_attribute("data-status", "sent")
    expect(first).to_have_attribute("data-read", "true")
    expect(first.locator(".state")).to_contain_text("Seen")

    composer(bob).fill("Hey alice, all good here.")
    expect(alice.get_by_test_id("typing")).to_have_text("bob is typing…")
    composer(bob).press("Enter")
    expect(message(alice, "Hey alice, all good here.")).to_have_attribute("data-seq", "2")
    expect(alice.get_by_test_id("typing")).to_have_text("", timeout=3000)
    expect(message(bob, "Hey alice, all good here.")).to_have_attribute("data-read", "true")

    # A group: bob is looking at the direct conversation, so its message counts as unread for
    # him until he opens it; then alice sees who read it.
    start_conversation(alice, "bob, cem", "Weekend plans")
    expect(alice.get_by_role("heading", name="Weekend plans")).to_be_visible()
    say(alice, "Who is in for Saturday?")
    group = conversation(bob, "Weekend plans")
    expect(group).to_have_attribute("data-unread", "1")
    expect(group.get_by_test_id("unread")).to_have_text("1 unread")
    expect(bob).to_have_title("(1) sohbet demo")
    group.click()
    expect(message(bob, "Who is in for Saturday?")).to_be_visible()
    expect(group).to_have_attribute("data-unread", "0")
    expect(group.get_by_test_id("unread")).to_have_count(0)
    expect(message(alice, "Who is in for Saturday?").locator(".state")).to_contain_text("Seen by bob")
    conversation(bob, "alice").click()
    conversation(alice, "bob").click()
    expect(messages(bob)).to_have_count(2)
    expect(messages(alice)).to_have_count(2)

    # The server dies mid-chat.
    server.kill()
    for page in (alice, bob):
        expect(banner(page)).to_have_attribute("data-state", "reconnecting")
        expect(banner(page)).to_contain_text("Reconnecting")
        expect(banner(page).get_by_role("button", name="Retry now")).to_be_visible()
    # Presence cannot be known meanwhile: no one is shown online (or offline).
    expect(alice.get_by_test_id("presence")).to_have_text("Direct message")
    # alice writes anyway: the message waits in the outbox, shown as pending.
    say(alice, "Sent while the server was down")
    outage = message(alice, "Sent while the server was down")
    expect(outage).to_have_attribute("data-status", "pending")
    expect(outage.locator(".state")).to_have_text("Sending…")
    snapshot(alice, "demo-outage-alice.png")

    server.start()  # the same port and database
    # alice uses the banner's button; bob's client comes back by itself.
    alice.evaluate("document.querySelector('.banner button')?.click()")
    for page in (alice, bob):
        expect(banner(page)).to_have_attribute("data-state", "open", timeout=RECOVERY_MS)
        assert len(tokens[page]) >= 2  # every reconnect asks for a fresh token
    expect(alice.get_by_test_id("presence")).to_have_text("Online")
    expect(outage).to_have_attribute("data-status", "sent")
    expect(outage).to_have_attribute("data-seq", "3")
    expect(message(bob, "Sent while the server was down")).to_have_attribute("data-seq", "3")
    say(bob, "Back again!")
    expect(message(alice, "Back again!")).to_have_attribute("data-seq", "4")
    expect(message(alice, "Sent while the server was down")).to_have_attribute("data-read", "true")

    # Every message on both pages once, in order, and nothing left pending.
    conversation_log = [
        (1, "sent", "Merhaba bob, çay içelim mi?"),
        (2, "sent", "Hey alice, all good here."),
        (3, "sent", "Sent while the server was down"),
        (4, "sent", "Back again!"),
    ]
    for page in (alice, bob):
        expect(messages(page)).to_have_count(4)
        assert shown(page) == conversation_log
    snapshot(alice, "demo-desktop-alice.png")
    snapshot(bob, "demo-desktop-bob.png")
    assert alice_errors == bob_errors == []
    alice_context.close()
    bob_context.close()


def test_a_phone_shows_one_pane_at_a_time_and_loads_older_history(browser: Browser, server: DemoServer) -> None:
    context, phone, errors = open_page(browser, viewport=PHONE, is_mobile=True, has_touch=True, device_scale_factor=2)
    phone.goto(server.url)
    expect(phone.get_by_label("Your name")).to_be_focused()
    snapshot(phone, "demo-phone-sign-in.png")
    sign_in(phone, "alice")
    start_conversation(phone, "carol, dave", "Book club")
    heading = phone.get_by_role("heading", name="Book club")
    expect(heading).to_be_visible()
    expect(phone.get_by_test_id("me")).to_be_hidden()  # the chat has the whole screen
    phone.get_by_role("button", name="Back to conversations").click()
    club = conversation(phone, "Book club")
    expect(club).to_be_visible()
    expect(heading).to_be_hidden()

    # 40 messages arrive while alice looks at the list (over the HTTP API, as the backend or
    # another client would send them): more than the page's first page of 30.
    conversation_id = club.get_attribute("data-conversation-id")
    assert conversation_id is not None
    tokens = {sender: server.post("/demo/token", {"user_id": sender})["token"] for sender in ("carol", "dave")}
    for n in range(1, 41):
        sender = "carol" if n % 2 else "dave"
        server.post(f"/api/conversations/{conversation_id}/messages", {"content": f"{sender} #{n}"}, tokens[sender])
    expect(club).to_have_attribute("data-unread", "40")
    snapshot(phone, "demo-phone-list.png")

    club.click()
    expect(messages(phone)).to_have_count(30)
    expect(messages(phone).last).to_have_attribute("data-seq", "40")
    expect(messages(phone).last).to_be_in_viewport()
    # Scrolled to the top, the older ten come in above, and the view stays where it was.
    top_before = message(phone, "carol #11")
    phone.locator(".scroller").evaluate("el => { el.scrollTop = 0; }")
    expect(messages(phone)).to_have_count(40)
    expect(phone.get_by_test_id("beginning")).to_be_attached()
    expect(top_before).to_be_in_viewport()
    assert [seq for seq, _, _ in shown(phone)] == list(range(1, 41))

    # Back at the bottom the composer is in reach, and a message goes out.
    phone.get_by_role("button", name="Newest").click()
    say(phone, "I finished the book!")
    expect(message(phone, "I finished the book!")).to_have_attribute("data-seq", "41")
    expect(composer(phone)).to_be_in_viewport()
    width = phone.evaluate("document.documentElement.scrollWidth")
    assert width <= PHONE["width"], f"the page scrolls sideways ({width} px)"
    snapshot(phone, "demo-phone-chat.png")

    phone.get_by_role("button", name="Back to conversations").click()
    expect(club).to_have_attribute("data-unread", "0")
    # The browser's own back button (a phone's back gesture) leaves a conversation too.
    club.click()
    expect(heading).to_be_visible()
    phone.go_back()
    expect(heading).to_be_hidden()
    expect(club).to_be_visible()
    # The name is remembered: a reload signs in again.
    phone.reload()
    expect(phone.get_by_test_id("me")).to_have_text("alice")
    expect(club).to_be_visible()
    assert errors == []
    context.close()
