"""Contrastive decoupling learning: the exact prompt strings of each switch (METHODS.md §3)."""

from __future__ import annotations

import pytest

from lightning_cat.customization.cdl import ContrastiveDecoupling, join_negative_prompts

INSTANCE, CLASS, SAMPLE = "a photo of sks person", "a photo of person", "a dslr portrait of sks person"


def test_defaults_are_off_and_change_nothing():
    cdl = ContrastiveDecoupling()
    assert not cdl.enabled
    assert cdl.instance_prompt(INSTANCE) == INSTANCE
    assert cdl.class_prompt(CLASS) == CLASS
    assert cdl.sampling_prompt(SAMPLE) == SAMPLE
    assert cdl.sampling_negative_prompt() is None
    assert cdl.sampling_negative_prompt("blurry") == "blurry"


@pytest.mark.parametrize(
    ("switch", "expected"),
    [
        ("instance_suffix", ("a photo of sks person, bhj noisy pattern", CLASS, SAMPLE, None)),
        ("class_suffix", (INSTANCE, "a photo of person, without bhj noisy pattern", SAMPLE, None)),
        ("inference_suffix", (INSTANCE, CLASS, "a dslr portrait of sks person, without bhj noisy pattern", None)),
        ("negative_prompt", (INSTANCE, CLASS, SAMPLE, "noisy, lowres, artifact, pattern")),
    ],
)
def test_each_switch_changes_only_its_prompt(switch, expected):
    cdl = ContrastiveDecoupling(**{switch: True})
    assert cdl.enabled
    got = (
        cdl.instance_prompt(INSTANCE),
        cdl.class_prompt(CLASS),
        cdl.sampling_prompt(SAMPLE),
        cdl.sampling_negative_prompt(),
    )
    assert got == expected


def test_custom_token_and_negative_prompt_and_joining():
    cdl = ContrastiveDecoupling(True, True, True, True, noise_token="xqz", negative_prompt_text="grainy")
    assert cdl.instance_prompt(INSTANCE) == "a photo of sks person, xqz noisy pattern"
    assert cdl.class_prompt(CLASS) == "a photo of person, without xqz noisy pattern"
    assert cdl.sampling_prompt(SAMPLE) == "a dslr portrait of sks person, without xqz noisy pattern"
    assert cdl.sampling_negative_prompt("blurry") == "blurry, grainy"
    assert join_negative_prompts(None, " ", "a") == "a" and join_negative_prompts(None, "") is None
    assert ContrastiveDecoupling.from_dict(cdl.to_dict()) == cdl
    assert ContrastiveDecoupling.from_dict(None) == ContrastiveDecoupling()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"noise_token": ""}, "noise_token"),
        ({"noise_token": " bhj"}, "noise_token"),
        ({"noise_token": "two words"}, "noise_token must be one word"),
        ({"negative_prompt_text": ""}, "negative_prompt_text"),
    ],
)
def test_bad_strings_are_rejected(options, message):
    with pytest.raises(ValueError, match=f"ContrastiveDecoupling: .*{message}"):
        ContrastiveDecoupling(**options)
