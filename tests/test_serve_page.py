"""The chat page of `llamalab serve`, driven in headless Chromium (Debian's chromium + chromium-driver,
through Selenium) against a real server on SmolLM2 with an API key.

The page's answer is checked against the same request made to the API directly; stopping is checked on
the server's /metrics; model output that carries HTML is injected through a fake stream.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time

import httpx
import pytest

from llamalab.serve.process import ServerProcess

KEY = "page-test-key"
NAME = "SmolLM2-135M-Instruct"
QUESTION = "What is the capital of France?"


def _chromium() -> tuple[str, str]:
    """Paths of chromium and chromedriver, installing Debian's packages when we may; else skip (fail in CI)."""
    found = shutil.which("chromium"), shutil.which("chromedriver")
    if not all(found) and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        install = ["apt-get", "install", "-y", "-q", "chromium", "chromium-driver"]
        if subprocess.run(install, env=env, capture_output=True, timeout=900).returncode:
            subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, timeout=600)
            subprocess.run(install, env=env, capture_output=True, timeout=900)
        found = shutil.which("chromium"), shutil.which("chromedriver")
    if not all(found):
        reason = "headless Chromium is needed: apt-get install chromium chromium-driver (as root, Debian)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    return found


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    chromium, chromedriver = _chromium()
    from selenium import webdriver

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage", "--window-size=1200,780",
                 f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=chromedriver))
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def server(smollm2_gguf, tmp_path_factory):
    s = ServerProcess(smollm2_gguf, "--api-key", KEY, "--max-batch", "2", "--context", "1024",
                      "--served-model-name", NAME, log=tmp_path_factory.mktemp("serve-page") / "server.log")
    yield s
    s.stop()


def wait(driver, condition, timeout=120):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.05).until(lambda d: condition())


def by_id(driver, id_):
    return driver.find_element("id", id_)


SHOWN = "return [...document.querySelectorAll('#messages .msg')].map(m => [m.className, m.innerText])"


def messages(driver, streaming=False) -> list[tuple[str, str]]:
    """(role, shown text) of every message in the conversation view (read in one go: nodes are replaced
    as an answer streams); with streaming=True, (role, text, whether it is still streaming)."""
    shown = [(c.split()[1], text, "streaming" in c.split()) for c, text in driver.execute_script(SHOWN)]
    return shown if streaming else [m[:2] for m in shown]


def answering(driver) -> bool:
    shown = messages(driver, streaming=True)
    return bool(shown) and shown[-1][2]


def stored(driver) -> dict:
    return json.loads(driver.execute_script("return localStorage.getItem('llamalab.chat')") or "{}")


def ask(driver, text):
    box = by_id(driver, "input")
    box.send_keys(text)
    box.send_keys("\n")


def set_field(driver, id_, value):
    field = by_id(driver, id_)
    field.clear()
    field.send_keys(str(value))


def test_the_page_asks_for_the_key_then_streams_an_answer(browser, server):
    page = httpx.get(server.url + "/")
    assert page.status_code == 200 and "default-src 'none'" in page.headers["content-security-policy"]
    browser.get(server.url + "/")
    wait(browser, lambda: by_id(browser, "banner").is_displayed())
    assert "401" in by_id(browser, "banner-text").text and "API key" in by_id(browser, "banner-text").text
    set_field(browser, "api-key", "wrong-key")
    by_id(browser, "key-save").click()
    wait(browser, lambda: "incorrect API key" in by_id(browser, "banner-text").text)
    set_field(browser, "api-key", KEY)
    by_id(browser, "key-save").click()
    wait(browser, lambda: by_id(browser, "model-name").text == NAME)
    assert not by_id(browser, "banner").is_displayed()

    set_field(browser, "temperature", 0)
    set_field(browser, "max-tokens", 24)
    ask(browser, QUESTION)
    seen = set()  # the answer's text while it streams: it must grow piece by piece

    def finished():
        role, text, streaming = messages(browser, streaming=True)[-1]
        if streaming:
            seen.add(text)
        return role == "assistant" and not streaming

    wait(browser, finished)
    assert len(seen - {""}) >= 2, seen
    conversation = stored(browser)["messages"]
    assert [m["role"] for m in conversation] == ["user", "assistant"]
    direct = httpx.post(f"{server.url}/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"}, timeout=300,
                        json={"messages": [{"role": "user", "content": QUESTION}], "temperature": 0, "max_tokens": 24})
    assert conversation[1]["content"] == direct.json()["choices"][0]["message"]["content"]
    origin = server.url
    resources = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert all(r.startswith(origin) for r in resources), resources  # nothing loaded from elsewhere


def test_stop_ends_generation_on_the_server(browser, server, tmp_path):
    before = server.metrics()
    set_field(browser, "max-tokens", 400)
    ask(browser, "Write a long story about a dragon who learns to bake bread.")
    wait(browser, lambda: answering(browser) and len(messages(browser)[-1][1]) > 40)
    browser.save_screenshot(str(tmp_path / "chat.png"))
    if os.environ.get("LLAMALAB_SCREENSHOT"):  # refresh the README's picture: LLAMALAB_SCREENSHOT=docs/serve-chat.png
        shutil.copy(tmp_path / "chat.png", os.environ["LLAMALAB_SCREENSHOT"])
    by_id(browser, "stop").click()
    wait(browser, lambda: "(stopped)" in messages(browser)[-1][1])
    deadline = time.monotonic() + 30
    while (m := server.metrics())["llamalab_running_sequences"] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert m["llamalab_running_sequences"] == 0
    assert m["llamalab_cancelled_sequences_total"] == before["llamalab_cancelled_sequences_total"] + 1
    time.sleep(1)
    assert server.metrics()["llamalab_generation_tokens_total"] == m["llamalab_generation_tokens_total"]  # stopped
    assert m["llamalab_generation_tokens_total"] - before["llamalab_generation_tokens_total"] < 400
    assert by_id(browser, "send").is_displayed() and not by_id(browser, "stop").is_displayed()


def test_reload_keeps_the_conversation_and_new_chat_clears_it(browser, server):
    shown = messages(browser)
    assert [role for role, _ in shown] == ["user", "assistant"] * 2
    browser.refresh()
    wait(browser, lambda: by_id(browser, "model-name").text == NAME)  # the key is kept for the tab
    assert messages(browser) == shown
    by_id(browser, "new-chat").click()
    assert messages(browser) == [] and stored(browser)["messages"] == []
    browser.refresh()
    wait(browser, lambda: by_id(browser, "model-name").text == NAME)
    assert messages(browser) == []


HOSTILE = [
    "Here you go: <script>alert(1)</script> and <img src=x onerror=\"window.__xss=1;alert(2)\">\n\n",
    "**<img src=x onerror=window.__xss=2>** and `<script>window.__xss=3</script>`\n",
    "[click me](javascript:window.__xss=4) <a href=\"javascript:alert(3)\">a</a>\n",
    "```html\n<img src=x onerror=window.__xss=5>\n```\n",
    "- <svg onload=window.__xss=6>\n> <iframe src=\"javascript:alert(4)\"></iframe>\n",
]

FAKE_STREAM = """
const pieces = arguments[0];
const realFetch = window.fetch;
window.fetch = async (url, options) => {
  if (!String(url).endsWith('/v1/chat/completions')) return realFetch(url, options);
  const encoder = new TextEncoder();
  const body = new ReadableStream({
    async start(controller) {
      for (const piece of pieces) {
        const chunk = {choices: [{index: 0, delta: {content: piece}, finish_reason: null}]};
        controller.enqueue(encoder.encode('data: ' + JSON.stringify(chunk) + '\\n\\n'));
        await new Promise(r => setTimeout(r, 20));
      }
      controller.enqueue(encoder.encode('data: [DONE]\\n\\n'));
      controller.close();
    }
  });
  return new Response(body, {status: 200, headers: {'Content-Type': 'text/event-stream'}});
};
"""


def test_html_in_an_answer_renders_as_text(browser, server):
    from selenium.common.exceptions import NoAlertPresentException

    browser.execute_script(FAKE_STREAM, HOSTILE)
    ask(browser, "Show me some HTML.")
    wait(browser, lambda: len(messages(browser)) == 2 and not answering(browser))

    def check():
        with pytest.raises(NoAlertPresentException):
            browser.switch_to.alert.text
        assert browser.execute_script("return window.__xss") is None
        dangerous = "#messages img, #messages script, #messages svg, #messages iframe, #messages a[href^='javascript']"
        assert browser.find_elements("css selector", dangerous) == []
        text = messages(browser)[-1][1]
        for literal in ("<script>alert(1)</script>", "<img src=x onerror=window.__xss=2>",
                        "<script>window.__xss=3</script>", "<img src=x onerror=window.__xss=5>", "<svg onload="):
            assert literal in text
        assert browser.find_elements("css selector", "#messages strong")  # markdown still renders
        assert browser.find_elements("css selector", "#messages pre code")

    check()
    browser.refresh()  # the stored conversation renders just as safely
    wait(browser, lambda: len(messages(browser)) == 2)
    check()
