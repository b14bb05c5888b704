"""CPU inference benchmark: our Stable Audio 3 pipeline against upstream diffusers' `StableAudio3Pipeline`.

Both are built at the full small-music size (DiT 1024 x 20, SAME-S, T5Gemma-b encoder) with the same random weights
(see `sa3_builders.py`). Every (case, implementation) runs in a fresh subprocess that loads the cached weights, so the
peak RSS of one case is not inflated by another; the peak RSS reported is the process high-water mark (`VmHWM`)
during the timed runs, reset with `/proc/self/clear_refs` after loading (it includes the resident weights). Times are
medians of `--repeats` runs after one warm-up run. The matmul throughput of the machine is measured in the same run
(fp32 and bf16 1024-wide GEMMs), and the DiT's achieved GFLOP/s counts the FLOPs its forward executes
(`torch.utils.flop_counter`: matmuls and attention).

    python benchmarks/bench_inference.py                        # all small-music cases
    python benchmarks/bench_inference.py --quick                # DiT 30 s, decode 30 s, pipeline 30 s x 8 steps
    python benchmarks/bench_inference.py --cases dit_30,decode_30 --repeats 5
    python benchmarks/bench_inference.py --dtype bf16           # ours in bf16 (accuracy against fp32 is reported)
    python benchmarks/bench_inference.py --medium --mixed       # also medium at 10 s and a mixed-duration batch
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time


HERE = os.path.dirname(os.path.abspath(__file__))
CACHE_DIR = os.environ.get("SA3_BENCH_CACHE", "/tmp/sa3_bench_cache")
PROMPT = "warm analog synth pads with a slow arpeggio"
SAMPLING_RATE, RATIO = 44100, 4096

SMALL_CASES = [
    "dit_30",
    "decode_30",
    "pipe_30_8",
    "decode_120",
    "rss_120",
    "rss_120_embeds",
    "dit_10",
    "dit_120",
    "decode_10",
    "encode_30",
    "pipe_30_1",
]
QUICK_CASES = ["dit_30", "decode_30", "pipe_30_8"]
MEDIUM_CASES = ["medium_dit_10", "medium_pipe_10_8"]
MIXED_CASES = ["mixed_batch"]
OURS_ONLY = {"rss_120", "rss_120_embeds", "mixed_batch", "accuracy"}
SLOW_UPSTREAM = {"decode_120"}


# ----------------------------------------------------------------------------------------------------------------------
# Worker side
# ----------------------------------------------------------------------------------------------------------------------


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def _peak_rss_gb() -> float:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024**2
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def _cache_paths(variant):
    return {name: os.path.join(CACHE_DIR, f"{variant}_{name}.safetensors") for name in ("dit", "vae", "dur", "text")}


def prepare_cache(variant: str) -> None:
    """Builds the random-weight upstream models and the text encoder once and stores them (safetensors)."""
    import sa3_builders
    from safetensors.torch import save_file

    paths = _cache_paths(variant)
    if all(os.path.exists(p) for p in paths.values()):
        return
    os.makedirs(CACHE_DIR, exist_ok=True)
    transformer, vae, duration_embedder = sa3_builders.build_upstream_models(variant, seed=0)
    text_encoder, _ = sa3_builders.build_text_encoder(seed=0)
    for name, module in (("dit", transformer), ("vae", vae), ("dur", duration_embedder), ("text", text_encoder)):
        save_file(sa3_builders.all_tensors(module), paths[name])


def load_pipeline(impl: str, variant: str, dtype: str):
    import sa3_builders
    import torch
    from diffusers import AutoencoderSAME, FlowMatchEulerDiscreteScheduler
    from diffusers import StableAudio3Pipeline as UpstreamPipeline
    from diffusers.models.transformers.transformer_stable_audio3 import StableAudio3DiTModel
    from diffusers.pipelines.stable_audio_3.modeling_stable_audio_3 import StableAudio3DurationEmbedder
    from safetensors.torch import load_file

    from diffusers_sa3 import PingPongAdversarialScheduler, StableAudio3Pipeline

    paths = _cache_paths(variant)
    tensors = {k: v.clone() for k, v in load_file(paths["text"]).items()}
    text_encoder, tokenizer = sa3_builders.build_text_encoder(tensors=tensors)
    with torch.device("meta"):
        transformer = StableAudio3DiTModel(
            **(sa3_builders.SMALL_DIT if variant == "small" else sa3_builders.MEDIUM_DIT)
        )
        vae = AutoencoderSAME(**(sa3_builders.SAME_S if variant == "small" else sa3_builders.SAME_L))
        duration_embedder = StableAudio3DurationEmbedder()
    for module, name in ((transformer, "dit"), (vae, "vae"), (duration_embedder, "dur")):
        # clone: resident like weights loaded from a checkpoint (not lazily mapped pages), for an honest RSS
        tensors = {k: v.clone() for k, v in load_file(paths[name]).items()}
        sa3_builders.assign_tensors_(module, tensors).eval()
    if impl == "upstream":
        # Upstream runs its whole pipeline in the prompt embeddings' dtype, so its (same) T5Gemma weights run in the
        # models' fp32; ours runs T5Gemma in its checkpoint dtype (bf16), as the official code.
        pipe = UpstreamPipeline(
            vae=vae,
            text_encoder=text_encoder.to(torch.float32),
            tokenizer=tokenizer,
            duration_embedder=duration_embedder,
            transformer=transformer,
            scheduler=FlowMatchEulerDiscreteScheduler(stochastic_sampling=True),
        )
    else:
        ours_transformer = sa3_builders.convert_upstream_transformer_to_ours(transformer, duration_embedder)
        del transformer
        ours_vae = sa3_builders.convert_upstream_vae_to_ours(vae, variant)
        del vae
        if dtype == "bf16":
            ours_transformer.to(torch.bfloat16)
            ours_vae.to(torch.bfloat16)
        pipe = StableAudio3Pipeline(
            vae=ours_vae,
            transformer=ours_transformer,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            scheduler=PingPongAdversarialScheduler(),
        )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _frames(seconds: float, pipe_ours=None) -> int:
    """DiT frames for a duration: what our pipeline uses (official 6 s headroom and alignment)."""
    from diffusers_sa3.pipelines.audio_utils import latent_frames_for_duration

    return latent_frames_for_duration(seconds, SAMPLING_RATE, RATIO, 2, 5292032, 6.0)


def _audio_frames(seconds: float) -> int:
    frames = -(-int(seconds * SAMPLING_RATE) // RATIO)
    return frames + frames % 2


def _dit_call(pipe, impl, frames, variant):
    import torch

    transformer = pipe.transformer
    dtype = transformer.dtype
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(1, 256, frames, generator=generator).to(dtype)
    context = torch.randn(1, 257, 768, generator=generator).to(dtype)
    global_condition = torch.randn(1, 768, generator=generator).to(dtype)
    timestep = torch.tensor([0.7])
    if impl == "upstream":
        return lambda: (
            transformer(latents, timestep, encoder_hidden_states=context, global_hidden_states=global_condition).sample
        )
    cache = transformer.cache_context()
    cache.__enter__()  # the sampling loop's steady state: the context keys/values are cached across steps

    def call():
        return transformer(
            latents, timestep, cross_attention_context=context, global_condition=global_condition
        ).sample

    # The open context manager must outlive this function: a dropped generator-based one is closed by the garbage
    # collector, which switched the cache off again before any timed call (stops 10-16 timed ours uncached).
    call.context_cache = cache
    return call


def _flops(fn) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def make_case(case: str, pipe, impl: str, variant: str):
    """Returns `(callable, info)` for a case."""
    import torch

    info = {}
    parts = case.split("_")
    if case.startswith("dit") or case.startswith("medium_dit"):
        seconds = float(parts[-1])
        fn = _dit_call(pipe, impl, _frames(seconds), variant)
        fn()  # steady state first: ours fills its context cache, so the counted FLOPs are those of a timed call
        info["flops"] = _flops(fn)
        return fn, info
    if case.startswith("decode"):
        seconds = float(parts[1])
        latents = torch.randn(1, 256, _audio_frames(seconds), generator=torch.Generator().manual_seed(0))
        latents = latents.to(pipe.vae.dtype)
        if impl == "upstream":
            return (lambda: pipe.vae.decode(latents).sample), info
        return (lambda: pipe.vae.decode(latents, generator=torch.Generator().manual_seed(0)).sample), info
    if case.startswith("encode"):
        seconds = float(parts[1])
        audio = 0.1 * torch.randn(1, 2, int(seconds * SAMPLING_RATE), generator=torch.Generator().manual_seed(0))
        audio = audio.to(pipe.vae.dtype)
        return (lambda: pipe.vae.encode(audio).latents), info
    if case.startswith("pipe") or case.startswith("medium_pipe") or case.startswith("rss_120"):
        if case.startswith("rss_120"):
            seconds, steps = 120.0, 2
        else:
            seconds, steps = float(parts[-2]), int(parts[-1])
        prompt = {"prompt": PROMPT}
        if case == "rss_120_embeds":
            # The prompt encoded once, then the text encoder dropped: generation from `prompt_embeds` (same audio).
            import gc

            embeds, mask = pipe.encode_prompt(PROMPT)
            prompt = {"prompt_embeds": embeds, "attention_mask": mask}
            pipe.text_encoder = None
            gc.collect()

        def run(num_inference_steps=steps):
            return pipe(
                **prompt,
                duration=seconds,
                num_inference_steps=num_inference_steps,
                generator=torch.Generator().manual_seed(0),
                output_type="pt",
            ).audios

        info["warmup"] = lambda: run(1)  # same shapes and kernels, one step
        return run, info
    if case == "mixed_batch":
        durations = [10.0, 60.0, 120.0]
        prompts = [PROMPT, "a jazz trio with brushed drums", "rain on a tin roof"]

        def batch():
            return pipe(prompts, duration=durations, num_inference_steps=2, generator=torch.Generator().manual_seed(0))

        info["warmup"] = lambda: pipe(PROMPT, duration=10.0, num_inference_steps=1)

        def alone():
            for prompt, seconds in zip(prompts, durations):
                pipe(prompt, duration=seconds, num_inference_steps=2, generator=torch.Generator().manual_seed(0))

        info["alone"] = alone
        return batch, info
    raise ValueError(f"unknown case {case!r}")


def measure_matmul() -> dict:
    import torch

    result = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a = torch.randn(512, 1024).to(dtype)
        b = torch.randn(1024, 4096).to(dtype)
        times = []
        with torch.inference_mode():
            for _ in range(3):
                torch.matmul(a, b)
            for _ in range(5):
                start = time.perf_counter()
                for _ in range(5):
                    torch.matmul(a, b)
                times.append((time.perf_counter() - start) / 5)
        result[name] = 2 * 512 * 1024 * 4096 / min(times) / 1e9
    return result


def accuracy(variant: str) -> dict:
    """
    bf16 against fp32 on the same inputs: DiT output relative error (30 s); for 30 s x 8 steps the SNR of the sampled
    latents (bf16 DiT), of the audio with a bf16 DiT and an fp32 SAME, and of the audio all in bf16; the SNR of a bf16
    SAME decode of the fp32 latents; and, for scale, how far the fp32 SAME itself moves when its input latents are
    perturbed at -60 dB (random weights amplify small changes; trained weights are not available offline).
    """
    import torch

    def snr_db(reference, other):
        return float(10 * torch.log10(reference.pow(2).sum() / (other - reference).pow(2).sum()))

    def generate(output_type):
        return pipe(
            PROMPT,
            duration=30.0,
            num_inference_steps=8,
            generator=torch.Generator().manual_seed(0),
            output_type=output_type,
        ).audios.float()

    def decode(latents):
        return pipe.vae.decode(latents.to(pipe.vae.dtype), generator=torch.Generator().manual_seed(0)).sample.float()

    out = {}
    pipe = load_pipeline("ours", variant, "fp32")
    with torch.inference_mode():
        fn = _dit_call(pipe, "ours", _frames(30.0), variant)
        reference_dit = fn().float()
        reference_latents = generate("latent")
        reference_audio = generate("pt")
        reference_decode = decode(reference_latents)
        noise = torch.randn(reference_latents.shape, generator=torch.Generator().manual_seed(1))
        perturbed = reference_latents + 1e-3 * reference_latents.std() * noise
        out["fp32_decode_sensitivity_snr_db"] = snr_db(reference_decode, decode(perturbed))
        pipe.transformer.to(torch.bfloat16)
        fn = _dit_call(pipe, "ours", _frames(30.0), variant)
        dit = fn().float()
        out["latent_snr_db"] = snr_db(reference_latents, generate("latent"))
        out["audio_snr_db_bf16_dit_fp32_same"] = snr_db(reference_audio, generate("pt"))
        pipe.vae.to(torch.bfloat16)
        out["decode_snr_db"] = snr_db(reference_decode, decode(reference_latents))
        audio = generate("pt")
    out["dit_rel_err"] = float((dit - reference_dit).norm() / reference_dit.norm())
    out["dit_max_rel_err"] = float((dit - reference_dit).abs().max() / reference_dit.abs().max())
    out["audio_snr_db"] = snr_db(reference_audio, audio)
    return out


def worker(args) -> None:
    import torch

    sys.path.insert(0, HERE)
    torch.set_grad_enabled(False)
    if args.case == "matmul":
        print("RESULT " + json.dumps(measure_matmul()))
        return
    if args.case == "accuracy":
        print("RESULT " + json.dumps(accuracy(args.variant)))
        return
    pipe = load_pipeline(args.impl, args.variant, args.dtype)
    fn, info = make_case(args.case, pipe, args.impl, args.variant)
    result = {}
    with torch.inference_mode():
        info.get("warmup", fn)()  # warm-up
        import gc

        gc.collect()
        result["peak_reset"] = _reset_peak_rss()
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        result["peak_rss_gb"] = _peak_rss_gb()
        result["times"] = times
        if "alone" in info:
            alone_times = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                info["alone"]()
                alone_times.append(time.perf_counter() - start)
            result["alone_times"] = alone_times
    if "flops" in info:
        result["flops"] = info["flops"]
    print("RESULT " + json.dumps(result))


# ----------------------------------------------------------------------------------------------------------------------
# Driver side
# ----------------------------------------------------------------------------------------------------------------------


def run_worker(case, impl, args, timeout=3600):
    command = [sys.executable, os.path.abspath(__file__), "--worker", "--case", case, "--impl", impl]
    command += ["--variant", "medium" if case.startswith("medium") else "small"]
    command += ["--dtype", args.dtype, "--repeats", str(args.repeats)]
    start = time.time()
    proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            result = json.loads(line[len("RESULT ") :])
            result["wall_s"] = time.time() - start
            return result
    sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
    return {"error": (proc.stderr.strip().splitlines() or ["no output"])[-1]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default=None, help=f"comma-separated subset of {SMALL_CASES + MEDIUM_CASES}")
    parser.add_argument("--quick", action="store_true", help=f"only {QUICK_CASES}")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per case (median reported)")
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32", help="precision of ours (upstream fp32)")
    parser.add_argument("--skip-slow-upstream", action="store_true", help=f"skip upstream {sorted(SLOW_UPSTREAM)}")
    parser.add_argument("--skip-upstream", action="store_true", help="time ours only")
    parser.add_argument("--medium", action="store_true", help="also the medium architecture at 10 s")
    parser.add_argument("--mixed", action="store_true", help="also a mixed-duration batch (10 + 60 + 120 s)")
    parser.add_argument("--json", default=None, help="also write the results to this file")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--impl", help=argparse.SUPPRESS)
    parser.add_argument("--variant", default="small", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return

    sys.path.insert(0, HERE)
    if args.cases:
        cases = args.cases.split(",")
    elif args.quick:
        cases = list(QUICK_CASES)
    else:
        cases = list(SMALL_CASES)
    cases += MEDIUM_CASES if args.medium else []
    cases += MIXED_CASES if args.mixed else []

    import platform

    import torch

    print(
        f"# machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}"
    )
    print(f"# threads: {torch.get_num_threads()}; ours in {args.dtype}, upstream in fp32; repeats {args.repeats}")
    for variant in sorted({"medium" if c.startswith("medium") else "small" for c in cases}):
        prepare_cache(variant)
    results = {"matmul_before": run_worker("matmul", "ours", args)}
    if args.dtype == "bf16":
        results["accuracy"] = run_worker("accuracy", "ours", args)
    for case in cases:
        for impl in ("ours", "upstream"):
            if impl == "upstream" and (
                args.skip_upstream or case in OURS_ONLY or (args.skip_slow_upstream and case in SLOW_UPSTREAM)
            ):
                results[f"{case}/{impl}"] = {"skipped": True}
                continue
            print(f"# running {case} ({impl}) ...", file=sys.stderr, flush=True)
            results[f"{case}/{impl}"] = run_worker(case, impl, args)
        print(f"# partial: {case} " + json.dumps({k: v for k, v in results.items() if k.startswith(case + "/")}))
        sys.stdout.flush()
    results["matmul_after"] = run_worker("matmul", "ours", args)
    report(results, cases, args)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=1)


def report(results, cases, args) -> None:
    matmul = {k: max(results["matmul_before"].get(k, 0), results["matmul_after"].get(k, 0)) for k in ("fp32", "bf16")}
    peak = matmul[args.dtype]
    print(
        f"# matmul throughput (1024-wide GEMM, best of before/after): fp32 {matmul['fp32']:.0f} GFLOP/s, "
        f"bf16 {matmul['bf16']:.0f} GFLOP/s"
    )
    if "accuracy" in results:
        acc = results["accuracy"]
        print(
            f"# bf16 accuracy vs fp32: DiT rel. error {acc.get('dit_rel_err', float('nan')):.2e} (max-abs rel. "
            f"{acc.get('dit_max_rel_err', float('nan')):.2e}); 30 s x 8 steps: latent SNR "
            f"{acc.get('latent_snr_db', float('nan')):.1f} dB, audio SNR {acc.get('audio_snr_db', float('nan')):.1f} dB "
            f"(bf16 DiT + fp32 SAME: {acc.get('audio_snr_db_bf16_dit_fp32_same', float('nan')):.1f} dB); bf16 SAME "
            f"decode of the same latents {acc.get('decode_snr_db', float('nan')):.1f} dB; fp32 SAME with its latents "
            f"perturbed at -60 dB: {acc.get('fp32_decode_sensitivity_snr_db', float('nan')):.1f} dB"
        )
    header = "| case | ours (s) | upstream (s) | ours/upstream | ours GFLOP/s (% of matmul) | peak RSS ours / upstream (GB) |"
    print(header)
    print("|" + "---|" * 6)
    for case in cases:
        ours, upstream = results[f"{case}/ours"], results[f"{case}/upstream"]

        def fmt_time(r):
            if r.get("skipped"):
                return "skipped"
            if "error" in r:
                return "error"
            return f"{statistics.median(r['times']):.2f}"

        ratio = ""
        if "times" in ours and "times" in upstream:
            ratio = f"{statistics.median(ours['times']) / statistics.median(upstream['times']):.2f}"
        if case == "mixed_batch" and "alone_times" in ours:
            ratio = f"batch/alone {statistics.median(ours['times']) / statistics.median(ours['alone_times']):.2f}"
            upstream_time = f"alone: {statistics.median(ours['alone_times']):.2f}"
        else:
            upstream_time = fmt_time(upstream)
        gflops = ""
        if "flops" in ours and "times" in ours:
            achieved = ours["flops"] / statistics.median(ours["times"]) / 1e9
            gflops = f"{achieved:.0f} ({100 * achieved / peak:.0f}%)"
        rss = f"{ours.get('peak_rss_gb', float('nan')):.2f} / " + (
            f"{upstream['peak_rss_gb']:.2f}" if "peak_rss_gb" in upstream else "-"
        )
        print(f"| {case} | {fmt_time(ours)} | {upstream_time} | {ratio} | {gflops} | {rss} |")


if __name__ == "__main__":
    main()
