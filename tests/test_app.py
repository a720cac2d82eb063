"""The coder's workbench (tools/app.py): its building blocks, and the page driven in headless Chromium.

The browser test starts the real app on a free loopback port with its own workspace, serving the
embedded model the way ``make demo`` serves an approach (a scoring record: shortlist, choice by
likelihood, fusion, temperature; the values here are the test's own, not measured ones), then
pastes a real MedSynth dialogue (the embedded demo data), checks the suggestions, evidence and band,
accepts / overrides / rejects and reads the audit log, runs a batch, and feeds it bad input;
the server must keep serving. Screenshots land in outputs/test-app-screens/ (ignored) to look at.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import REPO

from icd10_coder import audit, calibration, choice, serving
from icd10_coder.codes import is_billable, search
from icd10_coder.dialogue_input import MAX_DIALOGUE_CHARS, PredictionError, parse_dialogues
from icd10_coder.evidence import evidence, highlighted, sentences
from icd10_coder.offline import subprocess_env

DIALOGUE = ("[doctor]: What brings you in today?[patient]: I'm always thirsty and I pee a lot. It has been going on "
            "for about a month.[doctor]: Your blood sugar is high. Based on what you describe, this is type 2 "
            "diabetes mellitus without complications.[patient]: Thank you, doctor.")
SCREENS = REPO / "outputs" / "test-app-screens"


def real_dialogues(count: int) -> list[str]:
    """Real MedSynth dialogues from the embedded demo data (committed: no shared folder needed)."""
    from icd10_coder.realdata import read_embedded_rows

    return [row["Dialogue"] for row in read_embedded_rows()[:count]]


def write_serving_record(workspace: Path) -> Path:
    """A serving record for the embedded base model as tools/fuse.py writes one (values set by this test)."""
    from icd10_coder.paths import EMBEDDED_MODEL, display_path
    from icd10_coder.retrieval import RetrievalSettings

    record = serving.scoring_record(
        approach="baseline-slm-choice-shortlist-fused", base_model=display_path(EMBEDDED_MODEL), adapter=None,
        shortlist={"k": 5, "retriever": RetrievalSettings(neighbours=0).as_record()},
        scoring=choice.Scoring(fusion_weight=0.5, calibrator=calibration.Calibrator(temperature=0.1)).as_record(),
        dev={"split": "val", "rows": 3, "exact_match": 0.0},
        test_calibration=calibration.measure([(0.7, True), (0.4, False), (0.1, False), (0.15, True)]),
        data_card=None, refit="this test")
    path = workspace / "serving.json"
    serving.write_serving(path, record, [record])
    return path


# ---------------------------------------------------------------- building blocks


def test_evidence_finds_the_sentence_naming_the_diagnosis():
    found = evidence(DIALOGUE, "E11.9")
    assert found and "diabetes" in found[0][0].text
    assert {"diabetes", "mellitus"} <= {w.lower() for w in found[0][1]}
    assert evidence(DIALOGUE, "S82.001A") == []  # a knee-cap fracture has no support here


def test_highlighted_spans_rebuild_the_dialogue_and_label_evidence():
    spans = highlighted(DIALOGUE, ["E11.9", "R63.1"])
    assert "".join(text for text, _ in spans) == DIALOGUE
    labelled = {label for _, label in spans if label}
    assert any("E11.9" in label for label in labelled)
    assert all(DIALOGUE[s.start:s.end] == s.text for s in sentences(DIALOGUE))


def test_evidence_covers_gold_codes_of_real_dialogues(medsynth_sample):
    from icd10_coder.codes import normalize_code

    rows = [json.loads(line) for line in medsynth_sample.read_text().splitlines()[:40]]
    covered = sum(bool(evidence(r["Dialogue"], normalize_code(r["ICD10"]))) for r in rows)
    assert covered >= 0.8 * len(rows)  # measured on all 121 rows: 118 (make bench, stage app)


def test_search_by_code_words_and_typos_puts_billable_first():
    assert search("e119")[0] == "E11.9"
    family = search("E11", 30)
    assert family[0] == "E11" and all(code.startswith("E11") for code in family)
    typo = search("diabetis type 2", 10)
    assert typo and all(code.startswith("E11") for code in typo[:4])
    knee = search("pain in left knee", 5)
    assert knee[0] == "M25.562" and is_billable(knee[0])
    assert search("   ") == [] and search("qqqqzzzz") == []


def test_audit_log_is_owner_only_and_holds_no_dialogue_text(tmp_path):
    folder = tmp_path / "audit"
    suggestions = [{"code": "E11.9", "confidence": 0.8}, {"code": "E11.65", "confidence": 0.2}]
    for action, code in (("accept", "E11.9"), ("override", "E11.65"), ("reject", None)):
        audit.record(folder, action=action, code=code, dialogue=DIALOGUE, suggestions=suggestions,
                     base_model="outputs/models/x", adapter=None, adapter_sha256=None)
    log = folder / audit.AUDIT_FILE
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert [e["decision"]["action"] for e in lines] == ["accept", "override", "reject"]
    assert lines[0]["decision"]["description"] == "Type 2 diabetes mellitus without complications"
    assert lines[0]["dialogue_sha256"] == audit.sha256_text(DIALOGUE) and "thirsty" not in log.read_text()
    assert stat.S_IMODE(log.stat().st_mode) == 0o600 and stat.S_IMODE(folder.stat().st_mode) == 0o700
    with pytest.raises(ValueError):
        audit.record(folder, action="accept", code=None, dialogue=DIALOGUE, suggestions=[], base_model="m",
                     adapter=None, adapter_sha256=None)


def test_adapter_hash_changes_with_the_weights(tmp_path):
    (tmp_path / "adapter_config.json").write_text("{}")
    (tmp_path / "adapter_model.safetensors").write_bytes(b"a")
    first = audit.adapter_hash(tmp_path)
    (tmp_path / "adapter_model.safetensors").write_bytes(b"b")
    assert first != audit.adapter_hash(tmp_path) and audit.adapter_hash(None) is None


def test_calibration_bands_and_expected_calibration_error():
    assert [calibration.band(c) for c in (0.95, 0.6, 0.45, 0.1, None)] == ["high", "high", "medium", "not sure",
                                                                            "unknown"]
    perfect = calibration.measure([(0.9, True)] * 9 + [(0.9, False)])
    assert perfect["ece"] == pytest.approx(0.0, abs=1e-9) and perfect["bands"]["high"] == {"n": 10, "accuracy": 0.9}
    overconfident = calibration.measure([(0.95, False)] * 4 + [(0.95, True)])
    assert overconfident["ece"] == pytest.approx(0.75) and overconfident["bands"]["not sure"]["n"] == 0


def test_bad_uploads_get_clear_messages():
    with pytest.raises(PredictionError, match="binary"):
        parse_dialogues(b"\x89PNG\r\n\x1a\n\0\0", "scan.png")
    with pytest.raises(PredictionError, match="line 2 has no 'dialogue'"):
        parse_dialogues(b'{"dialogue": "a"}\n{"text": "b"}\n', "batch.jsonl")
    with pytest.raises(PredictionError, match="characters"):
        parse_dialogues(b"x" * (MAX_DIALOGUE_CHARS + 1), "huge.txt")
    with pytest.raises(PredictionError, match="empty"):
        parse_dialogues(b"  \n ", "empty.txt")


# ---------------------------------------------------------------- the page in a browser


@pytest.fixture(scope="module")
def app_server(tmp_path_factory):
    """tools/app.py on a free loopback port, in a throw-away workspace; yields (url, workspace)."""
    from icd10_coder.local_server import free_port, local_server

    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        pytest.fail("chromium and chromium-driver are needed (Debian packages; .ci/run installs them)")
    workspace = Path(tempfile.mkdtemp(prefix="test-app-", dir=REPO / "outputs"))
    port = free_port()
    # ICD10_TEST_APP_SERVING=outputs/demo/serving.json drives the page with make demo's served approach instead
    # (how the README's screenshot is taken); by default the test serves its own record.
    served = os.environ.get("ICD10_TEST_APP_SERVING") or str(write_serving_record(workspace))
    url = f"http://127.0.0.1:{port}/"
    with local_server([sys.executable, "tools/app.py", "--serving", served, "--port", str(port), "--workspace",
                       str(workspace), "--top-k", "3"], url, workspace / "server.log",
                      subprocess_env(hub_offline=True)) as server:
        yield url, workspace, server, json.loads(Path(served).read_text())
    shutil.rmtree(workspace, ignore_errors=True)


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1400",
                 "--disable-gpu"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    driver.implicitly_wait(0)
    yield driver
    driver.quit()


def wait_text(browser, selector: str, expected: str, timeout: float = 300) -> str:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(browser, timeout, poll_frequency=0.5).until(
        lambda d: expected.lower() in d.find_element(By.CSS_SELECTOR, selector).text.lower())
    return browser.find_element(By.CSS_SELECTOR, selector).text


def click(browser, selector: str) -> None:
    from selenium.webdriver.common.by import By

    browser.find_element(By.CSS_SELECTOR, selector).click()


def set_text(browser, selector: str, text: str) -> None:
    """Put text into a Gradio textbox the way typing does (an input event), also for 1 MB."""
    browser.execute_script("const box = document.querySelector(arguments[0]); box.value = arguments[1];"
                           "box.dispatchEvent(new Event('input', {bubbles: true}));", selector, text)


def audit_lines(workspace: Path) -> list[dict]:
    log = workspace / "audit" / audit.AUDIT_FILE
    return [json.loads(line) for line in log.read_text().splitlines()] if log.is_file() else []


@pytest.mark.slow
def test_workbench_in_a_real_browser(app_server, browser, tmp_path):
    from selenium.webdriver.common.by import By

    url, workspace, server, served = app_server
    SCREENS.mkdir(parents=True, exist_ok=True)
    browser.get(url)
    wait_text(browser, "body", "coder's workbench", timeout=60)

    # Nothing pasted yet: a message, no crash.
    click(browser, "#suggest")
    wait_text(browser, "#status", "the dialogue is empty")

    # Paste a real dialogue: the served score ranks the shortlist (codes with descriptions, hierarchy, a
    # calibrated band with its measured accuracy, or "not sure — search the codes"), with evidence.
    dialogue = real_dialogues(1)[0]
    set_text(browser, "#dialogue textarea", dialogue)
    click(browser, "#suggest")
    status = wait_text(browser, "#status", "suggestion(s) in")
    rows = browser.find_elements(By.CSS_SELECTOR, "#suggestions tr[data-code]")
    codes = [row.get_attribute("data-code") for row in rows]
    assert len(codes) == 3 and all(is_billable(code) for code in codes)
    table = browser.find_element(By.CSS_SELECTOR, "#suggestions").text
    assert "Chapter" in table and "fused score" in table and "measured on real test dialogues" in table
    top = float(rows[0].find_elements(By.CSS_SELECTOR, "td")[5].text.split()[0])
    assert ("Not sure — search the codes" in status) == (calibration.band(top) == calibration.NOT_SURE)
    assert "choice by likelihood" in browser.find_element(By.CSS_SELECTOR, "body").text
    evidence_text = browser.find_element(By.CSS_SELECTOR, "#evidence").text
    assert dialogue.splitlines()[0][-20:] in evidence_text  # the dialogue, evidence labelled by its codes
    for label in {label for _, label in highlighted(dialogue, codes) if label}:
        assert label in evidence_text
    browser.save_screenshot(str(SCREENS / "suggestions.png"))

    # Accept the pre-selected first suggestion: one audit line.
    click(browser, "#accept")
    wait_text(browser, "#decision-status", "Recorded accept")
    lines = audit_lines(workspace)
    assert len(lines) == 1 and lines[0]["decision"] == {"action": "accept", "code": codes[0],
                                                        "description": lines[0]["decision"]["description"]}
    assert [s["code"] for s in lines[0]["suggestions"]] == codes and lines[0]["adapter"] == served["adapter"]

    # Search (with a typo) and override with the first billable result; then reject.
    set_text(browser, "#search textarea, #search input", "diabetis type 2 without complications")
    click(browser, "#find")
    wait_text(browser, "#search-results", "E11.9")
    browser.find_element(By.CSS_SELECTOR, "#search-results label").click()
    picked = search("diabetis type 2 without complications", 15)[0]
    shown = wait_text(browser, "#search-evidence", f"Evidence for {picked}")
    assert "type 2 diabetes mellitus without complications" in shown.lower()  # the sentence that says so
    click(browser, "#override")
    wait_text(browser, "#decision-status", "Recorded override")
    click(browser, "#reject")
    wait_text(browser, "#decision-status", "Recorded reject")
    lines = audit_lines(workspace)
    assert [e["decision"]["action"] for e in lines] == ["accept", "override", "reject"]
    assert lines[1]["decision"]["code"] == picked
    assert stat.S_IMODE((workspace / "audit" / audit.AUDIT_FILE).stat().st_mode) == 0o600

    # Bad input: a 1 MB dialogue, then a binary upload.
    set_text(browser, "#dialogue textarea", "x" * 1_048_576)
    click(browser, "#suggest")
    wait_text(browser, "#status", "more than a dialogue")
    binary = tmp_path / "scan.txt"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\0\0\0binary")
    browser.find_element(By.CSS_SELECTOR, "#upload input[type=file]").send_keys(str(binary))
    time.sleep(2)
    click(browser, "#suggest")
    wait_text(browser, "#status", "binary")
    browser.save_screenshot(str(SCREENS / "bad-input.png"))

    # Batch: two dialogues in, JSON and CSV out (owner-only); a line without a dialogue is refused.
    browser.find_element(By.XPATH, "//button[@role='tab' and contains(., 'Batch')]").click()
    batch = tmp_path / "batch.jsonl"
    batch.write_text("\n".join(json.dumps({"dialogue": d}) for d in real_dialogues(2)))
    browser.find_element(By.CSS_SELECTOR, "#batch-upload input[type=file]").send_keys(str(batch))
    time.sleep(2)
    click(browser, "#run-batch")
    wait_text(browser, "#batch-status", "2 dialogue(s) coded")
    results = sorted((workspace / "app").glob("batch-*.json"))
    assert results and len(json.loads(results[-1].read_text())) == 2
    assert stat.S_IMODE(results[-1].stat().st_mode) == 0o600
    assert (workspace / "app" / results[-1].name.replace(".json", ".csv")).read_text().startswith("line,rank,code")
    browser.save_screenshot(str(SCREENS / "batch.png"))
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"dialogue": "fine"}\n{"text": "no dialogue key"}\n')
    browser.get(url)  # a fresh page: an empty upload field
    wait_text(browser, "body", "coder's workbench", timeout=60)
    browser.find_element(By.XPATH, "//button[@role='tab' and contains(., 'Batch')]").click()
    browser.find_element(By.CSS_SELECTOR, "#batch-upload input[type=file]").send_keys(str(broken))
    time.sleep(2)
    click(browser, "#run-batch")
    wait_text(browser, "#batch-status", "line 2 has no 'dialogue'")

    # Still serving, on loopback only.
    assert server.poll() is None
    assert urllib.request.urlopen(url, timeout=5).status == 200
    listening = subprocess.run(["ss", "-ltnp"], capture_output=True, text=True).stdout
    port = url.rsplit(":", 1)[1].strip("/")
    assert f"127.0.0.1:{port}" in listening and f"0.0.0.0:{port}" not in listening and f"*:{port}" not in listening


@pytest.mark.slow
def test_the_bench_times_the_pages_suggest_button(tmp_path):
    """make bench's page timing starts the app and sends real dialogues to the Suggest button's handler."""
    from icd10_coder.benchmarks.app import page_seconds

    workspace = Path(tempfile.mkdtemp(prefix="test-page-", dir=REPO / "outputs"))
    try:
        timed = page_seconds(real_dialogues(2), workspace, serving_file=write_serving_record(workspace))
        assert timed["n"] == 2 and 0 < timed["s_per_suggestion_median"] <= timed["s_max"]
        assert "Suggest" in timed["how"]
    finally:
        shutil.rmtree(workspace, ignore_errors=True)
