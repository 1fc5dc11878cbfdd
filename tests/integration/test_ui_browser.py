"""The Prefect UI that `shipyard up` starts, in a real browser (headless Chromium from Debian, driven by Playwright):
the pipeline's Run form shows the parameters' titles and descriptions, and a finished run's Artifacts tab shows
the training curves. Screenshots land in test-output/browser/ (SHIPYARD_TEST_OUTPUT overrides the directory)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.servers import free_port

SHIPYARD = str(Path(sys.executable).with_name("shipyard"))
CHROMIUM = Path("/usr/bin/chromium")  # Debian's package (scripts/setup installs it); Playwright can't download here
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]
OUTPUT = Path(os.environ.get("SHIPYARD_TEST_OUTPUT", Path(__file__).resolve().parents[2] / "test-output")) / "browser"

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium (scripts/setup installs it)")


@pytest.fixture
def ui(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """`shipyard up` on free ports; `shipyard down` afterwards whatever happened. Yields the UI's URL."""
    ports = {"SHIPYARD_INFERENCE_PORT": free_port(), "SHIPYARD_PREFECT_PORT": free_port(),
             "SHIPYARD_MLFLOW_UI_PORT": free_port()}
    for name, port in ports.items():
        monkeypatch.setenv(name, str(port))
    try:
        up = subprocess.run([SHIPYARD, "up"], capture_output=True, text=True, timeout=600)
        assert up.returncode == 0, up.stderr[-3000:]
        yield f"http://127.0.0.1:{ports['SHIPYARD_PREFECT_PORT']}"
    finally:
        subprocess.run([SHIPYARD, "down"], timeout=120, check=False)


@pytest.fixture
def page() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    OUTPUT.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, headless=True)
        yield browser.new_page(viewport={"width": 1400, "height": 1000})
        browser.close()


def test_run_form_and_artifacts_in_the_prefect_ui(ui: str, page: Any) -> None:
    from playwright.sync_api import expect

    api = f"{ui}/api"
    run = subprocess.run([SHIPYARD, "run", "--epochs", "2", "--hidden-units", "32"], capture_output=True, text=True,
                         timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    deployment = httpx.get(f"{api}/deployments/name/pipeline-flow/local", timeout=30).json()

    # The Run form renders the pydantic parameters with their titles and descriptions.
    page.goto(f"{ui}/deployments/deployment/{deployment['id']}/run", timeout=120_000)
    for title in ("Dataset name", "Epochs", "Learning rate", "Registered model name"):  # "Epochs (Optional)"
        expect(page.get_by_text(re.compile(rf"^{title}( \(Optional\))?$")).first).to_be_visible(timeout=60_000)
    for description in ("Passes over the training split.", "Name of the model in the MLflow registry."):
        expect(page.get_by_text(description, exact=True).first).to_be_visible()
    page.screenshot(path=str(OUTPUT / "run-form.png"), full_page=True)

    # The finished training run's Artifacts tab lists the curves; the artifact page shows them as an image.
    found = httpx.post(f"{api}/artifacts/filter", timeout=30,
                       json={"artifacts": {"key": {"any_": ["training-curves"]}}}).json()
    assert found, "the training run published no training-curves artifact"
    flow_run_id = found[0]["flow_run_id"]
    page.goto(f"{ui}/runs/flow-run/{flow_run_id}", timeout=120_000)
    page.get_by_role("tablist").get_by_text("Artifacts", exact=True).click(timeout=60_000)
    expect(page.get_by_text("training-curves").first).to_be_visible(timeout=60_000)
    expect(page.get_by_text(re.compile("train digits@[0-9a-f]{8} e2")).first).to_be_visible()  # the run's name
    page.screenshot(path=str(OUTPUT / "flow-run-artifacts.png"), full_page=True)
    page.goto(f"{ui}/artifacts/artifact/{found[0]['id']}", timeout=120_000)
    curves = page.locator("img[alt='loss and accuracy']").first
    expect(curves).to_be_visible(timeout=60_000)
    assert curves.evaluate("img => img.naturalWidth") > 100  # the PNG decoded, not a broken-image icon
    page.screenshot(path=str(OUTPUT / "training-curves.png"), full_page=True)
