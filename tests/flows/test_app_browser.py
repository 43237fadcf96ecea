"""`vitsflow app` as a real server process on 127.0.0.1, driven by a real headless Chromium (Debian's
`chromium`, through Playwright): the page loads the models, speaks a typed sentence into its
<audio> element (which must load with a duration > 0), runs an A/B, shows the eval report, and the
test saves the screenshot the README shows (docs/app.png)."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import running_app
from tests.tasks.orchestration.test_app import app_project

pytestmark = pytest.mark.slow  # a real browser

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")  # Debian's package (scripts/setup.sh installs it)
SCREENSHOT = REPO / "docs" / "app.png"
AUDIO_LOADED = """(id) => new Promise((resolve, reject) => {
  const a = document.getElementById(id);
  const done = () => resolve({duration: a.duration, src: a.src});
  if (a.readyState >= 1) done();
  else { a.addEventListener("loadedmetadata", done, {once: true});
         a.addEventListener("error", () => reject(new Error("audio error " + (a.error && a.error.code))), {once: true}); }
})"""


@pytest.fixture
def server(train_corpus, tmp_path):
    """`vitsflow app` on a free port, started as a user starts it; stopped (and waited for) at the end."""
    project = app_project(train_corpus, tmp_path)
    with running_app(project["params"], tmp_path) as url:
        yield url


def test_the_page_speaks_a_typed_sentence_in_a_real_browser(server):
    assert CHROMIUM.is_file(), f"{CHROMIUM} is missing: install Debian's chromium (scripts/setup.sh does)"
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"], headless=True)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 1000})
            errors = []
            page.on("pageerror", lambda err: errors.append(str(err)))
            page.goto(server + "/")
            page.wait_for_function("document.querySelectorAll('#speaker option').length > 0", timeout=60_000)
            assert page.eval_on_selector("#model", "s => s.value") == "production"
            page.select_option("#speaker", "en_m1")
            page.select_option("#language", "en")
            page.fill("#text", "Where are you going today?")
            page.fill("#seed", "7")
            page.click("#speak")
            page.wait_for_function("document.getElementById('player').src.startsWith('blob:')", timeout=60_000)
            audio = page.evaluate(AUDIO_LOADED, "player")
            assert audio["duration"] > 0, audio
            info = page.text_content("#synth-info")
            assert "s of audio in" in info and page.text_content("#synth-error") == ""
            assert abs(float(info.split()[0]) - audio["duration"]) < 0.05  # the WAV the server sent

            page.select_option("#model-a", "run:synth-test:3")
            page.select_option("#model-b", "export:export")
            page.click("#ab")
            page.wait_for_function("document.getElementById('audio-b').src.startsWith('data:audio/wav')",
                                   timeout=60_000)
            for side in ("audio-a", "audio-b"):
                assert page.evaluate(AUDIO_LOADED, side)["duration"] > 0
            page.wait_for_selector("#eval-metrics")
            assert "mcd_db" in page.text_content("#eval-metrics") and "mos" in page.text_content("#eval-metrics")
            # 2 utterances x (recording, synthesis) + WaveGlow copy-synthesis of the first
            assert page.locator("#eval-samples audio").count() == 5
            assert "WaveGlow copy-synthesis" in page.text_content("#eval-samples")
            assert "mcd_db" in page.text_content("#eval-copy-metrics")
            assert errors == []
            SCREENSHOT.parent.mkdir(exist_ok=True)
            page.screenshot(path=str(SCREENSHOT), full_page=True)
        finally:
            browser.close()
    assert SCREENSHOT.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_page_speaks_mix_auto_style_text_and_split_text_in_a_real_browser(server):
    """The fields upstream 2.3's web UI has: language mix and auto, style text and weight, split with
    pauses; a mix text naming an unknown speaker shows the server's reason."""
    from playwright.sync_api import sync_playwright

    def speak(page) -> tuple[float, str]:
        page.evaluate("() => { const p = document.getElementById('player'); p.removeAttribute('src'); p.load(); }")
        page.click("#speak")
        page.wait_for_function("document.getElementById('player').src.startsWith('blob:') || "
                               "document.getElementById('synth-error').textContent !== ''", timeout=60_000)
        assert page.text_content("#synth-error") == ""
        return page.evaluate(AUDIO_LOADED, "player")["duration"], page.text_content("#synth-info")

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"], headless=True)
        try:
            page = browser.new_page()
            errors = []
            page.on("pageerror", lambda err: errors.append(str(err)))
            page.goto(server + "/")
            page.wait_for_function("document.querySelectorAll('#language option').length > 0", timeout=60_000)
            languages = page.eval_on_selector_all("#language option", "os => os.map(o => o.value)")
            assert {"mix", "auto", "en", "zh"} <= set(languages)
            page.fill("#seed", "3")
            page.select_option("#language", "mix")
            page.fill("#text", "[en_m1]<en>Hello there.<zh>你好。|[zh_f1]<zh>再见。")
            assert speak(page)[0] > 0
            page.select_option("#language", "auto")
            page.fill("#text", "你好。Where are you going?")
            assert speak(page)[0] > 0
            page.select_option("#language", "en")
            page.select_option("#speaker", "en_m1")
            page.fill("#text", "Hello there? How are you?\nSee you soon?")
            page.fill("#style_text", "I am so happy!")
            page.fill("#style_weight", "0.5")
            page.check("#split")
            page.fill("#sent_pause", "0.3")
            page.fill("#para_pause", "0.8")
            duration, info = speak(page)
            assert "(3 pieces)" in info and duration > 0.3 + 0.3 + 0.8  # the pauses alone
            page.select_option("#language", "mix")
            page.uncheck("#split")
            page.fill("#style_text", "")
            page.fill("#text", "[nobody]<en>Hello.")
            page.click("#speak")
            page.wait_for_function("document.getElementById('synth-error').textContent !== ''", timeout=60_000)
            assert "unknown speaker 'nobody'" in page.text_content("#synth-error")
            assert errors == []
        finally:
            browser.close()


def test_the_conversion_panel_converts_uploaded_recordings_and_records_from_a_microphone(server):
    """Upload a source and a reference, convert, play the result; record a source from Chromium's
    fake microphone (--use-fake-device-for-media-stream: a beep) into a WAV the page holds."""
    from playwright.sync_api import sync_playwright

    speech = REPO / "tests" / "data" / "speech"
    src, ref = speech / "en_ljspeech/wavs/LJ001-0002.wav", speech / "zh_aishell3/wavs/SSB00050112.wav"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                    args=["--no-sandbox", "--use-fake-ui-for-media-stream",
                                          "--use-fake-device-for-media-stream", "--autoplay-policy=no-user-gesture-required"])
        try:
            context = browser.new_context()
            context.grant_permissions(["microphone"], origin=server)
            page = context.new_page()
            errors = []
            page.on("pageerror", lambda err: errors.append(str(err)))
            page.goto(server + "/")
            page.wait_for_function("document.querySelectorAll('#vc-model option').length > 0", timeout=60_000)
            assert page.eval_on_selector("#vc-model", "s => s.value") == "vc"
            page.set_input_files("#vc-source", str(src))
            page.set_input_files("#vc-reference", str(ref))
            page.wait_for_function("document.getElementById('vc-reference-info').textContent.includes('kB')")
            page.click("#vc-convert")
            page.wait_for_function("document.getElementById('vc-player').src.startsWith('blob:')", timeout=60_000)
            audio = page.evaluate(AUDIO_LOADED, "vc-player")
            import soundfile as sf

            assert abs(audio["duration"] - sf.info(str(src)).duration) < 0.02, audio
            assert "s, reference 0-5.395 s" in page.text_content("#vc-info") and page.text_content("#vc-error") == ""

            page.click("#vc-record-source")
            page.wait_for_function("document.getElementById('vc-source-info').textContent === 'recording…'")
            page.wait_for_timeout(1500)
            page.click("#vc-record-source")
            page.wait_for_function("document.getElementById('vc-source-info').textContent.startsWith('recorded')")
            seconds = float(page.text_content("#vc-source-info").split()[1])
            assert 1.0 <= seconds <= 3.0, seconds
            header = page.evaluate("atob(vcInput.source.base64.slice(0, 16)).slice(0, 4) + vcInput.source.name")
            assert header == "RIFFrecorded-source.wav"
            assert errors == []
        finally:
            browser.close()
