"""Builders of the tiny Stable Audio 3 model trained on the synthetic sound set (`pipelines/sa3-tiny/`).

No pretrained T5Gemma is available offline, so the tiny model gets its own frozen, randomly initialised T5Gemma encoder
and a word-level tokenizer over the caption words of [`~diffusers_sa3.training.synthetic_sounds`]. The autoencoder is a
SAME-S style model (chunked attention) and the transformer a small non-differential DiT; both are trained by the
scripts of `training_examples/` (see `training_examples/make_tiny_model.sh` for the whole recipe).
"""

import math
from typing import Dict, Iterable, List, Optional

import torch
from torch import nn

from ..models.autoencoder_same import SAMEAutoencoderModel
from ..models.transformer_stable_audio3 import StableAudio3Transformer
from ..pipelines.pipeline_stable_audio3 import StableAudio3Pipeline
from ..schedulers.scheduling_flow_match_ot import FlowMatchOTScheduler
from ..schedulers.scheduling_pingpong_adversarial import PingPongAdversarialScheduler


PAD_TOKEN, EOS_TOKEN, BOS_TOKEN, UNK_TOKEN = "<pad>", "<eos>", "<bos>", "<unk>"
SPECIAL_TOKENS = (PAD_TOKEN, EOS_TOKEN, BOS_TOKEN, UNK_TOKEN)  # ids 0, 1, 2, 3, as the T5Gemma tokenizer


# Last log-SNR of the tiny base pipeline's Euler schedule (official: 2.0, a last step from t = 0.14 straight to 0).
# The tiny SAME's latents scale with the loudness (a principal-component coder is linear): a quiet clip's latents have
# a standard deviation of 0.02-0.09 against 0.9 over the set, below the error such a last jump leaves (the generated
# latents of quiet prompts were then the leftover noise, 0.09, whatever the prompt); ending at 6.0 takes the schedule
# down to t = 0.003 (50 steps).
TINY_LOGSNR_END = 6.0

# Initialisations of the tiny SAME (`build_initial_pipeline(same_init=...)`).
SAME_INITS = ("random", "pca", "gain_shape")


def build_word_tokenizer(vocabulary: Iterable[str], model_max_length: int = 64):
    r"""
    A word-level fast tokenizer over `vocabulary` (e.g. [`caption_vocabulary`] of the synthetic captions).

    Text is lower-cased and split on whitespace (and punctuation); each word maps to one id, unknown words to `<unk>`.
    Ids 0-3 are `<pad>`, `<eos>`, `<bos>`, `<unk>` (the T5Gemma convention); every sequence is wrapped as
    `<bos> ... <eos>` and padded on the right.

    Args:
        vocabulary (`Iterable[str]`): The words. Duplicates and special tokens are ignored; the order of first
            occurrence (after lower-casing) sets the ids.
        model_max_length (`int`, defaults to 64): The tokenizer's `model_max_length`.

    Returns:
        [`~transformers.PreTrainedTokenizerFast`], which round-trips through `save_pretrained` and
        `AutoTokenizer.from_pretrained`.
    """
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    vocab = {token: index for index, token in enumerate(SPECIAL_TOKENS)}
    for word in vocabulary:
        if not isinstance(word, str) or not word.strip() or len(word.split()) != 1:
            raise ValueError(
                f"`vocabulary` must hold single words without whitespace, got {word!r}; pass the caption words, e.g. "
                "`caption_vocabulary(dataset_dir)`."
            )
        word = word.lower()
        if word not in vocab:
            vocab[word] = len(vocab)
    if len(vocab) == len(SPECIAL_TOKENS):
        raise ValueError("`vocabulary` is empty; pass the caption words, e.g. `caption_vocabulary(dataset_dir)`.")

    tokenizer = Tokenizer(WordLevel(vocab=vocab, unk_token=UNK_TOKEN))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS_TOKEN} $A {EOS_TOKEN}",
        pair=f"{BOS_TOKEN} $A {EOS_TOKEN} $B {EOS_TOKEN}",
        special_tokens=[(BOS_TOKEN, vocab[BOS_TOKEN]), (EOS_TOKEN, vocab[EOS_TOKEN])],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        unk_token=UNK_TOKEN,
        padding_side="right",
        truncation_side="right",
        model_max_length=model_max_length,
    )


def build_tiny_text_encoder(
    vocab_size: int,
    hidden_size: int = 64,
    num_hidden_layers: int = 2,
    num_attention_heads: int = 2,
    head_dim: int = 32,
    intermediate_size: int = 128,
    seed: int = 0,
    dtype: torch.dtype = torch.bfloat16,
    embedding_std: Optional[float] = None,
):
    r"""
    A tiny, randomly initialised (seeded) and frozen T5Gemma encoder with the layout of the released one (alternating
    sliding / full attention, one key-value head, tied embeddings), stored in `dtype` (bf16, as the released encoder).

    Args:
        vocab_size (`int`): Size of the tokenizer's vocabulary (`len(tokenizer)`).
        hidden_size (`int`, defaults to 64): Width of the encoder states, the transformer's `cross_attention_dim`.
        num_hidden_layers (`int`, defaults to 2): Encoder layers.
        num_attention_heads (`int`, defaults to 2): Query heads.
        head_dim (`int`, defaults to 32): Width of each head.
        intermediate_size (`int`, defaults to 128): Feed-forward width.
        seed (`int`, defaults to 0): Seed of the random initialisation.
        dtype (`torch.dtype`, defaults to `torch.bfloat16`): Weights dtype.
        embedding_std (`float`, *optional*): Standard deviation of the token embeddings; by default
            `hidden_size ** -0.5`, so that after the encoder's `sqrt(hidden_size)` scaling a token vector has unit RMS,
            as large as each post-normed attention and feed-forward output added to it. (The library's 0.02 leaves the
            tokens 8x smaller than those branches at width 64: the states are then mostly their sentence's mean, and a
            nearest-centroid test recovers a state's word for 10 % of the caption tokens instead of 94 %.)

    Returns:
        [`~transformers.T5GemmaEncoderModel`] in eval mode without gradients.
    """
    from transformers import T5GemmaConfig, T5GemmaEncoderModel, T5GemmaModuleConfig

    if vocab_size <= len(SPECIAL_TOKENS):
        raise ValueError(f"`vocab_size` must exceed the {len(SPECIAL_TOKENS)} special tokens, got {vocab_size}.")
    if embedding_std is not None and not embedding_std > 0:
        raise ValueError(f"`embedding_std` must be positive (or None for hidden_size ** -0.5), got {embedding_std}.")
    module = {
        "vocab_size": vocab_size,
        "hidden_size": hidden_size,
        "intermediate_size": intermediate_size,
        "num_hidden_layers": num_hidden_layers,
        "num_attention_heads": num_attention_heads,
        "num_key_value_heads": 1,
        "head_dim": head_dim,
        "query_pre_attn_scalar": head_dim,
        "layer_types": ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(num_hidden_layers)],
        "sliding_window": 4096,
        "max_position_embeddings": 8192,
        "hidden_activation": "gelu_pytorch_tanh",
        "pad_token_id": 0,
        "eos_token_id": 1,
        "bos_token_id": 2,
        "dropout_rate": 0.0,
        "attention_dropout": 0.0,
    }
    decoder = dict(
        module, num_hidden_layers=1, layer_types=["sliding_attention"], cross_attention_hidden_size=hidden_size
    )
    config = T5GemmaConfig(
        encoder=T5GemmaModuleConfig(**module),
        decoder=T5GemmaModuleConfig(**decoder),
        vocab_size=vocab_size,
        is_encoder_decoder=False,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
        dropout_rate=0.0,
        attention_dropout=0.0,
        tie_word_embeddings=True,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        text_encoder = T5GemmaEncoderModel(config)
        embeddings = text_encoder.get_input_embeddings()
        with torch.no_grad():
            embeddings.weight.normal_(0.0, hidden_size**-0.5 if embedding_std is None else embedding_std)
            embeddings.weight[config.encoder.pad_token_id].zero_()
    return text_encoder.to(dtype).eval().requires_grad_(False)


def build_tiny_same(
    latent_channels: int = 32,
    num_attention_heads: int = 2,
    attention_head_dim: int = 32,
    num_layers: int = 2,
    seed: int = 0,
    patch_size: int = 256,
    resampling_stride: int = 16,
    new_token_std: float = 0.1,
    branch_init_std: float = 0.02,
    input_gain: float = 20.0,
    decoder_kernel_size: int = 3,
    num_decoder_layers: Optional[int] = None,
) -> SAMEAutoencoderModel:
    r"""
    A tiny SAME-S style autoencoder (chunked attention of 32 latent frames, midpoint shift, conv mapping in the
    decoder), 4096x downsampling like the released ones, randomly initialised from `seed`.

    Initialisation (for training from scratch; trained checkpoints overwrite it): the official one draws the shared
    resampling token `N(0, 1e-5)` and zeroes every residual branch's output projection. Then the token's query is
    about 0, so both maps of the differential attention are uniform and cancel exactly: the encoder's output tokens,
    hence the latents, do not depend on the input at all, and with the training-time bottleneck noise the decoder
    learns to ignore its latents before they carry anything (measured on the synthetic set: latent dependence 0.05
    after 200 steps). Here the token is drawn `N(0, new_token_std)`, the zeroed projections `N(0, branch_init_std)`,
    and the encoder's input patch projection is scaled by `input_gain`, so the latents depend on the input from the
    first step. The token must stay small next to the input: drawn `N(0, 1)` (stop 12) it swamps the patches (the
    latents' variation over time 0.008 of their channel spread, against 0.14 here) and a single 1 s clip could not be
    memorised (0 dB SNR after 300 steps; 11 dB after 200 with these defaults; see training_examples/README.md).
    `new_token_std=0, branch_init_std=0, input_gain=1` is the official initialisation.

    Args:
        latent_channels (`int`, defaults to 32): Latent channels, the transformer's `in_channels`.
        num_attention_heads (`int`, defaults to 2): Heads of the encoder and decoder transformers.
        attention_head_dim (`int`, defaults to 32): Width of each head (the model width is heads x head dim).
        num_layers (`int`, defaults to 2): Transformer layers of the encoder (and of the decoder, unless
            `num_decoder_layers` is given).
        seed (`int`, defaults to 0): Seed of the random initialisation.
        patch_size (`int`, defaults to 256): Samples per patch. The first and last layers map `2 * patch_size` values
            to the model width and back, so a width below `2 * patch_size` caps what the decoder can represent: the
            shipped tiny model uses 64-sample patches at width 128.
        resampling_stride (`int`, defaults to 16): Patches per latent frame (`patch_size * resampling_stride` samples
            per latent; 4096 like the released models when the product is kept). Attention chunks span two latent
            frames (`2 * resampling_stride` patches), as in SAME-S.
        new_token_std (`float`, defaults to 0.1): Std of the encoder's and decoder's shared resampling tokens (0: the
            official `N(0, 1e-5)`).
        branch_init_std (`float`, defaults to 0.02): Std of every resampling block's output projections (0: zero, as
            officially).
        input_gain (`float`, defaults to 20.0): Factor on the weight-norm gain of the encoder's input projection (1:
            official).
        decoder_kernel_size (`int`, defaults to 3): Kernel of the decoder's output convolution (3 as SAME-S; 1 as
            SAME-L, a third of its weights).
        num_decoder_layers (`int`, *optional*): Transformer layers of the decoder (default: `num_layers`).
    """
    if input_gain <= 0:
        raise ValueError(f"`input_gain` must be positive, got {input_gain}: 1 keeps the official input projection.")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = SAMEAutoencoderModel(
            latent_channels=latent_channels,
            num_attention_heads=num_attention_heads,
            attention_head_dim=attention_head_dim,
            num_encoder_layers=num_layers,
            num_decoder_layers=num_layers if num_decoder_layers is None else num_decoder_layers,
            sliding_window=None,
            attention_chunk_size=2 * resampling_stride,
            patch_size=patch_size,
            resampling_stride=resampling_stride,
            chunk_midpoint_shift=True,
            decoder_sinusoidal_blocks=0,
            decoder_kernel_size=decoder_kernel_size,
        )
        if new_token_std:
            for resampler in (model.encoder.resampler, model.decoder.resampler):
                nn.init.normal_(resampler.new_tokens, std=new_token_std)
        if input_gain != 1:
            with torch.no_grad():
                model.encoder.conv_in.weight_g.mul_(input_gain)
        if branch_init_std:
            for resampler in (model.encoder.resampler, model.decoder.resampler):
                for block in resampler.transformer_blocks:
                    nn.init.normal_(block.attn.to_out.weight, std=branch_init_std)
                    nn.init.normal_(block.ff.proj_out.weight, std=branch_init_std)
        return model


def _copy_previous_token_block(block: nn.Module, dim: int, head_dim: int, scale: float = 1.0) -> None:
    """
    Sets one transformer block of a stride-1 resampling block so that every new token takes the value of the token
    just before it (its own patch or latent), through attention alone.

    The queries and keys carry no content; their norms' biases put one rotated pair at phases `-1` and `0` radians
    (the first RoPE frequency is 1 rad per position), so the plain map's scores are `25 cos(delta + 1)`: the key one
    position back wins by e^11 or more. The differential map must cancel nothing: its query and key read a flag channel
    (channel 0, 1 in the new tokens, 0 in the patches and latents) on a non-rotated dim, so it attends to the new
    tokens, whose values are 0. The values are the block input (DyT made linear: alpha 0.005, weight 200) without the
    flag; `to_out` is the identity and the feed-forward branch is zero. `scale`: the size of the block's input
    tokens (the flag stays 1); the other norms are set for inputs of that size.
    """
    rotated = head_dim // 2
    flag_dim = rotated  # the first non-rotated dim
    heads = dim // head_dim
    block.norm1.alpha.fill_(0.005 / scale)
    block.norm1.weight.fill_(200.0 * scale)
    block.norm1.bias.zero_()
    block.norm2.alpha.fill_(4.0 / scale)
    weight = torch.zeros(5 * dim, dim)  # rows [q | k | v | q_diff | k_diff]
    weight[2 * dim : 3 * dim] = torch.eye(dim)
    weight[2 * dim : 3 * dim, 0] = 0.0
    for head in range(heads):
        weight[3 * dim + head * head_dim + flag_dim, 0] = 1.0
        weight[4 * dim + head * head_dim + flag_dim, 0] = 1.0
    block.attn.to_qkv.weight.copy_(weight)
    # Scores after SDPA's 1 / sqrt(head_dim): positional 25 cos(delta + 1), flag-to-flag about 70.
    radius = math.sqrt(25.0 * math.sqrt(head_dim))
    flag_gain = math.sqrt(70.0 * math.sqrt(head_dim))
    for norm, phase in ((block.attn.norm_q, -1.0), (block.attn.norm_k, 0.0)):
        norm.alpha.fill_(4.0)
        norm.weight.zero_()
        norm.weight[flag_dim] = flag_gain
        norm.bias.zero_()
        norm.bias[0] = radius * math.cos(phase)
        norm.bias[rotated // 2] = radius * math.sin(phase)
    block.attn.to_out.weight.copy_(torch.eye(dim))
    block.ff.proj_out.weight.zero_()
    block.ff.proj_out.bias.zero_()


def _set_weight_norm_conv(conv: nn.Module, weight: torch.Tensor) -> None:
    """Loads `weight` `(out, in, kernel)` into a [`SAMEWeightNormConv1d`] (`weight_g` = row norms), bias 0."""
    norms = weight.flatten(1).norm(dim=1)
    weight = weight.clone()
    weight[norms == 0, 0, 0] = 1.0  # a zero row keeps a direction; its gain below is 0
    conv.weight_v.copy_(weight)
    conv.weight_g.copy_(norms.view(-1, 1, 1))
    conv.bias.zero_()


def _frame_components(clips: Iterable, patch: int, minimum: int, max_frames: int, seed: int):
    """
    The non-silent mono `patch`-sample frames of stereo `clips` (at most `max_frames`, a seeded draw; at least
    `minimum`) in float64, and their principal components (no centring): `(frames, singular values, basis rows)`.
    """
    frames = []
    for clip in clips:
        audio = torch.as_tensor(clip, dtype=torch.float32)
        if audio.ndim != 2 or audio.shape[0] != 2:
            raise ValueError(f"`clips` must hold `(2, samples)` stereo arrays, got shape {tuple(audio.shape)}.")
        usable = audio.shape[-1] // patch * patch
        mono = audio[:, :usable].reshape(2 * (usable // patch), patch)
        frames.append(mono[mono.abs().amax(dim=1) > 1e-4])
    frames = torch.cat(frames) if frames else torch.zeros(0, patch, dtype=torch.float32)
    if len(frames) < minimum:
        raise ValueError(
            f"`clips` hold {len(frames)} non-silent {patch}-sample frames; at least {minimum} are needed."
        )
    if len(frames) > max_frames:
        generator = torch.Generator().manual_seed(seed)
        frames = frames[torch.randperm(len(frames), generator=generator)[:max_frames]]
    frames = frames.double()  # float32 until here: the draw above is the same, and the conversion is exact
    _, singular, basis = torch.linalg.svd(frames, full_matrices=False)
    return frames, singular, basis


# The decoder's tokens are this many times larger than its latents, so the official new-token noise (0.01, absolute)
# is 1 / 100 of the signal (-40 dB at scale 1 would fill the silences); its norms are scaled to match.
_DECODER_SCALE = 100.0


def _set_analysis_and_copy_blocks(model: SAMEAutoencoderModel, basis: torch.Tensor, input_scale: float) -> None:
    """
    The part of the principal-component constructions both share: the encoder's input projection puts component k of
    audio channel c (`basis` rows, float) in token channel `1 + 2k + c`, divided by `input_scale`; the encoder's and
    decoder's new tokens are the flag (channel 0); their first blocks copy the token before each new token into it
    ([`_copy_previous_token_block`], the decoder's at `_DECODER_SCALE`); the other blocks are identities (zero
    attention output and feed-forward output, the official initialisation).
    """
    config = model.config
    width, head_dim, patch = (
        config.num_attention_heads * config.attention_head_dim,
        config.attention_head_dim,
        config.patch_size,
    )
    rows = 2 * len(basis)
    analysis = torch.zeros(width, 2 * patch, 1)
    for channel in range(2):
        analysis[1 + channel : 1 + rows : 2, channel * patch : (channel + 1) * patch, 0] = basis
    conv_in = model.encoder.conv_in
    _set_weight_norm_conv(conv_in, analysis)
    conv_in.weight_g.zero_()
    conv_in.weight_g[1 : 1 + rows] = 1.0 / input_scale
    for resampler, scale in ((model.encoder.resampler, 1.0), (model.decoder.resampler, _DECODER_SCALE)):
        resampler.new_tokens.zero_()
        resampler.new_tokens[..., 0] = 1.0
        _copy_previous_token_block(resampler.transformer_blocks[0], width, head_dim, scale)
        for block in resampler.transformer_blocks[1:]:
            block.norm1.alpha.fill_(4.0 / scale)
            block.norm2.alpha.fill_(4.0 / scale)
            block.attn.to_out.weight.zero_()
            block.ff.proj_out.weight.zero_()
            block.ff.proj_out.bias.zero_()


@torch.no_grad()
def pca_initialise_same(model: SAMEAutoencoderModel, clips: Iterable, max_frames: int = 20000, seed: int = 0) -> Dict:
    r"""
    Data-dependent initialisation of a one-patch-per-latent tiny SAME (`resampling_stride=1`) as a principal-component
    autoencoder of its audio frames, written into the official architecture (a starting point that
    `train_autoencoder.py` then trains).

    Each channel's `patch_size`-sample frames share one basis, the top principal components of the mono frames of
    `clips` (no centring). The encoder's input projection computes `(width - 1) // 2` coefficients per channel
    (channel 0 of the width is a flag), its first transformer block copies each patch token into the new token that
    follows it ([`_copy_previous_token_block`]), the other blocks start as identities (zero branches, the official
    initialisation), and the output projection keeps the top `latent_channels / 2` components of both channels, scaled
    to unit standard deviation. The decoder mirrors it; its output convolution (centre tap) synthesises the frames from
    the same basis. So the model starts as the best linear per-channel coder of these frames: channel balance is kept
    exactly, and tones at the set's pitches are coded well (measured on the synthetic set with 1,024-sample patches
    and 64 latents: 147 / 440 / 880 Hz sines at 20 / 30 / 14 dB SNR, stereo side 100 % on held-out clips).

    Args:
        model ([`SAMEAutoencoderModel`]): a chunked-attention model with `resampling_stride=1`, an even
            `latent_channels` and `latent_channels < width`, modified in place.
        clips (iterable of `(2, samples)` arrays or tensors): training audio at the model's rate.
        max_frames (`int`, defaults to 20000): mono frames drawn (seeded) for the decomposition.
        seed (`int`, defaults to 0): seed of that draw.

    Returns:
        `dict`: `energy_kept` (the share of the frames' energy in the kept components) and `frames` (frames used).
    """
    config = model.config
    width, head_dim = config.num_attention_heads * config.attention_head_dim, config.attention_head_dim
    patch, latents = config.patch_size, config.latent_channels
    per_channel = (width - 1) // 2
    if config.resampling_stride != 1 or config.sliding_window is not None:
        raise ValueError(
            f"`model` must have `resampling_stride=1` and chunked attention (`sliding_window=None`), got "
            f"resampling_stride={config.resampling_stride}, sliding_window={config.sliding_window}; build it with "
            "`build_tiny_same(resampling_stride=1, ...)`."
        )
    if config.audio_channels != 2 or latents % 2 or latents // 2 > per_channel or head_dim < 4:
        raise ValueError(
            f"`model` needs stereo audio, an even `latent_channels` of at most {2 * per_channel} (width {width} - 1, "
            f"rounded down to even) and a head dim of at least 4; got audio_channels={config.audio_channels}, "
            f"latent_channels={latents}, attention_head_dim={head_dim}."
        )
    frames, singular, basis = _frame_components(clips, patch, per_channel, max_frames, seed)
    basis = basis[:per_channel]
    coefficients = frames @ basis.T
    input_scale = coefficients.std().item()
    latent_scale = coefficients[:, : latents // 2].std().item()
    basis = basis.float()

    # Token channel 1 + 2k + c: component k of audio channel c (component-major, so the first latents are the top
    # components of both channels); channel 0 is the new tokens' flag.
    _set_analysis_and_copy_blocks(model, basis, input_scale)
    decoder_scale = _DECODER_SCALE
    index = torch.arange(latents)
    model.encoder.proj_out.weight.zero_()
    model.encoder.proj_out.weight[index, 1 + index] = input_scale / latent_scale
    model.encoder.proj_out.bias.zero_()
    bottleneck = model.bottleneck
    bottleneck.scale.fill_(1.0)
    bottleneck.bias.zero_()
    bottleneck.running_std.fill_(1.0)
    model.decoder.proj_in.weight.zero_()
    model.decoder.proj_in.weight[1 + index, index] = decoder_scale
    model.decoder.proj_in.bias.zero_()
    kernel = config.decoder_kernel_size
    synthesis = torch.zeros(2 * patch, width, kernel)
    for channel in range(2):
        synthesis[channel * patch : (channel + 1) * patch, 1 + channel : 1 + latents : 2, kernel // 2] = (
            basis[: latents // 2].T * latent_scale / decoder_scale
        )
    _set_weight_norm_conv(model.decoder.conv_out, synthesis)
    energy = float((singular[: latents // 2] ** 2).sum() / (singular**2).sum())
    return {"energy_kept": energy, "frames": len(frames)}


def _silu_ramps(x: torch.Tensor, knots: torch.Tensor, widths: torch.Tensor, falling: bool) -> torch.Tensor:
    """SiLU ramps `silu((knot - x) / width)` (falling) or `silu((x - knot) / width)`, one column per knot."""
    z = (knots - x[:, None]) / widths if falling else (x[:, None] - knots) / widths
    return torch.nn.functional.silu(z)


def _fit_ramps(basis: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, ridge: float = 1e-10):
    """Weighted ridge least squares of `target` on the ramp columns plus a constant: `(ramp weights, constant)`."""
    design = torch.cat([basis, torch.ones_like(target)[:, None]], dim=1) * weight[:, None]
    scale = design.norm(dim=0).clamp(min=1e-30)
    design = design / scale
    gram = design.T @ design + ridge * torch.eye(design.shape[1], dtype=design.dtype)
    solution = torch.linalg.solve(gram, design.T @ (target * weight)) / scale
    return solution[:-1], solution[-1]


def _linear_norm(norm: nn.Module, alpha: float, channels: torch.Tensor, one: int) -> None:
    """Sets a DyT norm to the identity on `channels` (in its linear range: `|alpha * x|` small), 0 on the others
    and the constant 1 on channel `one` (through its bias)."""
    norm.alpha.fill_(alpha)
    norm.weight.zero_()
    norm.weight[channels] = 1.0 / alpha
    norm.bias.zero_()
    norm.bias[one] = 1.0


def _zero_feed_forward(block: nn.Module) -> None:
    block.ff.proj_in.weight.zero_()
    block.ff.proj_in.bias.zero_()
    block.ff.proj_out.weight.zero_()
    block.ff.proj_out.bias.zero_()


def _set_products(block: nn.Module, pairs, one: int, factor: float, gate_unit: float = 20.0) -> None:
    """
    Feed-forward of `block` replacing channel `x` by `factor * x * y` for each `(x, y)` channel pair, exactly: a
    SwiGLU unit with value and gate `z` gives `z * silu(z)`, and `z * silu(z) + (-z) * silu(-z) = z^2`, so four units
    give `(x + y)^2 - (x - y)^2 = 4 x y`; a fifth (gate the constant `gate_unit`) removes `x`.
    """
    ff = block.ff
    inner = ff.proj_out.in_features
    value, gate = ff.proj_in.weight[:inner], ff.proj_in.weight[inner:]
    ff.proj_in.weight.zero_()
    ff.proj_in.bias.zero_()
    ff.proj_out.weight.zero_()
    ff.proj_out.bias.zero_()
    unit = 0
    for x, y in pairs:
        for sign_y, out in ((1.0, 0.25 * factor), (-1.0, -0.25 * factor)):
            for sign in (1.0, -1.0):
                for rows in (value, gate):
                    rows[unit, x] = sign
                    rows[unit, y] = sign * sign_y
                ff.proj_out.weight[x, unit] = out
                unit += 1
        value[unit, x] = 1.0
        gate[unit, one] = gate_unit
        ff.proj_out.weight[x, unit] = -1.0 / torch.nn.functional.silu(torch.tensor(gate_unit)).item()
        unit += 1


@torch.no_grad()
def gain_shape_initialise_same(
    model: SAMEAutoencoderModel,
    clips: Iterable,
    max_frames: int = 20000,
    seed: int = 0,
    floor: float = 0.01,
    num_units: int = 64,
) -> Dict:
    r"""
    Data-dependent initialisation of a one-patch-per-latent tiny SAME as a gain-shape coder of the principal-component
    coefficients of its audio frames, written into the official architecture.

    The principal-component SAME ([`pca_initialise_same`]) is linear, so its latents scale with the loudness: over the
    synthetic set their RMS spans 0.08-1.93 even at two fixed levels, and a tiny DiT trained on them does not learn
    the prompts' stereo side, while on the same latents scaled to unit RMS per clip it does within 300 steps
    (training_examples/README, stops 21-22). Here, per latent frame and audio channel, `K = latent_channels / 2 - 1`
    principal-component coefficients `c` are divided by their RMS `g = sqrt(mean(c^2) + floor^2)` (the shape, unit
    RMS in every sounding frame) and `log g` becomes its own latent (normalised over the set), so the level, the side
    and the silences are means of two latents and the shape keeps one scale.

    Encoder (`num_encoder_layers >= 3`): the input projection computes the coefficients (in units of their standard
    deviation); block 1 copies each patch token into its new token ([`_copy_previous_token_block`]) and its
    feed-forward computes `e = mean(c^2)` per channel exactly (SwiGLU squares); block 2's feed-forward computes
    `1 / g` and `log g` from `e` with `num_units` SiLU ramps per channel (least-squares fits on a log grid); block 3's
    multiplies each coefficient by `1 / g` (exact SwiGLU products). Decoder (`num_decoder_layers >= 2`): block 1
    copies each latent into its new token and computes `g = exp(log g)` with `num_units` SiLU ramps (fitted to the
    encoder's own `1 / g`, so that encoding then decoding multiplies by 1 up to the fit error), block 2 multiplies
    the shape back by `g`, and the output convolution synthesises the frames from the basis. Further blocks are
    identities.

    Args:
        model ([`SAMEAutoencoderModel`]): a chunked-attention stereo model with `resampling_stride=1`, an even
            `latent_channels` with `latent_channels + 6 <= width`, and a feed-forward of at least
            `5 * (latent_channels - 2)` and `num_units` units; modified in place.
        clips (iterable of `(2, samples)` arrays or tensors): training audio at the model's rate.
        max_frames (`int`, defaults to 20000): mono frames drawn (seeded) for the decomposition.
        seed (`int`, defaults to 0): seed of that draw.
        floor (`float`, defaults to 0.01): RMS (in units of the coefficients' standard deviation) below which a frame
            counts as silent: `g` never falls below it, so silence codes as a zero shape at the lowest gain.
        num_units (`int`, defaults to 64): SiLU ramps of each fitted function per channel.

    Returns:
        `dict`: `energy_kept` (share of the frames' energy in the kept components), `frames`, `gain_mean` and
        `gain_std` (of `log g` over the non-silent frames, its normalisation), and `fit_error` (the largest relative
        error of `encode -> decode` on the gain over the frames' range).
    """
    config = model.config
    width, head_dim = config.num_attention_heads * config.attention_head_dim, config.attention_head_dim
    patch, latents = config.patch_size, config.latent_channels
    inner = int(width * config.mlp_ratio)
    shapes = latents // 2 - 1
    if config.resampling_stride != 1 or config.sliding_window is not None:
        raise ValueError(
            f"`model` must have `resampling_stride=1` and chunked attention (`sliding_window=None`), got "
            f"resampling_stride={config.resampling_stride}, sliding_window={config.sliding_window}; build it with "
            "`build_tiny_same(resampling_stride=1, ...)`."
        )
    if config.num_encoder_layers < 3 or config.num_decoder_layers < 2:
        raise ValueError(
            f"`model` needs at least 3 encoder and 2 decoder layers, got {config.num_encoder_layers} and "
            f"{config.num_decoder_layers}; build it with `build_tiny_same(num_layers=3, num_decoder_layers=2, ...)`."
        )
    if (
        config.audio_channels != 2
        or latents % 2
        or shapes < 1
        or latents + 6 > width
        or head_dim < 4
        or inner < max(5 * 2 * shapes, 2 * num_units)
    ):
        raise ValueError(
            f"`model` needs stereo audio, an even `latent_channels` of at least 4 and at most width - 6 ({width - 6}), "
            f"a head dim of at least 4 and a feed-forward of at least {max(5 * 2 * shapes, 2 * num_units)} units; "
            f"got audio_channels={config.audio_channels}, latent_channels={latents}, attention_head_dim={head_dim}, "
            f"feed-forward {inner} (width x mlp_ratio)."
        )
    if not floor > 0 or num_units < 4:
        raise ValueError(f"`floor` must be positive and `num_units` at least 4, got {floor} and {num_units}.")
    frames, singular, basis = _frame_components(clips, patch, shapes, max_frames, seed)
    basis = basis[:shapes]
    coefficients = frames @ basis.T
    input_scale = coefficients.std().item()
    mean_square = (coefficients / input_scale).pow(2).mean(dim=1)
    eps = floor**2
    log_gain = 0.5 * torch.log(mean_square + eps)
    gain_mean, gain_std = log_gain.mean().item(), log_gain.std().item()

    # Fits in float64. The encoder's functions of e: falling ramps with knots on a log grid up to 4x the set's
    # largest mean square (beyond it both are constant, and so is their product with the decoder's gain).
    e_max = 4.0 * mean_square.max().item()
    e_knots = torch.logspace(math.log10(eps / 100), math.log10(e_max), num_units, dtype=torch.float64)
    e_widths = e_knots * (e_knots[1] / e_knots[0] - 1.0)
    e_grid = torch.cat(
        [
            torch.zeros(1, dtype=torch.float64),
            torch.logspace(math.log10(eps / 1e4), math.log10(e_max), 4000, dtype=torch.float64),
        ]
    )
    e_ramps = _silu_ramps(e_grid, e_knots, e_widths, falling=True)
    inv_target = (e_grid + eps).rsqrt()
    inv_weights, inv_const = _fit_ramps(e_ramps, inv_target, 1.0 / inv_target)
    log_target = 0.5 * torch.log(e_grid + eps)
    log_weights, log_const = _fit_ramps(e_ramps, log_target, torch.ones_like(log_target))
    inv_fit = e_ramps @ inv_weights + inv_const
    log_fit = e_ramps @ log_weights + log_const
    # The decoder's gain of log g: rising ramps on a uniform grid, fitted to 1 / (the encoder's 1 / g) at the
    # encoder's own log g, and to exp beyond that range (generated latents may leave it).
    low, high = log_fit.min().item() - 2.0, log_fit.max().item() + 2.0
    g_knots = torch.linspace(low, high, num_units, dtype=torch.float64)
    g_width = (high - low) / (num_units - 1)
    g_outside = torch.cat(
        [
            torch.linspace(low, log_fit.min().item(), 200, dtype=torch.float64)[:-1],
            torch.linspace(log_fit.max().item(), high, 200, dtype=torch.float64)[1:],
        ]
    )
    g_grid = torch.cat([log_fit, g_outside])
    g_target = torch.cat([1.0 / inv_fit, torch.exp(g_outside)])
    g_ramps = _silu_ramps(g_grid, g_knots, torch.full_like(g_knots, g_width), falling=False)
    gain_weights, gain_const = _fit_ramps(g_ramps, g_target, 1.0 / g_target)
    round_trip = inv_fit * (
        _silu_ramps(log_fit, g_knots, torch.full_like(g_knots, g_width), False) @ gain_weights + gain_const
    )
    fit_error = (round_trip - 1).abs().max().item()

    # Token channels: 0 the new tokens' flag; 1 + 2k + c component k of audio channel c; then per audio channel the
    # encoder's e, 1 / g and log g (the decoder's log g and g); the last channel reads as the constant 1.
    component = 1 + torch.arange(2 * shapes)
    first = 1 + 2 * shapes
    e_channels, inv_channels, log_channels = (torch.arange(first + 2 * i, first + 2 * i + 2) for i in range(3))
    one = width - 1

    _set_analysis_and_copy_blocks(model, basis.float(), input_scale)
    decoder_scale = _DECODER_SCALE

    # Encoder block 1: e = mean(c^2) per audio channel, two units per coefficient.
    largest = (coefficients.abs().max().item() / input_scale + 1.0 / floor) * 2
    squares = model.encoder.resampler.transformer_blocks[0]
    _linear_norm(squares.norm2, 0.01 / largest, component, one)
    _zero_feed_forward(squares)
    ff = squares.ff
    value, gate = ff.proj_in.weight[:inner], ff.proj_in.weight[inner:]
    for index, channel in enumerate(component.tolist()):
        for offset, sign in enumerate((1.0, -1.0)):
            unit = 2 * index + offset
            value[unit, channel] = sign
            gate[unit, channel] = sign
            ff.proj_out.weight[e_channels[(channel - 1) % 2], unit] = 1.0 / shapes
    # Encoder block 2: 1 / g and log g of e, the same ramps for both.
    functions = model.encoder.resampler.transformer_blocks[1]
    _linear_norm(functions.norm2, 0.01 / e_max, e_channels, one)
    _zero_feed_forward(functions)
    ff = functions.ff
    value, gate = ff.proj_in.weight[:inner], ff.proj_in.weight[inner:]
    for channel in range(2):
        for m in range(num_units):
            unit = channel * num_units + m
            gate[unit, e_channels[channel]] = -1.0 / e_widths[m].item()
            gate[unit, one] = (e_knots[m] / e_widths[m]).item()
            value[unit, one] = 1.0
            ff.proj_out.weight[inv_channels[channel], unit] = inv_weights[m].item()
            ff.proj_out.weight[log_channels[channel], unit] = log_weights[m].item()
        ff.proj_out.bias[inv_channels[channel]] = inv_const.item()
        ff.proj_out.bias[log_channels[channel]] = log_const.item()
    # Encoder block 3: shape = c / g.
    products = model.encoder.resampler.transformer_blocks[2]
    _linear_norm(products.norm2, 0.01 / largest, torch.cat([component, inv_channels]), one)
    _set_products(products, [(c, inv_channels[(c - 1) % 2].item()) for c in component.tolist()], one, 1.0)

    index = torch.arange(2 * shapes)
    model.encoder.proj_out.weight.zero_()
    model.encoder.proj_out.bias.zero_()
    model.encoder.proj_out.weight[index, component] = 1.0
    for channel in range(2):
        model.encoder.proj_out.weight[2 * shapes + channel, log_channels[channel]] = 1.0 / gain_std
        model.encoder.proj_out.bias[2 * shapes + channel] = -gain_mean / gain_std
    bottleneck = model.bottleneck
    bottleneck.scale.fill_(1.0)
    bottleneck.bias.zero_()
    bottleneck.running_std.fill_(1.0)

    # Decoder: tokens are decoder_scale x (shape, log g); block 1 adds g, block 2 makes c = shape x g.
    model.decoder.proj_in.weight.zero_()
    model.decoder.proj_in.bias.zero_()
    model.decoder.proj_in.weight[component, index] = decoder_scale
    log_in, gain_in = e_channels, inv_channels  # the decoder's log g and g channels
    for channel in range(2):
        model.decoder.proj_in.weight[log_in[channel], 2 * shapes + channel] = decoder_scale * gain_std
        model.decoder.proj_in.bias[log_in[channel]] = decoder_scale * gain_mean
    gains = model.decoder.resampler.transformer_blocks[0]
    _linear_norm(gains.norm2, 0.01 / (decoder_scale * max(abs(low), abs(high))), log_in, one)
    _zero_feed_forward(gains)
    ff = gains.ff
    value, gate = ff.proj_in.weight[:inner], ff.proj_in.weight[inner:]
    for channel in range(2):
        for m in range(num_units):
            unit = channel * num_units + m
            gate[unit, log_in[channel]] = 1.0 / (g_width * decoder_scale)
            gate[unit, one] = -g_knots[m].item() / g_width
            value[unit, one] = decoder_scale
            ff.proj_out.weight[gain_in[channel], unit] = gain_weights[m].item()
        ff.proj_out.bias[gain_in[channel]] = decoder_scale * gain_const.item()
    products = model.decoder.resampler.transformer_blocks[1]
    largest_decoded = decoder_scale * (10.0 + math.exp(high))
    _linear_norm(products.norm2, 0.01 / largest_decoded, torch.cat([component, gain_in]), one)
    pairs = [(c, gain_in[(c - 1) % 2].item()) for c in component.tolist()]
    _set_products(products, pairs, one, 1.0 / decoder_scale)

    kernel = config.decoder_kernel_size
    synthesis = torch.zeros(2 * patch, width, kernel)
    for channel in range(2):
        synthesis[channel * patch : (channel + 1) * patch, 1 + channel : first : 2, kernel // 2] = (
            basis.float().T * input_scale / decoder_scale
        )
    _set_weight_norm_conv(model.decoder.conv_out, synthesis)
    energy = float((singular[:shapes] ** 2).sum() / (singular**2).sum())
    return {
        "energy_kept": energy,
        "frames": len(frames),
        "gain_mean": gain_mean,
        "gain_std": gain_std,
        "fit_error": fit_error,
    }


def build_tiny_transformer(
    in_channels: int = 32,
    cross_attention_dim: int = 64,
    num_layers: int = 6,
    num_attention_heads: int = 2,
    attention_head_dim: int = 64,
    mlp_ratio: float = 4.0,
    num_memory_tokens: int = 16,
    seed: int = 0,
) -> StableAudio3Transformer:
    r"""
    A tiny non-differential Stable Audio 3 DiT, randomly initialised from `seed`.

    Args:
        in_channels (`int`, defaults to 32): Latent channels of the autoencoder.
        cross_attention_dim (`int`, defaults to 64): Width of the text encoder states.
        num_layers (`int`, defaults to 6): Transformer blocks.
        num_attention_heads (`int`, defaults to 2): Heads (the width is heads x head dim, 128 by default).
        attention_head_dim (`int`, defaults to 64): Width of each head.
        mlp_ratio (`float`, defaults to 4.0): Feed-forward width over model width.
        num_memory_tokens (`int`, defaults to 16): Learned memory tokens prepended to the latent sequence.
        seed (`int`, defaults to 0): Seed of the random initialisation.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return StableAudio3Transformer(
            in_channels=in_channels,
            num_layers=num_layers,
            num_attention_heads=num_attention_heads,
            attention_head_dim=attention_head_dim,
            cross_attention_dim=cross_attention_dim,
            mlp_ratio=mlp_ratio,
            num_memory_tokens=num_memory_tokens,
            use_differential_attention=False,
        )


def max_sample_size_for(
    max_seconds: float, headroom_seconds: float = 6.0, sampling_rate: int = 44100, alignment: int = 8192
) -> int:
    """Samples of `max_seconds` plus the pipeline's `headroom_seconds`, rounded up to a multiple of `alignment`."""
    if max_seconds <= 0:
        raise ValueError(f"`max_seconds` must be positive, got {max_seconds}.")
    return math.ceil((max_seconds + headroom_seconds) * sampling_rate / alignment) * alignment


def assemble_pipeline(
    vae: SAMEAutoencoderModel,
    transformer: StableAudio3Transformer,
    text_encoder,
    tokenizer,
    post_trained: bool = False,
    max_text_length: int = 32,
    max_seconds: float = 12.0,
    headroom_seconds: float = 6.0,
    scheduler: Optional[object] = None,
) -> StableAudio3Pipeline:
    r"""
    A [`StableAudio3Pipeline`] of the tiny components.

    Args:
        vae, transformer, text_encoder, tokenizer: The components.
        post_trained (`bool`, defaults to `False`): `True` gives the ping-pong scheduler of post-trained
            (`rf_denoiser`) checkpoints, `False` the Euler flow-matching one of base checkpoints.
        max_text_length (`int`, defaults to 32): Prompt tokens (padded and truncated), `<bos>` and `<eos>` included.
        max_seconds (`float`, defaults to 12.0): Longest duration the pipeline generates (sets `max_sample_size`).
        headroom_seconds (`float`, defaults to 6.0): Generation headroom after the requested duration.
        scheduler (*optional*): Overrides the scheduler chosen by `post_trained`.
    """
    text_width = text_encoder.config.encoder.hidden_size
    if text_width != transformer.config.cross_attention_dim:
        raise ValueError(
            f"`text_encoder` states are {text_width} wide but `transformer` expects "
            f"`cross_attention_dim` {transformer.config.cross_attention_dim}; build them with the same width."
        )
    if vae.config.latent_channels != transformer.config.in_channels:
        raise ValueError(
            f"`vae` has {vae.config.latent_channels} latent channels but `transformer` expects `in_channels` "
            f"{transformer.config.in_channels}; build them with the same latent width."
        )
    if scheduler is None:
        # The flow scheduler's lengths (timestep shift, silence augmentation) count this autoencoder's latent frames.
        scheduler = (
            PingPongAdversarialScheduler()
            if post_trained
            else FlowMatchOTScheduler(
                sampling_rate=vae.config.sampling_rate,
                downsampling_ratio=vae.downsampling_ratio,
                logsnr_end=TINY_LOGSNR_END,
            )
        )
    return StableAudio3Pipeline(
        vae=vae,
        transformer=transformer,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler=scheduler,
        max_text_length=max_text_length,
        max_sample_size=max_sample_size_for(max_seconds, headroom_seconds, vae.config.sampling_rate),
        headroom_seconds=headroom_seconds,
    )


def build_initial_pipeline(
    train_data_dir: str,
    text_width: int = 64,
    latent_channels: int = 32,
    same_heads: int = 2,
    same_layers: int = 2,
    same_decoder_layers: Optional[int] = None,
    same_patch_size: int = 256,
    same_resampling_stride: int = 16,
    same_decoder_kernel_size: int = 3,
    same_init: str = "random",
    dit_layers: int = 6,
    dit_heads: int = 2,
    max_text_length: int = 32,
    seed: int = 0,
) -> StableAudio3Pipeline:
    """
    The untrained tiny base pipeline: tokenizer over the caption words of `train_data_dir`, tiny models. `same_init`:
    `"random"` ([`build_tiny_same`]'s initialisation), `"pca"` ([`pca_initialise_same`] on the audio of
    `train_data_dir`; needs `same_resampling_stride=1`) or `"gain_shape"` ([`gain_shape_initialise_same`]; needs
    `same_resampling_stride=1`, `same_layers >= 3` and `same_decoder_layers >= 2`). `same_decoder_layers` defaults to
    `same_layers`.
    """
    from .synthetic_sounds import caption_vocabulary

    if same_init not in SAME_INITS:
        raise ValueError(f"`same_init` must be one of {SAME_INITS}, got {same_init!r}.")

    tokenizer = build_word_tokenizer(caption_vocabulary(train_data_dir))
    text_encoder = build_tiny_text_encoder(len(tokenizer), hidden_size=text_width, seed=seed)
    vae = build_tiny_same(
        latent_channels,
        num_attention_heads=same_heads,
        num_layers=same_layers,
        num_decoder_layers=same_decoder_layers,
        seed=seed,
        patch_size=same_patch_size,
        resampling_stride=same_resampling_stride,
        decoder_kernel_size=same_decoder_kernel_size,
    )
    if same_init != "random":
        from .audio_data import find_audio_files, load_audio

        rate = vae.config.sampling_rate
        clips = (load_audio(path, sample_rate=rate) for path in find_audio_files(train_data_dir))
        initialise = pca_initialise_same if same_init == "pca" else gain_shape_initialise_same
        initialise(vae, clips, seed=seed)
    transformer = build_tiny_transformer(
        latent_channels, text_width, num_layers=dit_layers, num_attention_heads=dit_heads, seed=seed
    )
    return assemble_pipeline(vae, transformer, text_encoder, tokenizer, max_text_length=max_text_length)


def store_transformer_half(pipeline_dir: str) -> str:
    """
    Rewrites `pipeline_dir/transformer/diffusion_pytorch_model.safetensors` with float16 weights (half the bytes: the
    shipped tiny model's size budget) and returns its path. `from_pretrained` loads them back as float32 unless a
    `torch_dtype` is given. The new file is written next to the old one and then moved over it, so a failure leaves
    the old file whole; weights that do not fit float16 (beyond 65504) are an error.
    """
    import os
    import tempfile

    from safetensors.torch import load_file, save_file

    path = os.path.join(pipeline_dir, "transformer", "diffusion_pytorch_model.safetensors")
    if not os.path.isfile(path):
        raise ValueError(f"`pipeline_dir` {pipeline_dir!r} has no transformer/diffusion_pytorch_model.safetensors.")
    state = load_file(path)
    for name, tensor in state.items():
        if tensor.is_floating_point() and tensor.abs().max() > torch.finfo(torch.float16).max:
            raise ValueError(f"{path}: {name} does not fit float16 (max |x| {tensor.abs().max().item():.3g}).")
    half = {name: t.half() if t.is_floating_point() else t for name, t in state.items()}
    fd, tmp = tempfile.mkstemp(suffix=".safetensors", dir=os.path.dirname(path))
    os.close(fd)
    try:
        save_file(half, tmp, metadata={"format": "pt"})
        os.chmod(tmp, os.stat(path).st_mode & 0o777)  # the old file's permissions, not mkstemp's 0600
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


FROZEN_SUBFOLDERS = ("vae", "text_encoder", "tokenizer")


def frozen_files_differ(pipeline_dir: str, reference_dir: str) -> List[str]:
    """
    The files of the frozen components (`vae`, `text_encoder`, `tokenizer`: the weights and the vocabulary, not the
    `config.json` and `tokenizer_config.json` files, which record how a model was loaded and saved) whose bytes
    differ between two pipeline folders, or that only one of them has, as sorted `subfolder/name` paths. Empty when a
    DiT trained with one folder's SAME and text encoder can be continued with the other's. `make_tiny_model.sh` checks its `FLOW_INIT` with this.
    """
    import hashlib
    import os

    def digests(folder):
        out = {}
        for sub in FROZEN_SUBFOLDERS:
            path = os.path.join(folder, sub)
            if not os.path.isdir(path):
                raise ValueError(f"{folder!r} is not a pipeline folder: it has no {sub}/ subfolder.")
            for name in sorted(os.listdir(path)):
                if name not in ("config.json", "tokenizer_config.json") and os.path.isfile(os.path.join(path, name)):
                    with open(os.path.join(path, name), "rb") as f:
                        out[f"{sub}/{name}"] = hashlib.sha256(f.read()).hexdigest()
        return out

    a, b = digests(pipeline_dir), digests(reference_dir)
    return sorted(key for key in set(a) | set(b) if a.get(key) != b.get(key))


def main(input_args=None):
    """
    CLI of `make_tiny_model.sh`: `init` writes the untrained pipeline, `swap-vae` puts a trained SAME into one,
    `half-transformer` stores a pipeline's transformer in float16, `check-frozen` checks that two pipelines share their
    frozen components ([`frozen_files_differ`]).
    """
    import argparse

    parser = argparse.ArgumentParser(description="Build the tiny Stable Audio 3 pipeline folders.")
    commands = parser.add_subparsers(dest="command", required=True)
    init = commands.add_parser("init", help="Untrained pipeline from a synthetic train set's captions.")
    init.add_argument("--dit_heads", type=int, default=2)
    init.add_argument("--dit_layers", type=int, default=6)
    init.add_argument("--latent_channels", type=int, default=32)
    init.add_argument("--max_text_length", type=int, default=32)
    init.add_argument("--output_dir", required=True)
    init.add_argument("--same_decoder_kernel_size", type=int, default=3)
    init.add_argument("--same_decoder_layers", type=int, default=None)
    init.add_argument("--same_heads", type=int, default=2)
    init.add_argument("--same_init", choices=SAME_INITS, default="random")
    init.add_argument("--same_layers", type=int, default=2)
    init.add_argument("--same_patch_size", type=int, default=256)
    init.add_argument("--same_resampling_stride", type=int, default=16)
    init.add_argument("--seed", type=int, default=0)
    init.add_argument("--text_width", type=int, default=64)
    init.add_argument("--train_data_dir", required=True)
    swap = commands.add_parser("swap-vae", help="Copy of a pipeline with the SAME of another folder.")
    swap.add_argument("--output_dir", required=True)
    swap.add_argument("--pipeline", required=True)
    swap.add_argument("--vae", required=True)
    half = commands.add_parser(
        "half-transformer", help="Rewrite a pipeline's transformer weights in float16 (loaded back as float32)."
    )
    half.add_argument("--pipeline", required=True)
    check = commands.add_parser(
        "check-frozen",
        help="Exit with an error unless two pipelines have the same SAME, text encoder and tokenizer files.",
    )
    check.add_argument("--pipeline", required=True)
    check.add_argument("--reference", required=True)
    args = parser.parse_args(input_args)
    if args.command == "init":
        options = {key: value for key, value in vars(args).items() if key not in ("command", "output_dir")}
        build_initial_pipeline(**options).save_pretrained(args.output_dir)
    elif args.command == "swap-vae":
        pipe = StableAudio3Pipeline.from_pretrained(args.pipeline)
        pipe.register_modules(vae=SAMEAutoencoderModel.from_pretrained(args.vae))
        pipe.save_pretrained(args.output_dir)
    elif args.command == "half-transformer":
        store_transformer_half(args.pipeline)
    else:
        differ = frozen_files_differ(args.pipeline, args.reference)
        if differ:
            raise SystemExit(
                f"--pipeline {args.pipeline!r} does not have the SAME, text encoder and tokenizer of --reference "
                f"{args.reference!r} (these files differ: {', '.join(differ)}); build the reference with the settings "
                "of the run that made the pipeline."
            )
        print(f"{args.pipeline}: SAME, text encoder and tokenizer files are those of {args.reference}")


if __name__ == "__main__":
    main()
