"""A real browser on the served demo: Debian's Chromium, driven by Playwright, uploads DICOMs through the page."""

from pathlib import Path

import pytest
import torch

from modeling import CTImageProcessor, DualAttentionResNetForImageClassification

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is in the dev extra")

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
EXAMPLE = ROOT / "space" / "examples" / "metastatic_phantom.dcm"
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Chromium at /usr/bin/chromium (.ci/run installs it)"),
]


@pytest.fixture
def page():
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(60_000)
        yield page
        browser.close()


def _upload_and_predict(page, path):
    page.locator("#dicom-file input[type=file]").set_input_files(str(path))
    sync_api.expect(page.locator("#dicom-file")).to_contain_text(path.stem)  # the upload has landed
    page.get_by_role("button", name="Predict").click()


def _expected_label(model_dir, path):
    """(decision, shown percentage of P(metastatic)) computed here from the same model."""
    model = DualAttentionResNetForImageClassification.from_pretrained(model_dir).eval()
    processor = CTImageProcessor.from_pretrained(model_dir)
    with torch.no_grad():
        probability = torch.sigmoid(model(processor(str(path))["pixel_values"]).logits[0, 0]).item()
    decision = "metastatic" if probability >= model.config.decision_threshold else "non-metastatic"
    return decision, f"{round(100 * probability)}%"


def test_upload_shows_probability_overlays_then_a_bad_file_shows_its_reason(page, demo_server, tiny_model_dir, tmp_path):
    decision, percentage = _expected_label(tiny_model_dir, EXAMPLE)
    page.goto(demo_server.url)
    sync_api.expect(page.get_by_text("Research use only")).to_be_visible()

    _upload_and_predict(page, EXAMPLE)
    for overlay in ("#attention-overlay img", "#gradcam-overlay img"):
        sync_api.expect(page.locator(overlay)).to_be_visible()
        assert page.locator(overlay).evaluate("img => img.complete && img.naturalWidth") == 512
    sync_api.expect(page.locator("#probability [data-testid=label-output-value]")).to_have_text(decision)
    sync_api.expect(page.locator("#probability")).to_contain_text(percentage)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "demo_prediction.png"), full_page=True)

    bad = tmp_path / "report.dcm"
    bad.write_text("a radiology report, not an image")
    _upload_and_predict(page, bad)
    sync_api.expect(page.get_by_text("not a DICOM file (no DICM header)")).to_be_visible()
    page.screenshot(path=str(ARTIFACTS / "demo_bad_file.png"), full_page=True)
    assert demo_server.process.poll() is None
