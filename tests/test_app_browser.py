"""A real browser on the served demo: Debian's Chromium, driven by Playwright, uploads DICOMs through the page
(one slice, then a whole series on its own tab)."""

import os
from pathlib import Path

import pytest
import torch

from modeling import CTImageProcessor, DualAttentionResNetForImageClassification
from modeling.ct_volume import read_ct_volumes
from modeling.inference import score_volume

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
    pytest.mark.skipif(
        not CHROMIUM.exists() and not os.environ.get("REQUIRE_BROWSER_TEST"),  # .ci/run requires it
        reason="needs Chromium at /usr/bin/chromium (apt-get install chromium; .ci/run installs it)",
    ),
]


@pytest.fixture
def page():
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(60_000)
        sync_api.expect.set_options(timeout=60_000)  # a prediction on a busy CI machine can take seconds
        yield page
        browser.close()


def _wait_for_upload(page, stem):
    """The file box shows the name at once, and the download link only once the server has the file."""
    sync_api.expect(page.locator("#dicom-file")).to_contain_text(stem)
    sync_api.expect(page.locator('#dicom-file a[href*="file="]')).to_be_visible()


def _upload_and_predict(page, path):
    page.locator("#dicom-file input[type=file]").set_input_files(str(path))
    _wait_for_upload(page, path.stem)
    page.get_by_role("button", name="Predict").click()


def _expected_label(model_dir, path):
    """(decision, shown percentage of P(metastatic)) computed here from the same model."""
    model = DualAttentionResNetForImageClassification.from_pretrained(model_dir).eval()
    processor = CTImageProcessor.from_pretrained(model_dir)
    with torch.no_grad():
        probability = torch.sigmoid(model(processor(str(path))["pixel_values"]).logits[0, 0]).item()
    decision = "metastatic" if probability >= model.config.decision_threshold else "non_metastatic"
    return decision, f"{round(100 * probability)}%"


def test_upload_shows_probability_overlays_then_a_bad_file_shows_its_reason(
    page, demo_server, tiny_model_dir, tmp_path
):
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
    page.wait_for_timeout(500)  # let the toast finish fading in before the screenshot
    page.screenshot(path=str(ARTIFACTS / "demo_bad_file.png"), full_page=True)
    assert demo_server.process.poll() is None


def test_an_example_can_be_run_twice(page, demo_server):
    """Uploads are deleted after reading, but the cached copy of an example must survive for the next run."""
    page.goto(demo_server.url)
    gradcam = page.locator("#gradcam-overlay img")
    shown = []
    for window_width in (400, 80):  # a different display window, so the second overlay differs
        page.get_by_label("Display window width (HU)").fill(str(window_width))
        page.get_by_role("button", name="non_metastatic_phantom.dcm").click()
        _wait_for_upload(page, "non_metastatic_phantom")
        page.get_by_role("button", name="Predict").click()
        if shown:
            sync_api.expect(gradcam).not_to_have_attribute("src", shown[-1])
        sync_api.expect(gradcam).to_be_visible()
        shown.append(gradcam.get_attribute("src"))
    sync_api.expect(page.get_by_text("no longer on the server")).to_have_count(0)


def test_series_tab_shows_decision_curve_overlays_and_browses_slices(page, demo_server, tiny_model_dir, tmp_path):
    from test_app_server import _series

    slices, _ = _series(tmp_path / "series")
    model = DualAttentionResNetForImageClassification.from_pretrained(tiny_model_dir).eval()
    probabilities = score_volume(model, CTImageProcessor.from_pretrained(tiny_model_dir), read_ct_volumes(slices)[0])
    top, other = int(probabilities.argmax()), int(probabilities.argmin())
    decision = "metastatic" if probabilities[top] >= model.config.decision_threshold else "non_metastatic"

    page.goto(demo_server.url)
    page.get_by_role("tab", name="Whole series").click()
    sync_api.expect(page.get_by_text("maximum over its slices")).to_be_visible()
    page.locator("#series-files input[type=file]").set_input_files([str(path) for path in slices])
    sync_api.expect(page.locator('#series-files a[href*="file="]')).to_have_count(len(slices))
    page.get_by_role("button", name="Predict series").click()

    sync_api.expect(page.locator("#series-probability [data-testid=label-output-value]")).to_have_text(decision)
    sync_api.expect(page.locator("#series-probability")).to_contain_text(f"{round(100 * probabilities[top])}%")
    sync_api.expect(page.locator("#series-curve img")).to_be_visible()
    sync_api.expect(page.locator("#series-slice-note")).to_contain_text(f"Slice {top + 1} of 5")
    gradcam = page.locator("#series-gradcam-overlay img")
    sync_api.expect(gradcam).to_be_visible()
    assert gradcam.evaluate("img => img.complete && img.naturalWidth") == 64
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "demo_series.png"), full_page=True)

    # another slice: its own maps, from the series kept in the session (no new upload)
    top_map = gradcam.get_attribute("src")
    slice_box = page.locator("#series-slice input[type=number]")
    slice_box.fill(str(other))
    slice_box.press("Tab")  # leaving the box releases the slider
    sync_api.expect(page.locator("#series-slice-note")).to_contain_text(f"Slice {other + 1} of 5")
    sync_api.expect(gradcam).not_to_have_attribute("src", top_map)
    assert demo_server.process.poll() is None
