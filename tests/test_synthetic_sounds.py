"""The synthetic captioned sound set, the DSP metrics that score generations against it, and the evaluation CLI."""

import filecmp
import importlib.util
import json
import os
import re

import numpy as np
import pytest
import soundfile as sf

from diffusers_sa3.training.audio_metrics import LABELS, classify_sound, score_clip, summarize_scores
from diffusers_sa3.training.synthetic_sounds import (
    ATTRIBUTE_NAMES,
    DEFAULT_TYPE_WEIGHTS,
    GRID_SAMPLES,
    NOTES,
    SOUND_TYPES,
    TEMPOS,
    caption_vocabulary,
    chord_frequencies,
    combination_key,
    grid_chirp_frequencies,
    grid_frequency,
    grid_tempo,
    heldout_combinations,
    note_to_hz,
    read_metadata,
    split_combinations,
    synthesize,
    synthetic_examples,
    type_weights_array,
    write_synthetic_dataset,
)
from utils import MEDIUM_BASE_CKPT, SMALL_CKPT


SR = 44100
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load_script(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "training_examples", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _attributes(kind, side, loudness, duration, sound_end, **extra):
    attributes = dict.fromkeys(ATTRIBUTE_NAMES)
    attributes.update(
        type=kind,
        side=side,
        loudness=loudness,
        duration=float(duration),
        seconds_total=duration,
        sound_end_seconds=float(sound_end),
    )
    attributes.update(extra)
    if attributes["note"] is not None:
        attributes["pitch_hz"] = note_to_hz(attributes["note"])
    return attributes


def _ground_truth_cases():
    """Every label, side and loudness; low and high notes; clips with and without a silent tail."""
    sides, loudness = ("left", "centre", "right"), ("quiet", "loud")
    specs = []
    for waveform in ("sine", "square", "sawtooth"):
        specs += [{"kind": "tone", "waveform": waveform, "note": note} for note in ("c3", "a4", "b5")]
    for note, quality, waveform in (("c3", "minor", "sawtooth"), ("e4", "major", "sine"), ("g5", "minor", "square")):
        specs.append({"kind": "chord", "note": note, "chord": quality, "waveform": waveform})
    specs += [{"kind": "noise"}, {"kind": "noise"}]
    specs += [{"kind": "drums", "bpm": bpm} for bpm in (80, 110, 140)]
    specs += [
        {"kind": "chirp", "direction": "rising", "waveform": "sine", "pitch_hz": 100.0, "pitch_end_hz": 400.0},
        {"kind": "chirp", "direction": "falling", "waveform": "sine", "pitch_hz": 1600.0, "pitch_end_hz": 400.0},
    ]
    cases = []
    for i, spec in enumerate(specs):
        kind = spec.pop("kind")
        duration = 4 if kind == "drums" else 2 + i % 2
        sound_end = duration - 1 if i % 4 == 0 else duration
        cases.append(_attributes(kind, sides[i % 3], loudness[i % 2], duration, sound_end, **spec))
    return cases


def test_metrics_score_clean_ground_truth_clips_correctly():
    cases = _ground_truth_cases()
    cases += [e["attributes"] for e in synthetic_examples(10, seed=7)]
    scores = []
    for index, attributes in enumerate(cases):
        audio = synthesize(attributes, np.random.default_rng(index))
        assert audio.shape == (2, int(attributes["duration"] * SR)) and audio.dtype == np.float32
        scores.append(score_clip(audio, SR, attributes))
    assert {s["expected_label"] for s in scores} == set(LABELS) - {"silence"}

    failures = []
    for attributes, s in zip(cases, scores):
        problems = []
        if not s["type_correct"]:
            problems.append(f"label {s['label']} != {s['expected_label']}")
        if s["pitch_error_semitones"] is not None and s["pitch_error_semitones"] >= 0.3:
            problems.append(f"pitch error {s['pitch_error_semitones']:.3f} semitones")
        if s["tempo_error_bpm"] is not None and s["tempo_error_bpm"] >= 0.02 * attributes["bpm"]:
            problems.append(f"tempo {s['bpm']} bpm for {attributes['bpm']}")
        if not s["side_correct"]:
            problems.append(f"side {s['side']}")
        if abs(s["end_error_seconds"]) > 0.1:
            problems.append(f"end {s['end_seconds']:.3f} s for {attributes['sound_end_seconds']}")
        if not s["loudness_correct"]:
            problems.append(f"loudness {s['loudness']}")
        if problems:
            failures.append(f"{attributes['type']} {attributes}: " + "; ".join(problems))
    assert not failures, "\n".join(failures)
    summary = summarize_scores(scores)
    assert summary["type_accuracy"] == summary["side_accuracy"] == summary["duration_adherence"] == 1.0
    directions = {a["direction"] for a in cases if a["type"] == "chirp"}
    assert directions == {"rising", "falling"} and summary["chirp_direction_accuracy"] == 1.0
    assert all((s["chirp_direction_correct"] is None) == (a["type"] != "chirp") for a, s in zip(cases, scores))


def test_metrics_detect_wrong_attributes():
    tone = _attributes("tone", "left", "loud", 2, 2, waveform="square", note="a4")
    audio = synthesize(tone, np.random.default_rng(0))
    wrong = dict(tone, waveform="sawtooth", note="b4", pitch_hz=note_to_hz("b4"), side="right", loudness="quiet")
    wrong["sound_end_seconds"] = 1.0
    s = score_clip(audio, SR, wrong)
    assert not (s["type_correct"] or s["side_correct"] or s["loudness_correct"] or s["duration_ok"])
    assert abs(s["pitch_error_semitones"] - 2.0) < 0.05

    drums = _attributes("drums", "centre", "loud", 4, 4, bpm=120)
    audio = synthesize(drums, np.random.default_rng(0))
    s = score_clip(audio, SR, dict(drums, bpm=90))
    assert abs(s["tempo_error_bpm"] - 30) < 2 and abs(s["tempo_octave_error_bpm"] - 30) < 2  # 60 and 240 are further
    # Asked for half or twice the played tempo: wrong by 60 or 120 BPM, right up to the octave.
    for asked, error in ((60, 60), (240, 120)):
        s = score_clip(audio, SR, dict(drums, bpm=asked))
        assert abs(s["tempo_error_bpm"] - error) < 2 and s["tempo_octave_error_bpm"] < 2, (asked, s["bpm"])

    # A rising chirp scored as the falling one: still the right type, the wrong direction.
    chirp = next(e["attributes"] for e in synthetic_examples(200, seed=3) if e["attributes"]["type"] == "chirp")
    flipped = dict(chirp, direction="falling" if chirp["direction"] == "rising" else "rising")
    s = score_clip(synthesize(chirp, np.random.default_rng(0)), SR, flipped)
    assert s["type_correct"] and s["chirp_direction_correct"] is False
    assert summarize_scores([s])["chirp_direction_accuracy"] == 0.0
    assert summarize_scores([score_clip(audio, SR, tone)])["chirp_direction_accuracy"] is None

    silent = classify_sound(np.zeros((2, SR)), SR)
    assert silent["label"] == "silence" and silent["end_seconds"] is None
    s = score_clip(np.zeros((2, SR)), SR, tone)
    assert not s["type_correct"] and not s["duration_ok"] and s["pitch_error_semitones"] == 12.0


def test_dataset_is_deterministic(tmp_path):
    first = write_synthetic_dataset(str(tmp_path / "a"), 3, seed=0)
    write_synthetic_dataset(str(tmp_path / "b"), 3, seed=0)
    write_synthetic_dataset(str(tmp_path / "c"), 3, seed=1)
    names = sorted(os.listdir(tmp_path / "a"))
    assert names == sorted(
        [r["file_name"] for r in first] + [r["file_name"][:-4] + ".txt" for r in first] + ["metadata.jsonl"]
    )
    match, mismatch, errors = filecmp.cmpfiles(tmp_path / "a", tmp_path / "b", names, shallow=False)
    assert match == names, (mismatch, errors)
    wavs = [name for name in names if name.endswith(".wav")]
    match, _, _ = filecmp.cmpfiles(tmp_path / "a", tmp_path / "c", wavs, shallow=False)
    assert not match, "another seed must give other clips"

    rows = read_metadata(str(tmp_path / "a"))
    assert rows == json.loads(json.dumps(first))
    for row in rows:
        assert set(row) == {"file_name", "text", *ATTRIBUTE_NAMES}
        assert 1 <= row["duration"] <= 12 and row["sound_end_seconds"] <= row["duration"]
        with open(tmp_path / "a" / (row["file_name"][:-4] + ".txt")) as f:
            assert f.read().strip() == row["text"]
        info = sf.info(str(tmp_path / "a" / row["file_name"]))
        assert (info.samplerate, info.channels, info.frames) == (SR, 2, int(row["duration"] * SR))


def test_heldout_split_is_disjoint_and_deterministic():
    heldout = heldout_combinations(split_seed=0)
    assert heldout == heldout_combinations(split_seed=0)
    assert heldout != heldout_combinations(split_seed=1)
    train = split_combinations("train", split_seed=0)
    for kind in SOUND_TYPES:
        assert heldout[kind], kind
        assert not set(heldout[kind]) & set(train[kind]), kind
        # Every single attribute value of a held-out combination is seen in train.
        for combination in heldout[kind]:
            for position in range(1, len(combination)):
                assert any(c[position] == combination[position] for c in train[kind]), combination

    train_keys = {combination_key(e["attributes"]) for e in synthetic_examples(400, seed=0, with_audio=False)}
    heldout_examples = synthetic_examples(100, seed=0, split="heldout", with_audio=False)
    heldout_keys = {combination_key(e["attributes"]) for e in heldout_examples}
    assert not train_keys & heldout_keys
    assert heldout_keys <= {c for kind in SOUND_TYPES for c in heldout[kind]}
    assert {e["attributes"]["type"] for e in heldout_examples} == set(SOUND_TYPES)


def test_captions_and_vocabulary(tmp_path):
    examples = synthetic_examples(300, seed=3, with_audio=False)
    texts = [e["text"] for e in examples]
    for text in texts:
        assert re.fullmatch(r"[a-z0-9]+( [a-z0-9]+)*", text), text
    assert len(set(texts)) > 250, "captions should vary"
    vocabulary = caption_vocabulary(examples)
    assert vocabulary == sorted(set(" ".join(texts).split()))
    assert caption_vocabulary(texts) == vocabulary
    assert {"sine", "square", "sawtooth", "bpm", "chord", "major", "left", "right", "silence", "quiet", "loud"} <= set(
        vocabulary
    )
    assert any(note in vocabulary for note in NOTES) and "440" in vocabulary

    script = _load_script("synthetic_sounds")
    rows = script.main(script.parse_args(["--output_dir", str(tmp_path), "--num_examples", "2", "--split", "heldout"]))
    assert caption_vocabulary(str(tmp_path)) == caption_vocabulary(rows)
    assert all(row["file_name"].startswith("heldout_") for row in rows)


def test_evaluate_cli_end_to_end(tmp_path, capsys):
    script = _load_script("evaluate")
    output = tmp_path / "eval.json"
    args = script.parse_args(
        [
            "--base", MEDIUM_BASE_CKPT, "--base_steps", "1",
            "--post_trained", SMALL_CKPT, "--post_trained_steps", "1", "8",
            "--num_prompts", "2", "--seed", "1", "--max_seconds", "3", "--output_json", str(output), "--device", "cpu",
        ]
    )  # fmt: skip
    result = script.main(args)
    table = capsys.readouterr().out
    for title in (
        "type accuracy",
        "median pitch error",
        "stereo side accuracy",
        "duration adherence",
        "chirp direction",
        "SNR",
    ):
        assert title in table
    for column in ("reference", "same_reconstruction", "base_euler_1", "post_trained_1", "post_trained_8"):
        assert column in table

    with open(output) as f:
        saved = json.load(f)
    assert saved["table"] == result["table"]
    assert set(saved) == {"settings", "targets", "prompts", "columns", "table"}
    # The SAME's encode-decode of the ground truth comes second, scored like a model (the first model's SAME).
    assert list(saved["columns"]) == [
        "reference",
        "same_reconstruction",
        "base_euler_1",
        "post_trained_1",
        "post_trained_8",
    ]
    metric_keys = {
        "type_accuracy",
        "median_pitch_error_semitones",
        "median_tempo_error_bpm",
        "median_tempo_octave_error_bpm",
        "side_accuracy",
        "duration_adherence",
        "loudness_accuracy",
        "chirp_direction_accuracy",
        "num_clips",
        "same_snr_db",
    }
    for name, column in saved["columns"].items():
        assert set(column["metrics"]) == metric_keys, name
        assert column["metrics"]["num_clips"] == 2 and len(column["clips"]) == 2
        assert set(column["meets_targets"]) == {
            "type_accuracy",
            "median_pitch_error_semitones",
            "side_accuracy",
            "duration_adherence",
        }
    reference = saved["columns"]["reference"]["metrics"]
    assert reference["type_accuracy"] == reference["side_accuracy"] == reference["duration_adherence"] == 1.0
    assert isinstance(saved["columns"]["post_trained_8"]["metrics"]["same_snr_db"], float)
    assert saved["columns"]["same_reconstruction"]["metrics"]["same_snr_db"] == pytest.approx(
        saved["columns"]["base_euler_1"]["metrics"]["same_snr_db"]
    )
    for name, column in saved["columns"].items():  # per-label type counts add up to the type accuracy
        counts = column["type_correct_by_label"]
        assert sum(n for _, n in counts.values()) == 2, name
        assert sum(c for c, _ in counts.values()) / 2 == pytest.approx(column["metrics"]["type_accuracy"]), name
    heldout = synthetic_examples(20, seed=1, split="heldout", with_audio=False)
    assert [p["text"] for p in saved["prompts"]] == [e["text"] for e in heldout if e["attributes"]["duration"] <= 3][
        :2
    ]


@pytest.mark.parametrize("bad", [{"waveform": "triangle"}, {"type": "speech"}])
def test_bad_attributes_raise(bad):
    attributes = dict(_attributes("tone", "left", "loud", 1, 1, waveform="sine", note="a4"), **bad)
    with pytest.raises(ValueError, match="waveform|type"):
        synthesize(attributes, np.random.default_rng(0))


def test_zero_phase_clips_are_a_function_of_their_attributes(tmp_path):
    tone = _attributes("tone", "left", "loud", 2, 2, waveform="sawtooth", note="a4")
    chord = _attributes("chord", "centre", "quiet", 2, 1, waveform="square", note="c4", chord="minor")
    chirp = _attributes("chirp", "right", "loud", 2, 2, waveform="sine", direction="rising", pitch_hz=200.0)
    chirp["pitch_end_hz"] = 800.0
    for attributes in (tone, chord, chirp):
        zero = [synthesize(attributes, np.random.default_rng(seed), phase="zero") for seed in (0, 1)]
        np.testing.assert_array_equal(zero[0], zero[1])
        random = [synthesize(attributes, np.random.default_rng(seed)) for seed in (0, 1)]
        assert np.abs(random[0] - random[1]).max() > 0.1, "the default draws each oscillator's start phase"
        # Same sound otherwise: level, side, end and pitch.
        assert np.isclose(np.abs(zero[0]).max(), np.abs(random[0]).max())
        s = score_clip(zero[0], SR, attributes)
        assert s["type_correct"] and s["side_correct"] and s["duration_ok"], s
    # A zero-phase sine starts at 0 and rises.
    sine = synthesize(_attributes("tone", "centre", "loud", 1, 1, waveform="sine", note="a4"), None, phase="zero")
    assert sine[0, 0] == 0.0 and sine[0, 25] > 0  # a quarter period in: the first peak
    # Noise keeps its randomness.
    noise = _attributes("noise", "centre", "loud", 1, 1)
    a, b = (synthesize(noise, np.random.default_rng(seed), phase="zero") for seed in (0, 1))
    assert not np.allclose(a, b)
    with pytest.raises(ValueError, match="`phase` must be one of"):
        synthesize(tone, np.random.default_rng(0), phase="fixed")
    with pytest.raises(ValueError, match="`phase` must be one of"):
        write_synthetic_dataset(str(tmp_path / "never-written"), 1, phase="fixed")
    assert not (tmp_path / "never-written").exists(), "a bad `phase` must fail before anything is written"


def test_zero_phase_keeps_the_captions():
    random = synthetic_examples(4, seed=3, with_audio=False)
    zero = synthetic_examples(4, seed=3, phase="zero")
    assert [e["text"] for e in random] == [e["text"] for e in zero]
    assert [e["attributes"] for e in random] == [e["attributes"] for e in zero]


def test_rms_level_gives_every_sound_type_one_energy_per_loudness(tmp_path):
    """`level="rms"`: the louder channel's RMS over the sound at -26 / -16 dBFS (loud drums and noise capped by the
    0.99 peak), measured here independently of the synthesiser; the metrics read the loudness back."""
    cases = _ground_truth_cases()
    for index, attributes in enumerate(cases):
        audio = synthesize(attributes, np.random.default_rng(index), level="rms")
        sound = audio[:, : int(round(attributes["sound_end_seconds"] * SR))].astype(np.float64)
        rms_db = 20 * np.log10(np.sqrt((sound**2).mean(axis=1)).max())
        peak = np.abs(audio).max()
        target = {"quiet": -26.0, "loud": -16.0}[attributes["loudness"]]
        assert peak <= 0.99 + 1e-6, attributes
        if peak < 0.98:  # not capped
            assert abs(rms_db - target) < 0.05, (attributes, rms_db)
        else:
            assert -19.5 < rms_db < target, (attributes, rms_db)
        s = score_clip(audio, SR, attributes, level="rms")
        assert s["loudness_correct"] and s["type_correct"] and s["side_correct"] and s["duration_ok"], (attributes, s)
        # The same clip at peak level is the same sound at another gain.
        peak_audio = synthesize(attributes, np.random.default_rng(index))
        np.testing.assert_allclose(audio * (np.abs(peak_audio).max() / peak), peak_audio, atol=1e-6)
    # A loud square and a loud sine get the same RMS (the peak rule would leave them apart by their crest factors).
    square = _attributes("tone", "centre", "loud", 1, 1, waveform="square", note="a4")
    sine = dict(square, waveform="sine")
    rms = [np.sqrt((synthesize(a, None, phase="zero", level="rms") ** 2).mean()) for a in (square, sine)]
    assert np.isclose(rms[0], rms[1], rtol=0.01)
    with pytest.raises(ValueError, match="`level` must be one of"):
        synthesize(square, None, phase="zero", level="lufs")
    with pytest.raises(ValueError, match="`level` must be one of"):
        score_clip(synthesize(square, None, phase="zero"), SR, square, level="lufs")
    with pytest.raises(ValueError, match="`level` must be one of"):
        write_synthetic_dataset(str(tmp_path / "never-written"), 1, level="lufs")
    assert not (tmp_path / "never-written").exists(), "a bad `level` must fail before anything is written"


def test_evaluate_reference_clips_follow_the_level_flag():
    script = _load_script("evaluate")
    assert script.parse_args(["--level", "rms"]).level == "rms"
    examples = script.held_out_prompts(6, 1, 0, 3, "zero", "rms")
    for index, example in enumerate(examples):
        sound = example["audio"][:, : int(round(example["attributes"]["sound_end_seconds"] * SR))].astype(np.float64)
        rms_db = 20 * np.log10(np.sqrt((sound**2).mean(axis=1)).max())
        assert rms_db <= {"quiet": -26.0, "loud": -16.0}[example["attributes"]["loudness"]] + 0.05, example["text"]
    column = script.score_column([e["audio"] for e in examples], examples, SR, "rms")
    assert column["metrics"]["loudness_accuracy"] == 1.0
    with pytest.raises(SystemExit):
        script.parse_args(["--level", "lufs"])


def test_grid_tuning_repeats_every_4096_samples_and_stays_near_the_note(tmp_path):
    """`tuning="grid"`: every tone and chord oscillator is a whole multiple of 44100 / 4096 Hz, so with zero phase each
    4096-sample frame of the steady part is the same (measured on the audio), while the measured pitch stays within the
    grid's half step of the nominal note (at most 0.55 semitones over c3 ... f#6) and the other scores are unchanged."""
    step = SR / GRID_SAMPLES
    # Every note and chord note of the set: the nearest grid frequency, within half a step.
    for note in NOTES:
        for f in chord_frequencies(note_to_hz(note), "major") + chord_frequencies(note_to_hz(note), "minor"):
            tuned = grid_frequency(f)
            assert tuned / step == round(tuned / step) and abs(tuned - f) <= step / 2 + 1e-9
            assert abs(12 * np.log2(tuned / f)) < 0.55
    cases = [c for c in _ground_truth_cases() if c["type"] in ("tone", "chord")]
    for attributes in cases:
        grid = synthesize(attributes, np.random.default_rng(0), phase="zero", tuning="grid")
        steady = int(attributes["sound_end_seconds"] * SR) // GRID_SAMPLES - 1  # frames before the fade-out
        frames = grid[:, GRID_SAMPLES : steady * GRID_SAMPLES].reshape(2, -1, GRID_SAMPLES)
        assert frames.shape[1] >= 2
        np.testing.assert_allclose(frames[:, 1:], frames[:, :1].repeat(frames.shape[1] - 1, axis=1), atol=1e-6)
        equal = synthesize(attributes, np.random.default_rng(0), phase="zero")
        assert (
            np.abs(
                frames[:, 1:]
                - equal[:, 2 * GRID_SAMPLES : frames.shape[1] * GRID_SAMPLES + GRID_SAMPLES].reshape(
                    2, -1, GRID_SAMPLES
                )
            ).max()
            > 1e-3
        ), "equal temperament does not repeat"
        scores = score_clip(grid, SR, attributes)
        assert scores["type_correct"] and scores["side_correct"] and scores["duration_ok"], scores
        assert scores["pitch_error_semitones"] < 0.6, scores
    # Noise, drums and chirps are not tuned.
    for attributes in (c for c in _ground_truth_cases() if c["type"] not in ("tone", "chord")):
        np.testing.assert_array_equal(
            synthesize(attributes, np.random.default_rng(1), tuning="grid"),
            synthesize(attributes, np.random.default_rng(1)),
        )
    with pytest.raises(ValueError, match="`tuning` must be one of"):
        synthesize(cases[0], np.random.default_rng(0), tuning="just")
    with pytest.raises(ValueError, match="`tuning` must be one of"):
        write_synthetic_dataset(str(tmp_path / "never-written"), 1, tuning="just")
    assert not (tmp_path / "never-written").exists(), "a bad `tuning` must fail before anything is written"
    # The captions and attributes keep the nominal pitch; the evaluation's reference clips follow the flag.
    assert [e["text"] for e in synthetic_examples(3, seed=2, tuning="grid", with_audio=False)] == [
        e["text"] for e in synthetic_examples(3, seed=2, with_audio=False)
    ]
    script = _load_script("evaluate")
    assert script.parse_args(["--tuning", "grid"]).tuning == "grid"
    with pytest.raises(SystemExit):
        script.parse_args(["--tuning", "just"])


def test_grid_timing_puts_drum_bars_and_chirp_steps_on_4096_sample_frames(tmp_path):
    """`timing="grid"`: a drum pattern is the exact-timing pattern at the tempo whose two-beat bar is a whole number of
    4096-sample frames (at most 2.6 % off the captioned one); a chirp holds one grid-tuned note per frame (a pure sine
    at a multiple of 44100 / 4096 Hz, measured with an FFT of each frame), nearest to the exponential sweep; both
    still score as what their captions ask, and nothing else changes."""
    step = SR / GRID_SAMPLES
    for bpm in TEMPOS:
        tempo = grid_tempo(bpm)
        bar_frames = 2 * 60.0 / tempo * SR / GRID_SAMPLES
        assert abs(bar_frames - round(bar_frames)) < 1e-9 and abs(tempo - bpm) / bpm < 0.026, (bpm, tempo)
        drums = _attributes("drums", "left", "loud", 5, 4, bpm=bpm)
        grid = synthesize(drums, np.random.default_rng(3), phase="zero", timing="grid")
        np.testing.assert_array_equal(
            grid, synthesize(dict(drums, bpm=tempo), np.random.default_rng(3), phase="zero"), err_msg=str(bpm)
        )
        scores = score_clip(grid, SR, drums)
        assert scores["type_correct"] and scores["side_correct"] and scores["duration_ok"], scores
        assert abs(scores["bpm"] - tempo) < 0.01 * tempo, (bpm, tempo, scores["bpm"])
    for direction, start, end, seconds in (("rising", 100.0, 400.0, 3), ("falling", 1600.0, 400.0, 2)):
        chirp = _attributes(
            "chirp",
            "right",
            "quiet",
            seconds,
            seconds,
            direction=direction,
            waveform="sine",
            pitch_hz=start,
            pitch_end_hz=end,
        )
        samples = seconds * SR
        frequencies = grid_chirp_frequencies(start, end, samples)
        assert len(frequencies) == -(-samples // GRID_SAMPLES)
        assert np.all(np.diff(frequencies) >= 0 if direction == "rising" else np.diff(frequencies) <= 0)
        centres = np.minimum((np.arange(len(frequencies)) + 0.5) * GRID_SAMPLES, samples) / samples
        sweep = start * (end / start) ** centres
        # Half a semitone to the nearest note, then at most half a grid step.
        assert np.all(np.abs(12 * np.log2(frequencies / sweep)) <= 0.5 + 12 * np.log2(1 + step / 2 / 100) + 1e-9)
        audio = synthesize(chirp, np.random.default_rng(0), phase="zero", timing="grid")
        mono = audio.sum(axis=0)
        for index in range(1, samples // GRID_SAMPLES - 1):  # full frames between the fades
            spectrum = np.abs(np.fft.rfft(mono[index * GRID_SAMPLES : (index + 1) * GRID_SAMPLES])) ** 2
            k = int(np.argmax(spectrum))
            assert k == round(frequencies[index] / step) and k * step == pytest.approx(frequencies[index])
            assert spectrum[k] > 0.999 * spectrum.sum(), (index, k)
        scores = score_clip(audio, SR, chirp)
        assert scores["type_correct"] and scores["side_correct"] and scores["duration_ok"], scores
    # Tones, chords and noise are not affected; the captions keep the nominal tempo and sweep.
    for attributes in (c for c in _ground_truth_cases() if c["type"] not in ("drums", "chirp")):
        np.testing.assert_array_equal(
            synthesize(attributes, np.random.default_rng(1), timing="grid"),
            synthesize(attributes, np.random.default_rng(1)),
        )
    assert [e["text"] for e in synthetic_examples(8, seed=2, timing="grid", with_audio=False)] == [
        e["text"] for e in synthetic_examples(8, seed=2, with_audio=False)
    ]
    with pytest.raises(ValueError, match="`timing` must be one of"):
        synthesize(_ground_truth_cases()[0], np.random.default_rng(0), timing="swing")
    with pytest.raises(ValueError, match="`timing` must be one of"):
        write_synthetic_dataset(str(tmp_path / "never-written"), 1, timing="swing")
    assert not (tmp_path / "never-written").exists(), "a bad `timing` must fail before anything is written"
    with pytest.raises(ValueError, match="`bpm` must be positive"):
        grid_tempo(0)
    script = _load_script("evaluate")
    assert script.parse_args(["--timing", "grid"]).timing == "grid"
    assert _load_script("synthetic_sounds").parse_args(["--output_dir", "x", "--timing", "grid"]).timing == "grid"


def test_type_weights_change_the_mix_of_sound_types_and_nothing_else(tmp_path):
    weights = {"drums": 0.35, "chirp": 0.35, "tone": 0.15, "chord": 0.075, "noise": 0.075}
    default = synthetic_examples(600, seed=3, with_audio=False)
    weighted = synthetic_examples(600, seed=3, with_audio=False, type_weights=weights)
    # The mix follows the weights (binomial standard deviation about 2 percentage points at 600 clips).
    for examples, expected in ((default, DEFAULT_TYPE_WEIGHTS), (weighted, weights)):
        for kind in SOUND_TYPES:
            share = np.mean([e["attributes"]["type"] == kind for e in examples])
            assert abs(share - expected[kind]) < 0.06, (kind, share, expected[kind])
    # A partial dict overrides only its entries; weight 0 never draws that type.
    only = synthetic_examples(200, seed=3, with_audio=False, type_weights={"tone": 0, "chord": 0, "noise": 0})
    assert {e["attributes"]["type"] for e in only} == {"drums", "chirp"}
    # Clips of one type are drawn from the same train combinations as without weights (nothing held out leaks in).
    train = split_combinations("train")
    assert all(combination_key(e["attributes"]) in train[e["attributes"]["type"]] for e in weighted)
    # Explicitly giving the default weights reproduces the default set byte for byte.
    first = write_synthetic_dataset(str(tmp_path / "a"), 4, seed=5)
    second = write_synthetic_dataset(str(tmp_path / "b"), 4, seed=5, type_weights=dict(DEFAULT_TYPE_WEIGHTS))
    assert first == second
    names = sorted(os.listdir(tmp_path / "a"))
    match, mismatch, errors = filecmp.cmpfiles(tmp_path / "a", tmp_path / "b", names, shallow=False)
    assert match == names, (mismatch, errors)


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"drum": 1.0}, "unknown sound type 'drum'"),
        ({"drums": -1.0}, r"type_weights\['drums'\]` must be a finite number >= 0, got -1.0"),
        ({"drums": float("nan")}, r"type_weights\['drums'\]` must be a finite number"),
        ({"drums": True}, r"type_weights\['drums'\]` must be a finite number"),
        (dict.fromkeys(SOUND_TYPES, 0.0), "every sound type weight 0"),
    ],
)
def test_bad_type_weights_raise_before_anything_is_written(tmp_path, bad, message):
    with pytest.raises(ValueError, match=message):
        type_weights_array(bad)
    with pytest.raises(ValueError, match=message):
        write_synthetic_dataset(str(tmp_path / "out"), 2, type_weights=bad)
    assert not (tmp_path / "out").exists()


def test_synthetic_sounds_cli_type_weights(tmp_path, capsys):
    script = _load_script("synthetic_sounds")
    args = script.parse_args(
        [
            "--output_dir",
            str(tmp_path / "set"),
            "--num_examples",
            "30",
            "--type_weights",
            "drums=1",
            "chirp=0.0",
            "tone=0",
            "chord=0",
            "noise=0",
        ]
    )
    assert args.type_weights == {"drums": 1.0, "chirp": 0.0, "tone": 0.0, "chord": 0.0, "noise": 0.0}
    rows = script.main(args)
    assert {row["type"] for row in rows} == {"drums"}
    for bad, named in (
        (["drums"], "'drums'"),
        (["drums=fast"], "'drums=fast'"),
        (["snare=1"], "'snare'"),
        (["drums=-2"], "-2.0"),
    ):
        with pytest.raises(SystemExit):
            script.parse_args(["--output_dir", str(tmp_path / "bad"), "--type_weights", *bad])
        error = capsys.readouterr().err
        assert "type_weights" in error and named in error, error
    assert not (tmp_path / "bad").exists()
