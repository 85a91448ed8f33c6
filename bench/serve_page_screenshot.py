"""A screenshot of the page `paav serve` shows at `/`, after a real enhancement, for the README.

    python bench/serve_page_screenshot.py [-m default] [-n 3] [--target cogvideox-2b] [-o docs/serve-page.png]

Serves the booster as `paav serve` does (a Batcher behind the app, under uvicorn on a free port),
opens the page in headless Chromium (the system's `chromium`, driven by Playwright), types the
prompt, picks the booster, target and variants, clicks Enhance, waits for the cards and saves the
page. `-m tiny` (the tests' tiny booster, built into paav's cache if it is not there) needs no real
model; the README's picture is `-m default`.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from paav_cli import load_booster, registry
from paav_cli.serve.app import create_app
from paav_cli.serve.batcher import Batcher


def start_server(app) -> tuple[str, object]:
    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error", lifespan="off")
    )
    threading.Thread(target=server.run, daemon=True).start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline:
            sys.exit("uvicorn did not start")
        time.sleep(0.05)
    return f"http://127.0.0.1:{port}", server


def provide_tiny(model: str) -> None:
    """A tiny booster is made, not downloaded: build it once into paav's cache (seconds)."""
    entry = registry.Registry.load().entries.get(model)
    if entry is not None and entry.source_kind == "builder":
        from paav_cli.provision import provide

        provide(entry)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "-m", "--model", default="tiny", help="booster to serve (a registered name or a GGUF)"
    )
    parser.add_argument("-p", "--prompt", default="a red fox trotting through fresh snow at dawn")
    parser.add_argument("-n", type=int, default=3, help="variants (1-16)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--target", default="cogvideox-2b", help="target generator, or 'none'")
    parser.add_argument("--width", type=int, default=1200, help="browser window width in CSS pixels")
    parser.add_argument("-o", "--out", type=Path, default=REPO / "docs" / "serve-page.png")
    args = parser.parse_args()

    chromium = shutil.which("chromium")
    if chromium is None:
        sys.exit("no `chromium` on PATH (Debian: apt install chromium)")
    from playwright.sync_api import expect, sync_playwright

    provide_tiny(args.model)
    booster = load_booster(args.model)
    batcher = Batcher(booster)
    url, server = start_server(create_app({args.model: batcher}))
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": args.width, "height": 700}, color_scheme="light")
            page.goto(f"{url}/")
            expect(page.locator("#model option")).to_have_text([args.model])
            page.get_by_label("Prompt", exact=True).fill(args.prompt)
            if args.target != "none":
                page.get_by_label("Target generator").select_option(args.target)
            page.get_by_label("Variants", exact=True).fill(str(args.n))
            page.get_by_label("Seed").fill(str(args.seed))
            page.get_by_role("button", name="Enhance").click()
            expect(page.locator(".card")).to_have_count(args.n, timeout=300_000)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(args.out), full_page=True)
            texts = page.locator(".card .text").all_text_contents()
            browser.close()
    finally:
        server.should_exit = True
        batcher.close()
        booster.close()
    print(f"{args.out} ({args.out.stat().st_size / 1000:.0f} kB), {args.model}, seed {args.seed}:")
    for i, text in enumerate(texts, 1):
        print(f"  {i}. {text}")


if __name__ == "__main__":
    main()
