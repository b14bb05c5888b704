"""Stage 2 (distillation warm-up) through `accelerate launch` on CPU: the tiny official `medium_base` fixture as the
teacher, generated captioned WAVs as data. Checks the trajectory cache, that the one-step student gets closer to the
teacher's 15-step output, that a resumed run repeats the losses, and that the output is a ping-pong pipeline."""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
import soundfile as sf
import torch

from diffusers_sa3 import PingPongAdversarialScheduler, StableAudio3Pipeline
from diffusers_sa3.training.distillation import TrajectoryCache, generate_teacher_trajectory
from utils import MEDIUM_BASE_CKPT


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "training_examples", "train_distill.py")
PROMPTS = [
    "rain falling on a tin roof",
    "upbeat house loop with punchy kick",
    "ocean waves crashing on a rocky shore",
    "a crackling campfire",
]
STEPS = 20


def write_captioned_clips(folder):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i, prompt in enumerate(PROMPTS):
        n = int(44100 * (0.4 + 0.15 * i))  # 5 to 9 latent frames: a variable-length batch
        t = np.arange(n) / 44100
        mono = 0.3 * np.sin(2 * np.pi * (200 + 150 * i) * t) + 0.02 * rng.standard_normal(n)
        sf.write(folder / f"clip{i}.wav", np.stack([mono, 0.8 * mono], axis=1).astype(np.float32), 44100)
        (folder / f"clip{i}.txt").write_text(prompt)
    return str(folder)


def launch(script, *flags, expect_failure=False):
    command = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--num_processes", "1", "--num_machines", "1", "--cpu", "--mixed_precision", "no", "--dynamo_backend", "no",
        script, "--report_to", "none", *flags,
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "2"}
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT)
    if expect_failure:
        assert result.returncode != 0, result.stdout[-3000:]
        return result.stderr
    if result.returncode != 0:
        raise AssertionError(
            f"training failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
        )
    return time.perf_counter() - start


def read_losses(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("distill")
    data = write_captioned_clips(root / "data")
    common = [
        "--pretrained_model_name_or_path", MEDIUM_BASE_CKPT, "--train_data_dir", data,
        "--trajectory_cache_dir", str(root / "cache"), "--train_batch_size", "2", "--learning_rate", "1e-3",
        "--adam_weight_decay", "0", "--seed", "3",
    ]  # fmt: skip
    seconds = launch(
        SCRIPT, *common, "--output_dir", str(root / "out"), "--max_train_steps", str(STEPS),
        "--checkpointing_steps", "10", "--loss_log", str(root / "loss.jsonl"),
    )  # fmt: skip
    return {"root": root, "data": data, "common": common, "seconds": seconds}


def test_trajectory_cache_matches_the_teacher(run):
    pipe = StableAudio3Pipeline.from_pretrained(MEDIUM_BASE_CKPT)
    cache_dir = run["root"] / "cache"
    files = sorted(os.listdir(cache_dir))
    assert files == [f"trajectory-{i:08d}.safetensors" for i in range(4)]
    fingerprint = json.dumps(None)  # the cache refuses other settings: reading needs the right fingerprint
    with pytest.raises(ValueError, match="other teacher settings"):
        TrajectoryCache(str(cache_dir), fingerprint).has(0)
    from safetensors import safe_open

    with safe_open(str(cache_dir / files[1]), framework="pt") as f:
        cache = TrajectoryCache(str(cache_dir), f.metadata()["fingerprint"])
    item = cache.load(1)
    assert item["states"].shape == (15, 32, item["valid_length"]) and item["timesteps"][0] == 1.0
    assert item["prompt"] in PROMPTS
    # Replaying the teacher from the cached initial noise gives the cached trajectory (15-step DPM++, CFG 5, APG).
    hidden, mask = pipe.encode_prompt([item["prompt"]], "cpu")
    context, global_condition = pipe.transformer.encode_conditioning(hidden, mask, [item["seconds_total"]])
    replay = generate_teacher_trajectory(pipe.transformer, item["states"][None, 0], context, global_condition)
    torch.testing.assert_close(replay.states[0], item["states"], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(replay.final[0], item["final"], atol=1e-4, rtol=1e-4)
    # Guidance is on: the final output differs from an unguided run.
    unguided = generate_teacher_trajectory(
        pipe.transformer, item["states"][None, 0], context, global_condition, guidance_scale=1.0
    )
    assert (unguided.final - replay.final).abs().max() > 1e-2


def one_step_mse(transformer, pipe, cache):
    errors = []
    for index in range(4):
        item = cache.load(index)
        hidden, mask = pipe.encode_prompt([item["prompt"]], "cpu")
        context, global_condition = transformer.encode_conditioning(hidden, mask, [item["seconds_total"]])
        noise = item["states"][None, 0]
        with torch.no_grad():
            velocity = transformer(
                noise, torch.ones(1), cross_attention_context=context, global_condition=global_condition
            ).sample
        errors.append(((noise - velocity - item["final"][None]) ** 2).mean().item())
    return float(np.mean(errors))


def test_student_gets_closer_to_the_teacher(run):
    from safetensors import safe_open

    cache_dir = run["root"] / "cache"
    with safe_open(str(cache_dir / "trajectory-00000000.safetensors"), framework="pt") as f:
        cache = TrajectoryCache(str(cache_dir), f.metadata()["fingerprint"])
    teacher = StableAudio3Pipeline.from_pretrained(MEDIUM_BASE_CKPT)
    student = StableAudio3Pipeline.from_pretrained(run["root"] / "out")
    before = one_step_mse(teacher.transformer, teacher, cache)
    after = one_step_mse(student.transformer, teacher, cache)
    losses = [entry["distill/mse"] for entry in read_losses(run["root"] / "loss.jsonl")]
    print(
        f"\none-step MSE to the teacher's 15-step output: {before:.4f} -> {after:.4f} after {STEPS} steps; "
        f"training loss first 5 mean {np.mean(losses[:5]):.4f}, last 5 mean {np.mean(losses[-5:]):.4f}; "
        f"launch took {run['seconds']:.1f} s"
    )
    assert len(losses) == STEPS
    assert after < 0.5 * before, f"one-step MSE {before:.4f} -> {after:.4f}: not measurably closer"


def test_output_is_a_pingpong_pipeline(run):
    pipe = StableAudio3Pipeline.from_pretrained(run["root"] / "out")
    pipe.set_progress_bar_config(disable=True)
    assert isinstance(pipe.scheduler, PingPongAdversarialScheduler) and pipe.is_post_trained
    for steps in (1, 4):
        audio = pipe(
            "a crackling campfire", duration=0.3, num_inference_steps=steps, generator=torch.Generator().manual_seed(0),
            output_type="pt",
        ).audios  # fmt: skip
        assert audio.shape == (1, 2, int(0.3 * 44100)) and torch.isfinite(audio).all()


def test_resume_repeats_the_losses(run):
    root = run["root"]
    resumed = root / "resumed"
    resumed.mkdir()
    shutil.copytree(root / "out" / "checkpoint-10", resumed / "checkpoint-10")
    launch(
        SCRIPT, *run["common"], "--output_dir", str(resumed), "--max_train_steps", "13",
        "--resume_from_checkpoint", "latest", "--loss_log", str(root / "resumed.jsonl"),
    )  # fmt: skip
    original = {entry["step"]: entry["distill/mse"] for entry in read_losses(root / "loss.jsonl")}
    again = read_losses(root / "resumed.jsonl")
    assert [entry["step"] for entry in again] == [11, 12, 13]
    for entry in again:
        assert entry["distill/mse"] == pytest.approx(original[entry["step"]], rel=1e-5, abs=1e-7)


def test_online_trajectories_with_inpainting(run, tmp_path):
    # No cache: trajectories are generated each step; inpainting masks from stage 1 condition teacher and student.
    launch(
        SCRIPT, "--pretrained_model_name_or_path", MEDIUM_BASE_CKPT, "--train_data_dir", run["data"],
        "--output_dir", str(tmp_path / "online"), "--max_train_steps", "2", "--train_batch_size", "2",
        "--inpaint_mask_probabilities", "0.5", "0.0", "0.5", "--num_teacher_steps", "4",
        "--loss_log", str(tmp_path / "online.jsonl"),
    )  # fmt: skip
    losses = read_losses(tmp_path / "online.jsonl")
    assert len(losses) == 2 and all(np.isfinite(entry["distill/mse"]) for entry in losses)
    assert os.path.isfile(tmp_path / "online" / "model_index.json")


def load_script_module():
    spec = importlib.util.spec_from_file_location("train_distill", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_pick_states_weighs_the_one_step_state():
    script = load_script_module()
    num_states, n = 10, 20000
    uniform = torch.randint(0, num_states, (n,), generator=torch.Generator().manual_seed(1))
    # Probability 0 draws exactly what the uniform draw did (older runs repeat); 1 always picks the initial noise.
    assert torch.equal(script.pick_states(n, num_states, 0.0, torch.Generator().manual_seed(1)), uniform)
    assert not script.pick_states(n, num_states, 1.0, torch.Generator().manual_seed(1)).any()
    half = script.pick_states(n, num_states, 0.5, torch.Generator().manual_seed(1))
    assert abs((half == 0).float().mean().item() - (0.5 + 0.5 / num_states)) < 0.02
    counts = torch.bincount(half, minlength=num_states)[1:].float() / n  # the rest stays uniform: 0.05 each
    assert (counts - 0.5 / num_states).abs().max() < 0.01
    for bad in ("-0.1", "1.5"):
        with pytest.raises(ValueError, match="--one_step_probability"):
            script.parse_args(
                ["--pretrained_model_name_or_path", "x", "--train_data_dir", "y", "--one_step_probability", bad]
            )


def test_one_step_probability_trains_on_the_initial_noise(run, tmp_path):
    from safetensors import safe_open

    with safe_open(str(run["root"] / "cache" / "trajectory-00000000.safetensors"), framework="pt") as f:
        timesteps = f.get_tensor("timesteps")
    launch(
        SCRIPT, *run["common"], "--output_dir", str(tmp_path / "one_step"), "--max_train_steps", "3",
        "--one_step_probability", "1", "--loss_log", str(tmp_path / "one_step.jsonl"),
    )  # fmt: skip
    assert [entry["distill/mean_t"] for entry in read_losses(tmp_path / "one_step.jsonl")] == pytest.approx(
        [float(timesteps[0])] * 3
    )
    # The default run's states were drawn over the whole trajectory.
    default = [entry["distill/mean_t"] for entry in read_losses(run["root"] / "loss.jsonl")]
    assert min(default) < float(timesteps[0]) - 0.05


def test_trajectory_cache_follows_the_teacher_weights(run, tmp_path):
    # The fixture's trajectories were made by the official-layout teacher. The same weights saved elsewhere (diffusers
    # layout) reuse them untouched; the same folder with one weight changed in place is refused, not silently served
    # the old teacher's trajectories.
    cache = tmp_path / "cache"
    shutil.copytree(run["root"] / "cache", cache)
    written = {path.name: path.stat().st_mtime_ns for path in cache.iterdir()}
    teacher = StableAudio3Pipeline.from_pretrained(MEDIUM_BASE_CKPT)
    moved = tmp_path / "teacher"
    teacher.save_pretrained(moved)
    flags = list(run["common"])
    flags[flags.index("--pretrained_model_name_or_path") + 1] = str(moved)
    flags[flags.index("--trajectory_cache_dir") + 1] = str(cache)
    launch(SCRIPT, *flags, "--output_dir", str(tmp_path / "moved_out"), "--max_train_steps", "1")
    assert {path.name: path.stat().st_mtime_ns for path in cache.iterdir()} == written

    with torch.no_grad():
        next(teacher.transformer.parameters()).add_(1e-3)
    teacher.save_pretrained(moved)
    stderr = launch(
        SCRIPT, *flags, "--output_dir", str(tmp_path / "changed_out"), "--max_train_steps", "1", expect_failure=True
    )
    assert "holds trajectories of other teacher settings" in stderr, stderr[-2000:]
