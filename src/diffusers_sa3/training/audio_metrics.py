"""Plain-DSP measurements of generated audio against the attributes of the synthetic sound set (numpy / scipy).

They score a text-to-audio model on prompts from `diffusers_sa3.training.synthetic_sounds`, with no learned model:

- sound type ([`classify_sound`]): silence, drums (several periodic onsets), noise (spectral flatness), chirp (pitch
  trajectory slope), chord (spectral peaks that are not harmonics of the lowest one), else a tone whose waveform is
  the nearest harmonic template (sine: no harmonics; square: odd harmonics at 1/n; sawtooth: all harmonics at 1/n);
- pitch ([`estimate_f0`], autocorrelation; chord roots from the lowest spectral peak, [`spectral_peaks`]);
- tempo ([`estimate_tempo`], autocorrelation of an onset envelope);
- stereo side ([`stereo_side`], left/right energy ratio beyond +-3 dB);
- end of the sound ([`sounding_region`], last frame whose RMS is within 40 dB of the loudest frame);
- loudness ([`loudness_class`], 99.9th percentile of |x| against -11 dBFS; for sets written with `level="rms"`, the
  louder channel's RMS over the sound against -21 dBFS).

Audio is `(channels, samples)` (stereo, or mono as one channel) float, as `diffusers_sa3` pipelines return it.
"""

import math
from statistics import median
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from scipy.signal import find_peaks, welch

from .synthetic_sounds import LEVELS, chord_frequencies, harmonic_amplitudes


LABELS = ("sine", "square", "sawtooth", "chord", "noise", "drums", "chirp", "silence")
# Errors given to clips whose pitch or tempo could not be estimated at all (and the cap of measured errors).
MAX_PITCH_ERROR_SEMITONES = 12.0
DURATION_TOLERANCE_SECONDS = 0.5


def expected_label(attributes: Dict) -> str:
    """The label [`classify_sound`] should give a clip: its waveform for a tone, else its type."""
    return attributes["waveform"] if attributes["type"] == "tone" else attributes["type"]


def _as_channels(audio) -> np.ndarray:
    audio = np.asarray(audio, dtype=np.float64)
    if audio.ndim == 1:
        audio = audio[None]
    if audio.ndim != 2:
        raise ValueError(f"`audio` must have shape (channels, samples) or (samples,), got {audio.shape}.")
    return np.nan_to_num(audio)


def frame_rms(audio, sample_rate: int, frame_seconds: float = 0.02, hop_seconds: float = 0.01) -> np.ndarray:
    """RMS over channels of frames of `frame_seconds` every `hop_seconds`; `(num_frames,)` (at least one frame)."""
    power = np.square(_as_channels(audio)).mean(axis=0)
    frame = max(1, int(round(frame_seconds * sample_rate)))
    hop = max(1, int(round(hop_seconds * sample_rate)))
    num_frames = max(1, 1 + (len(power) - frame) // hop) if len(power) >= frame else 1
    cumulative = np.concatenate([[0.0], np.cumsum(power)])
    starts = np.arange(num_frames) * hop
    stops = np.minimum(starts + frame, len(power))
    lengths = np.maximum(stops - starts, 1)
    return np.sqrt(np.maximum(cumulative[stops] - cumulative[starts], 0.0) / lengths)


def sounding_region(
    audio, sample_rate: int, threshold_db: float = -40.0, frame_seconds: float = 0.02, hop_seconds: float = 0.01
) -> Optional[Tuple[float, float]]:
    """
    `(start, end)` in seconds of the part of a clip that sounds: from the start of the first to the end of the last
    frame whose RMS is within `threshold_db` of the loudest frame. `None` for silence (loudest frame below -100 dBFS).
    """
    rms = frame_rms(audio, sample_rate, frame_seconds, hop_seconds)
    peak = rms.max()
    if peak < 1e-5:
        return None
    above = np.flatnonzero(rms >= peak * 10 ** (threshold_db / 20))
    hop = max(1, int(round(hop_seconds * sample_rate)))
    frame = max(1, int(round(frame_seconds * sample_rate)))
    num_samples = _as_channels(audio).shape[1]
    return above[0] * hop / sample_rate, min(num_samples, above[-1] * hop + frame) / sample_rate


def stereo_balance_db(audio) -> float:
    """Left / right energy ratio in dB (positive: louder on the left); 0 for mono or silence."""
    audio = _as_channels(audio)
    if audio.shape[0] < 2:
        return 0.0
    left, right = np.square(audio[0]).sum(), np.square(audio[1]).sum()
    if left + right <= 0:
        return 0.0
    return float(10 * np.log10((left + 1e-20) / (right + 1e-20)))


def stereo_side(audio, threshold_db: float = 3.0) -> str:
    """`"left"` or `"right"` when one channel has more than `threshold_db` more energy, else `"centre"`."""
    balance = stereo_balance_db(audio)
    if balance > threshold_db:
        return "left"
    if balance < -threshold_db:
        return "right"
    return "centre"


def loudness_class(
    audio, threshold_dbfs: Optional[float] = None, level: str = "peak", sample_rate: int = 44100
) -> Tuple[str, float]:
    """
    `("loud" or "quiet", level in dBFS)` of a clip of a set written with `level` (see `synthetic_sounds.synthesize`):
    for `"peak"` the 99.9th percentile of |x| against `threshold_dbfs` (default -11), for `"rms"` the louder channel's
    RMS over the [`sounding_region`] against `threshold_dbfs` (default -21: the set's levels are -26 and -16, loud
    drums at least -19).
    """
    if level not in LEVELS:
        raise ValueError(f"`level` must be one of {LEVELS}, got {level!r}.")
    audio = _as_channels(audio)
    if level == "peak":
        value = float(np.percentile(np.abs(audio), 99.9))
        threshold_dbfs = -11.0 if threshold_dbfs is None else threshold_dbfs
    else:
        region = sounding_region(audio, sample_rate)
        value = 0.0
        if region is not None:
            sound = audio[:, int(region[0] * sample_rate) : int(math.ceil(region[1] * sample_rate))]
            value = float(np.sqrt(np.mean(sound.astype(np.float64) ** 2, axis=1)).max())
        threshold_dbfs = -21.0 if threshold_dbfs is None else threshold_dbfs
    level_db = 20 * math.log10(max(value, 1e-10))
    return ("loud" if level_db >= threshold_dbfs else "quiet"), level_db


def _parabolic(values: np.ndarray, index: int) -> Tuple[float, float]:
    """Vertex `(position, value)` of the parabola through `values[index - 1 : index + 2]`."""
    if index <= 0 or index >= len(values) - 1:
        return float(index), float(values[index])
    a, b, c = values[index - 1], values[index], values[index + 1]
    denominator = a - 2 * b + c
    if denominator == 0:
        return float(index), float(b)
    shift = 0.5 * (a - c) / denominator
    return index + shift, b - 0.25 * (a - c) * shift


def _autocorrelation(x: np.ndarray) -> np.ndarray:
    """Unbiased autocorrelation normalized to 1 at lag 0 (all zeros for a zero signal)."""
    n = len(x)
    size = 1 << int(math.ceil(math.log2(max(2 * n, 2))))
    spectrum = np.fft.rfft(x, size)
    acf = np.fft.irfft(np.abs(spectrum) ** 2, size)[:n]
    acf = acf / np.arange(n, 0, -1)
    return acf / acf[0] if acf[0] > 0 else np.zeros(n)


def _middle(x: np.ndarray, max_samples: int) -> np.ndarray:
    if len(x) <= max_samples:
        return x
    start = (len(x) - max_samples) // 2
    return x[start : start + max_samples]


def estimate_f0(
    mono: np.ndarray, sample_rate: int, min_hz: float = 40.0, max_hz: float = 2500.0, max_seconds: float = 1.0
) -> Optional[float]:
    """
    Fundamental frequency by autocorrelation of the middle `max_seconds` of a mono signal: the first local maximum
    within 90% of the highest one over lags `1 / max_hz .. 1 / min_hz`, refined by parabolic interpolation. `None`
    when the signal is not periodic (highest normalized autocorrelation below 0.3).
    """
    x = _middle(np.asarray(mono, dtype=np.float64), int(max_seconds * sample_rate))
    x = x - x.mean()
    low = max(1, int(sample_rate / max_hz))
    high = min(int(math.ceil(sample_rate / min_hz)), len(x) // 2)
    if high <= low + 2:
        return None
    acf = _autocorrelation(x)
    best = acf[low : high + 1].max()
    if best < 0.3:
        return None
    for lag in range(low + 1, high):
        if acf[lag] >= 0.9 * best and acf[lag] >= acf[lag - 1] and acf[lag] >= acf[lag + 1]:
            position, _ = _parabolic(acf, lag)
            return sample_rate / position
    return None


def magnitude_spectrum(mono: np.ndarray, sample_rate: int, max_seconds: float = 3.0) -> Tuple[np.ndarray, np.ndarray]:
    """`(frequencies, magnitudes)` of the Hann-windowed middle `max_seconds` of a signal."""
    x = _middle(np.asarray(mono, dtype=np.float64), int(max_seconds * sample_rate))
    x = x - x.mean()
    magnitudes = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return np.fft.rfftfreq(len(x), 1.0 / sample_rate), magnitudes


def spectral_peaks(
    mono: np.ndarray, sample_rate: int, threshold_db: float = -20.0, min_hz: float = 30.0
) -> List[Tuple[float, float]]:
    """`(frequency, dB relative to the strongest)` of the spectral peaks within `threshold_db` of the strongest."""
    frequencies, magnitudes = magnitude_spectrum(mono, sample_rate)
    if len(magnitudes) < 3 or magnitudes.max() <= 0:
        return []
    level = 20 * np.log10(magnitudes / magnitudes.max() + 1e-12)
    level[frequencies < min_hz] = -240.0
    resolution = frequencies[1] - frequencies[0]
    indices, _ = find_peaks(level, height=threshold_db, distance=max(1, int(8.0 / resolution)))
    peaks = []
    for index in indices:
        position, value = _parabolic(level, int(index))
        peaks.append((float(position * resolution), float(value)))
    return peaks


def harmonic_profile(mono: np.ndarray, sample_rate: int, f0: float, num_harmonics: int = 6) -> np.ndarray:
    """Amplitudes of harmonics 1..`num_harmonics` of `f0` relative to the first (peak magnitude within +-f0/4)."""
    frequencies, magnitudes = magnitude_spectrum(mono, sample_rate)
    amplitudes = np.zeros(num_harmonics)
    for k in range(1, num_harmonics + 1):
        band = np.abs(frequencies - k * f0) <= f0 / 4
        if k * f0 < 0.45 * sample_rate and band.any():
            amplitudes[k - 1] = magnitudes[band].max()
    return amplitudes / amplitudes[0] if amplitudes[0] > 0 else amplitudes


def classify_waveform(profile: np.ndarray) -> str:
    """The waveform whose harmonic amplitudes (see [`harmonic_amplitudes`]) are nearest to `profile` (L1)."""
    distances = {
        w: np.abs(profile[1:] - harmonic_amplitudes(w, len(profile))[1:]).sum() for w in ("sine", "square", "sawtooth")
    }
    return min(distances, key=distances.get)


def spectral_flatness(mono: np.ndarray, sample_rate: int, min_hz: float = 100.0, max_hz: float = 16000.0) -> float:
    """Geometric over arithmetic mean of the Welch power spectrum between `min_hz` and `max_hz` (1: white noise)."""
    x = np.asarray(mono, dtype=np.float64)
    if len(x) < 256:
        return 0.0
    frequencies, power = welch(x, sample_rate, nperseg=min(2048, len(x)))
    band = power[(frequencies >= min_hz) & (frequencies <= min(max_hz, 0.5 * sample_rate))]
    if band.size == 0 or band.mean() <= 0:
        return 0.0
    return float(np.exp(np.mean(np.log(band + 1e-30))) / band.mean())


def onset_envelope(mono: np.ndarray, sample_rate: int, hop_seconds: float = 0.005) -> np.ndarray:
    """Rise in dB of the 20 ms frame RMS over one frame length, every `hop_seconds` (floor: 60 dB below the peak)."""
    rms = frame_rms(mono, sample_rate, 0.02, hop_seconds)
    level = 20 * np.log10(np.maximum(rms, rms.max() * 1e-3 + 1e-12))
    lag = max(1, int(round(0.02 / hop_seconds)))
    rise = np.zeros_like(level)
    rise[lag:] = level[lag:] - level[:-lag]
    return np.maximum(rise, 0.0)


def onset_times(
    mono: np.ndarray, sample_rate: int, min_rise_db: float = 9.0, hop_seconds: float = 0.005
) -> np.ndarray:
    """Times (seconds) of the onsets: peaks of [`onset_envelope`] above `min_rise_db`, at least 60 ms apart."""
    envelope = onset_envelope(mono, sample_rate, hop_seconds)
    peaks, _ = find_peaks(envelope, height=min_rise_db, distance=max(1, int(0.06 / hop_seconds)))
    return peaks * hop_seconds


def estimate_tempo(
    mono: np.ndarray, sample_rate: int, min_bpm: float = 50.0, max_bpm: float = 220.0, hop_seconds: float = 0.005
) -> Tuple[Optional[float], float]:
    """
    `(bpm, strength)` from the autocorrelation of the [`onset_envelope`]: the first local maximum within 50% of the
    highest one over beat periods `60 / max_bpm .. 60 / min_bpm`, refined on the multiple of that period that is
    furthest away (still within half the signal). `strength` is the normalized autocorrelation at the beat period;
    `bpm` is `None` when there is no periodicity.
    """
    envelope = onset_envelope(mono, sample_rate, hop_seconds)
    envelope = envelope - envelope.mean()
    low = max(1, int(60.0 / max_bpm / hop_seconds))
    high = min(int(math.ceil(60.0 / min_bpm / hop_seconds)), len(envelope) // 2)
    if high <= low + 2 or not np.any(envelope):
        return None, 0.0
    acf = _autocorrelation(envelope)
    best = acf[low : high + 1].max()
    if best <= 0:
        return None, 0.0
    period = None
    for lag in range(low + 1, high):
        if acf[lag] >= 0.5 * best and acf[lag] >= acf[lag - 1] and acf[lag] >= acf[lag + 1]:
            period, strength = _parabolic(acf, lag)
            break
    if period is None:
        return None, 0.0
    multiple = max(1, int((len(envelope) // 2) / period))
    if multiple > 1:
        centre = int(round(multiple * period))
        width = max(1, int(0.1 * period))
        window = acf[max(1, centre - width) : min(len(acf) - 1, centre + width + 1)]
        index = max(1, centre - width) + int(np.argmax(window))
        position, _ = _parabolic(acf, index)
        period = position / multiple
    return 60.0 / (period * hop_seconds), float(strength)


def pitch_trajectory(
    mono: np.ndarray, sample_rate: int, frame: int = 4096, hop: int = 2048, threshold_db: float = -20.0
) -> np.ndarray:
    """Frequency of the strongest spectral peak of every frame within `threshold_db` of the loudest frame."""
    x = np.asarray(mono, dtype=np.float64)
    if len(x) < frame:
        return np.zeros(0)
    starts = np.arange(0, len(x) - frame + 1, hop)
    frames = np.stack([x[s : s + frame] for s in starts]) * np.hanning(frame)
    magnitudes = np.abs(np.fft.rfft(frames, axis=1))
    energy = np.square(frames).sum(axis=1)
    keep = energy >= energy.max() * 10 ** (threshold_db / 10) if energy.max() > 0 else np.zeros(len(starts), bool)
    frequencies = []
    for row in magnitudes[keep]:
        row = row.copy()
        row[0] = 0.0
        position, _ = _parabolic(row, int(np.argmax(row)))
        frequencies.append(position * sample_rate / frame)
    return np.asarray(frequencies)


def pitch_change_octaves(mono: np.ndarray, sample_rate: int) -> float:
    """Median log2 pitch of the last quarter minus that of the first quarter of the [`pitch_trajectory`]."""
    trajectory = pitch_trajectory(mono, sample_rate)
    trajectory = trajectory[trajectory > 20.0]
    if len(trajectory) < 4:
        return 0.0
    quarter = len(trajectory) // 4
    octaves = np.log2(trajectory)
    return float(np.median(octaves[-quarter:]) - np.median(octaves[:quarter]))


def _inharmonic(peaks: Sequence[Tuple[float, float]], tolerance: float = 0.1) -> bool:
    lowest = min(frequency for frequency, _ in peaks)
    return any(abs(f / lowest - round(f / lowest)) > tolerance for f, _ in peaks)


def classify_sound(audio, sample_rate: int) -> Dict:
    """
    Classifies a clip into one of [`LABELS`], in this order: `silence` (no frame above -100 dBFS); `drums` (at least
    3 onsets and an onset autocorrelation of at least 0.3 at the beat period); `noise` (spectral flatness >= 0.3);
    `chirp` (pitch of the strongest peak changes by at least half an octave); `chord` (a spectral peak within 20 dB
    of the strongest is not a harmonic of the lowest); else `sine`, `square` or `sawtooth` ([`classify_waveform`]).

    Returns:
        `dict` with `label`, `start_seconds`, `end_seconds` (see [`sounding_region`]), `num_onsets`, `bpm`,
        `tempo_strength`, `flatness`, `pitch_change_octaves`, `f0_hz` (tone f0 or chord root, else `None`) and
        `harmonics` (the [`harmonic_profile`] of a tone).
    """
    audio = _as_channels(audio)
    result = {
        "label": "silence",
        "start_seconds": None,
        "end_seconds": None,
        "num_onsets": 0,
        "bpm": None,
        "tempo_strength": 0.0,
        "flatness": None,
        "pitch_change_octaves": None,
        "f0_hz": None,
        "harmonics": None,
    }
    region = sounding_region(audio, sample_rate)
    if region is None:
        return result
    result["start_seconds"], result["end_seconds"] = region
    mono = audio.mean(axis=0)[int(region[0] * sample_rate) : int(math.ceil(region[1] * sample_rate))]

    result["num_onsets"] = len(onset_times(mono, sample_rate))
    result["bpm"], result["tempo_strength"] = estimate_tempo(mono, sample_rate)
    if result["num_onsets"] >= 3 and result["bpm"] is not None and result["tempo_strength"] >= 0.3:
        result["label"] = "drums"
        return result
    result["flatness"] = spectral_flatness(mono, sample_rate)
    if result["flatness"] >= 0.3:
        result["label"] = "noise"
        return result
    result["pitch_change_octaves"] = pitch_change_octaves(mono, sample_rate)
    if abs(result["pitch_change_octaves"]) >= 0.5:
        result["label"] = "chirp"
        return result
    peaks = spectral_peaks(mono, sample_rate)
    if len(peaks) >= 2 and _inharmonic(peaks):
        result["label"] = "chord"
        result["f0_hz"] = min(frequency for frequency, _ in peaks)
        return result
    f0 = estimate_f0(mono, sample_rate)
    if f0 is None and peaks:
        f0 = min(frequency for frequency, _ in peaks)
    if f0 is None:
        result["label"] = "noise"
        return result
    result["f0_hz"] = f0
    profile = harmonic_profile(mono, sample_rate, f0)
    result["harmonics"] = [float(v) for v in profile]
    result["label"] = classify_waveform(profile)
    return result


def semitone_error(estimate_hz: Optional[float], target_hz: float) -> float:
    """`12 |log2(estimate / target)|`, capped at [`MAX_PITCH_ERROR_SEMITONES`] (also the error of no estimate)."""
    if estimate_hz is None or not estimate_hz > 0:
        return MAX_PITCH_ERROR_SEMITONES
    return min(MAX_PITCH_ERROR_SEMITONES, abs(12 * math.log2(estimate_hz / target_hz)))


def score_clip(audio, sample_rate: int, attributes: Dict, level: str = "peak") -> Dict:
    """
    Measures one clip against the attributes it was asked for (a [`synthetic_sounds`] attribute dict); `level`: how the
    set's loudness was set, `"peak"` or `"rms"` ([`loudness_class`]).

    Returns:
        `dict`: `expected_label`, `label`, `type_correct`; `pitch_error_semitones` (tones: [`estimate_f0`]; chords: the
        lowest spectral peak against the root; else `None`); `bpm`, `tempo_error_bpm` (drums: absolute error, the
        target itself when no tempo is found; else `None`), `tempo_octave_error_bpm` (the same with the estimate
        halved or doubled where that is nearer: an autocorrelation locked on the two-beat bar or on the off-beats, the
        right tempo in MIR's "accuracy 2" sense); `side`, `side_correct`; `end_seconds`,
        `end_error_seconds` (against `sound_end_seconds`), `duration_ok` (within +-0.5 s); `loudness`,
        `loudness_correct`; `chirp_direction_correct` (chirps: labelled `chirp` and sweeping the asked way, up for
        `rising` and down for `falling`; the type alone does not check the direction; else `None`); and `analysis`
        (the [`classify_sound`] result).
    """
    audio = _as_channels(audio)
    analysis = classify_sound(audio, sample_rate)
    label = expected_label(attributes)
    scores = {"expected_label": label, "label": analysis["label"], "type_correct": bool(analysis["label"] == label)}

    region = (analysis["start_seconds"], analysis["end_seconds"])
    mono = audio.mean(axis=0)
    if region[0] is not None:
        mono = mono[int(region[0] * sample_rate) : int(math.ceil(region[1] * sample_rate))]
    scores["pitch_error_semitones"] = None
    if attributes["type"] == "tone":
        scores["pitch_error_semitones"] = semitone_error(estimate_f0(mono, sample_rate), attributes["pitch_hz"])
    elif attributes["type"] == "chord":
        root = attributes["pitch_hz"]
        peaks = spectral_peaks(mono, sample_rate) if region[0] is not None else []
        # The lowest peak near one of the chord's notes is the root (an octave slip still counts as an error).
        lowest = min(
            (f for f, _ in peaks if f > 0.4 * min(chord_frequencies(root, attributes["chord"]))), default=None
        )
        scores["pitch_error_semitones"] = semitone_error(lowest, root)

    scores["bpm"], scores["tempo_error_bpm"], scores["tempo_octave_error_bpm"] = None, None, None
    if attributes["type"] == "drums":
        bpm = estimate_tempo(mono, sample_rate)[0] if region[0] is not None else None
        target = attributes["bpm"]
        scores["bpm"] = None if bpm is None else float(bpm)
        scores["tempo_error_bpm"] = float(target if bpm is None else abs(bpm - target))
        scores["tempo_octave_error_bpm"] = float(
            target if bpm is None else min(abs(factor * bpm - target) for factor in (0.5, 1.0, 2.0))
        )

    scores["side"] = stereo_side(audio)
    scores["side_correct"] = bool(scores["side"] == attributes["side"])
    end = analysis["end_seconds"]
    scores["end_seconds"] = end
    scores["end_error_seconds"] = None if end is None else float(end - attributes["sound_end_seconds"])
    scores["duration_ok"] = bool(end is not None and abs(scores["end_error_seconds"]) <= DURATION_TOLERANCE_SECONDS)
    scores["loudness"], _ = loudness_class(audio, level=level, sample_rate=sample_rate)
    scores["loudness_correct"] = bool(scores["loudness"] == attributes["loudness"])
    scores["chirp_direction_correct"] = None
    if attributes["type"] == "chirp":
        change = analysis["pitch_change_octaves"]
        scores["chirp_direction_correct"] = bool(
            analysis["label"] == "chirp"
            and change is not None
            and (change > 0) == (attributes["direction"] == "rising")
        )
    scores["analysis"] = analysis
    return scores


def summarize_scores(scores: Sequence[Dict]) -> Dict[str, Optional[float]]:
    """
    Aggregates [`score_clip`] results: `type_accuracy`, `median_pitch_error_semitones`, `median_tempo_error_bpm`,
    `median_tempo_octave_error_bpm`,
    `side_accuracy`, `duration_adherence`, `loudness_accuracy`, `chirp_direction_accuracy` (over the chirp clips)
    (fractions in [0, 1]; `None` where no clip applies) and `num_clips`.
    """

    def fraction(key):
        values = [s[key] for s in scores if s[key] is not None]
        return sum(bool(v) for v in values) / len(values) if values else None

    def median_of(key):
        values = [s[key] for s in scores if s[key] is not None]
        return float(median(values)) if values else None

    return {
        "type_accuracy": fraction("type_correct"),
        "median_pitch_error_semitones": median_of("pitch_error_semitones"),
        "median_tempo_error_bpm": median_of("tempo_error_bpm"),
        "median_tempo_octave_error_bpm": median_of("tempo_octave_error_bpm"),
        "side_accuracy": fraction("side_correct"),
        "duration_adherence": fraction("duration_ok"),
        "loudness_accuracy": fraction("loudness_correct"),
        "chirp_direction_accuracy": fraction("chirp_direction_correct"),
        "num_clips": len(scores),
    }
