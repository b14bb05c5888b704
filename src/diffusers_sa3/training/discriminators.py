"""Discriminators for adversarial training of the SAME autoencoder.

[`MultiResolutionSpectrogramDiscriminator`] is the multi-scale STFT discriminator of EnCodec (Défossez et al., 2022,
§3.4): one 2-D convolutional network per STFT resolution over the real and imaginary parts of every audio channel.
The official Stable Audio 3 repository contains no autoencoder training code, so this is our choice.
"""

from typing import List, Sequence, Tuple

import torch
from torch import nn
from torch.nn.utils.parametrizations import weight_norm


DiscriminatorOutput = List[Tuple[torch.Tensor, List[torch.Tensor]]]


class SpectrogramDiscriminator(nn.Module):
    """
    One resolution of the multi-resolution discriminator (EnCodec's `DiscriminatorSTFT`).

    The complex STFT (Hann window, `normalized=True`) of each audio channel gives `2 * audio_channels` input planes
    (real, imaginary) laid out `(batch, planes, frames, frequencies)`. A 2-D conv with kernel (3, 9), then
    `num_layers` weight-normed convs with kernel (3, 9), stride 2 along frequency and dilation 1, 2, 4, ... along time,
    a (3, 3) conv, and a (3, 3) conv to one logit plane. Every conv except the last is followed by LeakyReLU(0.2).

    Args:
        n_fft (`int`): STFT size; the hop is `n_fft // 4`.
        audio_channels (`int`, defaults to 2): audio channels of the input.
        channels (`int`, defaults to 32): width of every hidden conv.
        num_layers (`int`, defaults to 3): strided convs.
    """

    def __init__(self, n_fft: int, audio_channels: int = 2, channels: int = 32, num_layers: int = 3):
        super().__init__()
        self.n_fft = n_fft
        self.hop_length = n_fft // 4
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)
        convs = [weight_norm(nn.Conv2d(2 * audio_channels, channels, (3, 9), padding=(1, 4)))]
        for i in range(num_layers):
            dilation = 2**i
            convs.append(
                weight_norm(
                    nn.Conv2d(channels, channels, (3, 9), stride=(1, 2), dilation=(dilation, 1), padding=(dilation, 4))
                )
            )
        convs.append(weight_norm(nn.Conv2d(channels, channels, (3, 3), padding=(1, 1))))
        self.convs = nn.ModuleList(convs)
        self.conv_out = weight_norm(nn.Conv2d(channels, 1, (3, 3), padding=(1, 1)))
        self.activation = nn.LeakyReLU(0.2)

    def forward(self, audio: torch.Tensor) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        """
        Args:
            audio (`torch.Tensor`): `(batch, audio_channels, samples)`.

        Returns:
            `(logits, features)`: logits `(batch, 1, frames, frequencies')` and the activation of every hidden conv.
        """
        batch, channels, samples = audio.shape
        spectrum = torch.stft(
            audio.float().reshape(batch * channels, samples),
            self.n_fft,
            self.hop_length,
            window=self.window,
            normalized=True,
            return_complex=True,
        )
        spectrum = torch.view_as_real(spectrum).reshape(batch, channels, *spectrum.shape[-2:], 2)
        # (batch, channels, freq, frames, 2) -> (batch, 2 * channels, frames, freq)
        hidden_states = spectrum.permute(0, 1, 4, 3, 2).reshape(batch, 2 * channels, spectrum.shape[3], -1)
        hidden_states = hidden_states.to(self.conv_out.weight.dtype)
        features = []
        for conv in self.convs:
            hidden_states = self.activation(conv(hidden_states))
            features.append(hidden_states)
        return self.conv_out(hidden_states), features


class MultiResolutionSpectrogramDiscriminator(nn.Module):
    """
    EnCodec's multi-scale STFT discriminator: one [`SpectrogramDiscriminator`] per STFT size.

    Args:
        fft_sizes (`Sequence[int]`, defaults to `(2048, 1024, 512, 256, 128)`): one discriminator per size (EnCodec
            uses 2048, 1024, 512, 256, 128 at 24 kHz).
        audio_channels (`int`, defaults to 2): audio channels.
        channels (`int`, defaults to 32): hidden width of each discriminator.
        num_layers (`int`, defaults to 3): strided convs in each discriminator.
    """

    def __init__(
        self,
        fft_sizes: Sequence[int] = (2048, 1024, 512, 256, 128),
        audio_channels: int = 2,
        channels: int = 32,
        num_layers: int = 3,
    ):
        super().__init__()
        if len(fft_sizes) == 0:
            raise ValueError("`fft_sizes` must name at least one STFT size, got an empty sequence.")
        self.discriminators = nn.ModuleList(
            [SpectrogramDiscriminator(int(n_fft), audio_channels, channels, num_layers) for n_fft in fft_sizes]
        )

    def forward(self, audio: torch.Tensor) -> DiscriminatorOutput:
        """Returns one `(logits, features)` pair per resolution for `audio` `(batch, audio_channels, samples)`."""
        return [discriminator(audio) for discriminator in self.discriminators]
