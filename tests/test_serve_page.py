"""The page `paav serve` shows at `/`, for real: uvicorn on a free port, the tiny booster behind a Batcher.

Plain HTTP checks that the page and `/v1/targets` are served as they should be; then headless Chromium
(Debian's, driven by Playwright) types a prompt into the page and reads the variants back from the
DOM, each checked against `Booster.enhance` with the same seed on a booster of the test's own.
"""

from __future__ import annotations

import re
import shutil

import httpx2
import pytest
from test_serve import Running

from paav_cli.registry import Registry
from paav_cli.serve.app import MAX_N, create_app
from paav_cli.serve.batcher import Batcher

PROMPT = "a cat playing piano"
KEY = "s3cret"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def server(boosters):
    """The tiny booster served with an API key, as a server open beyond the loopback would be."""
    batcher = Batcher(boosters[0])
    try:
        with Running(create_app({"tiny": batcher}, api_key=KEY)) as running:
            yield running
    finally:
        batcher.close()


def generators() -> list:
    return Registry.load().by_role("generators")


# -- plain HTTP --------------------------------------------------------------------------------


def test_the_page_is_html_served_without_the_key_the_api_needs(server):
    page = httpx2.get(f"{server.url}/", timeout=30)
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    html = page.text
    assert html.lstrip().lower().startswith("<!doctype html>")
    assert 'id="model"' in html and 'id="target"' in html and 'id="key"' in html
    assert re.search(r'id="n"[^>]*\bmax="(\d+)"', html).group(1) == str(MAX_N)
    # Nothing from elsewhere: the machine serving it may be offline.
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html)
    assert httpx2.head(f"{server.url}/", timeout=30).status_code == 200
    # The API itself still needs the key.
    for path in ("/v1/models", "/v1/targets"):
        assert httpx2.get(f"{server.url}{path}", timeout=30).status_code == 401
    assert httpx2.post(f"{server.url}/v1/enhance", json={"prompt": PROMPT}, timeout=30).status_code == 401


def test_targets_lists_the_registered_generators_and_their_budgets(server):
    answer = httpx2.get(f"{server.url}/v1/targets", headers=AUTH, timeout=30).json()
    listed = {t["id"]: t for t in answer["data"]}
    assert answer["object"] == "list"
    assert list(listed) == [e.name for e in generators()]
    assert {"cogvideox-2b", "wan2.1-1.3b", "ltx-video", "tiny-wan"} <= set(listed)
    for entry in generators():
        assert listed[entry.name]["max_tokens"] == entry.text_encoder.max_tokens
        assert listed[entry.name]["text_encoder"] == entry.text_encoder.kind
    # A listed name is a target /v1/enhance takes.
    answer = httpx2.post(
        f"{server.url}/v1/enhance",
        headers=AUTH,
        timeout=60,
        json={"prompt": PROMPT, "seed": 1, "target": "cogvideox-2b"},
    ).json()
    assert answer["results"][0]["target_limit"] == listed["cogvideox-2b"]["max_tokens"]


# -- in a browser ------------------------------------------------------------------------------


@pytest.fixture
def page(server):
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("no `chromium` on PATH; the page's browser test needs one (Debian: apt install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            context = browser.new_context(permissions=["clipboard-read", "clipboard-write"])
            page = context.new_page()
            page.set_default_timeout(10_000)
            sync_api.expect.set_options(timeout=10_000)
            page.goto(f"{server.url}/")
            yield page, sync_api.expect
        finally:
            browser.close()


@pytest.mark.timeout(30)
def test_the_page_enhances_a_prompt_into_cards_and_copies_one(page, reference):
    page, expect = page
    # Without the key the lists cannot load: one line says so.
    expect(page.locator("#error")).to_have_text(re.compile("needs an API key"))
    key = page.get_by_label("API key")
    key.fill(KEY)
    key.blur()  # `change`: the page keeps the key in this tab and loads the lists
    expect(page.locator("#model option")).to_have_text(["tiny"])
    expect(page.locator("#target option")).to_have_count(1 + len(generators()))
    expect(page.locator("#error")).to_be_hidden()
    assert page.evaluate("sessionStorage.getItem('paav.apiKey')") == KEY

    page.get_by_label("Prompt", exact=True).fill(PROMPT)
    page.get_by_label("Variants", exact=True).fill("2")
    page.get_by_label("Seed").fill("5")
    page.get_by_role("button", name="Enhance").click()
    cards = page.locator(".card")
    expect(cards).to_have_count(2)
    expected = reference.enhance(PROMPT, n=2, seed=5)
    assert len({e.text for e in expected}) == 2  # two different variants, so their order is checked too
    assert page.locator(".card .text").all_text_contents() == [e.text for e in expected]
    for card, e in zip(cards.all(), expected, strict=True):
        expect(card.locator(".meta")).to_contain_text(f"{e.tokens} booster tokens")
        expect(card.locator(".meta")).to_contain_text(f"seed {e.seed}")

    copy = page.get_by_role("button", name="Copy variant 2")
    copy.click()
    expect(copy).to_have_text("Copied")
    assert page.evaluate("navigator.clipboard.readText()") == expected[1].text

    # A target generator: the variant is within its text-encoder budget, and the card says so.
    page.get_by_label("Target generator").select_option("cogvideox-2b")
    page.get_by_label("Variants", exact=True).fill("1")
    page.get_by_role("button", name="Enhance").click()
    expect(cards).to_have_count(1)
    [e] = reference.enhance(PROMPT, seed=5, target="cogvideox-2b")
    expect(page.locator(".card .text")).to_have_text(e.text)
    expect(page.locator(".card .meta")).to_contain_text(f"{e.target_tokens}/{e.target_limit} target tokens")

    # The server's error is one line on the page, and the cards stay.
    page.get_by_label("Prompt", exact=True).fill("   ")
    page.get_by_role("button", name="Enhance").click()
    expect(page.locator("#error")).to_have_text("the prompt is empty; give the text to enhance.")
    expect(cards).to_have_count(1)
