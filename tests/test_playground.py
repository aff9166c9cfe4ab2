"""The playground page in a real browser (Debian's Chromium driven by Playwright), against a
gateway on 127.0.0.1 with the real encoder and the shipped experts.

Set RR_SCREENSHOTS=DIR to keep the screenshots (the README's comes from here).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import httpx
import pytest

from tests.helpers import TOKEN, live_server, make_adapter

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# As this workplace starts Chromium: no background traffic to hosts it cannot reach.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
QUERY = "flutter of swept wings at supersonic speed"
AERO_DOCS = [
    {"id": "w1", "title": "Wing flutter", "text": "Flutter of swept wings at supersonic Mach."},
    {"id": "w2", "title": "Boundary layers", "text": "Transition of the boundary layer on wings."},
    {"id": "w3", "title": "Heat shields", "text": "Ablative heat shields for re-entry vehicles."},
]
for _doc, _year in zip(AERO_DOCS, (1990, 2005, 2015), strict=True):
    _doc["metadata"] = {"year": _year}


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        pytest.skip("no Chromium here: `make browser` installs Debian's chromium")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def gateway(settings, tmp_path: Path):
    shutil.copytree(ROOT / "experts", settings.experts_dir)
    settings.index_corpora_on_start = False
    with live_server(settings) as (url, _):
        auth = {"Authorization": f"Bearer {TOKEN}"}
        response = httpx.put(
            f"{url}/admin/experts/cranfield/documents",
            headers=auth,
            json={"documents": AERO_DOCS},
            timeout=60,
        )
        assert response.status_code == 200, response.text
        yield url


def _screenshot(page, tmp_path: Path, name: str) -> None:
    page.screenshot(path=str(tmp_path / name), full_page=True)
    if target := os.environ.get("RR_SCREENSHOTS"):
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copy(tmp_path / name, Path(target) / name)
    assert (tmp_path / name).stat().st_size > 10_000


def test_search_shows_the_routing_the_api_decides(browser, gateway: str, tmp_path) -> None:
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(gateway + "/")
    page.fill("#query", QUERY)
    page.click("#search-button")
    page.wait_for_selector("#routing-chart .bar-row")
    page.wait_for_selector("#hits li")
    decided = httpx.post(f"{gateway}/v1/route", json={"query": QUERY}, timeout=60).json()
    assert page.get_attribute("#routing-summary", "data-expert") == decided["expert"]
    bars = page.locator("#routing-chart .bar-row")
    assert bars.count() == len(decided["scores"]) == 10
    if not decided["fallback"]:
        assert page.inner_text("#routing-chart .chosen .name").endswith(decided["expert"])
        hit = page.locator("#hits li.hit").first
        assert hit.get_attribute("data-expert") == decided["expert"]
    assert page.locator("#routing-chart .threshold").count() == 1
    assert "total" in page.inner_text("#timing")
    # Hybrid by default: hits show both legs' scores; lexical mode shows BM25 only.
    assert "dense" in page.inner_text("#hits li.hit .meta")
    _screenshot(page, tmp_path, "playground.png")
    page.select_option("#mode", "lexical")
    page.click("#search-button")
    page.wait_for_function(
        "!document.querySelector('#hits li.hit .meta').textContent.includes('dense')"
    )
    assert "BM25" in page.inner_text("#hits li.hit .meta")
    # A metadata filter: only the matching document, even where it ranks last unfiltered.
    page.select_option("#mode", "hybrid")
    page.fill("#filter", '{"year": {"gte": 2010}}')
    page.click("#search-button")
    page.wait_for_function("document.querySelectorAll('#hits li.hit').length === 1")
    assert page.inner_text("#hits li.hit .meta").endswith("id w3")
    page.fill("#filter", '{"year": {"gte": "last year"}}')
    page.click("#search-button")
    page.wait_for_selector("#search-error:not([hidden])")
    assert "filter: field 'year'" in page.inner_text("#search-error")
    page.fill("#filter", "")
    page.click("button[data-view=experts]")
    page.wait_for_selector("#experts-table tbody tr[data-expert=cranfield]")
    documents = page.inner_text("#experts-table tr[data-expert=cranfield] .documents")
    assert documents == str(len(AERO_DOCS))


def test_admin_registers_uploads_and_shows_api_errors(
    browser, gateway: str, tmp_path: Path, adapters_root: str
) -> None:
    adapter = make_adapter(7, adapters_root, layers=(4, 5))
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(gateway + "/")
    page.click("button[data-view=admin]")

    page.fill("#token", "not-the-token")
    page.click("#save-token")
    register = page.locator("#register-form")
    register.locator("input[name=name]").fill("playground")
    register.locator("input[name=adapter_config]").set_input_files(
        str(adapter / "adapter_config.json")
    )
    register.locator("input[name=adapter_model]").set_input_files(
        str(adapter / "adapter_model.safetensors")
    )
    register.locator("textarea[name=pilot_queries]").fill("python sort a list\nread a file")
    register.locator("button[type=submit]").click()
    page.wait_for_selector("#register-form .result.bad")
    assert "401 unauthorized" in register.locator(".result").inner_text()
    assert page.evaluate("sessionStorage.getItem('rr-admin-token')") == "not-the-token"
    assert "not-the-token" not in page.url

    page.fill("#token", TOKEN)
    page.click("#save-token")
    register.locator("button[type=submit]").click()
    page.wait_for_selector("#register-form .result.ok")
    assert "Registered playground" in register.locator(".result").inner_text()

    jsonl = tmp_path / "docs.jsonl"
    rows = [{"_id": "p1", "title": "Sorting", "text": "sorted(xs)"}, {"_id": "p2", "title": "T"}]
    jsonl.write_text("\n".join(json.dumps(r) for r in rows))
    upload = page.locator("#upload-form")
    page.select_option("#upload-expert", "playground")
    upload.locator("input[name=file]").set_input_files(str(jsonl))
    upload.locator("button[type=submit]").click()
    page.wait_for_selector("#upload-form .result.ok")
    assert "2 inserted" in upload.locator(".result").inner_text()
    listed = httpx.get(f"{gateway}/v1/experts/playground", timeout=30).json()
    assert listed["documents"] == 2

    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"_id": "e1", "title": "", "text": ""}))
    upload.locator("input[name=file]").set_input_files(str(bad))
    upload.locator("button[type=submit]").click()
    page.wait_for_selector("#upload-form .result.bad")
    assert "422 invalid_request" in upload.locator(".result").inner_text()
    _screenshot(page, tmp_path, "playground-admin.png")


def test_pages_render_with_no_network_but_the_gateway(browser, gateway: str, tmp_path) -> None:
    """`/` and `/docs` load every asset from the gateway: a request to any other host is
    refused here, and both pages still render."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    outside: list[str] = []

    def only_the_gateway(route) -> None:
        if route.request.url.startswith(gateway):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    page.route("**/*", only_the_gateway)
    page.goto(gateway + "/docs")
    page.wait_for_selector(".swagger-ui .info .title")
    page.wait_for_selector(".opblock-tag")  # the operations, rendered from /openapi.json
    assert "RouterRetriever" in page.inner_text(".swagger-ui .info .title")
    _screenshot(page, tmp_path, "swagger-offline.png")
    page.goto(gateway + "/")
    page.wait_for_selector("#query")
    assert outside == []
