"""Regenerate the README's studio screenshots (docs/studio-*.png): the trained toy-shapes model, headless Chromium at
1440×900, one picture per tab after a short session. Run with ``make screenshots`` (needs the dev extra and Debian's
chromium)."""

from __future__ import annotations

import socket
import tempfile
from pathlib import Path

from playwright.sync_api import sync_playwright

from headhunter.testing import toy_pipeline
from headhunter.ui import Studio, build_app

OUT = Path(__file__).parent


def main() -> None:
    pipe = toy_pipeline()
    app = build_app(Studio(pipe, "toy-shapes", tempfile.mkdtemp(prefix="headhunter-screenshots-")))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox", "--disable-gpu"])
            page = browser.new_page(viewport={"width": 1440, "height": 900})
            page.goto(f"http://127.0.0.1:{port}/")
            page.locator("#head-picker table").wait_for()
            page.get_by_label("Prompt", exact=True).fill("a white square on a green background, center, warm light")
            page.locator("#heads textarea, #heads input").first.fill("L0H0,L2H3,L4H2,L0H2")
            page.get_by_label("Seed batch").fill("3")
            page.locator("#generate").click()
            page.locator("#batch img").nth(2).wait_for(timeout=60000)
            page.wait_for_timeout(1000)
            page.screenshot(path=str(OUT / "studio-generate.png"))
            page.get_by_role("tab", name="Head atlas").click()
            page.get_by_label("Layer").fill("0")
            page.get_by_role("button", name="Run atlas").click()
            page.locator("#atlas img").nth(4).wait_for(timeout=60000)
            page.wait_for_timeout(1000)
            page.screenshot(path=str(OUT / "studio-atlas.png"))
            page.get_by_role("tab", name="XY grid").click()
            page.get_by_label("Columns vary").click()
            page.get_by_role("option", name="Prompt S/R", exact=True).click()
            page.locator("#xy-values textarea, #xy-values input").first.fill("white,red,yellow")
            page.get_by_role("button", name="Render grid").click()
            page.locator("#xy-grid img").wait_for(timeout=60000)
            page.wait_for_timeout(1000)
            page.screenshot(path=str(OUT / "studio-xy.png"))
            page.get_by_role("tab", name="Search").click()
            page.locator("#run-name textarea, #run-name input").first.fill("readme-example")
            page.get_by_role("button", name="Search", exact=True).click()
            page.locator("#search-status", has_text="done").wait_for(timeout=120000)
            page.wait_for_timeout(1000)
            page.locator("#heatmap").scroll_into_view_if_needed()
            page.screenshot(path=str(OUT / "studio-search.png"))
            browser.close()
    finally:
        app.close()
    print("wrote", ", ".join(f"docs/studio-{tab}.png" for tab in ("generate", "atlas", "xy", "search")))


if __name__ == "__main__":
    main()
