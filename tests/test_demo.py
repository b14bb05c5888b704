"""End-to-end tests of the Gradio demo (`demo/app.py`): the app runs in-process on 127.0.0.1 and `gradio_client`
(and, where Chromium is installed, a headless browser through Playwright) drives it, offline, with the tiny official
fixture checkpoints."""

import importlib.util
import os
import shutil
import socket
import sys
from pathlib import Path

import numpy as np
import pytest
import torch


os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

gr = pytest.importorskip("gradio")
gradio_client = pytest.importorskip("gradio_client")
sf = pytest.importorskip("soundfile")

from diffusers_sa3 import StableAudio3Pipeline  # noqa: E402
from utils import MEDIUM_BASE_CKPT, SMALL_CKPT  # noqa: E402


APP_PATH = Path(__file__).resolve().parents[1] / "demo" / "app.py"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SR = 44100
MAX_FILE_SIZE = "1mb"
MAX_CLIP_SECONDS = 4.0


def _load_app():
    spec = importlib.util.spec_from_file_location("sa3_demo_app", APP_PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules["sa3_demo_app"] = module
    spec.loader.exec_module(module)
    return module


app = _load_app()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def small_pipe():
    return app.load_pipeline(SMALL_CKPT)


@pytest.fixture(scope="module")
def server(small_pipe):
    demo = app.build_demo(small_pipe, max_clip_seconds=MAX_CLIP_SECONDS)
    demo.queue(max_size=8, default_concurrency_limit=1)
    port = _free_port()
    demo.launch(
        server_name="127.0.0.1",
        server_port=port,
        prevent_thread_lock=True,
        share=False,
        max_file_size=MAX_FILE_SIZE,
        ssr_mode=False,
        quiet=True,
    )
    url = f"http://127.0.0.1:{port}/"
    yield url, gradio_client.Client(url, verbose=False)
    demo.close()


def _value(update):
    """An output value as the client returns it: either the value or a `gr.update` dict."""
    return update.get("value") if isinstance(update, dict) else update


def _read(path):
    audio, rate = sf.read(path, dtype="float32", always_2d=True)
    return audio.T, rate


def _generate(client, prompt="rain on a tin roof", duration=2.0, steps=4, seed=3, variations=1, randomize=False):
    return client.predict(
        prompt=prompt,
        negative_prompt="",
        guidance_scale=1.0,
        duration=duration,
        steps=steps,
        seed=seed,
        randomize_seed=randomize,
        num_variations=variations,
        api_name="/generate",
    )


def _edit(client, path, mode="Regenerate regions", regions="0.5-1.0, 2-2.5", continue_to=5.0, keep=True, **kw):
    mode = kw.pop("mode", mode)
    return client.predict(
        audio_path=gradio_client.handle_file(str(path)),
        mode=mode,
        regions_text=regions,
        continue_to=continue_to,
        noise_level=kw.get("noise_level", 0.5),
        keep_outside=keep,
        prompt=kw.get("prompt", "a violin"),
        negative_prompt="",
        guidance_scale=1.0,
        steps=4,
        seed=kw.get("seed", 0),
        randomize_seed=False,
        num_variations=kw.get("variations", 1),
        api_name="/edit",
    )


@pytest.fixture(scope="module")
def clip_path(tmp_path_factory):
    """A 3 s stereo 16-bit clip: two tones plus a little noise (synthesized, no data files)."""
    t = np.arange(3 * SR) / SR
    rng = np.random.default_rng(0)
    audio = np.stack([0.3 * np.sin(2 * np.pi * 440 * t), 0.3 * np.sin(2 * np.pi * 220 * t)], axis=1)
    audio += 0.01 * rng.standard_normal(audio.shape)
    path = tmp_path_factory.mktemp("clips") / "clip.wav"
    sf.write(path, audio, SR, subtype="PCM_16")
    return path


def test_generate_endpoint_matches_pipeline(server, small_pipe):
    _, client = server
    result = _generate(client, duration=2.0, steps=4, seed=3, variations=2)
    players, plots, files, seed, message = result[:4], result[4:8], result[8], result[9], result[10]
    assert seed == 3 and "seed 3" in message

    audios = [_read(_value(p)) for p in players[:2]]
    assert [_value(p) for p in players[2:]] == [None, None], "unused result slots must be empty"
    assert all(_value(p) is not None for p in plots[:2]) and all(_value(p) is None for p in plots[2:])
    for audio, rate in audios:
        assert rate == small_pipe.sampling_rate
        assert audio.shape == (2, int(2.0 * SR)), f"expected 2 s stereo, got {audio.shape}"
        assert np.abs(audio).max() > 0
    assert not np.array_equal(audios[0][0], audios[1][0]), "the two variations must differ"

    # Downloads: a WAV and a FLAC per variation, holding the same samples.
    assert sorted(Path(f).suffix for f in files) == [".flac", ".flac", ".wav", ".wav"]
    flac = [_read(f)[0] for f in files if f.endswith(".flac")]
    np.testing.assert_array_equal(flac[0], audios[0][0])

    # Variation i uses its own generator seeded with seed + i: the demo's second waveform is the pipeline's
    # waveform for seed 4 alone (to 16-bit precision).
    expected = small_pipe(
        "rain on a tin roof", duration=2.0, num_inference_steps=4, generator=[torch.Generator().manual_seed(4)]
    ).audios[0]
    np.testing.assert_allclose(audios[1][0], np.clip(expected, -1, 1), atol=1.5 / 32768, rtol=0)


def test_edit_regions_keeps_outside_exactly(server, clip_path):
    _, client = server
    result = _edit(client, clip_path, regions="0.5-1.0, 2-2.5", keep=True)
    edited, rate = _read(_value(result[0]))
    original, _ = _read(clip_path)
    assert rate == SR and edited.shape == original.shape == (2, 3 * SR)

    inside = np.zeros(edited.shape[-1], dtype=bool)
    for start, end in [(0.5, 1.0), (2.0, 2.5)]:
        inside[int(start * SR) : int(end * SR)] = True
    np.testing.assert_array_equal(edited[:, ~inside], original[:, ~inside])
    fade = int(app.CROSSFADE_SECONDS * SR)
    core = inside.copy()
    for start, end in [(0.5, 1.0), (2.0, 2.5)]:
        core[int(start * SR) : int(start * SR) + fade] = False
        core[int(end * SR) - fade : int(end * SR)] = False
    changed = np.abs(edited[:, core] - original[:, core]).max(axis=0) > 1e-3
    assert changed.mean() > 0.5, f"only {changed.mean():.0%} of the regenerated samples differ from the input"


def test_edit_without_paste_back_regenerates_everything(server, clip_path):
    _, client = server
    result = _edit(client, clip_path, regions="1-2", keep=False)
    edited, _ = _read(_value(result[0]))
    original, _ = _read(clip_path)
    assert edited.shape == original.shape
    # The official procedure pastes nothing back: the kept audio is regenerated too.
    assert not np.array_equal(edited[:, : SR // 2], original[:, : SR // 2])


def test_edit_continue_and_vary(server, clip_path):
    _, client = server
    original, _ = _read(clip_path)
    result = _edit(client, clip_path, mode="Continue", continue_to=4.5)
    continued, _ = _read(_value(result[0]))
    assert continued.shape == (2, int(4.5 * SR))
    np.testing.assert_array_equal(continued[:, : original.shape[-1]], original)
    assert np.abs(continued[:, original.shape[-1] :]).max() > 0, "the continuation is silent"

    result = _edit(client, clip_path, mode="Vary", noise_level=0.5, variations=2)
    varied = [_read(_value(p))[0] for p in result[:2]]
    assert all(v.shape == original.shape for v in varied)
    assert not np.array_equal(varied[0], original) and not np.array_equal(varied[0], varied[1])


@pytest.mark.parametrize(
    "case, expected",
    [
        ("not_audio", "is not audio"),
        ("too_long", f"at most {MAX_CLIP_SECONDS:.1f} s"),
        ("region_outside", "lies outside the clip"),
        ("bad_region_text", "Could not read the region"),
        ("empty_prompt", "prompt is empty"),
        ("bad_noise_level", "greater than maximum value 1.0"),  # the slider's own check, before our code
    ],
)
def test_bad_input_shows_message_and_server_keeps_serving(server, clip_path, tmp_path, case, expected):
    _, client = server
    path, kwargs = clip_path, {}
    if case == "not_audio":
        path = tmp_path / "notes.wav"
        path.write_text("these are notes, not audio\n")
    elif case == "too_long":
        path = tmp_path / "long.wav"
        sf.write(path, np.zeros(int(8000 * (MAX_CLIP_SECONDS + 1))), 8000, subtype="PCM_16")
    elif case == "region_outside":
        kwargs["regions"] = "2-5"
    elif case == "bad_region_text":
        kwargs["regions"] = "one to two"
    elif case == "empty_prompt":
        kwargs["prompt"] = "   "
    elif case == "bad_noise_level":
        kwargs.update(mode="Vary", noise_level=1.5)
    with pytest.raises(gradio_client.exceptions.AppError, match=expected) as excinfo:
        _edit(client, path, **kwargs)
    assert "Traceback" not in str(excinfo.value)
    result = _generate(client, duration=1.0, steps=2)
    assert _read(_value(result[0]))[0].shape == (2, SR)


def test_upload_size_limit(server, tmp_path):
    httpx = pytest.importorskip("httpx")
    url, client = server
    big = tmp_path / "big.wav"
    sf.write(big, np.zeros((300_000, 2)), SR, subtype="PCM_16")  # 1.2 MB > 1 MB
    with open(big, "rb") as f:
        response = httpx.post(url + "gradio_api/upload", files={"files": ("big.wav", f, "audio/wav")})
    assert response.status_code == 413, response.text
    assert _read(_value(_generate(client, duration=1.0, steps=2)[0]))[0].shape == (2, SR)


def test_controls_follow_model_kind(small_pipe):
    base_pipe = StableAudio3Pipeline.from_pretrained(MEDIUM_BASE_CKPT)
    for pipe, base in [(small_pipe, False), (base_pipe, True)]:
        assert pipe.is_post_trained is not base
        config = app.build_demo(pipe).get_config_file()
        by_label = {}
        for component in config["components"]:
            label = component.get("props", {}).get("label")
            by_label.setdefault(label, []).append(component["props"])
        for label in ("Negative prompt", "Guidance"):
            assert len(by_label[label]) == 2, f"{label} must exist in both tabs"
            assert all(props["visible"] is base for props in by_label[label]), f"{label} visible={not base}"
        assert by_label["Steps"][0]["value"] == pipe.default_num_inference_steps


def test_parse_regions_and_keep_weights():
    assert app.parse_regions("0.5-1.0, 2-3") == [(0.5, 1.0), (2.0, 3.0)]
    assert app.parse_regions("1:2; .5-.75") == [(1.0, 2.0), (0.5, 0.75)]
    with pytest.raises(gr.Error):
        app.parse_regions("1-")
    weights = app.keep_weights([(1.0, 2.0)], clip_samples=250, num_samples=300, sampling_rate=100)
    assert (weights[:100] == 1).all() and (weights[200:250] == 1).all() and (weights[250:] == 0).all()
    assert (weights[101:199] == 0).all() and 0 < weights[100] < 1 and 0 < weights[199] < 1


def test_missing_model_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("DIFFUSERS_SA3_MODEL", raising=False)
    monkeypatch.setattr(app, "default_model_path", lambda: None)
    monkeypatch.setattr(Path, "is_file", lambda self: False)
    with pytest.raises(SystemExit, match="--model PATH"):
        app.resolve_model_path(None)
    assert app.resolve_model_path("some/folder") == "some/folder"


@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"Chromium is not installed at {CHROMIUM}")
def test_browser_generate(server, tmp_path):
    sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright
    url, _ = server
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1100})
            page.goto(url, wait_until="domcontentloaded")
            prompt = page.get_by_label("Prompt").first
            prompt.fill("soft rain on a tin roof")
            page.get_by_role("button", name="Generate", exact=True).click()
            page.get_by_text("Generated 1 x").wait_for(timeout=60_000)
            page.locator("audio[src], .waveform-container, [data-testid='waveform-Result 1']").first.wait_for(
                timeout=30_000
            )
            page.screenshot(path=str(tmp_path / "generate.png"), full_page=True)

            # A bad upload in the Edit tab shows the message; the next request still succeeds.
            notes = tmp_path / "notes.wav"
            notes.write_text("not audio")
            page.get_by_role("tab", name="Edit").click()
            page.locator("input[type=file]").first.set_input_files(str(notes))
            page.get_by_label("Prompt").nth(1).fill("a violin")
            page.get_by_role("button", name="Edit", exact=True).click()
            page.get_by_text("is not audio").first.wait_for(timeout=30_000)
            page.wait_for_timeout(800)  # let the error toast finish fading in before the screenshot
            page.screenshot(path=str(tmp_path / "bad_upload.png"), full_page=True)
        finally:
            browser.close()
    assert (tmp_path / "generate.png").stat().st_size > 10_000
    if os.environ.get("SA3_DEMO_SCREENSHOTS"):
        shutil.copytree(tmp_path, os.environ["SA3_DEMO_SCREENSHOTS"], dirs_exist_ok=True)


def test_progress_reports_every_step(small_pipe):
    calls = []

    def progress(value, desc=None, unit=None):
        calls.append((value, desc))

    outputs = app.generate(small_pipe, "wind", "", 1.0, 1.0, 3, 5, False, 1, progress=progress)
    assert calls == [((1, 3), "Denoising"), ((2, 3), "Denoising"), ((3, 3), "Denoising")]
    assert outputs[-2] == 5 and "seed 5" in outputs[-1]


def test_request_folders_are_pruned(tmp_path):
    old, new = tmp_path / "request-old", tmp_path / "request-new"
    for folder in (old, new):
        folder.mkdir()
        (folder / "generated_0.wav").write_bytes(b"x")
    os.utime(old, (0, 0))
    (tmp_path / "user-file.wav").write_bytes(b"keep")  # only request folders are ever removed
    app.prune_outputs(tmp_path, 3600)
    assert not old.exists() and new.is_dir() and (tmp_path / "user-file.wav").exists()


@pytest.mark.parametrize("value", [float("nan"), float("inf"), "abc", 2.5, -1])
def test_seed_and_count_checks_give_messages(value):
    with pytest.raises(app.UserError, match="seed must be an integer"):
        app.resolve_seed(value, randomize=False)
    with pytest.raises(app.UserError, match="Steps must be an integer"):
        app.check_count(value, "Steps", 1, 500)
