"""Prompts given as text or as precomputed text-encoder states (`prompt_embeds` + `attention_mask`)."""

from dataclasses import dataclass
from typing import List, Optional, Union

import torch


@dataclass
class PromptBatch:
    r"""
    The prompts of one call: either `texts`, or the T5Gemma states `embeds` (B, L, C) with their token `mask` (B, L),
    as returned by `encode_prompt`.
    """

    texts: Optional[List[str]] = None
    embeds: Optional[torch.Tensor] = None
    mask: Optional[torch.Tensor] = None

    def __len__(self) -> int:
        return len(self.texts) if self.texts is not None else self.embeds.shape[0]

    def repeat(self, times: int) -> "PromptBatch":
        """Each prompt `times` times in a row (`num_waveforms_per_prompt`)."""
        if self.texts is not None:
            return PromptBatch(texts=[text for text in self.texts for _ in range(times)])
        return PromptBatch(
            embeds=self.embeds.repeat_interleave(times, dim=0), mask=self.mask.repeat_interleave(times, dim=0)
        )


def _text_list(value, name: str) -> List[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple)) and all(isinstance(p, str) for p in value):
        return list(value)
    raise ValueError(f"`{name}` must be a string or a list of strings, got {value!r}.")


def _check_embeds(embeds, mask, embeds_name: str, mask_name: str, width: Optional[int]) -> PromptBatch:
    if not isinstance(embeds, torch.Tensor) or embeds.ndim != 3 or not embeds.is_floating_point():
        raise ValueError(
            f"`{embeds_name}` must be a float tensor (batch, tokens, channels) of text-encoder states, got "
            f"{type(embeds).__name__ if not isinstance(embeds, torch.Tensor) else tuple(embeds.shape)}; use the "
            "first output of `pipe.encode_prompt(prompts)`."
        )
    if embeds.shape[0] == 0 or embeds.shape[1] == 0:
        raise ValueError(f"`{embeds_name}` is empty (shape {tuple(embeds.shape)}); pass at least one prompt's states.")
    if width is not None and embeds.shape[-1] != width:
        raise ValueError(
            f"`{embeds_name}` has {embeds.shape[-1]} channels but the transformer's `cross_attention_dim` is {width}; "
            "pass states of this model's text encoder (`pipe.encode_prompt`)."
        )
    if mask is None:
        raise ValueError(
            f"`{mask_name}` is missing: `{embeds_name}` needs its token mask (batch, tokens), the second output of "
            "`pipe.encode_prompt(prompts)`; padded tokens get the model's learned padding, as with text prompts."
        )
    if not isinstance(mask, torch.Tensor) or tuple(mask.shape) != tuple(embeds.shape[:2]):
        shape = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise ValueError(
            f"`{mask_name}` must be a tensor of shape {tuple(embeds.shape[:2])} (batch, tokens of `{embeds_name}`), "
            f"got {shape}."
        )
    if not bool(((mask == 0) | (mask == 1)).all()):
        raise ValueError(f"`{mask_name}` must hold only 0 (padding) and 1 (token), got other values.")
    return PromptBatch(embeds=embeds, mask=mask)


def parse_prompts(
    pipeline,
    prompt: Optional[Union[str, List[str]]],
    prompt_embeds: Optional[torch.Tensor],
    attention_mask: Optional[torch.Tensor],
    negative_prompt: Optional[Union[str, List[str]]],
    negative_prompt_embeds: Optional[torch.Tensor],
    negative_attention_mask: Optional[torch.Tensor],
):
    r"""
    Validates the prompt arguments of a call of `pipeline` (a Stable Audio 3 pipeline: text prompts need its text
    encoder and tokenizer, states its transformer's `cross_attention_dim`); returns `(prompts, negative_prompts)` as
    [`PromptBatch`]es (`negative_prompts` is `None` without a negative prompt). A single negative (string, or states
    of batch 1) is used for every prompt.
    """
    has_text_encoder = pipeline.text_encoder is not None and pipeline.tokenizer is not None
    width = getattr(getattr(pipeline.transformer, "config", None), "cross_attention_dim", None)
    if prompt is not None and prompt_embeds is not None:
        raise ValueError("Pass either `prompt` (text) or `prompt_embeds` (text-encoder states), not both.")
    if prompt is None and prompt_embeds is None:
        raise ValueError(
            "`prompt` is missing; pass `prompt` as a string or a list of strings, or `prompt_embeds` with "
            "`attention_mask` from `pipe.encode_prompt(prompts)`."
        )
    if prompt_embeds is None and attention_mask is not None:
        raise ValueError(
            "`attention_mask` is the mask of `prompt_embeds`; pass it only together with `prompt_embeds`."
        )
    if negative_prompt is not None and negative_prompt_embeds is not None:
        raise ValueError("Pass either `negative_prompt` or `negative_prompt_embeds`, not both.")
    if negative_prompt_embeds is None and negative_attention_mask is not None:
        raise ValueError(
            "`negative_attention_mask` is the mask of `negative_prompt_embeds`; pass it only together with "
            "`negative_prompt_embeds`."
        )

    if prompt is not None:
        prompts = PromptBatch(texts=_text_list(prompt, "prompt"))
        if len(prompts) == 0:
            raise ValueError("`prompt` is an empty list; pass at least one prompt.")
    else:
        prompts = _check_embeds(prompt_embeds, attention_mask, "prompt_embeds", "attention_mask", width)

    negatives = None
    if negative_prompt is not None:
        texts = _text_list(negative_prompt, "negative_prompt")
        if isinstance(negative_prompt, str):
            texts = texts * len(prompts)
        if len(texts) != len(prompts):
            raise ValueError(
                f"`negative_prompt` has {len(texts)} entries but there are {len(prompts)} prompts; give one negative "
                "prompt per prompt or a single string."
            )
        negatives = PromptBatch(texts=texts)
    elif negative_prompt_embeds is not None:
        negatives = _check_embeds(
            negative_prompt_embeds, negative_attention_mask, "negative_prompt_embeds", "negative_attention_mask", width
        )
        if len(negatives) == 1 and len(prompts) > 1:
            negatives = PromptBatch(
                embeds=negatives.embeds.expand(len(prompts), -1, -1), mask=negatives.mask.expand(len(prompts), -1)
            )
        if len(negatives) != len(prompts):
            raise ValueError(
                f"`negative_prompt_embeds` has a batch of {len(negatives)} but there are {len(prompts)} prompts; give "
                "one negative per prompt or a batch of 1."
            )

    needs_encoder = prompts.texts is not None or (negatives is not None and negatives.texts is not None)
    if needs_encoder and not has_text_encoder:
        raise ValueError(
            "This pipeline has no text encoder (`text_encoder` / `tokenizer` is None), so it cannot encode text "
            "prompts; pass `prompt_embeds` and `attention_mask` (and `negative_prompt_embeds` / "
            "`negative_attention_mask`) from `encode_prompt` of a pipeline that has one."
        )
    return prompts, negatives
