"""The shipped tiny model, `pipelines/sa3-tiny/` (issue 7): it loads strictly, fits the size budget, follows a handful
of prompts as the DSP metrics of `training_examples/evaluate.py` measure them, and is what the README's first command
generates with.

What is checked is what the model reaches (training_examples/README, stops 29 and 31): the stereo side, where the sound
ends, the pitch of tones and chords (within a semitone), the type of sines (the README's own prompt, a 440 Hz sine
panned left, among them), a sawtooth, a square wave, a chord, noise and drums, the drums' tempo (both models; the
stop-27 models made these drums noise without a steady beat), for the base model also the type of sawtooth prompts at
three notes, and for the post-trained model at one step the same checks on every prompt but the chord and the chirp.
The type of chirps is not checked: both models make the chirp prompt here a chord (held out, the post-trained model
sweeps on 9 of 19 chirp prompts at 8 steps, the asked way on 2), and at one step the chord prompt comes out sweeping.
Held-out type accuracy on 96 prompts is 88.5 % for the base model and 82.3 % / 84.4 % for the post-trained one at
8 steps / one step (the model cards)."""

import hashlib
import re
import shlex
from pathlib import Path

import pytest
import soundfile as sf
import torch

from diffusers_sa3 import FlowMatchOTScheduler, PingPongAdversarialScheduler, StableAudio3Pipeline
from diffusers_sa3.cli import DEFAULT_MODEL_ENV, default_model_path
from diffusers_sa3.cli import main as cli_main
from diffusers_sa3.training.audio_metrics import classify_sound, semitone_error, spectral_peaks, stereo_side
from diffusers_sa3.training.synthetic_sounds import grid_tempo


ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "pipelines" / "sa3-tiny"

# (prompt, seconds generated, side, where the sound ends, sound type or None, pitch in Hz or None): attribute
# combinations of the grammar, worded as a user would (not captions copied from the train set).
PROMPTS = [
    ("a 440 hz sine tone panned left", 4.0, "left", 4.0, "sine", 440.0),
    ("a 440 hz sine tone panned right", 4.0, "right", 4.0, "sine", 440.0),
    ("loud drums playing at 120 beats per minute panned hard right", 4.0, "right", 4.0, "drums", None),
    ("a c4 major chord of square waves on the right", 4.0, "right", 4.0, "chord", 261.63),
    ("a falling chirp from 800 hz to 200 hz on the left", 5.0, "left", 5.0, None, None),
    ("a loud sawtooth tone playing a3 in the middle", 4.0, "centre", 4.0, "sawtooth", 220.0),
    ("a quiet square wave tone at 330 hz on the left", 4.0, "left", 4.0, "square", 330.0),
    ("a burst of white noise on the right", 3.0, "right", 3.0, "noise", None),
]


def _strongest_partial(audio, sample_rate):
    """Frequency of the strongest spectral peak of the mid channel: a tone's fundamental, for every waveform of the
    set (a chord's pitch is its root, `classify_sound`'s `f0_hz`)."""
    peaks = spectral_peaks(audio.mean(axis=0), sample_rate)
    return max(peaks, key=lambda peak: peak[1])[0] if peaks else None


def _load(folder):
    pipe = StableAudio3Pipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def post_trained():
    return _load(SHIPPED)


@pytest.fixture(scope="module")
def base():
    return _load(SHIPPED / "base")


def test_shipped_weights_fit_the_budget_and_carry_model_cards(post_trained, base):
    """Both folders load (strictly: `from_pretrained` raises on any missing or unexpected key) as float32, the
    post-trained one samples with the adversarial scheduler and the base one with flow matching, their distinct
    weight files total at most 25 MB, and each model card lists the recipe's commands and the evaluation table."""
    assert isinstance(post_trained.scheduler, PingPongAdversarialScheduler)
    assert isinstance(base.scheduler, FlowMatchOTScheduler)
    for pipe in (post_trained, base):
        assert {p.dtype for p in pipe.transformer.parameters()} == {torch.float32}
    assert post_trained.vae is not None and base.transformer is not post_trained.transformer
    contents = {}
    for path in list(SHIPPED.glob("*/*.safetensors")) + list(SHIPPED.glob("base/*/*.safetensors")):
        contents[hashlib.sha256(path.read_bytes()).hexdigest()] = path.stat().st_size
    assert len(contents) == 4  # one SAME, one text encoder, two transformers
    assert sum(contents.values()) <= 25e6
    for folder in (SHIPPED, SHIPPED / "base"):
        card = (folder / "README.md").read_text()
        for needle in ("tiny_components", "pre_encode.py", "train_flow.py", "train_distill.py", "evaluate.py"):
            assert needle in card, f"{folder}/README.md does not list {needle}"
        assert "type accuracy" in card and "stereo side accuracy" in card


def _check_prompt(pipe, prompt, seconds, side, end, label, pitch, seed=0, **kwargs):
    """`pipe` puts the prompt's sound on the asked side (+-3 dB, `audio_metrics.stereo_side`), ends it within 0.5 s of
    the asked end, and where given has the asked sound type (`classify_sound`) and pitch within a semitone; the output
    has the asked length."""
    rate = pipe.sampling_rate
    audio = pipe(
        prompt, duration=seconds, generator=torch.Generator().manual_seed(seed), output_type="np", **kwargs
    ).audios[0]
    assert audio.shape == (2, round(seconds * rate))
    assert stereo_side(audio) == side, (prompt, seed)
    found = classify_sound(audio, rate)
    assert found["end_seconds"] is not None and abs(found["end_seconds"] - end) <= 0.5, (
        f"{prompt} (seed {seed}): sound ends at {found['end_seconds']} s, asked {end} s"
    )
    if label is not None:
        assert found["label"] == label, (prompt, seed, found)
    if pitch is not None:
        estimate = found["f0_hz"] if label == "chord" else _strongest_partial(audio, rate)
        assert semitone_error(estimate, pitch) <= 1.0, f"{prompt} (seed {seed}): pitch {estimate} Hz, asked {pitch} Hz"


@torch.no_grad()
@pytest.mark.parametrize("prompt,seconds,side,end,label,pitch", PROMPTS, ids=[p[0][:40] for p in PROMPTS])
def test_post_trained_model_follows_the_prompt(post_trained, prompt, seconds, side, end, label, pitch):
    """The default (post-trained, 8 ping-pong steps) model follows each prompt ([`_check_prompt`])."""
    _check_prompt(post_trained, prompt, seconds, side, end, label, pitch)


@torch.no_grad()
def test_post_trained_model_follows_the_prompts_in_one_step(post_trained):
    """At one step (the adversarial post-training's target) the post-trained model follows every prompt but the
    chord (it sweeps: labelled a chirp) and the chirp (a chord, as at 8 steps), for two seeds each."""
    for prompt, seconds, side, end, label, pitch in PROMPTS:
        if label not in ("chord", None):
            for seed in (0, 1):
                _check_prompt(post_trained, prompt, seconds, side, end, label, pitch, seed, num_inference_steps=1)


@torch.no_grad()
def test_base_model_follows_side_pitch_and_waveform(base):
    """The base model (Euler, 50 steps, its folder's default guidance: 2, chosen on validation prompts) also gets the
    side and the pitch of left and right sine prompts, and makes sawtooth prompts at three notes and two positions a
    sawtooth at the asked note and side, for two seeds each. (The sawtooth at a3 in the middle, PROMPTS[5], is a known
    miss of this base model, also of the stop-28 and stop-29 post-trained ones: a chord with a partial at 194 Hz; the
    stop-31 post-trained model gets it: README.)"""
    assert base.default_guidance_scale == 2.0 and base.config.default_guidance_scale == 2.0
    for prompt, seconds, side, _, _, pitch in (PROMPTS[0], PROMPTS[1]):
        audio = base(prompt, duration=seconds, generator=torch.Generator().manual_seed(0), output_type="np").audios[0]
        assert stereo_side(audio) == side, prompt
        estimate = _strongest_partial(audio, base.sampling_rate)
        assert semitone_error(estimate, pitch) <= 1.0, f"{prompt}: pitch {estimate} Hz"
    for prompt, side, pitch in (
        ("a loud sawtooth tone playing c4 in the middle", "centre", 261.63),
        ("a loud sawtooth tone playing e3 in the middle", "centre", 164.81),
        ("a loud sawtooth tone playing a3 on the left", "left", 220.0),
    ):
        for seed in (0, 1):
            audio = base(prompt, duration=4.0, generator=torch.Generator().manual_seed(seed), output_type="np").audios[
                0
            ]
            found = classify_sound(audio, base.sampling_rate)
            assert found["label"] == "sawtooth" and stereo_side(audio) == side, (prompt, seed, found)
            assert semitone_error(found["f0_hz"], pitch) <= 1.0, (prompt, seed, found["f0_hz"])


@torch.no_grad()
@pytest.mark.parametrize("model", ["post_trained", "base"])
def test_drums_keep_the_asked_tempo(request, model):
    """Both models make the 120 BPM drum prompt a steady beat (`classify_sound`'s label `drums`) at the tempo of the
    training set's 120 BPM pattern (`grid_tempo`: 117.5 BPM, a two-beat bar of 9 latent frames) within 3 %, for two
    seeds. The onset autocorrelation may lock on the bar (half the tempo): the SAME reconstruction of the reference
    clips does the same (training_examples/README, stop 28), so a period of one bar counts too."""
    pipe = request.getfixturevalue(model)
    prompt, seconds, side = PROMPTS[2][:3]
    target = grid_tempo(120)
    for seed in (0, 1):
        audio = pipe(prompt, duration=seconds, generator=torch.Generator().manual_seed(seed), output_type="np").audios[
            0
        ]
        found = classify_sound(audio, pipe.sampling_rate)
        assert found["label"] == "drums" and stereo_side(audio) == side, (seed, found)
        error = min(abs(k * found["bpm"] - target) / target for k in (1, 2))
        assert error <= 0.03, f"seed {seed}: {found['bpm']:.1f} BPM (or twice that) against {target:.1f}"


def test_readme_first_command_generates_with_the_shipped_model(tmp_path, monkeypatch, capfd):
    """The README's first command, after its install part, run as written in an empty folder: with no model given
    (and `$DIFFUSERS_SA3_MODEL` unset) it uses the shipped tiny pipeline and writes 4 s of 44.1 kHz stereo with the
    asked side."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    first = re.search(r"```bash\n(.*?)\n", readme).group(1).split("#")[0]
    command = shlex.split(first.split("&&")[-1])
    assert command[:2] == ["diffusers-sa3", "generate"], command
    monkeypatch.delenv(DEFAULT_MODEL_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    assert default_model_path() == str(SHIPPED)
    capfd.readouterr()
    assert cli_main(command[1:] + ["--quiet"]) == 0
    err = capfd.readouterr().err
    assert "it/s" not in err and "Loading" not in err, f"--quiet printed progress bars: {err[-300:]}"
    output = tmp_path / command[command.index("-o") + 1]
    audio, rate = sf.read(output, dtype="float32", always_2d=True)
    assert rate == 44100 and audio.shape == (4 * 44100, 2)
    assert stereo_side(audio.T) == "left"
