"""A synthetic captioned sound set for training and evaluating tiny text-to-audio models, generated from a seed.

Every clip is 44.1 kHz stereo, 1 to 12 whole seconds long, and is one of five sound types:

- `tone`: a band-limited sine, square or sawtooth oscillator at a note (`c3` ... `b5`, natural notes);
- `chord`: a major or minor triad in root position on one of those notes, played with one of the three waveforms;
- `noise`: a burst of white noise;
- `drums`: a drum pattern (kick on beats 1 and 3, snare on 2 and 4, a hi-hat on every beat) at 80 to 140 BPM;
- `chirp`: an exponential sine sweep rising or falling two octaves.

Each clip also has a stereo position (`left`, `centre`, `right`), a loudness (`level="peak"`, the default: `quiet` peak
0.1, `loud` peak 0.8; `level="rms"`: the louder channel's RMS over the sound at -26 or -16 dBFS, the peak kept below
0.99, so that every sound type of a loudness has about the same energy) and may stop before its end
(`sound_end_seconds` < `duration`, then digital silence); the caption then says when it stops.
With `tuning="grid"` every tone and chord oscillator is tuned to the nearest multiple of `sample_rate / 4096` Hz
([`grid_frequency`]; at most 0.55 semitones from equal temperament over c3 ... f#6, 0.2 on average), so that with
`phase="zero"` a steady sound is the same in every 4096-sample frame; captions keep the nominal pitch. With
`timing="grid"` a drum pattern's two-beat bar lasts the whole number of 4096-sample frames nearest to the captioned
tempo's ([`grid_tempo`]; at most 2.6 % off over the set's tempos), so that the pattern repeats exactly every bar in the
latent frames, and a chirp is a glissando that holds one note per 4096-sample frame ([`grid_chirp_frequencies`]: the
equal-tempered note nearest to the exponential sweep at the frame's centre, grid-tuned, so that each frame is a steady
sine); captions keep the nominal tempo and sweep.
Captions come from a small grammar with synonyms and varied clause order and use only lower-case words, digits and
spaces (`"a loud sawtooth wave at a4 panned left"`, `"drum loop at 120 bpm in the centre that stops after 3
seconds"`).

The held-out split ([`heldout_combinations`]) is a fixed set of attribute combinations (for a tone, its waveform, note
and side; see [`combination_key`]) that never occurs in the train split, while every single attribute value still
does. It depends only on `split_seed`, so train and held-out sets generated with any seeds agree.

Example `index` of a split is generated from `numpy.random.default_rng([seed, split code, index])` alone, so a clip is
the same whatever else is generated, and the same seed gives the same bytes.
"""

import json
import math
import numbers
import os
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import soundfile as sf


SAMPLE_RATE = 44100
NOTE_NAMES = ("c", "d", "e", "f", "g", "a", "b")
_NOTE_SEMITONES = {"c": -9, "d": -7, "e": -5, "f": -4, "g": -2, "a": 0, "b": 2}
NOTES = tuple(f"{name}{octave}" for octave in (3, 4, 5) for name in NOTE_NAMES)
WAVEFORMS = ("sine", "square", "sawtooth")
SOUND_TYPES = ("tone", "chord", "noise", "drums", "chirp")
SIDES = ("left", "centre", "right")
LOUDNESS = ("quiet", "loud")
TEMPOS = (80, 90, 100, 110, 120, 130, 140)
CHORD_QUALITIES = ("major", "minor")
CHIRP_DIRECTIONS = ("rising", "falling")
# Start frequencies (Hz) of the two-octave sweeps: rising sweeps go up to 4x, falling ones down to 1/4.
CHIRP_STARTS = {"rising": (100, 150, 200, 300, 400), "falling": (400, 600, 800, 1200, 1600)}
SPLITS = ("train", "heldout")
PHASES = ("random", "zero")
LEVELS = ("peak", "rms")
TUNINGS = ("equal", "grid")
TIMINGS = ("exact", "grid")
# `tuning="grid"`: oscillator frequencies are whole multiples of `sample_rate / GRID_SAMPLES` (10.77 Hz at 44.1 kHz),
# so that a steady tone or chord repeats exactly every `GRID_SAMPLES` samples, a latent frame of the released SAMEs.
GRID_SAMPLES = 4096
ATTRIBUTE_NAMES = (
    "type",
    "waveform",
    "note",
    "pitch_hz",
    "chord",
    "direction",
    "pitch_end_hz",
    "bpm",
    "side",
    "loudness",
    "sound_end_seconds",
    "duration",
    "seconds_total",
)

DEFAULT_TYPE_WEIGHTS = {"tone": 0.3, "chord": 0.15, "noise": 0.15, "drums": 0.2, "chirp": 0.2}
_PEAK = {"quiet": 0.1, "loud": 0.8}
# `level="rms"`: the louder channel's RMS over the sound, in dBFS, and the highest peak it may reach.
RMS_DBFS = {"quiet": -26.0, "loud": -16.0}
_MAX_PEAK = 0.99
# Gain of the far channel for a sound on one side (-12 dB).
_FAR_GAIN = 0.25
_FADE_IN_SECONDS = 0.005
_FADE_OUT_SECONDS = 0.01
_WAVETABLE_SIZE = 4096
_MIN_DRUM_SECONDS = 3

_WAVEFORM_WORDS = {"sine": ("sine", "pure sine"), "square": ("square",), "sawtooth": ("sawtooth", "saw")}
_TONE_NOUNS = ("wave", "tone", "oscillator", "synth tone")
_LOUDNESS_WORDS = {"quiet": ("quiet", "soft", "faint", "gentle"), "loud": ("loud", "strong", "powerful", "intense")}
_SIDE_PHRASES = {
    "left": ("on the left", "panned left", "in the left channel", "panned hard left"),
    "right": ("on the right", "panned right", "in the right channel", "panned hard right"),
    "centre": ("in the centre", "in the center", "centered", "in the middle"),
}
_DIRECTION_WORDS = {"rising": ("rising", "upward", "ascending"), "falling": ("falling", "downward", "descending")}


def note_to_hz(note: str) -> float:
    """Equal-tempered frequency of a natural note name such as `"a4"` (440 Hz) or `"c3"`."""
    if len(note) < 2 or note[0] not in _NOTE_SEMITONES or not note[1:].lstrip("-").isdigit():
        raise ValueError(f"`note` must be a natural note name with an octave such as 'a4' or 'c3', got {note!r}.")
    semitones = _NOTE_SEMITONES[note[0]] + 12 * (int(note[1:]) - 4)
    return 440.0 * 2.0 ** (semitones / 12)


def grid_frequency(frequency_hz: float, sample_rate: int = SAMPLE_RATE) -> float:
    """The multiple of `sample_rate / GRID_SAMPLES` nearest to `frequency_hz` (at least one step)."""
    step = sample_rate / GRID_SAMPLES
    return max(1, round(frequency_hz / step)) * step


def grid_tempo(bpm: float, sample_rate: int = SAMPLE_RATE) -> float:
    """
    The tempo (BPM) whose two-beat bar lasts the whole number of `GRID_SAMPLES`-sample frames nearest to that of
    `bpm` (at least one frame): the tempo of a `timing="grid"` drum pattern.
    """
    if not bpm > 0:
        raise ValueError(f"`bpm` must be positive, got {bpm}.")
    bar_frames = max(1, round(2 * 60.0 / bpm * sample_rate / GRID_SAMPLES))
    return 2 * 60.0 * sample_rate / (bar_frames * GRID_SAMPLES)


def grid_chirp_frequencies(
    start_hz: float, end_hz: float, num_samples: int, sample_rate: int = SAMPLE_RATE
) -> np.ndarray:
    """
    The frequencies (Hz) of a `timing="grid"` chirp of `num_samples` samples, one per `GRID_SAMPLES`-sample frame:
    the equal-tempered note (A4 = 440 Hz) nearest to the exponential sweep from `start_hz` to `end_hz` at the frame's
    centre, moved to the nearest multiple of `sample_rate / GRID_SAMPLES` ([`grid_frequency`]).
    """
    if not (start_hz > 0 and end_hz > 0):
        raise ValueError(f"`start_hz` and `end_hz` must be positive, got {start_hz} and {end_hz}.")
    if num_samples < 1:
        raise ValueError(f"`num_samples` must be at least 1, got {num_samples}.")
    num_frames = math.ceil(num_samples / GRID_SAMPLES)
    centres = np.minimum((np.arange(num_frames) + 0.5) * GRID_SAMPLES, num_samples) / num_samples
    sweep = start_hz * (end_hz / start_hz) ** centres
    notes = 440.0 * 2.0 ** (np.round(12 * np.log2(sweep / 440.0)) / 12)
    return np.array([grid_frequency(f, sample_rate) for f in notes])


def chord_frequencies(root_hz: float, quality: str) -> Tuple[float, float, float]:
    """Root, third and fifth (equal temperament) of a `"major"` or `"minor"` triad."""
    if quality not in CHORD_QUALITIES:
        raise ValueError(f"`quality` must be one of {CHORD_QUALITIES}, got {quality!r}.")
    third = 4 if quality == "major" else 3
    return root_hz, root_hz * 2.0 ** (third / 12), root_hz * 2.0 ** (7 / 12)


def harmonic_amplitudes(waveform: str, num_harmonics: int) -> np.ndarray:
    """Fourier amplitudes of harmonics 1..`num_harmonics` (relative to the fundamental) of a waveform."""
    k = np.arange(1, num_harmonics + 1, dtype=np.float64)
    if waveform == "sine":
        return (k == 1).astype(np.float64)
    if waveform == "square":
        return np.where(k % 2 == 1, 1.0 / k, 0.0)
    if waveform == "sawtooth":
        return 1.0 / k
    raise ValueError(f"`waveform` must be one of {WAVEFORMS}, got {waveform!r}.")


# ---------------------------------------------------------------------------------------------------- attributes


def combination_key(attributes: Dict) -> Tuple:
    """
    The attribute combination that decides the split of a clip: `(type, waveform, note, side)` for tones,
    `(type, note, chord, side)` for chords, `(type, side, loudness)` for noise, `(type, bpm, side)` for drums and
    `(type, direction, pitch_hz, side)` for chirps.
    """
    kind = attributes["type"]
    if kind == "tone":
        return (kind, attributes["waveform"], attributes["note"], attributes["side"])
    if kind == "chord":
        return (kind, attributes["note"], attributes["chord"], attributes["side"])
    if kind == "noise":
        return (kind, attributes["side"], attributes["loudness"])
    if kind == "drums":
        return (kind, attributes["bpm"], attributes["side"])
    if kind == "chirp":
        return (kind, attributes["direction"], attributes["pitch_hz"], attributes["side"])
    raise ValueError(f"`attributes['type']` must be one of {SOUND_TYPES}, got {kind!r}.")


def _all_combinations(kind: str) -> List[Tuple]:
    if kind == "tone":
        return [(kind, w, n, s) for w in WAVEFORMS for n in NOTES for s in SIDES]
    if kind == "chord":
        return [(kind, n, q, s) for n in NOTES for q in CHORD_QUALITIES for s in SIDES]
    if kind == "noise":
        return [(kind, s, v) for s in SIDES for v in LOUDNESS]
    if kind == "drums":
        return [(kind, b, s) for b in TEMPOS for s in SIDES]
    return [(kind, d, float(f), s) for d in CHIRP_DIRECTIONS for f in CHIRP_STARTS[d] for s in SIDES]


def heldout_combinations(split_seed: int = 0, heldout_fraction: float = 0.15) -> Dict[str, List[Tuple]]:
    """
    The attribute combinations ([`combination_key`]) of the held-out split, per sound type: about `heldout_fraction`
    of each type's combinations (at least one), drawn with `split_seed`, skipping any whose removal would leave an
    attribute value with no train combination. Every other combination belongs to the train split.
    """
    if not 0.0 < heldout_fraction < 1.0:
        raise ValueError(f"`heldout_fraction` must be in (0, 1), got {heldout_fraction}.")
    heldout = {}
    for type_index, kind in enumerate(SOUND_TYPES):
        combinations = _all_combinations(kind)
        target = max(1, round(heldout_fraction * len(combinations)))
        order = np.random.default_rng([split_seed, type_index]).permutation(len(combinations))
        train = set(combinations)
        chosen = []
        for index in order:
            if len(chosen) == target:
                break
            candidate = combinations[index]
            remaining = train - {candidate}
            # Keep every single attribute value (position p of the key) in at least one train combination.
            if all(any(other[p] == candidate[p] for other in remaining) for p in range(1, len(candidate))):
                chosen.append(candidate)
                train = remaining
        heldout[kind] = sorted(chosen, key=repr)
    return heldout


def split_combinations(split: str, split_seed: int = 0, heldout_fraction: float = 0.15) -> Dict[str, List[Tuple]]:
    """The attribute combinations of `split` (`"train"` or `"heldout"`), per sound type."""
    if split not in SPLITS:
        raise ValueError(f"`split` must be one of {SPLITS}, got {split!r}.")
    heldout = heldout_combinations(split_seed, heldout_fraction)
    if split == "heldout":
        return heldout
    return {kind: [c for c in _all_combinations(kind) if c not in set(heldout[kind])] for kind in SOUND_TYPES}


def type_weights_array(type_weights: Optional[Dict[str, float]] = None) -> np.ndarray:
    """
    The relative frequencies of [`SOUND_TYPES`] (in that order) as an array: [`DEFAULT_TYPE_WEIGHTS`] with the entries
    of `type_weights` in place of theirs. Raises `ValueError` on an unknown type, a negative or non-finite weight, or
    all-zero weights.
    """
    weights = dict(DEFAULT_TYPE_WEIGHTS)
    for kind, weight in (type_weights or {}).items():
        if kind not in SOUND_TYPES:
            raise ValueError(
                f"`type_weights` has an unknown sound type {kind!r} (weight {weight!r}); use one of {SOUND_TYPES}."
            )
        if isinstance(weight, bool) or not (
            isinstance(weight, numbers.Real) and math.isfinite(weight) and weight >= 0
        ):
            raise ValueError(
                f"`type_weights[{kind!r}]` must be a finite number >= 0, got {weight!r}; give a relative frequency."
            )
        weights[kind] = float(weight)
    array = np.array([weights[k] for k in SOUND_TYPES], dtype=np.float64)
    if array.sum() <= 0:
        raise ValueError(f"`type_weights` gives every sound type weight 0 ({weights}); give one a positive weight.")
    return array


def parse_type_weights(entries: Optional[Sequence[str]]) -> Dict[str, float]:
    """
    `["drums=0.35", "chirp=0.35"]` (the `--type_weights` / `TYPE_WEIGHTS` form) -> `{"drums": 0.35, "chirp": 0.35}`,
    checked with [`type_weights_array`]. Raises `ValueError` naming an entry that is not `TYPE=WEIGHT`.
    """
    weights = {}
    for entry in entries or []:
        kind, sep, number = entry.partition("=")
        try:
            weight = float(number)
        except ValueError:
            weight = None
        if not sep or weight is None:
            raise ValueError(
                f"`type_weights` entry {entry!r} is not TYPE=WEIGHT; write e.g. drums=0.35 (a type and a number)."
            )
        weights[kind] = weight
    type_weights_array(weights)
    return weights


def sample_attributes(
    rng: np.random.Generator, combinations: Dict[str, List[Tuple]], type_weights: Optional[Dict[str, float]] = None
) -> Dict:
    """
    Draws the attributes of one clip whose [`combination_key`] is one of `combinations` (from
    [`split_combinations`]). Missing attributes are `None`; `duration` and `sound_end_seconds` are whole seconds.
    `type_weights` (sound type -> relative frequency) overrides entries of [`DEFAULT_TYPE_WEIGHTS`]; the draws use the
    same random numbers whatever the weights, so only the type drawn (and what follows from it) changes.
    """
    kinds = list(SOUND_TYPES)
    weights = type_weights_array(type_weights)
    kind = kinds[rng.choice(len(kinds), p=weights / weights.sum())]
    options = combinations[kind]
    key = options[rng.integers(len(options))]
    attributes = dict.fromkeys(ATTRIBUTE_NAMES)
    attributes["type"] = kind
    attributes["loudness"] = LOUDNESS[rng.integers(len(LOUDNESS))]
    if kind == "tone":
        _, attributes["waveform"], attributes["note"], attributes["side"] = key
    elif kind == "chord":
        _, attributes["note"], attributes["chord"], attributes["side"] = key
        attributes["waveform"] = WAVEFORMS[rng.integers(len(WAVEFORMS))]
    elif kind == "noise":
        _, attributes["side"], attributes["loudness"] = key
    elif kind == "drums":
        _, attributes["bpm"], attributes["side"] = key
    else:
        _, attributes["direction"], start, attributes["side"] = key
        attributes["waveform"] = "sine"
        attributes["pitch_hz"] = float(start)
        attributes["pitch_end_hz"] = float(start * 4 if attributes["direction"] == "rising" else start / 4)
    if attributes["note"] is not None:
        attributes["pitch_hz"] = note_to_hz(attributes["note"])

    min_seconds = _MIN_DRUM_SECONDS if kind == "drums" else 1
    duration = int(rng.integers(min_seconds, 13))
    sound_end = duration
    if duration > min_seconds and rng.random() < 0.3:
        sound_end = int(rng.integers(min_seconds, duration))
    attributes["duration"] = float(duration)
    attributes["seconds_total"] = duration
    attributes["sound_end_seconds"] = float(sound_end)
    return attributes


# ---------------------------------------------------------------------------------------------------- captions


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[rng.integers(len(options))]


def _with_article(words: str) -> str:
    return ("an " if words[0] in "aeiou" else "a ") + words


def _pitch_phrase(attributes: Dict, rng: np.random.Generator) -> str:
    note, hz = attributes["note"], int(round(attributes["pitch_hz"]))
    return _pick(rng, (f"at {note}", f"playing {note}", f"on the note {note}", f"at {hz} hz", f"of {hz} hz"))


def make_caption(attributes: Dict, rng: np.random.Generator) -> str:
    """A caption of a clip from the grammar: lower-case words, digits and single spaces only."""
    kind = attributes["type"]
    loud = _pick(rng, _LOUDNESS_WORDS[attributes["loudness"]])
    side = _pick(rng, _SIDE_PHRASES[attributes["side"]])
    if kind == "tone":
        noun = f"{_pick(rng, _WAVEFORM_WORDS[attributes['waveform']])} {_pick(rng, _TONE_NOUNS)}"
        pitch = _pitch_phrase(attributes, rng)
        body = _pick(rng, (f"{_with_article(loud + ' ' + noun)} {pitch}", f"{noun} {pitch} {loud}"))
    elif kind == "chord":
        chord = f"{attributes['note']} {attributes['chord']} chord"
        wave = _pick(rng, _WAVEFORM_WORDS[attributes["waveform"]])
        body = _pick(
            rng,
            (
                f"{_with_article(loud + ' ' + chord)} of {wave} waves",
                f"{_with_article(loud + ' ' + wave + ' ' + chord)}",
                f"{chord} played with {wave} waves {loud}",
            ),
        )
    elif kind == "noise":
        body = _pick(
            rng,
            (
                f"{_with_article(loud + ' burst of white noise')}",
                f"{_with_article(loud + ' noise burst')}",
                f"white noise {loud}",
                f"{loud} hiss of noise",
            ),
        )
    elif kind == "drums":
        bpm = attributes["bpm"]
        body = _pick(
            rng,
            (
                f"{_with_article(loud + ' drum pattern')} at {bpm} bpm",
                f"{bpm} bpm {loud} drum beat",
                f"{loud} drums playing at {bpm} beats per minute",
                f"{_with_article(loud + ' drum loop')} at a tempo of {bpm} bpm",
            ),
        )
    elif kind == "chirp":
        direction = _pick(rng, _DIRECTION_WORDS[attributes["direction"]])
        start, end = int(attributes["pitch_hz"]), int(attributes["pitch_end_hz"])
        body = _pick(
            rng,
            (
                f"{_with_article(loud + ' ' + direction + ' chirp')} from {start} hz to {end} hz",
                f"{_with_article(loud + ' ' + direction + ' sine sweep')}",
                f"{_with_article(direction + ' ' + loud + ' chirp')}",
                f"{loud} sine sweep {direction} from {start} hz to {end} hz",
            ),
        )
    else:
        raise ValueError(f"`attributes['type']` must be one of {SOUND_TYPES}, got {kind!r}.")
    caption = _pick(rng, (f"{body} {side}", f"{side} {body}")) if rng.random() < 0.3 else f"{body} {side}"
    sound_end, duration = attributes["sound_end_seconds"], attributes["duration"]
    if sound_end < duration:
        n = int(sound_end)
        unit = "second" if n == 1 else "seconds"
        caption += " " + _pick(
            rng,
            (
                f"that stops after {n} {unit}",
                f"then silence after {n} {unit}",
                f"for {n} {unit} then silence",
                f"ending at {n} {unit} followed by silence",
            ),
        )
    return " ".join(caption.split())


# ---------------------------------------------------------------------------------------------------- synthesis


def _oscillator(phase_cycles: np.ndarray, waveform: str, max_frequency: float, sample_rate: int) -> np.ndarray:
    """A band-limited oscillator: a wavetable of the harmonics below 0.45 x `sample_rate` (and 18 kHz)."""
    num_harmonics = max(1, int(min(18000.0, 0.45 * sample_rate) // max_frequency))
    amplitudes = harmonic_amplitudes(waveform, num_harmonics)
    grid = np.arange(_WAVETABLE_SIZE + 1) / _WAVETABLE_SIZE
    table = np.zeros(_WAVETABLE_SIZE + 1)
    for k, amplitude in enumerate(amplitudes, start=1):
        if amplitude:
            table += amplitude * np.sin(2 * np.pi * k * grid)
    position = np.mod(phase_cycles, 1.0) * _WAVETABLE_SIZE
    index = position.astype(np.int64)
    frac = position - index
    return table[index] * (1 - frac) + table[index + 1] * frac


def _drums(num_samples: int, bpm: float, rng: np.random.Generator, sample_rate: int) -> np.ndarray:
    out = np.zeros(num_samples)
    beat = 60.0 / bpm
    hit_samples = int(1.2 * sample_rate)
    t = np.arange(hit_samples) / sample_rate
    # Kick: a sine gliding from 150 Hz to 50 Hz; snare: tone plus noise; hat: differenced (high-passed) noise.
    kick_phase = 50 * t + 100 * 0.03 * (1 - np.exp(-t / 0.03))
    kick = np.sin(2 * np.pi * kick_phase) * np.exp(-t / 0.25)
    tone = 0.5 * np.sin(2 * np.pi * 190 * t) * np.exp(-t / 0.2)
    for index in range(int(math.ceil(num_samples / (beat * sample_rate)))):
        start = int(round(index * beat * sample_rate))
        if start >= num_samples:
            break
        hat_noise = np.diff(rng.standard_normal(hit_samples + 1))
        hit = 0.15 * hat_noise * np.exp(-t / 0.03)
        if index % 2 == 0:
            hit = hit + kick
        else:
            hit = hit + tone + 0.4 * rng.standard_normal(hit_samples) * np.exp(-t / 0.2)
        stop = min(num_samples, start + hit_samples)
        out[start:stop] += hit[: stop - start]
    return out


def synthesize(
    attributes: Dict,
    rng: np.random.Generator,
    sample_rate: int = SAMPLE_RATE,
    phase: str = "random",
    level: str = "peak",
    tuning: str = "equal",
    timing: str = "exact",
) -> np.ndarray:
    """
    Renders a clip from its attributes.

    Args:
        attributes (`dict`): from [`sample_attributes`].
        rng (`numpy.random.Generator`): source of the noise and of the oscillator start phases.
        sample_rate (`int`, defaults to 44100): output rate.
        phase (`str`, defaults to `"random"`): start phase of the oscillators (tones, chords, chirps): `"random"`
            (drawn from `rng`) or `"zero"` (every oscillator starts at phase 0, so a clip is a deterministic function
            of its attributes except for the noise of noise bursts and drums).
        level (`str`, defaults to `"peak"`): what `loudness` sets: `"peak"` (peak 0.1 or 0.8) or `"rms"` (the louder
            channel's RMS over the sound at [`RMS_DBFS`], lowered where the peak would pass 0.99: loud drums and noise
            bursts).
        tuning (`str`, defaults to `"equal"`): oscillator frequencies of tones and chords: `"equal"` (equal
            temperament, A4 = 440 Hz) or `"grid"` (each one moved to the nearest multiple of `sample_rate / 4096` Hz,
            [`grid_frequency`]; the attributes and captions keep the nominal pitch).
        timing (`str`, defaults to `"exact"`): time structure of drum patterns and chirps: `"exact"` (drums at the
            `bpm` attribute, chirps a continuous exponential sweep) or `"grid"` (drums at [`grid_tempo`]: a two-beat bar
            of whole 4096-sample frames; chirps a glissando of one grid-tuned note per 4096-sample frame,
            [`grid_chirp_frequencies`]; the attributes and captions keep the nominal tempo and sweep).

    Returns:
        `np.ndarray` of shape `(2, duration x sample_rate)`, float32: the sound with a 5 ms fade-in, a 10 ms fade-out
        ending at `sound_end_seconds`, digital silence after it, panned to `side` (far channel at -12 dB) and scaled to
        the level of its `loudness`.
    """
    if phase not in PHASES:
        raise ValueError(f"`phase` must be one of {PHASES}, got {phase!r}.")
    if level not in LEVELS:
        raise ValueError(f"`level` must be one of {LEVELS}, got {level!r}.")
    if tuning not in TUNINGS:
        raise ValueError(f"`tuning` must be one of {TUNINGS}, got {tuning!r}.")
    if timing not in TIMINGS:
        raise ValueError(f"`timing` must be one of {TIMINGS}, got {timing!r}.")

    def start_phase():
        return rng.random() if phase == "random" else 0.0

    def tuned(frequency):
        return grid_frequency(frequency, sample_rate) if tuning == "grid" else frequency

    num_samples = int(round(attributes["duration"] * sample_rate))
    sound_samples = min(num_samples, int(round(attributes["sound_end_seconds"] * sample_rate)))
    t = np.arange(sound_samples) / sample_rate
    kind = attributes["type"]
    if kind == "tone":
        f0 = tuned(attributes["pitch_hz"])
        mono = _oscillator(f0 * t + start_phase(), attributes["waveform"], f0, sample_rate)
    elif kind == "chord":
        mono = np.zeros(sound_samples)
        for f in map(tuned, chord_frequencies(attributes["pitch_hz"], attributes["chord"])):
            mono += _oscillator(f * t + start_phase(), attributes["waveform"], f, sample_rate)
    elif kind == "noise":
        mono = rng.standard_normal(sound_samples)
    elif kind == "drums":
        bpm = grid_tempo(attributes["bpm"], sample_rate) if timing == "grid" else attributes["bpm"]
        mono = _drums(sound_samples, bpm, rng, sample_rate)
    elif kind == "chirp" and timing == "grid":
        frequencies = grid_chirp_frequencies(
            attributes["pitch_hz"], attributes["pitch_end_hz"], sound_samples, sample_rate
        )
        # Whole cycles per frame: every frame starts at the same phase, so the steps join without a jump.
        cycles = np.repeat(frequencies, GRID_SAMPLES)[:sound_samples] / sample_rate
        mono = np.sin(2 * np.pi * (np.cumsum(cycles) - cycles + start_phase()))
    elif kind == "chirp":
        f_start, f_end = attributes["pitch_hz"], attributes["pitch_end_hz"]
        length = max(sound_samples / sample_rate, 1e-3)
        rate = math.log(f_end / f_start) / length
        # Exponential sweep: f(t) = f_start exp(rate t), phase = integral of f.
        mono = np.sin(2 * np.pi * (f_start * np.expm1(rate * t) / rate + start_phase()))
    else:
        raise ValueError(f"`attributes['type']` must be one of {SOUND_TYPES}, got {kind!r}.")

    envelope = np.ones(sound_samples)
    fade_in = min(sound_samples, int(_FADE_IN_SECONDS * sample_rate))
    fade_out = min(sound_samples, int(_FADE_OUT_SECONDS * sample_rate))
    envelope[:fade_in] *= 0.5 - 0.5 * np.cos(np.pi * np.arange(fade_in) / fade_in)
    envelope[sound_samples - fade_out :] *= 0.5 + 0.5 * np.cos(np.pi * (np.arange(fade_out) + 1) / fade_out)
    mono = mono * envelope

    gains = {"left": (1.0, _FAR_GAIN), "right": (_FAR_GAIN, 1.0), "centre": (1.0, 1.0)}[attributes["side"]]
    audio = np.zeros((2, num_samples))
    audio[0, :sound_samples] = gains[0] * mono
    audio[1, :sound_samples] = gains[1] * mono
    peak = np.abs(audio).max()
    if peak > 0 and level == "peak":
        audio *= _PEAK[attributes["loudness"]] / peak
    elif peak > 0:
        rms = np.sqrt(np.mean(audio[:, :sound_samples] ** 2, axis=1)).max()
        audio *= min(10 ** (RMS_DBFS[attributes["loudness"]] / 20) / rms, _MAX_PEAK / peak)
    return audio.astype(np.float32)


# ---------------------------------------------------------------------------------------------------- data set


def synthetic_example(
    index: int,
    seed: int = 0,
    split: str = "train",
    split_seed: int = 0,
    sample_rate: int = SAMPLE_RATE,
    with_audio: bool = True,
    combinations: Optional[Dict[str, List[Tuple]]] = None,
    phase: str = "random",
    level: str = "peak",
    tuning: str = "equal",
    timing: str = "exact",
    type_weights: Optional[Dict[str, float]] = None,
) -> Dict:
    """
    Example `index` of a split: `{"file_name", "text", "attributes", "audio"}` (`audio` `(2, samples)` float32, or
    `None` without `with_audio`). Attributes and caption come from `default_rng([seed, split code, index])`, audio
    randomness from `default_rng([seed, split code, index, 1])`.

    Args:
        index (`int`): the example's index.
        seed (`int`, defaults to 0): seed of the set.
        split (`str`, defaults to `"train"`): `"train"` or `"heldout"` (unseen attribute combinations).
        split_seed (`int`, defaults to 0): seed of the held-out combinations ([`heldout_combinations`]).
        sample_rate (`int`, defaults to 44100): audio rate.
        with_audio (`bool`, defaults to `True`): render the audio.
        combinations (`dict`, *optional*): precomputed [`split_combinations`] of the split (saves time in loops).
        phase (`str`, defaults to `"random"`): oscillator start phases, `"random"` or `"zero"` (see [`synthesize`]).
        level (`str`, defaults to `"peak"`): what the loudness sets, `"peak"` or `"rms"` (see [`synthesize`]).
        tuning (`str`, defaults to `"equal"`): oscillator tuning, `"equal"` or `"grid"` (see [`synthesize`]).
        timing (`str`, defaults to `"exact"`): drum tempo and chirp sweep, `"exact"` or `"grid"` (see [`synthesize`]).
        type_weights (`dict`, *optional*): relative frequencies of the sound types (see [`sample_attributes`]).
    """
    if split not in SPLITS:
        raise ValueError(f"`split` must be one of {SPLITS}, got {split!r}.")
    if combinations is None:
        combinations = split_combinations(split, split_seed)
    code = SPLITS.index(split)
    rng = np.random.default_rng([seed, code, index])
    attributes = sample_attributes(rng, combinations, type_weights)
    text = make_caption(attributes, rng)
    audio = (
        synthesize(
            attributes, np.random.default_rng([seed, code, index, 1]), sample_rate, phase, level, tuning, timing
        )
        if with_audio
        else None
    )
    return {"file_name": f"{split}_{index:06d}.wav", "text": text, "attributes": attributes, "audio": audio}


def synthetic_examples(
    num_examples: int,
    seed: int = 0,
    split: str = "train",
    split_seed: int = 0,
    sample_rate: int = SAMPLE_RATE,
    with_audio: bool = True,
    phase: str = "random",
    level: str = "peak",
    tuning: str = "equal",
    timing: str = "exact",
    type_weights: Optional[Dict[str, float]] = None,
) -> List[Dict]:
    """Examples `0 .. num_examples - 1` of a split (see [`synthetic_example`])."""
    if num_examples < 0:
        raise ValueError(f"`num_examples` must be non-negative, got {num_examples}.")
    type_weights_array(type_weights)
    combinations = split_combinations(split, split_seed)
    return [
        synthetic_example(
            i,
            seed,
            split,
            split_seed,
            sample_rate,
            with_audio,
            combinations,
            phase,
            level,
            tuning,
            timing,
            type_weights,
        )
        for i in range(num_examples)
    ]


def write_synthetic_dataset(
    output_dir: str,
    num_examples: int,
    seed: int = 0,
    split: str = "train",
    split_seed: int = 0,
    sample_rate: int = SAMPLE_RATE,
    subtype: str = "PCM_16",
    phase: str = "random",
    level: str = "peak",
    tuning: str = "equal",
    timing: str = "exact",
    type_weights: Optional[Dict[str, float]] = None,
) -> List[Dict]:
    """
    Writes a data set folder: `<file_name>.wav` (stereo, `subtype` `"PCM_16"` or `"FLOAT"`) with `<file_name>.txt`
    (the caption) beside each, and `metadata.jsonl` with one row per clip: `file_name`, `text` and every attribute
    (see [`ATTRIBUTE_NAMES`]). The folder reads with `CaptionedAudioDataset`. `phase` is the oscillators' start phase,
    `level` what the loudness sets, `tuning` the oscillators' tuning and `timing` the drums' tempo and the chirps' sweep
    (see [`synthesize`]); `type_weights` the sound types' relative frequencies (see [`sample_attributes`]). Returns
    the metadata rows.
    """
    if subtype not in ("PCM_16", "FLOAT"):
        raise ValueError(f"`subtype` must be 'PCM_16' or 'FLOAT', got {subtype!r}.")
    if phase not in PHASES:
        raise ValueError(f"`phase` must be one of {PHASES}, got {phase!r}.")
    if level not in LEVELS:
        raise ValueError(f"`level` must be one of {LEVELS}, got {level!r}.")
    if tuning not in TUNINGS:
        raise ValueError(f"`tuning` must be one of {TUNINGS}, got {tuning!r}.")
    if timing not in TIMINGS:
        raise ValueError(f"`timing` must be one of {TIMINGS}, got {timing!r}.")
    type_weights_array(type_weights)
    os.makedirs(output_dir, exist_ok=True)
    combinations = split_combinations(split, split_seed)
    rows = []
    for index in range(num_examples):
        example = synthetic_example(
            index, seed, split, split_seed, sample_rate, True, combinations, phase, level, tuning, timing, type_weights
        )
        path = os.path.join(output_dir, example["file_name"])
        sf.write(path, example["audio"].T, sample_rate, subtype=subtype)
        with open(os.path.splitext(path)[0] + ".txt", "w", encoding="utf-8") as f:
            f.write(example["text"] + "\n")
        rows.append({"file_name": example["file_name"], "text": example["text"], **example["attributes"]})
    with open(os.path.join(output_dir, "metadata.jsonl"), "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return rows


def read_metadata(dataset_dir: str) -> List[Dict]:
    """The rows of a data set folder's `metadata.jsonl` (written by [`write_synthetic_dataset`])."""
    path = os.path.join(dataset_dir, "metadata.jsonl")
    if not os.path.isfile(path):
        raise ValueError(
            f"`dataset_dir` {dataset_dir!r} has no metadata.jsonl; write it with write_synthetic_dataset."
        )
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def caption_vocabulary(dataset: Union[str, Iterable[Union[str, Dict]]]) -> List[str]:
    """
    The sorted list of distinct words of the captions of a data set: a folder with `metadata.jsonl`, or an iterable
    of captions or of examples / metadata rows (dicts with a `text` key).
    """
    if isinstance(dataset, str):
        dataset = read_metadata(dataset)
    words = set()
    for item in dataset:
        text = item["text"] if isinstance(item, dict) else item
        words.update(text.split())
    return sorted(words)
