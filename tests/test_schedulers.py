"""Tests of `FlowMatchOTScheduler` and `PingPongAdversarialScheduler` against the official references.

Every expected value comes from the official run (`reference/*.safetensors`), from an independent transcription of the
official sampler written here, or from a property of the math (a permutation, a monotone map, an identity).
"""

import itertools
import math

import pytest
import torch
from diffusers import DPMSolverMultistepScheduler

from diffusers_sa3 import FlowMatchOTScheduler, PingPongAdversarialScheduler
from diffusers_sa3.schedulers.scheduling_flow_match_ot import TIMESTEP_SAMPLERS, build_logsnr_schedule
from utils import assert_parity, load_reference


SCHEDULE_ATOL = 1e-6
HEADROOM_FRAMES = int(6.0 * 44100 / 4096)  # official `generate()` headroom: 64 latent frames


@pytest.fixture(scope="module")
def schedules():
    return load_reference("schedules")[0]


def _schedule_args(name):
    # "schedule_8" -> (8, 1.0); "schedule_10_sigmamax0.7" -> (10, 0.7)
    parts = name.split("_")
    sigma_max = float(parts[2].removeprefix("sigmamax")) if len(parts) > 2 else 1.0
    return int(parts[1]), sigma_max


def _stand_in_velocity(sample, t):
    """A smooth, nonlinear stand-in for the model: any function of (x, t) exercises the solver."""
    t = torch.as_tensor(t, dtype=sample.dtype).reshape(-1, *([1] * (sample.ndim - 1)))
    return torch.tanh(sample) * (1.0 + t) - 0.5 * t * sample + 0.1 * torch.cos(3.0 * t)


def _official_euler(model, x, sigmas):
    """Transcription of the official `sample_discrete_euler` (`inference/sampling.py:147-187`), per-sample path."""
    t = sigmas.unsqueeze(0).expand(x.shape[0], -1)
    for i in range(t.shape[-1] - 1):
        t_curr, t_prev = t[:, i].to(x.dtype), t[:, i + 1].to(x.dtype)
        v = model(x, t_curr)
        x = x + (t_prev - t_curr).view(-1, 1, 1) * v
    return x


def _official_flow_dpmpp(model, x, sigmas):
    """Transcription of the official `sample_flow_dpmpp` (`inference/sampling.py:227-306`), global-schedule path."""
    t = sigmas
    old_denoised = None

    def log_snr(t):
        return ((1 - t).clamp(min=1e-10) / t.clamp(min=1e-10)).log()

    for i in range(t.shape[-1] - 1):
        t_curr, t_next = t[i], t[i + 1]
        t_prev = t[i - 1] if i > 0 else None
        denoised = x - t_curr * model(x, t_curr.expand(x.shape[0]))
        alpha_t = 1 - t_next
        dpmpp_coeff = (t_next - t_curr) / ((1 - t_next).clamp(min=1e-10) * t_curr.clamp(min=1e-10))
        if old_denoised is None or t_next == 0:
            x = (t_next / t_curr.clamp(min=1e-10)) * x - alpha_t * dpmpp_coeff * denoised
        else:
            h = log_snr(t_next) - log_snr(t_curr)
            h_last = log_snr(t_curr) - log_snr(t_prev)
            r = h_last / h
            denoised_d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
            x = (t_next / t_curr.clamp(min=1e-10)) * x - alpha_t * dpmpp_coeff * denoised_d
        old_denoised = denoised
    return x


def _run(scheduler, sample, model=_stand_in_velocity, **step_kwargs):
    for t in scheduler.timesteps:
        sample = scheduler.step(model(sample, t), t, sample, **step_kwargs).prev_sample
    return sample


# Schedules


@pytest.mark.parametrize(
    "name",
    [
        "schedule_1",
        "schedule_8",
        "schedule_50",
        "schedule_8_sigmamax0.9",
        "schedule_10_sigmamax0.7",
        "schedule_10_sigmamax0.8",
    ],
)
@pytest.mark.parametrize("scheduler_class", [FlowMatchOTScheduler, PingPongAdversarialScheduler])
def test_schedule_matches_official(schedules, name, scheduler_class):
    num_inference_steps, sigma_max = _schedule_args(name)
    scheduler = scheduler_class()
    scheduler.set_timesteps(num_inference_steps, sigma_max=sigma_max)
    reference = schedules[name]
    assert scheduler.sigmas.shape == reference.shape
    torch.testing.assert_close(scheduler.sigmas, reference, rtol=0, atol=SCHEDULE_ATOL)
    torch.testing.assert_close(scheduler.timesteps, reference[:-1], rtol=0, atol=SCHEDULE_ATOL)
    assert scheduler.sigmas[-1] == 0 and scheduler.sigmas[0] == torch.tensor(sigma_max)
    assert scheduler.timesteps.dtype == torch.float32


@pytest.mark.parametrize("length", [68, 1000, 4096])
def test_full_shift_schedule_matches_official(schedules, length):
    # Official `build_schedule(8, 1.0, DistributionShift(min_length=256, max_length=4096), length)`.
    scheduler = FlowMatchOTScheduler()
    reference = schedules[f"diag_full_shift_schedule_8_L{length}"]
    u = torch.linspace(1.0, 0.0, 9)
    for effective_length in (length, torch.tensor([length, length])):
        shifted = scheduler.shift_timesteps(u, effective_length).reshape(-1, 9)
        shifted[:, 0] = 1.0
        for row in shifted:
            torch.testing.assert_close(row, reference, rtol=0, atol=SCHEDULE_ATOL)


def test_custom_logsnr_bounds_change_the_schedule():
    default = build_logsnr_schedule(8)
    custom = build_logsnr_schedule(8, logsnr_start=-4.0, logsnr_end=3.0)
    assert not torch.allclose(default, custom)
    # Uniform in log-SNR between the bounds: the interior points are sigmoid(-(3 - u * 7)).
    u = torch.linspace(1.0, 0.0, 9)[1:-1]
    torch.testing.assert_close(custom[1:-1], torch.sigmoid(-(3.0 - u * 7.0)), rtol=0, atol=1e-6)
    scheduler = FlowMatchOTScheduler(logsnr_start=-4.0, logsnr_end=3.0)
    scheduler.set_timesteps(8)
    torch.testing.assert_close(scheduler.sigmas, custom, rtol=0, atol=0)


# Euler


@pytest.mark.parametrize("batch_size", [1, 3])
def test_euler_step_matches_hand_formula(batch_size):
    generator = torch.Generator().manual_seed(0)
    scheduler = FlowMatchOTScheduler()
    scheduler.set_timesteps(8)
    sample = torch.randn(batch_size, 4, 10, generator=generator)
    for i, t in enumerate(scheduler.timesteps):
        velocity = torch.randn(sample.shape, generator=generator)
        timestep = t.expand(batch_size) if i % 2 else t  # scalar or per-sample timesteps
        out = scheduler.step(velocity, timestep, sample)
        t_next = scheduler.sigmas[i + 1]
        torch.testing.assert_close(out.prev_sample, sample + (t_next - t) * velocity, rtol=0, atol=1e-6)
        torch.testing.assert_close(out.pred_original_sample, sample - t * velocity, rtol=0, atol=1e-6)
        assert scheduler.step_index == i + 1
        sample = out.prev_sample


@pytest.mark.parametrize("name", ["schedule_50", "schedule_10_sigmamax0.7"])
def test_euler_loop_matches_official_transcription(schedules, name):
    num_inference_steps, sigma_max = _schedule_args(name)
    scheduler = FlowMatchOTScheduler()
    scheduler.set_timesteps(num_inference_steps, sigma_max=sigma_max)
    noise = torch.randn(2, 4, 12, generator=torch.Generator().manual_seed(1))
    reference = _official_euler(_stand_in_velocity, noise, schedules[name])
    assert_parity(_run(scheduler, noise), reference, f"euler {name}")


def test_euler_works_in_the_sample_dtype_like_official():
    # Official casts t to x.dtype before `t_next - t` (per-sample schedules of `generate()`).
    scheduler = FlowMatchOTScheduler()
    scheduler.set_timesteps(8)
    sample = torch.randn(2, 4, 8, generator=torch.Generator().manual_seed(2)).to(torch.bfloat16)
    velocity = torch.randn(2, 4, 8, generator=torch.Generator().manual_seed(3)).to(torch.bfloat16)
    t = scheduler.timesteps[3]
    scheduler.set_begin_index(3)
    out = scheduler.step(velocity, t, sample)
    t_curr, t_next = scheduler.sigmas[3].to(torch.bfloat16), scheduler.sigmas[4].to(torch.bfloat16)
    assert out.prev_sample.dtype == torch.bfloat16
    assert torch.equal(out.prev_sample, sample + (t_next - t_curr) * velocity)


def test_step_tuple_output_and_step_index_from_timestep():
    scheduler = FlowMatchOTScheduler()
    scheduler.set_timesteps(8)
    sample, velocity = torch.randn(2, 3, 5), torch.randn(2, 3, 5)
    # Starting at the 3rd timestep (given at reduced precision) finds the step from the value.
    timestep = scheduler.timesteps[2].half()
    prev_sample, pred_original_sample = scheduler.step(velocity, timestep, sample, return_dict=False)
    assert scheduler.step_index == 3
    dt = scheduler.sigmas[3] - scheduler.sigmas[2]
    torch.testing.assert_close(prev_sample, sample + dt * velocity, rtol=0, atol=1e-6)
    torch.testing.assert_close(pred_original_sample, sample - scheduler.sigmas[2] * velocity, rtol=0, atol=1e-6)


# DPM-Solver++(2M)


@pytest.mark.parametrize("name", ["schedule_8", "schedule_50", "schedule_10_sigmamax0.7"])
def test_dpmpp_matches_official_transcription(schedules, name):
    num_inference_steps, sigma_max = _schedule_args(name)
    scheduler = FlowMatchOTScheduler(solver_type="dpmpp_2m")
    scheduler.set_timesteps(num_inference_steps, sigma_max=sigma_max)
    noise = torch.randn(2, 4, 12, generator=torch.Generator().manual_seed(4))
    reference = _official_flow_dpmpp(_stand_in_velocity, noise, schedules[name])
    assert_parity(_run(scheduler, noise), reference, f"dpmpp {name}")
    # The second-order correction matters: a first-order run (state dropped every step) lands elsewhere.
    scheduler.set_timesteps(num_inference_steps, sigma_max=sigma_max)
    sample = noise
    for t in scheduler.timesteps:
        scheduler._last_pred_original_sample = None
        sample = scheduler.step(_stand_in_velocity(sample, t), t, sample).prev_sample
    assert (sample - reference).abs().max() > 1e-3 * reference.abs().max()


def test_dpmpp_state_resets_with_set_timesteps():
    scheduler = FlowMatchOTScheduler(solver_type="dpmpp_2m")
    noise = torch.randn(1, 2, 6, generator=torch.Generator().manual_seed(5))
    scheduler.set_timesteps(15)
    first = _run(scheduler, noise)
    scheduler.set_timesteps(15)
    assert torch.equal(_run(scheduler, noise), first)


@pytest.mark.parametrize("num_inference_steps, sigma_max", [(15, 1.0), (8, 1.0), (15, 0.7), (8, 0.8)])
def test_dpmpp_against_diffusers_dpm_solver_with_flow_sigmas(num_inference_steps, sigma_max):
    # diffusers' DPMSolverMultistepScheduler(use_flow_sigmas, flow_prediction, dpmsolver++, order 2) with our sigmas
    # swapped in. It agrees up to float32 rounding when the schedule avoids t = 1. With t[0] = 1 diffusers' log-SNR
    # is -inf, so its second step is of first order, while the official clamp (1e-10) keeps a tiny second-order
    # correction: measured 8.3e-7 x max|x| (8 steps) here, far below the parity tolerance.
    ours = FlowMatchOTScheduler(solver_type="dpmpp_2m")
    ours.set_timesteps(num_inference_steps, sigma_max=sigma_max)
    theirs = DPMSolverMultistepScheduler(
        use_flow_sigmas=True,
        prediction_type="flow_prediction",
        algorithm_type="dpmsolver++",
        solver_order=2,
        final_sigmas_type="zero",
    )
    theirs.set_timesteps(num_inference_steps)
    theirs.sigmas = ours.sigmas.clone()
    sample_ours = sample_theirs = torch.randn(2, 4, 16, generator=torch.Generator().manual_seed(6))
    for i, t in enumerate(ours.timesteps):
        sample_ours = ours.step(_stand_in_velocity(sample_ours, t), t, sample_ours).prev_sample
        sample_theirs = theirs.step(
            _stand_in_velocity(sample_theirs, t), theirs.timesteps[i], sample_theirs
        ).prev_sample
    tol = 1e-4 if sigma_max == 1.0 else 1e-6
    assert_parity(sample_ours, sample_theirs, "dpmpp vs diffusers", tol=tol)


# Sampling references


def test_pingpong_schedule_and_replay_with_recorded_noise():
    tensors, _ = load_reference("sample_pingpong_small")
    timesteps_per_call = tensors["timesteps_per_call"]
    num_inference_steps = timesteps_per_call.shape[0]
    scheduler = PingPongAdversarialScheduler()
    scheduler.set_timesteps(num_inference_steps)
    for column in timesteps_per_call.T:
        torch.testing.assert_close(scheduler.timesteps, column, rtol=0, atol=SCHEDULE_ATOL)
    # Text-to-audio starts from the initial noise as it is (init_noise_sigma = 1).
    assert torch.equal(tensors["step0_x"], tensors["initial_noise"] * scheduler.init_noise_sigma)

    # First step from the recorded first model call and noise draw.
    out = scheduler.step(
        tensors["step0_v"], scheduler.timesteps[0], tensors["step0_x"], noise=tensors["sampler_noise_0"]
    )
    t_next = scheduler.sigmas[1]
    x0 = tensors["step0_x"] - scheduler.sigmas[0] * tensors["step0_v"]
    torch.testing.assert_close(out.pred_original_sample, x0, rtol=0, atol=1e-6)
    torch.testing.assert_close(
        out.prev_sample, (1 - t_next) * x0 + t_next * tensors["sampler_noise_0"], rtol=0, atol=1e-6
    )

    # A stand-in model that always predicts the official final latents: each step must land on
    # (1 - t_{i+1}) final + t_{i+1} sampler_noise_i, and the last one on the final latents.
    final = tensors["final_latents"]
    scheduler.set_timesteps(num_inference_steps)
    sample = tensors["initial_noise"]
    for i, t in enumerate(scheduler.timesteps):
        velocity = (sample - final) / t
        sample = scheduler.step(
            velocity, t.expand(sample.shape[0]), sample, noise=tensors[f"sampler_noise_{i}"]
        ).prev_sample
        t_next = scheduler.sigmas[i + 1]
        expected = (1 - t_next) * final + t_next * tensors[f"sampler_noise_{i}"]
        assert_parity(sample, expected, f"ping-pong step {i}")
    assert_parity(sample, final, "ping-pong final latents")


def test_euler_reference_schedule_and_start():
    tensors, _ = load_reference("sample_euler_cfg_medium_base")
    timesteps_per_call = tensors["timesteps_per_call"]
    scheduler = FlowMatchOTScheduler()
    scheduler.set_timesteps(timesteps_per_call.shape[0])
    assert scheduler.num_inference_steps == 10
    for column in timesteps_per_call.T:
        torch.testing.assert_close(scheduler.timesteps, column, rtol=0, atol=SCHEDULE_ATOL)
    assert torch.equal(tensors["step0_x"], tensors["initial_noise"])


def test_audio_to_audio_reference_schedule_and_start():
    tensors, info = load_reference("sample_a2a_medium_base")
    timesteps_per_call = tensors["timesteps_per_call"]
    scheduler = FlowMatchOTScheduler()
    scheduler.set_timesteps(timesteps_per_call.shape[0], sigma_max=0.7)
    # The official schedule jumps up after the first point (0.7 -> 0.9595...), and the model sees it.
    torch.testing.assert_close(scheduler.timesteps, timesteps_per_call[:, 0], rtol=0, atol=SCHEDULE_ATOL)
    assert scheduler.timesteps[1] > scheduler.timesteps[0]
    start = scheduler.add_noise(tensors["encoded_audio_latents"], tensors["initial_noise"], scheduler.timesteps[0])
    assert_parity(start, tensors["step0_x"], "audio-to-audio initial latents")


@pytest.mark.parametrize("name", ["sample_euler_cfg_medium_base", "sample_pingpong_small", "sample_a2a_medium_base"])
def test_effective_length_matches_reference_padding_mask(name):
    # Official valid frames = effective length + 64 headroom frames (capped by T).
    tensors, _ = load_reference(name)
    lengths = FlowMatchOTScheduler().effective_length(tensors["seconds_total"])
    valid = tensors["padding_mask"].sum(dim=-1)
    assert torch.equal(
        torch.minimum(lengths + HEADROOM_FRAMES, torch.tensor(tensors["padding_mask"].shape[-1])), valid
    )


# Ping-pong


def test_pingpong_one_step_returns_the_denoised_sample():
    scheduler = PingPongAdversarialScheduler()
    scheduler.set_timesteps(1)
    assert scheduler.timesteps.tolist() == [1.0]
    sample, velocity = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    out = scheduler.step(velocity, scheduler.timesteps[0], sample, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out.prev_sample, sample - velocity, rtol=0, atol=0)
    torch.testing.assert_close(out.pred_original_sample, sample - velocity, rtol=0, atol=0)


def test_pingpong_generator_reproducibility_and_draw_count():
    scheduler = PingPongAdversarialScheduler()
    noise = torch.randn(2, 4, 8, generator=torch.Generator().manual_seed(0))

    def run(seed):
        generator = torch.Generator().manual_seed(seed)
        scheduler.set_timesteps(8)
        return _run(scheduler, noise, generator=generator), generator

    first, generator = run(7)
    second, _ = run(7)
    other, _ = run(8)
    assert torch.equal(first, second)
    assert not torch.allclose(first, other)
    # One draw per step, the last one included (official draws it and multiplies it by t = 0).
    expected = torch.Generator().manual_seed(7)
    for _ in range(8):
        torch.randn(noise.shape, generator=expected)
    assert torch.equal(generator.get_state(), expected.get_state())

    # Given noise replaces the draw and leaves the generator untouched.
    scheduler.set_timesteps(8)
    untouched = torch.Generator().manual_seed(7)
    state = untouched.get_state()
    scheduler.step(torch.zeros_like(noise), scheduler.timesteps[0], noise, generator=untouched, noise=noise)
    assert torch.equal(untouched.get_state(), state)


def test_pingpong_casts_timesteps_to_sample_dtype():
    scheduler = PingPongAdversarialScheduler()
    scheduler.set_timesteps(8)
    scheduler.set_begin_index(2)
    sample, velocity, noise = (torch.randn(1, 2, 6).half() for _ in range(3))
    out = scheduler.step(velocity, scheduler.timesteps[2], sample, noise=noise)
    t, t_next = scheduler.sigmas[2].half(), scheduler.sigmas[3].half()
    x0 = sample - t * velocity
    assert out.prev_sample.dtype == torch.float16
    assert torch.equal(out.prev_sample, (1 - t_next) * x0 + t_next * noise)


# Config


@pytest.mark.parametrize(
    "scheduler_class, kwargs",
    [
        (FlowMatchOTScheduler, {"solver_type": "dpmpp_2m", "logsnr_start": -5.0, "max_shift": 1.3}),
        (PingPongAdversarialScheduler, {"logsnr_start": -5.0, "logsnr_end": 1.5}),
    ],
)
def test_config_round_trip(tmp_path, scheduler_class, kwargs):
    scheduler = scheduler_class(**kwargs)
    scheduler.save_config(tmp_path)
    loaded = scheduler_class.from_pretrained(tmp_path)

    def public(config):
        return {key: value for key, value in config.items() if key != "_use_default_values"}

    assert public(loaded.config) == public(scheduler.config)
    reloaded = scheduler_class.from_config(scheduler.config)
    for other in (loaded, reloaded):
        other.set_timesteps(8)
    scheduler.set_timesteps(8)
    assert torch.equal(loaded.sigmas, scheduler.sigmas) and torch.equal(reloaded.sigmas, scheduler.sigmas)
    assert scheduler_class._compatibles == [] and scheduler.order == 1 and scheduler.init_noise_sigma == 1.0
    sample = torch.randn(1, 2, 3)
    assert scheduler.scale_model_input(sample, scheduler.timesteps[0]) is sample


# Training helpers


@pytest.mark.parametrize("sampler", TIMESTEP_SAMPLERS)
def test_sample_timesteps_shapes_ranges_and_determinism(sampler):
    scheduler = FlowMatchOTScheduler()
    t = scheduler.sample_timesteps(64, sampler, generator=torch.Generator().manual_seed(0))
    again = scheduler.sample_timesteps(64, sampler, generator=torch.Generator().manual_seed(0))
    other = scheduler.sample_timesteps(64, sampler, generator=torch.Generator().manual_seed(1))
    assert t.shape == (64,) and t.dtype == torch.float32
    assert torch.equal(t, again) and not torch.equal(t, other)
    assert t.min() >= 0 and t.max() <= 1
    if sampler in ("log_snr", "log_snr_uniform"):
        assert t.min() >= 1e-4 and t.max() <= 1 - 1e-4
    if sampler == "log_snr_uniform":
        assert t.min() >= torch.sigmoid(torch.tensor(-5.0)) and t.max() <= torch.sigmoid(torch.tensor(6.0))


def test_uniform_sampler_is_stratified():
    # Scrambled Sobol: 2^k points fall one in each of the 2^k equal bins.
    t = FlowMatchOTScheduler().sample_timesteps(16, "uniform", generator=torch.Generator().manual_seed(3))
    assert sorted((t * 16).floor().long().tolist()) == list(range(16))


def test_samplers_match_official_formulas_on_the_same_draws():
    scheduler = FlowMatchOTScheduler()
    normal_draw = torch.randn(32, generator=torch.Generator().manual_seed(9))
    uniform_draw = torch.rand(32, generator=torch.Generator().manual_seed(9))

    def sample(name):
        return scheduler.sample_timesteps(32, name, generator=torch.Generator().manual_seed(9))

    torch.testing.assert_close(sample("logit_normal"), torch.sigmoid(normal_draw), rtol=0, atol=0)
    torch.testing.assert_close(
        sample("log_snr"), torch.sigmoid(-(normal_draw * 2.0 - 1.2)).clamp(1e-4, 1 - 1e-4), rtol=0, atol=0
    )
    torch.testing.assert_close(
        sample("log_snr_uniform"), torch.sigmoid(-(uniform_draw * 11.0 - 6.0)).clamp(1e-4, 1 - 1e-4), rtol=0, atol=1e-7
    )
    # Official `truncated_logistic_normal_rescaled` then `t = 1 - t`, written with the inverse CDF of the
    # logit-normal: P(sigmoid(z) < 0.075) is removed and the rest rescaled.
    normal = torch.distributions.Normal(0.0, 1.0)
    lower = normal.cdf(torch.logit(torch.tensor(0.075)))
    samples = torch.sigmoid(normal.icdf(lower + (1 - lower) * normal.cdf(normal_draw)))
    expected = 1 - (samples - 0.075) / 0.925
    torch.testing.assert_close(sample("trunc_logit_normal"), expected, rtol=0, atol=1e-6)
    many = scheduler.sample_timesteps(4096, "trunc_logit_normal", generator=torch.Generator().manual_seed(0))
    assert many.min() >= 0 and many.max() <= 1


def test_effective_length_formula():
    scheduler = FlowMatchOTScheduler()
    seconds = [0.25, 0.35, 1.0, 10.0, 95.1, 380.0]
    expected = [math.ceil(int(s * 44100) / 4096) for s in seconds]
    assert scheduler.effective_length(seconds).tolist() == expected
    assert scheduler.effective_length(10.0).tolist() == [108]
    assert FlowMatchOTScheduler(sampling_rate=48000, downsampling_ratio=2048).effective_length(1.0).tolist() == [24]


def test_length_shift_properties():
    scheduler = FlowMatchOTScheduler()
    t = torch.linspace(0.0, 1.0, 101, dtype=torch.float64)
    lengths = [68, 256, 1000, 4096, 8000]
    shifted = {length: scheduler.shift_timesteps(t, length) for length in lengths}
    for length, values in shifted.items():
        assert values[0] == 0 and values[-1] == 1, length
        assert (values[1:] > values[:-1]).all(), f"not increasing in t at L={length}"
    for short, long in zip(lengths[1:-2], lengths[2:-1]):
        assert (shifted[long][1:-1] > shifted[short][1:-1]).all(), f"not increasing in L ({short} -> {long})"
    # logit(t') - logit(t) = -mu: 0.5 up to 256 frames, 1.15 from 4096 frames on.
    inner = slice(1, -1)

    def minus_mu(values):
        return torch.logit(values[inner]) - torch.logit(t[inner])

    for length, expected in [(68, 0.5), (256, 0.5), (4096, 1.15), (8000, 1.15), (2176, 0.825)]:
        torch.testing.assert_close(
            minus_mu(scheduler.shift_timesteps(t, length)), torch.full((99,), expected, dtype=t.dtype)
        )
    # Per-item t with per-item lengths: element-wise; a schedule with per-item lengths: (batch, steps).
    per_item = scheduler.shift_timesteps(torch.tensor([0.5, 0.5]), torch.tensor([256, 4096]))
    assert per_item.shape == (2,) and per_item[1] > per_item[0]
    assert scheduler.shift_timesteps(torch.linspace(1, 0, 9), torch.tensor([256, 1000, 4096])).shape == (3, 9)


def test_add_noise_and_velocity():
    scheduler = FlowMatchOTScheduler()
    generator = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(3, 4, 5, generator=generator), torch.randn(3, 4, 5, generator=generator)
    t = torch.tensor([0.0, 0.3, 1.0])
    noisy = scheduler.add_noise(x0, noise, t)
    for i in range(3):
        torch.testing.assert_close(noisy[i], (1 - t[i]) * x0[i] + t[i] * noise[i], rtol=0, atol=0)
    velocity = scheduler.get_velocity(x0, noise)
    torch.testing.assert_close(velocity, noise - x0, rtol=0, atol=0)
    # The path is straight: x_t - t v = x0 for every t.
    torch.testing.assert_close(noisy - t.view(-1, 1, 1) * velocity, x0, rtol=0, atol=1e-6)
    torch.testing.assert_close(scheduler.add_noise(x0, noise, 0.25), 0.75 * x0 + 0.25 * noise, rtol=0, atol=1e-6)


def _pairing_cost(data, noise):
    return ((data - noise) ** 2).flatten(1).sum(dim=1).sum().item()


def test_ot_coupling_recovers_a_shuffle():
    generator = torch.Generator().manual_seed(0)
    data = torch.randn(8, 4, 16, generator=generator)
    shuffle = torch.randperm(8, generator=generator)
    noise = data[shuffle] + 0.05 * torch.randn(8, 4, 16, generator=generator)
    coupled, permutation = FlowMatchOTScheduler().ot_coupling(data, noise, return_permutation=True)
    assert sorted(permutation.tolist()) == list(range(8))
    assert torch.equal(coupled, noise[permutation])
    assert _pairing_cost(data, coupled) < _pairing_cost(data, noise)
    # The optimum of this case pairs each item with its own perturbed copy.
    assert torch.equal(shuffle[permutation], torch.arange(8))


def test_ot_coupling_finds_the_optimum_of_small_batches():
    generator = torch.Generator().manual_seed(1)
    scheduler = FlowMatchOTScheduler()
    for _ in range(5):
        data = torch.randn(5, 32, generator=generator)
        noise = data[torch.randperm(5, generator=generator)] + 0.3 * torch.randn(5, 32, generator=generator)
        coupled = scheduler.ot_coupling(data, noise)
        best = min(_pairing_cost(data, noise[list(p)]) for p in itertools.permutations(range(5)))
        assert _pairing_cost(data, coupled) <= _pairing_cost(data, noise) + 1e-4
        assert _pairing_cost(data, coupled) == pytest.approx(best, rel=1e-6)


def _official_ot_permutation(data, noise):
    """Transcription of the official minibatch OT coupling (`training/diffusion.py:346-369`)."""
    data_flat, noise_flat = data.reshape(data.shape[0], -1), noise.reshape(noise.shape[0], -1)
    aa = (data_flat * data_flat).sum(dim=1, keepdim=True)
    bb = (noise_flat * noise_flat).sum(dim=1, keepdim=True)
    cost_matrix = aa + bb.T - 2.0 * (data_flat @ noise_flat.T)
    log_p = -cost_matrix / cost_matrix.mean()
    for _ in range(20):
        log_p = log_p - torch.logsumexp(log_p, dim=1, keepdim=True)
        log_p = log_p - torch.logsumexp(log_p, dim=0, keepdim=True)
    p = log_p.exp()
    col_indices = torch.empty(p.shape[0], dtype=torch.long)
    used = torch.zeros(p.shape[0], dtype=torch.bool)
    for i in range(p.shape[0]):
        p[i, used] = -1
        col_indices[i] = p[i].argmax()
        used[col_indices[i]] = True
    return col_indices


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ot_coupling_matches_official_when_rows_compete(seed):
    # Unstructured data and noise: several rows prefer the same noise, so both the Sinkhorn iterations and the greedy
    # exclusion of taken columns decide the result.
    generator = torch.Generator().manual_seed(seed)
    data, noise = torch.randn(32, 4, 16, generator=generator), torch.randn(32, 4, 16, generator=generator)
    coupled, permutation = FlowMatchOTScheduler().ot_coupling(data, noise, return_permutation=True)
    assert sorted(permutation.tolist()) == list(range(32))
    assert torch.equal(permutation, _official_ot_permutation(data, noise))
    assert torch.equal(coupled, noise[permutation])


def test_ot_coupling_single_item_is_unchanged():
    data, noise = torch.randn(1, 2, 3), torch.randn(1, 2, 3)
    coupled, permutation = FlowMatchOTScheduler().ot_coupling(data, noise, return_permutation=True)
    assert torch.equal(coupled, noise) and permutation.tolist() == [0]


# Bad inputs


@pytest.mark.parametrize("scheduler_class", [FlowMatchOTScheduler, PingPongAdversarialScheduler])
@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_inference_steps": 0}, "`num_inference_steps`"),
        ({"num_inference_steps": -3}, "`num_inference_steps`"),
        ({"num_inference_steps": 2.5}, "`num_inference_steps`"),
        ({"num_inference_steps": 8, "sigma_max": 0.0}, "`sigma_max`"),
        ({"num_inference_steps": 8, "sigma_max": 1.5}, "`sigma_max`"),
        ({"num_inference_steps": 8, "sigma_max": -0.1}, "`sigma_max`"),
    ],
)
def test_set_timesteps_rejects_bad_values(scheduler_class, kwargs, match):
    with pytest.raises(ValueError, match=match):
        scheduler_class().set_timesteps(**kwargs)


@pytest.mark.parametrize("scheduler_class", [FlowMatchOTScheduler, PingPongAdversarialScheduler])
def test_step_rejects_bad_calls(scheduler_class):
    scheduler = scheduler_class()
    sample = torch.randn(1, 2, 3)
    with pytest.raises(ValueError, match="set_timesteps"):
        scheduler.step(sample, 1.0, sample)
    scheduler.set_timesteps(2)
    with pytest.raises(ValueError, match="`timestep`"):
        scheduler.step(sample, 0, sample)
    with pytest.raises(ValueError, match="`model_output`"):
        scheduler.step(torch.randn(1, 2, 4), scheduler.timesteps[0], sample)
    for t in scheduler.timesteps:
        scheduler.step(sample, t, sample)
    with pytest.raises(ValueError, match="set_timesteps"):
        scheduler.step(sample, scheduler.timesteps[-1], sample)


def test_bad_config_and_helper_inputs():
    with pytest.raises(ValueError, match="`solver_type`"):
        FlowMatchOTScheduler(solver_type="heun")
    with pytest.raises(ValueError, match="`logsnr_start`"):
        PingPongAdversarialScheduler(logsnr_start=3.0)
    scheduler = FlowMatchOTScheduler()
    with pytest.raises(ValueError, match="uniform, logit_normal, trunc_logit_normal, log_snr, log_snr_uniform"):
        scheduler.sample_timesteps(4, "cosine")
    with pytest.raises(ValueError, match="`batch_size`"):
        scheduler.sample_timesteps(0)
    with pytest.raises(ValueError, match="`seconds_total`"):
        scheduler.effective_length([-1.0])
    x = torch.randn(2, 3, 4)
    with pytest.raises(ValueError, match="`timesteps`"):
        scheduler.add_noise(x, x, torch.tensor([0.1, 0.2, 0.3]))
    with pytest.raises(ValueError, match="`noise`"):
        scheduler.ot_coupling(x, torch.randn(3, 3, 4))
    pingpong = PingPongAdversarialScheduler()
    pingpong.set_timesteps(2)
    with pytest.raises(ValueError, match="`noise`"):
        pingpong.step(x, pingpong.timesteps[0], x, noise=torch.randn(1, 3, 4))
