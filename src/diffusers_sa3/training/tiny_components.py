"""Builders of the tiny Stable Audio 3 model trained on the synthetic sound set (`pipelines/sa3-tiny/`).

No pretrained T5Gemma is available offline, so the tiny model gets its own frozen, randomly initialised T5Gemma encoder
and a word-level tokenizer over the caption words of [`~diffusers_sa3.training.synthetic_sounds`]. The autoencoder is a
SAME-S style model (chunked attention) and the transformer a small non-differential DiT; both are trained by the
scripts of `training_examples/` (see `training_examples/make_tiny_model.sh` for the whole recipe).
"""

import math
from typing import Dict, Iterable, List, Optional, Sequence

import torch
from diffusers.utils import logging
from torch import nn

from ..models.autoencoder_same import SAMEAutoencoderModel
from ..models.transformer_stable_audio3 import StableAudio3Transformer
from ..pipelines.pipeline_stable_audio3 import StableAudio3Pipeline
from ..schedulers.scheduling_flow_match_ot import FlowMatchOTScheduler
from ..schedulers.scheduling_pingpong_adversarial import PingPongAdversarialScheduler


PAD_TOKEN, EOS_TOKEN, BOS_TOKEN, UNK_TOKEN = "<pad>", "<eos>", "<bos>", "<unk>"
SPECIAL_TOKENS = (PAD_TOKEN, EOS_TOKEN, BOS_TOKEN, UNK_TOKEN)  # ids 0, 1, 2, 3, as the T5Gemma tokenizer

logger = logging.get_logger(__name__)


# Last log-SNR of the tiny base pipeline's Euler schedule (official: 2.0, a last step from t = 0.14 straight to 0).
# The tiny SAME's latents scale with the loudness (a principal-component coder is linear): a quiet clip's latents have
# a standard deviation of 0.02-0.09 against 0.9 over the set, below the error such a last jump leaves (the generated
# latents of quiet prompts were then the leftover noise, 0.09, whatever the prompt); ending at 6.0 takes the schedule
# down to t = 0.003 (50 steps).
TINY_LOGSNR_END = 6.0

# Initialisations of the tiny SAME (`build_initial_pipeline(same_init=...)`).
SAME_INITS = ("random", "pca", "gain_shape", "spectral")


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
            `8 * hidden_size ** -0.5` (1 at width 64), so that after the encoder's `sqrt(hidden_size)` scaling a token
            vector has an RMS of 8, eight times each post-normed attention and feed-forward output added to it: the
            random layers then add context to each word without burying it. (The library's 0.02 leaves the tokens 8x
            smaller than those branches at width 64: the states are mostly their sentence's mean, and a
            nearest-centroid test recovers a state's word for 10 % of the caption tokens. At `hidden_size ** -0.5`,
            94 %, yet an attention-pooling probe trained on 500 tone captions predicts the held-out ones' sine-bin
            shape at cosine 0.58; at the default 0.92, as from the bare embeddings: training_examples/README, stop
            25.)

    Returns:
        [`~transformers.T5GemmaEncoderModel`] in eval mode without gradients.
    """
    from transformers import T5GemmaConfig, T5GemmaEncoderModel, T5GemmaModuleConfig

    if vocab_size <= len(SPECIAL_TOKENS):
        raise ValueError(f"`vocab_size` must exceed the {len(SPECIAL_TOKENS)} special tokens, got {vocab_size}.")
    if embedding_std is not None and not embedding_std > 0:
        raise ValueError(
            f"`embedding_std` must be positive (or None for 8 * hidden_size ** -0.5), got {embedding_std}."
        )
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
            embeddings.weight.normal_(0.0, 8 * hidden_size**-0.5 if embedding_std is None else embedding_std)
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
    mlp_ratio: float = 3.0,
    decoder_sinusoidal_blocks: int = 0,
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
        mlp_ratio (`float`, defaults to 3.0): Feed-forward width over the model width (3 as the released SAMEs).
        decoder_sinusoidal_blocks (`int`, defaults to 0): `sin(pi x)`-gated decoder blocks (official rule: block `i`
            when `num_decoder_layers - i < decoder_sinusoidal_blocks`).
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
            decoder_sinusoidal_blocks=decoder_sinusoidal_blocks,
            decoder_kernel_size=decoder_kernel_size,
            mlp_ratio=mlp_ratio,
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


def _copy_previous_token_block(
    block: nn.Module, dim: int, head_dim: int, scale: float = 1.0, channels: Optional[torch.Tensor] = None
) -> None:
    """
    Sets one transformer block of a stride-1 resampling block so that every new token takes the value of the token
    just before it (its own patch or latent), through attention alone.

    The queries and keys carry no content; their norms' biases put one rotated pair at phases `-1` and `0` radians
    (the first RoPE frequency is 1 rad per position), so the plain map's scores are `25 cos(delta + 1)`: the key one
    position back wins by e^11 or more. The differential map must cancel nothing: its query and key read a flag channel
    (channel 0, 1 in the new tokens, 0 in the patches and latents) on a non-rotated dim, so it attends to the new
    tokens, whose values are 0. The values are the block input (DyT made linear: alpha 0.005, weight 200) without the
    flag; `to_out` is the identity and the feed-forward branch is zero. `scale`: the size of the block's input
    tokens (the flag stays 1); the other norms are set for inputs of that size. `channels`: the channels copied (the
    values of the others are 0, so that a new token keeps its own content there); default all but the flag.
    """
    rotated = head_dim // 2
    flag_dim = rotated  # the first non-rotated dim
    heads = dim // head_dim
    block.norm1.alpha.fill_(0.005 / scale)
    block.norm1.weight.fill_(200.0 * scale)
    block.norm1.bias.zero_()
    block.norm2.alpha.fill_(4.0 / scale)
    weight = torch.zeros(5 * dim, dim)  # rows [q | k | v | q_diff | k_diff]
    if channels is None:
        weight[2 * dim : 3 * dim] = torch.eye(dim)
        weight[2 * dim : 3 * dim, 0] = 0.0
    else:
        weight[2 * dim + channels, channels] = 1.0
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


def _set_weight_norm_conv(conv: nn.Module, weight: torch.Tensor, normalise: bool = False) -> None:
    """
    Loads `weight` `(out, in, kernel)` into a [`SAMEWeightNormConv1d`] (`weight_g` = row norms), bias 0. `normalise`
    stores unit-norm rows in `weight_v` (the same conv; keeps tiny weights out of float16's subnormal range).
    """
    norms = weight.flatten(1).norm(dim=1)
    weight = weight.clone()
    if normalise:
        weight = weight / norms.clamp(min=1e-30).view(-1, 1, 1)
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


# ---------------------------------------------------------------------------------------------------- spectral SAME

SPECTRAL_FRAME = 4096


def synthetic_grid_bins(harmonics: int = 4, low_hz=(40.0, 125.0), frame: int = SPECTRAL_FRAME) -> List[int]:
    """
    The sine bins (multiples of `sample_rate / frame`, i.e. frequencies in units of the grid step) of the grid-tuned
    synthetic set (`synthetic_sounds.synthesize(tuning="grid")`): harmonics 1..`harmonics` of every note of
    `synthetic_sounds.NOTES`, the fundamentals of every chord note, and every bin between `low_hz` (the kick drum's
    glide). Sorted.
    """
    from .synthetic_sounds import CHORD_QUALITIES, NOTES, SAMPLE_RATE, chord_frequencies, note_to_hz

    if harmonics < 1:
        raise ValueError(f"`harmonics` must be at least 1, got {harmonics}.")
    step = SAMPLE_RATE / frame
    bins = set(range(math.ceil(low_hz[0] / step), math.floor(low_hz[1] / step) + 1))
    for note in NOTES:
        root = note_to_hz(note)
        bins.update(max(1, round(root / step)) * h for h in range(1, harmonics + 1))
        for quality in CHORD_QUALITIES:
            bins.update(max(1, round(f / step)) for f in chord_frequencies(root, quality))
    return sorted(b for b in bins if 0 < b < frame // 2)


def _half_exact_widths(widths: torch.Tensor, input_scale: float = 1.0) -> torch.Tensor:
    """
    Ramp widths moved so that the ramps' slopes `1 / (input_scale * width)` are exact in float16 (unchanged where a
    slope is beyond float16's normal range).
    """
    slopes = 1.0 / (input_scale * widths)
    normal = (slopes.abs() >= torch.finfo(torch.float16).tiny) & (slopes.abs() <= torch.finfo(torch.float16).max)
    slopes = torch.where(normal, slopes.half().double(), slopes)
    return 1.0 / (input_scale * slopes)


def _zero_attention(block: nn.Module) -> None:
    """An attention branch that adds nothing, with all-zero weights (exact in float16)."""
    block.attn.to_qkv.weight.zero_()
    block.attn.to_out.weight.zero_()


def _silu_inverse(y: torch.Tensor) -> torch.Tensor:
    """The `z >= -1.28` with `silu(z) = y` (y >= -0.278), by Newton's method in float64."""
    z = torch.where(y > 1, y, torch.full_like(y, 1.0))
    for _ in range(60):
        s = torch.sigmoid(z)
        z = z - (z * s - y) / (s * (1 + z * (1 - s)))
    return z


def _set_ramp_block(ff: nn.Module, units: int, source: int, one: int, knots, width, falling: bool, outputs) -> int:
    """
    Writes `len(knots)` SiLU ramp units of channel `source` (`silu((knot - x) / width)` falling or `silu((x - knot) /
    width)` rising; value: the constant channel `one`) starting at unit `units`, and for each `(channel, weights,
    constant)` of `outputs` the weighted sum of the ramps plus the constant into `channel`. Returns the next free unit.
    """
    inner = ff.proj_out.in_features
    value, gate = ff.proj_in.weight[:inner], ff.proj_in.weight[inner:]
    for m, knot in enumerate(knots.tolist()):
        unit = units + m
        w = width[m].item() if torch.is_tensor(width) and width.ndim else float(width)
        gate[unit, source] = (-1.0 if falling else 1.0) / w
        ff.proj_in.bias[inner + unit] = (knot if falling else -knot) / w
        value[unit, one] = 1.0
        for channel, weights, _ in outputs:
            ff.proj_out.weight[channel, unit] = weights[m].item()
    for channel, _, constant in outputs:
        ff.proj_out.bias[channel] += float(constant)
    return units + len(knots)


class LevelCurve:
    r"""
    The spectral SAME's map between a level `lambda` (natural log of an RMS-like level) and its latent value: linear,
    `(lambda - mean) / slope`, from `corner` up, and compressed below it, `l_c - k log(1 + (corner - lambda) / tau)`
    (`l_c = (corner - mean) / slope`, `k = tau / slope`: the slope is continuous), with `tau` such that the silence
    level `log floor` lands `silence_depth` latent units under `l_c`. So the sounding levels get a fine resolution
    (`slope` nats a unit) and silence stays a few units away. `to_level` inverts it (and never goes under
    `log floor - 1`).
    """

    def __init__(self, mean: float, corner: float, slope: float, floor: float, silence_depth: float = 2.5):
        if not slope > 0 or not corner > math.log(floor) or not silence_depth > 0:
            raise ValueError(
                f"LevelCurve needs slope > 0, corner > log(floor) and silence_depth > 0, got slope={slope}, "
                f"corner={corner}, floor={floor}, silence_depth={silence_depth}."
            )
        self.mean, self.corner, self.slope, self.floor = mean, corner, slope, floor
        self.corner_latent = (corner - mean) / slope
        depth = corner - math.log(floor)
        low, high = 1e-6, 1e3  # tau / slope * log(1 + depth / tau) grows with tau
        for _ in range(200):
            tau = math.sqrt(low * high)
            if tau / slope * math.log1p(depth / tau) > silence_depth:
                high = tau
            else:
                low = tau
        self.tau = tau
        self.k = tau / slope
        self.silence_latent = self.to_latent(torch.tensor(math.log(floor), dtype=torch.float64)).item()

    def to_latent(self, level: torch.Tensor) -> torch.Tensor:
        linear = (level - self.mean) / self.slope
        below = self.corner_latent - self.k * torch.log1p((self.corner - level).clamp(min=0) / self.tau)
        return torch.where(level >= self.corner, linear, below)

    def to_level(self, latent: torch.Tensor) -> torch.Tensor:
        linear = self.mean + self.slope * latent
        below = self.corner - self.tau * torch.expm1((self.corner_latent - latent).clamp(min=0) / self.k)
        return torch.where(latent >= self.corner_latent, linear, below).clamp(min=math.log(self.floor) - 1.0)


@torch.no_grad()
def spectral_initialise_same(
    model: SAMEAutoencoderModel,
    clips: Iterable,
    bins: Optional[Sequence[int]] = None,
    num_level_projections: int = 16,
    num_noise_projections: int = 16,
    num_noise_patterns: int = 16,
    noise_band_hz=(6500.0, 16000.0),
    noise_suppression: float = 100.0,
    shape_scale: float = 1.0,
    floor: float = 1e-5,
    level_slope: float = 0.5,
    gain_copies: int = 8,
    num_units: int = 64,
    max_frames: int = 20000,
    seed: int = 0,
) -> Dict:
    r"""
    Data-dependent initialisation of a one-patch-per-latent tiny SAME (4096-sample patches) as a spectral gain-shape
    coder with a noise generator, written into the official architecture: steady sounds whose partials are multiples
    of `sample_rate / 4096` (the synthetic set with `tuning="grid"`) code as latents that are the same in every frame,
    and noise is generated by the decoder from its new-token noise rather than coded.

    Per 4096-sample frame `x_L, x_R` (reference units; the model computes the same up to its fitted functions):

    - shape (`len(bins)` latents): `shape_scale * m / sqrt(E + noise_suppression * N + floor^2)`, with `m = B (x_L +
      x_R)` the coefficients of the `bins` as orthonormal sines over the frame, `E` the mean square of
      `num_level_projections` fixed random unit projections `U m` (a level of the tonal part) and `N` that of
      `num_noise_projections` random unit projections of `x_L + x_R` onto the cosines of `noise_band_hz` (0 for the
      set's zero-phase tones, chords and chirps): the shape has about the same size in every tonal frame and is near 0
      in noise;
    - levels (4 x `gain_copies` latents): `log g_L`, `log g_R` (`g^2 = mean square of U B x_c + floor^2`) and `log n_L`,
      `log n_R` (the noise projections of each channel), each through a [`LevelCurve`] (`level_slope` nats a unit
      over the sounding levels of `clips`, silence 2.5 units under them) and repeated `gain_copies` times: the decoder
      averages the copies, and the flow loss weighs the levels more;
    - decode: `L = g_L B^T shape / shape_scale + n_L W^T eps / sqrt(P)`, `R` alike, with `eps` the decoder's
      new-token noise in `num_noise_patterns` (P) channels and `W` fixed orthogonal white patterns.

    Encoder (3 blocks): the input projection computes `m` and the projections; block 1 copies each patch into its new
    token ([`_copy_previous_token_block`]) and squares (`z silu(z) + (-z) silu(-z) = z^2`); block 2 fits
    `silu^-1(shape_scale / sqrt(...))` and the level latents with `num_units` SiLU ramps per input (least squares on a
    log grid); block 3 multiplies (`m silu(silu^-1(.))`). Decoder (2 blocks, the second `sin(pi x)`-gated: official
    `decoder_sinusoidal_blocks`): block 1 copies each latent into its new token and fits gates
    `arcsin(kappa g / 1.25) / pi` of the levels; block 2 multiplies shape and noise by the levels with
    `value * sin(pi * gate)` units; the output convolution synthesises the sines and the noise patterns.

    Args:
        model ([`SAMEAutoencoderModel`]): from [`build_spectral_same`] (stereo, chunked attention, 4096-sample
            patches, stride 1, 3 + 2 layers, `decoder_sinusoidal_blocks=2`, kernel 1, `latent_channels = len(bins) +
            4 * gain_copies`, width and feed-forward large enough: the error says how large); modified in place.
        clips (iterable of `(2, samples)` arrays or tensors): training audio at 44.1 kHz (the level statistics and the
            input ranges).
        bins (`Sequence[int]`, *optional*): sine bins in multiples of `sample_rate / 4096`; default
            [`synthetic_grid_bins`].
        num_level_projections, num_noise_projections, num_noise_patterns (`int`, defaults to 16): see above.
        noise_band_hz (`tuple`, defaults to `(6500, 16000)`): band of the noise projections.
        noise_suppression (`float`, defaults to 100): weight of the noise level in the shape's divisor.
        shape_scale (`float`, defaults to 1): size of the shape (a tonal frame's shape has an L2 norm of about
            `shape_scale * sqrt(len(bins))`; the DiT keeps a tone's partials cleaner relative to its errors elsewhere
            when they are large).
        floor (`float`, defaults to 1e-5): level of silence (reference units: about -100 dBFS).
        level_slope (`float`, defaults to 0.5): nats per latent unit over the sounding levels.
        gain_copies (`int`, defaults to 8): copies of each level latent.
        num_units (`int`, defaults to 64): SiLU ramps per fitted input.
        max_frames (`int`, defaults to 20000): frames of `clips` used (seeded draw).
        seed (`int`, defaults to 0): seed of the projections, the noise patterns and the draw.

    Returns:
        `dict` with what a reference implementation needs: `bins`, `level_directions` `(projections, 4096)` (`U B`),
        `noise_directions`, `noise_patterns` `(P, 4096)` (float64 tensors), `curve` (the [`LevelCurve`]), `floor`,
        `noise_suppression`, `shape_scale`, `gain_copies`; and `input_scale`, `frames` and `fit_error` (largest relative
        error of the encoder's fitted `1 / sqrt(.)` and of the decoder's levels over their ranges).
    """
    config = model.config
    frame = config.patch_size
    width, head_dim = config.num_attention_heads * config.attention_head_dim, config.attention_head_dim
    inner = int(width * config.mlp_ratio)
    bins = torch.tensor(synthetic_grid_bins() if bins is None else list(bins), dtype=torch.long)
    S, m_g, m_n, m_p = len(bins), num_level_projections, num_noise_projections, num_noise_patterns
    enc_channels, dec_channels, units = _spectral_sizes(S, m_g, m_n, m_p, num_units)
    decoder_blocks = model.decoder.resampler.transformer_blocks
    if (
        config.resampling_stride != 1
        or config.sliding_window is not None
        or config.audio_channels != 2
        or frame != SPECTRAL_FRAME
        or config.num_encoder_layers != 3
        or config.num_decoder_layers != 2
        or decoder_blocks[0].ff.sinusoidal
        or not decoder_blocks[1].ff.sinusoidal
        or config.decoder_kernel_size != 1
    ):
        raise ValueError(
            "`model` must be a stereo chunked-attention SAME with `resampling_stride=1`, `patch_size=4096`, 3 encoder "
            "and 2 decoder layers, `decoder_sinusoidal_blocks=2` and `decoder_kernel_size=1`; build it with "
            "`build_spectral_same`."
        )
    latents = S + 4 * gain_copies
    if latents != config.latent_channels or max(enc_channels, dec_channels) > width or inner < units:
        raise ValueError(
            f"`model` needs `latent_channels` {latents} (len(bins) {S} + 4 x gain_copies {gain_copies}), a width of "
            f"at least {max(enc_channels, dec_channels)} and a feed-forward of at least {units} units; got "
            f"latent_channels={config.latent_channels}, width {width}, feed-forward {inner}. Build it with "
            "`build_spectral_same`."
        )
    if bins.min() < 1 or bins.max() >= frame // 2 or len(set(bins.tolist())) != S:
        raise ValueError(f"`bins` must be distinct integers in [1, {frame // 2 - 1}], got {bins.tolist()}.")
    if not (floor > 0 and shape_scale > 0 and noise_suppression >= 0 and level_slope > 0) or gain_copies < 1:
        raise ValueError(
            "`floor`, `shape_scale` and `level_slope` must be positive, `noise_suppression` non-negative and "
            f"`gain_copies` at least 1; got floor={floor}, shape_scale={shape_scale}, level_slope={level_slope}, "
            f"noise_suppression={noise_suppression}, gain_copies={gain_copies}."
        )
    if num_units < 8 or min(m_g, m_n, m_p) < 1:
        raise ValueError(
            f"`num_units` must be at least 8 and the projection counts at least 1, got {num_units} and {m_g} / {m_n} / "
            f"{m_p}."
        )
    rate = config.sampling_rate
    low, high = math.ceil(noise_band_hz[0] * frame / rate), math.floor(noise_band_hz[1] * frame / rate)
    if not 0 < low <= high < frame // 2:
        raise ValueError(f"`noise_band_hz` must be an increasing band below {rate / 2} Hz, got {noise_band_hz}.")

    # ---------------------------------------------------------------- the coder (float64) and its statistics
    n = torch.arange(frame, dtype=torch.float64)
    basis = math.sqrt(2 / frame) * torch.sin(2 * math.pi * bins[:, None].double() * n / frame)  # (S, frame)
    generator = torch.Generator().manual_seed(seed)
    mixing = torch.randn(m_g, S, generator=generator, dtype=torch.float64)
    level_directions = (mixing / mixing.norm(dim=1, keepdim=True)) @ basis
    cosines = math.sqrt(2 / frame) * torch.cos(
        2 * math.pi * torch.arange(low, high + 1, dtype=torch.float64)[:, None] * n / frame
    )
    mixing = torch.randn(m_n, len(cosines), generator=generator, dtype=torch.float64)
    noise_directions = (mixing / mixing.norm(dim=1, keepdim=True)) @ cosines
    noise_patterns = torch.linalg.qr(torch.randn(frame, m_p, generator=generator, dtype=torch.float64))[0].T
    noise_patterns = noise_patterns * math.sqrt(frame)  # orthogonal rows of mean square 1

    frames = []
    for clip in clips:
        audio = torch.as_tensor(clip, dtype=torch.float32)
        if audio.ndim != 2 or audio.shape[0] != 2:
            raise ValueError(f"`clips` must hold `(2, samples)` stereo arrays, got shape {tuple(audio.shape)}.")
        usable = audio.shape[-1] // frame * frame
        frames.append(audio[:, :usable].reshape(2, -1, frame).transpose(0, 1))
    frames = torch.cat(frames) if frames else torch.zeros(0, 2, frame)
    frames = frames[frames.abs().amax(dim=(1, 2)) > 1e-4]
    if len(frames) < 8:
        raise ValueError(f"`clips` hold {len(frames)} non-silent {frame}-sample frames; at least 8 are needed.")
    if len(frames) > max_frames:
        frames = frames[torch.randperm(len(frames), generator=torch.Generator().manual_seed(seed))[:max_frames]]
    frames = frames.double()
    eps = floor**2
    p_left, p_right = frames[:, 0] @ level_directions.T, frames[:, 1] @ level_directions.T
    n_left, n_right = frames[:, 0] @ noise_directions.T, frames[:, 1] @ noise_directions.T
    divisor = (p_left + p_right).pow(2).mean(1) + noise_suppression * (n_left + n_right).pow(2).mean(1)
    levels = torch.cat([p_left.pow(2).mean(1), p_right.pow(2).mean(1)])
    noise_levels = torch.cat([n_left.pow(2).mean(1), n_right.pow(2).mean(1)])
    sounding = 0.5 * torch.log(levels[levels > 100 * eps])
    mean = sounding.median().item()
    curve = LevelCurve(mean, mean - 2.0, level_slope, floor)
    mid = (frames[:, 0] + frames[:, 1]) @ basis.T
    shape_max = (shape_scale * mid / (divisor + eps).sqrt()[:, None]).abs().max().item()
    level_max = 0.5 * math.log(max(levels.max().item(), noise_levels.max().item()))

    # ---------------------------------------------------------------- encoder
    # Channel units: the reference ones over input_scale (the loudest frame's divisor is 1).
    input_scale = divisor.max().sqrt().item()
    eps_ch = eps / input_scale**2
    e_max = 4.0 * max(divisor.max().item(), levels.max().item(), noise_levels.max().item()) / input_scale**2
    one, flag = width - 1, 0
    c_mid = 1 + torch.arange(S)
    c_pl = 1 + S + torch.arange(m_g)
    c_pr = c_pl + m_g
    c_nl = 1 + S + 2 * m_g + torch.arange(m_n)
    c_nr = c_nl + m_n
    c_energy = 1 + S + 2 * m_g + 2 * m_n + torch.arange(5)  # divisor, E_L, E_R, N_L, N_R
    c_inverse = c_energy[-1] + 1  # silu^-1(shape_scale / sqrt(divisor + eps))
    c_logs = c_inverse + 1 + torch.arange(4)  # level latents of g_L, g_R, n_L, n_R
    analysis = torch.zeros(width, 2 * frame, 1)
    analysis[c_mid, :frame, 0] = basis.float()
    analysis[c_mid, frame:, 0] = basis.float()
    analysis[c_pl, :frame, 0] = level_directions.float()
    analysis[c_pr, frame:, 0] = level_directions.float()
    analysis[c_nl, :frame, 0] = noise_directions.float()
    analysis[c_nr, frame:, 0] = noise_directions.float()
    _set_weight_norm_conv(model.encoder.conv_in, analysis, normalise=True)
    model.encoder.conv_in.weight_g.div_(input_scale)
    encoder = model.encoder.resampler
    encoder.new_tokens.zero_()
    encoder.new_tokens[..., flag] = 1.0
    largest_in = max((mid / input_scale).abs().max().item(), 4.0 * math.sqrt(e_max * max(m_g, m_n)), 1.0)
    squares, functions, products = encoder.transformer_blocks
    _copy_previous_token_block(squares, width, head_dim, largest_in)
    for block in (functions, products):
        _zero_attention(block)

    # Block 1: mean squares of the projections, two units a square.
    _linear_norm(squares.norm2, 1e-3 / largest_in, torch.cat([c_pl, c_pr, c_nl, c_nr]), one)
    _zero_feed_forward(squares)
    ff = squares.ff
    value, gate = ff.proj_in.weight[:inner], ff.proj_in.weight[inner:]
    terms = [(c_energy[0], [(c_pl[i], c_pr[i]) for i in range(m_g)], 1.0 / m_g)]
    terms += [(c_energy[0], [(c_nl[i], c_nr[i]) for i in range(m_n)], noise_suppression / m_n)]
    terms += [(c_energy[1], [(c,) for c in c_pl], 1.0 / m_g), (c_energy[2], [(c,) for c in c_pr], 1.0 / m_g)]
    terms += [(c_energy[3], [(c,) for c in c_nl], 1.0 / m_n), (c_energy[4], [(c,) for c in c_nr], 1.0 / m_n)]
    unit = 0
    for target, sums, weight in terms:
        for channels in sums:
            for sign in (1.0, -1.0):
                for channel in channels:
                    value[unit, channel] = sign
                    gate[unit, channel] = sign
                ff.proj_out.weight[target, unit] = weight
                unit += 1

    # Block 2: functions of the mean squares, falling ramps on a log grid.
    knots = torch.logspace(math.log10(eps_ch / 100), math.log10(e_max), num_units, dtype=torch.float64)
    widths = _half_exact_widths(knots * (knots[1] / knots[0] - 1.0))
    grid = torch.cat(
        [
            torch.zeros(1, dtype=torch.float64),
            torch.logspace(math.log10(eps_ch / 1e4), math.log10(e_max), 4000, dtype=torch.float64),
        ]
    )
    ramps = _silu_ramps(grid, knots, widths, falling=True)
    inverse_target = shape_scale * (grid + eps_ch).rsqrt()
    gate_target = _silu_inverse(inverse_target)
    inverse_weights, inverse_const = _fit_ramps(ramps, gate_target, 1.0 / gate_target)
    latent_target = curve.to_latent(0.5 * torch.log(grid + eps_ch) + math.log(input_scale))
    latent_weights, latent_const = _fit_ramps(ramps, latent_target, torch.ones_like(latent_target))
    inverse_fit = torch.nn.functional.silu(ramps @ inverse_weights + inverse_const)
    _linear_norm(functions.norm2, 1e-3 / e_max, c_energy, one)
    _zero_feed_forward(functions)
    unit = _set_ramp_block(
        functions.ff,
        0,
        c_energy[0].item(),
        one,
        knots,
        widths,
        True,
        [(c_inverse.item(), inverse_weights, inverse_const)],
    )
    for i in range(4):
        unit = _set_ramp_block(
            functions.ff,
            unit,
            c_energy[1 + i].item(),
            one,
            knots,
            widths,
            True,
            [(c_logs[i].item(), latent_weights, latent_const)],
        )

    # Block 3: shape = m silu(silu^-1(.)) written over m; a second unit removes m.
    _linear_norm(
        products.norm2, 1e-3 / max(largest_in, gate_target.max().item()), torch.cat([c_mid, c_inverse.view(1)]), one
    )
    _zero_feed_forward(products)
    ff = products.ff
    value, gate = ff.proj_in.weight[:inner], ff.proj_in.weight[inner:]
    for k, channel in enumerate(c_mid.tolist()):
        value[2 * k, channel] = 1.0
        gate[2 * k, c_inverse] = 1.0
        ff.proj_out.weight[channel, 2 * k] = 1.0
        value[2 * k + 1, channel] = 1.0
        gate[2 * k + 1, one] = 32.0  # silu(32) is 32 in float32
        ff.proj_out.weight[channel, 2 * k + 1] = -1.0 / 32.0
    model.encoder.proj_out.weight.zero_()
    model.encoder.proj_out.bias.zero_()
    model.encoder.proj_out.weight[torch.arange(S), c_mid] = 1.0
    for i in range(4):
        model.encoder.proj_out.weight[S + i * gain_copies + torch.arange(gain_copies), c_logs[i]] = 1.0
    model.bottleneck.scale.fill_(1.0)
    model.bottleneck.bias.zero_()
    model.bottleneck.running_std.fill_(1.0)

    # ---------------------------------------------------------------- decoder
    # Tokens at a and gates at gate_scale, so that the new-token noise (0.01) stays small next to both (-120 dB for
    # the tonal channels); powers of two, so that the weights that carry them are exact in float16.
    a, gate_scale, amplitude = 8192.0, 128.0, 1.25
    d_shape = 1 + torch.arange(S)
    d_right = 1 + S + torch.arange(S)
    d_noise = 1 + 2 * S + torch.arange(m_p)
    d_noise_right = d_noise + m_p
    d_logs = 1 + 2 * S + 2 * m_p + torch.arange(4)
    d_gates = d_logs[-1] + 1 + torch.arange(4)  # gains g_L, g_R, n_L, n_R
    decoder = model.decoder
    decoder.proj_in.weight.zero_()
    decoder.proj_in.bias.zero_()
    decoder.proj_in.weight[d_shape, torch.arange(S)] = a
    for i in range(4):
        decoder.proj_in.weight[d_logs[i], S + i * gain_copies + torch.arange(gain_copies)] = a / gain_copies
    resampler = decoder.resampler
    resampler.new_tokens.zero_()
    resampler.new_tokens[..., flag] = 1.0
    lo = curve.silence_latent - 0.5
    hi = curve.to_latent(torch.tensor(level_max + 1.0, dtype=torch.float64)).item()
    latent_max = max(shape_max, abs(lo), abs(hi), 1.0)
    copy, gains = resampler.transformer_blocks
    _copy_previous_token_block(copy, width, head_dim, 2 * a * latent_max, torch.cat([d_shape, d_logs]))
    # Block 1: gates arcsin(kappa g / amplitude) / pi (x gate_scale) of the levels, rising ramps on a uniform grid of
    # the latent (clamped to [lo, hi]), fitted with relative weights; one unit each removes the gate channels' own
    # new-token noise, which would move a silent level's gate by far more than its value.
    # Knots evenly spaced in the level (not the latent), so that the compressed part below the corner gets as many.
    knots = curve.to_latent(
        torch.linspace(
            curve.to_level(torch.tensor(lo)).item(),
            curve.to_level(torch.tensor(hi)).item(),
            num_units,
            dtype=torch.float64,
        )
    )
    steps = torch.diff(knots)
    steps = _half_exact_widths(torch.cat([steps[:1], 0.5 * (steps[1:] + steps[:-1]), steps[-1:]]), a)
    grid = torch.cat(
        [
            torch.linspace(lo - 2.0, lo, 200, dtype=torch.float64)[:-1],
            knots,
            torch.linspace(hi, hi + 2.0, 200, dtype=torch.float64)[1:],
        ]
    )
    grid = torch.cat([grid, 0.5 * (knots[1:] + knots[:-1])]).sort().values
    level = torch.exp(curve.to_level(grid.clamp(lo, hi)))
    kappa = 1.0 / level.max().item()
    ramps = _silu_ramps(grid, knots, steps, falling=False)
    # The tonal products are `shape x kappa g` at scale a; the noise ones `eps x kappa n` at scale noise_scale from the
    # 0.01 new-token noise (value weight noise_value), so that the synthesis rows mix weights of similar sizes.
    noise_scale, noise_value = 128.0, 16384.0
    sines = {
        "tonal": kappa * level / amplitude,
        "noise": noise_scale * kappa * level / (config.decoder_mask_noise * noise_value),
    }
    fits, decoded_level = {}, {}
    for kind, sine in sines.items():
        target = gate_scale * torch.asin(sine) / math.pi
        fits[kind] = _fit_ramps(ramps, target, 1.0 / target)
        decoded_level[kind] = torch.sin(math.pi * (ramps @ fits[kind][0] + fits[kind][1]) / gate_scale) * level / sine
    _linear_norm(copy.norm2, 1e-3 / (a * latent_max), torch.cat([d_logs, d_gates]), one)
    _zero_feed_forward(copy)
    unit = 0
    for i in range(4):  # the ramps read the level channels at scale a
        gate_weights, gate_const = fits["tonal" if i < 2 else "noise"]
        unit = _set_ramp_block(
            copy.ff,
            unit,
            d_logs[i].item(),
            one,
            a * knots,
            a * steps,
            False,
            [(d_gates[i].item(), gate_weights, gate_const)],
        )
    value, gate = copy.ff.proj_in.weight[:inner], copy.ff.proj_in.weight[inner:]
    for channel in d_gates.tolist():
        value[unit, channel] = 1.0
        gate[unit, one] = 32.0
        copy.ff.proj_out.weight[channel, unit] = -1.0 / 32.0
        unit += 1
    # Block 2 (sin): products value * sin(pi * gate). The left products overwrite their sources (a second unit
    # removes the source exactly), the right ones have channels of their own (the noise ones' own new-token noise is
    # removed too; the tonal ones keep theirs, 0.01 / a: -120 dB under the loudest level).
    _linear_norm(gains.norm2, 1e-3 / (2 * a * latent_max), torch.cat([d_shape, d_noise, d_noise_right, d_gates]), one)
    _zero_feed_forward(gains)
    _zero_attention(gains)
    value, gate = gains.ff.proj_in.weight[:inner], gains.ff.proj_in.weight[inner:]
    unit = 0
    for sources, targets, gate_channel, removed, weight in (
        (d_shape, d_shape, d_gates[0], d_shape, amplitude),
        (d_shape, d_right, d_gates[1], None, amplitude),
        (d_noise, d_noise, d_gates[2], d_noise, noise_value),
        (d_noise, d_noise_right, d_gates[3], d_noise_right, noise_value),
    ):
        for source, target in zip(sources.tolist(), targets.tolist()):
            value[unit, source] = weight
            gate[unit, gate_channel] = 1.0 / gate_scale
            gains.ff.proj_out.weight[target, unit] = 1.0
            unit += 1
        for channel in [] if removed is None else removed.tolist():
            value[unit, channel] = 1.0
            gate[unit, one] = 0.5  # sin(pi / 2) = 1
            gains.ff.proj_out.weight[channel, unit] = -1.0
            unit += 1
    synthesis = torch.zeros(2 * frame, width, 1)
    tonal = basis.float().T / (a * kappa * shape_scale)
    noise = noise_patterns.float().T / (noise_scale * kappa * math.sqrt(m_p))
    synthesis[:frame, d_shape, 0] = tonal
    synthesis[frame:, d_right, 0] = tonal
    synthesis[:frame, d_noise, 0] = noise
    synthesis[frame:, d_noise_right, 0] = noise
    _set_weight_norm_conv(decoder.conv_out, synthesis, normalise=True)

    inverse_error = (inverse_fit / inverse_target - 1).abs().max().item()
    level_error = max((decoded / level - 1).abs().max().item() for decoded in decoded_level.values())
    return {
        "bins": bins.tolist(),
        "level_directions": level_directions,
        "noise_directions": noise_directions,
        "noise_patterns": noise_patterns,
        "curve": curve,
        "floor": floor,
        "noise_suppression": noise_suppression,
        "shape_scale": shape_scale,
        "gain_copies": gain_copies,
        "input_scale": input_scale,
        "frames": len(frames),
        "fit_error": max(inverse_error, level_error),
    }


def _spectral_sizes(S: int, m_g: int, m_n: int, m_p: int, num_units: int):
    """`(encoder channels, decoder channels, feed-forward units)` the spectral construction needs."""
    encoder_channels = 1 + S + 2 * m_g + 2 * m_n + 5 + 1 + 4 + 1
    decoder_channels = 1 + 2 * S + 2 * m_p + 4 + 4 + 1
    units = max(2 * (3 * m_g + 3 * m_n), 5 * num_units, 2 * S, 4 * num_units + 4, 3 * S + 4 * m_p)
    return encoder_channels, decoder_channels, units


def build_spectral_same(
    clips: Iterable,
    bins: Optional[Sequence[int]] = None,
    attention_head_dim: int = 32,
    num_level_projections: int = 16,
    num_noise_projections: int = 16,
    num_noise_patterns: int = 16,
    gain_copies: int = 8,
    num_units: int = 64,
    seed: int = 0,
    **kwargs,
):
    """
    The smallest model [`spectral_initialise_same`] fits (the width a multiple of `attention_head_dim`, the
    feed-forward ratio just large enough), initialised with it on `clips`; returns `(model, info)`. `kwargs` go to
    [`spectral_initialise_same`].
    """
    bins = synthetic_grid_bins() if bins is None else list(bins)
    enc, dec, units = _spectral_sizes(
        len(bins), num_level_projections, num_noise_projections, num_noise_patterns, num_units
    )
    heads = math.ceil(max(enc, dec) / attention_head_dim)
    width = heads * attention_head_dim
    mlp_ratio = (math.ceil(1000 * units / width) + 1) / 1000
    model = build_tiny_same(
        latent_channels=len(bins) + 4 * gain_copies,
        num_attention_heads=heads,
        attention_head_dim=attention_head_dim,
        num_layers=3,
        num_decoder_layers=2,
        seed=seed,
        patch_size=SPECTRAL_FRAME,
        resampling_stride=1,
        decoder_kernel_size=1,
        mlp_ratio=mlp_ratio,
        decoder_sinusoidal_blocks=2,
    )
    info = spectral_initialise_same(
        model,
        clips,
        bins,
        num_level_projections,
        num_noise_projections,
        num_noise_patterns,
        gain_copies=gain_copies,
        num_units=num_units,
        seed=seed,
        **kwargs,
    )
    return model, info


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
    latent_channels: Optional[int] = None,
    same_heads: int = 2,
    same_layers: int = 2,
    same_decoder_layers: Optional[int] = None,
    same_patch_size: int = 256,
    same_resampling_stride: int = 16,
    same_decoder_kernel_size: int = 3,
    same_mlp_ratio: float = 3.0,
    same_init: str = "random",
    dit_layers: int = 6,
    dit_heads: int = 2,
    max_text_length: int = 32,
    seed: int = 0,
) -> StableAudio3Pipeline:
    """
    The untrained tiny base pipeline: tokenizer over the caption words of `train_data_dir`, tiny models. `same_init`:
    `"random"` ([`build_tiny_same`]'s initialisation), `"pca"` ([`pca_initialise_same`] on the audio of
    `train_data_dir`; needs `same_resampling_stride=1`), `"gain_shape"` ([`gain_shape_initialise_same`]; needs
    `same_resampling_stride=1`, `same_layers >= 3` and `same_decoder_layers >= 2`) or `"spectral"`
    ([`build_spectral_same`] on the audio of `train_data_dir`: its geometry and `latent_channels` follow from the
    construction, so the `same_*` sizes and `latent_channels` must be left unset). `latent_channels` defaults to 32
    for the others; `same_decoder_layers` defaults to `same_layers`. `same_mlp_ratio` is the SAME blocks' feed-forward
    width over the model width.
    """
    from .synthetic_sounds import caption_vocabulary

    if same_init not in SAME_INITS:
        raise ValueError(f"`same_init` must be one of {SAME_INITS}, got {same_init!r}.")
    geometry = {
        "latent_channels": (latent_channels, None),
        "same_heads": (same_heads, 2),
        "same_layers": (same_layers, 2),
        "same_decoder_layers": (same_decoder_layers, None),
        "same_patch_size": (same_patch_size, 256),
        "same_resampling_stride": (same_resampling_stride, 16),
        "same_decoder_kernel_size": (same_decoder_kernel_size, 3),
        "same_mlp_ratio": (same_mlp_ratio, 3.0),
    }
    if not same_mlp_ratio > 0:
        raise ValueError(f"`same_mlp_ratio` must be positive, got {same_mlp_ratio}; the builders' default is 3.0.")
    if same_init == "spectral":
        changed = sorted(name for name, (given, default) in geometry.items() if given != default)
        if changed:
            raise ValueError(
                f"`same_init='spectral'` builds its own SAME geometry and latent width (build_spectral_same); leave "
                f"{', '.join(changed)} unset."
            )

    tokenizer = build_word_tokenizer(caption_vocabulary(train_data_dir))
    text_encoder = build_tiny_text_encoder(len(tokenizer), hidden_size=text_width, seed=seed)
    if same_init == "spectral":
        from .audio_data import find_audio_files, load_audio

        clips = (load_audio(path, sample_rate=44100) for path in find_audio_files(train_data_dir))
        vae, _ = build_spectral_same(clips, seed=seed)
        transformer = build_tiny_transformer(
            vae.config.latent_channels, text_width, num_layers=dit_layers, num_attention_heads=dit_heads, seed=seed
        )
        return assemble_pipeline(vae, transformer, text_encoder, tokenizer, max_text_length=max_text_length)
    latent_channels = 32 if latent_channels is None else latent_channels
    vae = build_tiny_same(
        latent_channels,
        num_attention_heads=same_heads,
        num_layers=same_layers,
        num_decoder_layers=same_decoder_layers,
        seed=seed,
        patch_size=same_patch_size,
        resampling_stride=same_resampling_stride,
        decoder_kernel_size=same_decoder_kernel_size,
        mlp_ratio=same_mlp_ratio,
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


def store_weights_half(
    pipeline_dir: str, subfolder: str = "transformer", lossy: Optional[Sequence[str]] = None
) -> str:
    """
    Rewrites `pipeline_dir/<subfolder>/diffusion_pytorch_model.safetensors` with float16 weights (the shipped tiny
    model's size budget) and returns its path. `from_pretrained` loads them back as float32 unless a `torch_dtype`
    is given. `lossy=None`: every floating tensor is rounded to float16. Otherwise only the tensors named in `lossy`
    are rounded; the others are stored in float16 only where that is exact (zeros, +-1, powers of two...) and keep
    float32 elsewhere (a constructed SAME's fitted functions need their precision). The new file is written next to
    the old one and then moved over it, so a failure leaves the old file whole; weights that do not fit float16
    (beyond 65504) are an error.
    """
    import os
    import tempfile

    from safetensors.torch import load_file, save_file

    path = os.path.join(pipeline_dir, subfolder, "diffusion_pytorch_model.safetensors")
    if not os.path.isfile(path):
        raise ValueError(f"`pipeline_dir` {pipeline_dir!r} has no {subfolder}/diffusion_pytorch_model.safetensors.")
    state = load_file(path)
    missing = sorted(set(lossy or ()) - set(state))
    if missing:
        raise ValueError(f"{path} has no tensors {missing} (named in `lossy`).")
    half = {}
    for name, tensor in state.items():
        if not tensor.is_floating_point():
            half[name] = tensor
            continue
        rounded = tensor.half()
        if lossy is None or name in lossy:
            if tensor.numel() and tensor.abs().max() > torch.finfo(torch.float16).max:
                raise ValueError(f"{path}: {name} does not fit float16 (max |x| {tensor.abs().max().item():.3g}).")
            half[name] = rounded
        else:
            half[name] = rounded if torch.equal(rounded.to(tensor.dtype), tensor) else tensor
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


def store_transformer_half(pipeline_dir: str) -> str:
    """[`store_weights_half`] of the transformer, every weight in float16."""
    return store_weights_half(pipeline_dir, "transformer")


# The spectral SAME's analysis and synthesis matrices (sines, projections and noise patterns; 60 % of its weights),
# rounded to float16 by `half-vae`: 1e-3 relative, far under the model's other errors. Its other weights are stored
# in float16 only where that is exact.
SPECTRAL_LOSSY_WEIGHTS = ("encoder.conv_in.weight_v", "decoder.conv_out.weight_v")


def set_default_guidance_scale(pipeline_dir: str, value: Optional[float]) -> str:
    """
    Writes `default_guidance_scale` (the CFG scale of a call that gives none; `None` removes it) into a pipeline
    folder's `model_index.json`, atomically; nothing else of the folder changes. Returns the file's path.
    """
    import json
    import os

    from ..pipelines.guidance import check_default_guidance_scale

    value = check_default_guidance_scale(value)
    path = os.path.join(pipeline_dir, "model_index.json")
    if not os.path.isfile(path):
        raise ValueError(f"`pipeline_dir` {pipeline_dir!r} is not a pipeline folder: it has no model_index.json.")
    with open(path) as f:
        config = json.load(f)
    config["default_guidance_scale"] = value
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(config, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)
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


def replace_decoder(pipeline_dir: str, vae_dir: str) -> str:
    """
    Replaces the SAME of a pipeline folder (`pipeline_dir/vae`) with `vae_dir`, a decoder fine-tune of it (e.g.
    `train_autoencoder.py --training_mode decoder_only`), and returns the new folder. The new SAME must have the same
    config (up to `_name_or_path` and `_diffusers_version`) and the same encoder and bottleneck weights, bit for bit:
    then the latents, and a DiT trained on them, stay valid. Otherwise nothing is changed. The new folder is written
    beside the old one and moved over it, so a failure leaves the old one whole.
    """
    import json
    import os
    import shutil

    from safetensors.torch import load_file

    old_dir = os.path.join(pipeline_dir, "vae")
    for folder, argument in ((old_dir, "pipeline_dir"), (vae_dir, "vae_dir")):
        if not os.path.isfile(os.path.join(folder, "diffusion_pytorch_model.safetensors")):
            raise ValueError(
                f"`{argument}` {folder!r} has no SAME (no diffusion_pytorch_model.safetensors); give a pipeline "
                "folder and a SAME folder (e.g. the output_dir of train_autoencoder.py)."
            )

    def config(folder):
        with open(os.path.join(folder, "config.json")) as f:
            return {k: v for k, v in json.load(f).items() if k not in ("_name_or_path", "_diffusers_version")}

    old_config, new_config = config(old_dir), config(vae_dir)
    if old_config != new_config:
        changed = sorted(k for k in old_config.keys() | new_config.keys() if old_config.get(k) != new_config.get(k))
        raise ValueError(f"`vae_dir` {vae_dir!r} has another SAME config than {old_dir!r} (differs in {changed}).")
    old = load_file(os.path.join(old_dir, "diffusion_pytorch_model.safetensors"))
    new = load_file(os.path.join(vae_dir, "diffusion_pytorch_model.safetensors"))
    if set(old) != set(new):
        raise ValueError(f"`vae_dir` {vae_dir!r} has other weight names than {old_dir!r}.")
    differ = [
        name
        for name in sorted(old)
        if not name.startswith("decoder.")
        and not (old[name].shape == new[name].shape and torch.equal(old[name].float(), new[name].float()))
    ]
    if differ:
        raise ValueError(
            f"`vae_dir` {vae_dir!r} changes weights outside the decoder ({differ[:4]}): its latents differ from those "
            f"the DiT of {pipeline_dir!r} was trained on; fine-tune with `--training_mode decoder_only`."
        )
    partial, previous = old_dir + ".partial", old_dir + ".previous"
    for leftover in (partial, previous):
        if os.path.exists(leftover):
            shutil.rmtree(leftover)
    shutil.copytree(old_dir, partial)
    for name in ("config.json", "diffusion_pytorch_model.safetensors"):
        shutil.copy2(os.path.join(vae_dir, name), os.path.join(partial, name))
    os.replace(old_dir, previous)
    os.replace(partial, old_dir)
    shutil.rmtree(previous)
    logger.info(f"{old_dir}: replaced by the decoder fine-tune {vae_dir}")
    return old_dir


def main(input_args=None):
    """
    CLI of `make_tiny_model.sh`: `init` writes the untrained pipeline, `swap-vae` puts a trained SAME into one,
    `half-transformer` stores a pipeline's transformer in float16, `half-vae` a spectral SAME's matrices
    (with `--all_weights`, a trained SAME's every weight; [`store_weights_half`]), `set-guidance` a pipeline's
    default CFG scale ([`set_default_guidance_scale`]),
    `check-frozen` checks that two pipelines share their frozen components
    ([`frozen_files_differ`]), `replace-decoder` puts a decoder fine-tune of a pipeline's SAME into it
    ([`replace_decoder`]).
    """
    import argparse

    parser = argparse.ArgumentParser(description="Build the tiny Stable Audio 3 pipeline folders.")
    commands = parser.add_subparsers(dest="command", required=True)
    init = commands.add_parser("init", help="Untrained pipeline from a synthetic train set's captions.")
    init.add_argument("--dit_heads", type=int, default=2)
    init.add_argument("--dit_layers", type=int, default=6)
    init.add_argument("--latent_channels", type=int, default=None, help="Default 32 (spectral: set by the SAME).")
    init.add_argument("--max_text_length", type=int, default=32)
    init.add_argument("--output_dir", required=True)
    init.add_argument("--same_decoder_kernel_size", type=int, default=3)
    init.add_argument("--same_decoder_layers", type=int, default=None)
    init.add_argument("--same_heads", type=int, default=2)
    init.add_argument("--same_init", choices=SAME_INITS, default="random")
    init.add_argument("--same_layers", type=int, default=2)
    init.add_argument("--same_mlp_ratio", type=float, default=3.0)
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
    half_vae = commands.add_parser(
        "half-vae",
        help="Rewrite a pipeline's SAME in float16 (loaded back as float32): a spectral SAME's analysis and "
        "synthesis matrices, its other weights where that is exact; with --all_weights every weight.",
    )
    half_vae.add_argument(
        "--all_weights",
        action="store_true",
        help="Round every floating weight to float16 (a trained SAME); without it, a spectral SAME's analysis and "
        "synthesis matrices only.",
    )
    half_vae.add_argument("--pipeline", required=True)
    guidance = commands.add_parser(
        "set-guidance", help="Set a pipeline folder's default CFG scale (`default_guidance_scale`, model_index.json)."
    )
    guidance.add_argument("--pipeline", required=True)
    guidance.add_argument("--default_guidance_scale", type=float, required=True)
    check = commands.add_parser(
        "check-frozen",
        help="Exit with an error unless two pipelines have the same SAME, text encoder and tokenizer files.",
    )
    check.add_argument("--pipeline", required=True)
    check.add_argument("--reference", required=True)
    replace = commands.add_parser(
        "replace-decoder",
        help="Replace a pipeline's SAME, in place, by a decoder fine-tune of it (same encoder and bottleneck weights).",
    )
    replace.add_argument("--pipeline", required=True)
    replace.add_argument("--vae", required=True, help="The fine-tuned SAME folder (train_autoencoder.py's output).")
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
    elif args.command == "half-vae":
        store_weights_half(args.pipeline, "vae", None if args.all_weights else SPECTRAL_LOSSY_WEIGHTS)
    elif args.command == "replace-decoder":
        try:
            replace_decoder(args.pipeline, args.vae)
        except ValueError as error:
            raise SystemExit(f"error: --pipeline / --vae: {error}") from None
    elif args.command == "set-guidance":
        try:
            set_default_guidance_scale(args.pipeline, args.default_guidance_scale)
        except ValueError as error:
            raise SystemExit(f"error: --pipeline / --default_guidance_scale: {error}") from None
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
