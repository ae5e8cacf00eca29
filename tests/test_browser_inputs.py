"""Real users' inputs in a real browser (issue 15, part 6): an image zip of many sizes uploaded and preprocessed, an
image folder and a Hugging Face text checkpoint picked from the server folders, the preset list, the preprocessing
shown with the results. `streamlit run app/main.py` on a free port with FAIRPRUNE_DATA_DIRS set, Debian's Chromium;
screenshots in tests/artifacts/.
"""

from __future__ import annotations

import os
import re
import zipfile
from pathlib import Path

import pytest

from test_app_inputs import write_image_folder, write_image_model, write_text_checkpoint, write_text_csv
from test_browser import (_selectbox, browser, no_exception, serve_dashboard,  # noqa: F401
                          page, screenshot)

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Path:
    """A server folder holding an image folder, a model for it and a tiny Hugging Face text checkpoint."""
    root = tmp_path_factory.mktemp("inputs") / "served"      # the pickers name a folder by its server folder's name
    write_image_folder(root / "photos")
    write_image_model(root / "brightness.pt2")
    write_text_checkpoint(root / "tiny-bert")
    return root


@pytest.fixture(scope="module")
def server(tmp_path_factory, served):
    home = tmp_path_factory.mktemp("browser_inputs_home")
    env = dict(os.environ, FAIRPRUNE_HOME=str(home), FAIRPRUNE_DATA_DIRS=str(served))
    with serve_dashboard(home, env) as url:
        yield url, home


def _pick(pg, open_box, option: str, then, *, close: bool = False, tries: int = 4) -> None:
    """Pick ``option`` in the list ``open_box`` opens until ``then`` (a locator) shows: a click during a rerun can
    be lost."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    for attempt in range(tries):
        open_box()
        pg.locator('[role="option"]').filter(has_text=re.compile(f"^{re.escape(option)}$")).first.click()
        if close:
            pg.keyboard.press("Escape")
        try:
            then.first.wait_for(timeout=15_000)
            return
        except PlaywrightTimeout:
            if attempt == tries - 1:
                raise


def _own_files(pg, url: str) -> None:
    pg.goto(f"{url}/data")
    pg.get_by_text("My own model and data").click()


def _origin(pg, which: str) -> None:
    """'Server folders' in the radio ``which`` ('Model from', 'Data from'), once the page has drawn it."""
    radio = pg.locator('[data-testid="stRadio"]').filter(has_text=which)
    radio.get_by_text("Server folders", exact=True).click()
    pg.get_by_role("combobox", name=which.split()[0] + " on the server", exact=True).wait_for()


def _label_and_group(pg, label: str, group: str, then) -> None:
    _pick(pg, lambda: _selectbox(pg, "Label column").click(), label,
          pg.get_by_text("Choose the group column(s) above"))
    _pick(pg, lambda: pg.locator('[data-testid="stMultiSelect"]').filter(has_text="Group column(s)").locator(
        "input").click(), group, then, close=True)


def _fill(pg, role: str, name: str, value: str) -> None:
    box = pg.get_by_role(role, name=name, exact=True)
    box.fill(value)
    box.press("Enter")
    pg.wait_for_timeout(800)


def test_an_uploaded_image_zip_of_many_sizes_is_preprocessed_and_audited(server, page, served, tmp_path):
    url, home = server
    archive = tmp_path / "photos.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for f in sorted((served / "photos").iterdir()):
            z.write(f, f"photos/{f.name}")
    _own_files(page, url)
    page.locator('[data-testid="stFileUploader"]').filter(has_text="Model file").locator(
        'input[type="file"]').set_input_files(str(served / "brightness.pt2"))
    page.get_by_text("brightness.pt2: pt2").wait_for()
    page.locator('[data-testid="stFileUploader"]').filter(has_text="Data file").locator(
        'input[type="file"]').set_input_files(str(archive))
    page.get_by_text("Choose the group column(s) above").wait_for()     # "label" is named so: preselected
    same_size = page.locator('[data-testid="stAlertContentError"]').filter(has_text="same size")
    _label_and_group(page, "label", "region", same_size)     # as stored, three sizes: the library says so
    page.get_by_text("Resize and crop", exact=True).click()
    page.get_by_role("spinbutton", name="Resize: shorter side (pixels)").wait_for()
    _fill(page, "spinbutton", "Resize: shorter side (pixels)", "8")
    _fill(page, "textbox", "Centre crop (pixels: N or H,W)", "8")
    page.get_by_text("The model runs on this data").wait_for(timeout=60_000)
    steps = page.get_by_text("From file to model input")
    steps.wait_for()
    assert page.get_by_text("resize: shorter side to 8").count() >= 1
    assert page.get_by_text("centre crop: 8x8").count() >= 1
    no_exception(page)
    screenshot(page, "inputs_image_zip.png")

    page.get_by_role("link", name="Audit").first.click()
    page.get_by_text("resize 8, crop 8").first.wait_for()
    page.get_by_text("Custom", exact=True).click()
    _fill(page, "textbox", "Levels, comma-separated (fractions or percentages)", "0.5")
    page.get_by_role("button", name="Run the audit").click()
    page.get_by_text("What was audited").first.wait_for(timeout=180_000)
    page.get_by_text("What was audited").first.click()
    page.get_by_text("From file to model input").first.wait_for()
    assert page.get_by_text("centre crop: 8x8").count() >= 1
    no_exception(page)
    screenshot(page, "inputs_image_zip_results.png")


def test_an_image_folder_and_a_preset_from_the_server_folders(server, page):
    url, _ = server
    _own_files(page, url)
    _origin(page, "Data from")
    _pick(page, lambda: _selectbox(page, "Data on the server").click(), "served/photos/ (image folder)",
          page.get_by_text("Choose the group column(s) above"))
    _label_and_group(page, "label", "region", page.locator('[data-testid="stAlertContentError"]').filter(
        has_text="same size"))
    page.get_by_text("A torchvision preset", exact=True).click()
    box = _selectbox(page, "Preset (torchvision weights entry)")
    box.wait_for()
    for _ in range(4):                     # a click during a rerun can be lost: open the list until it shows
        box.click()
        try:
            page.locator('[role="option"]').first.wait_for(timeout=8_000)
            break
        except Exception:  # noqa: BLE001
            page.keyboard.press("Escape")
    options = page.locator('[role="option"]').all_inner_texts()
    assert "AlexNet_Weights.IMAGENET1K_V1" in options, options[:5]
    page.keyboard.type("ResNet50_Weights.IMAGENET1K_V2")
    page.locator('[role="option"]').filter(has_text=re.compile(r"^ResNet50_Weights\.IMAGENET1K_V2$")).first.click()
    page.get_by_text("ResNet50_Weights.IMAGENET1K_V2.transforms() preset", exact=False).first.wait_for(timeout=60_000)
    assert page.get_by_text("centre crop: 224x224").count() >= 1
    no_exception(page)
    screenshot(page, "inputs_image_folder_preset.png")


def test_a_text_checkpoint_asks_for_the_text_column(server, page, tmp_path):
    url, _ = server
    csv = write_text_csv(tmp_path / "reviews.csv")
    _own_files(page, url)
    _origin(page, "Model from")
    _pick(page, lambda: _selectbox(page, "Model on the server").click(),
          "served/tiny-bert/ (Hugging Face checkpoint)", page.get_by_text("text classification", exact=False))
    page.locator('[data-testid="stFileUploader"]').filter(has_text="Data file").locator(
        'input[type="file"]').set_input_files(str(csv))
    page.get_by_text("Choose the group column(s) above").wait_for()     # "label" is named so: preselected
    _label_and_group(page, "label", "site", page.get_by_text("Choose the text column above"))
    _pick(page, lambda: _selectbox(page, "Text column").click(), "review",
          page.get_by_text("The model runs on this data").or_(page.locator('[data-testid="stAlertContentError"]')))
    assert page.locator('[data-testid="stAlertContentError"]').count() == 0, page.locator(
        '[data-testid="stAlertContentError"]').all_inner_texts()
    _fill(page, "spinbutton", "Max length (tokens)", "8")
    page.get_by_text("The model runs on this data").wait_for()
    assert page.get_by_text("From file to model input").count() == 1
    no_exception(page)
    screenshot(page, "inputs_text_checkpoint.png")
