"""Contrastive decoupling learning (CDL, Liu et al., arXiv 2406.18944): prompt design only.

Protected images carry a perturbation pattern that fine-tuning learns as part of the subject.
CDL gives that pattern a name of its own during training and asks for its absence at sampling:

* instance prompts train as ``"{instance_prompt}, {noise_token} noisy pattern"``;
* class-prior prompts train as ``"{class_prompt}, without {noise_token} noisy pattern"`` (the
  prior images themselves are generated from the plain class prompt);
* at sampling the positive prompt gets ``", without {noise_token} noisy pattern"`` and the
  negative prompt is ``"noisy, lowres, artifact, pattern"``.

Each part is a separate switch so it can be ablated::

    cdl = ContrastiveDecoupling(instance_suffix=True, class_suffix=True)
    cdl.instance_prompt("a photo of sks person")  # 'a photo of sks person, bhj noisy pattern'
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

__all__ = [
    "DEFAULT_CDL_NEGATIVE_PROMPT",
    "DEFAULT_NOISE_TOKEN",
    "ContrastiveDecoupling",
    "class_training_prompt",
    "inference_prompt",
    "instance_training_prompt",
    "join_negative_prompts",
]

DEFAULT_NOISE_TOKEN = "bhj"
DEFAULT_CDL_NEGATIVE_PROMPT = "noisy, lowres, artifact, pattern"


def instance_training_prompt(prompt: str, noise_token: str = DEFAULT_NOISE_TOKEN) -> str:
    """``"{prompt}, {noise_token} noisy pattern"``: the instance prompt under CDL training."""
    return f"{prompt}, {noise_token} noisy pattern"


def class_training_prompt(prompt: str, noise_token: str = DEFAULT_NOISE_TOKEN) -> str:
    """``"{prompt}, without {noise_token} noisy pattern"``: the class prompt under CDL training."""
    return f"{prompt}, without {noise_token} noisy pattern"


def inference_prompt(prompt: str, noise_token: str = DEFAULT_NOISE_TOKEN) -> str:
    """``"{prompt}, without {noise_token} noisy pattern"``: the positive prompt under CDL sampling."""
    return f"{prompt}, without {noise_token} noisy pattern"


def join_negative_prompts(*parts: str | None) -> str | None:
    """Join the non-empty negative prompts with ``", "`` (``None`` when all are empty)."""
    kept = [part.strip() for part in parts if part is not None and part.strip()]
    return ", ".join(kept) if kept else None


@dataclass(frozen=True)
class ContrastiveDecoupling:
    """Which CDL prompt changes are on, and the strings they use.

    Args:
        instance_suffix: train instance prompts with ``", {noise_token} noisy pattern"``.
        class_suffix: train class prompts with ``", without {noise_token} noisy pattern"``.
        inference_suffix: sample with ``", without {noise_token} noisy pattern"``.
        negative_prompt: sample with :attr:`negative_prompt_text` as (part of) the negative prompt.
        noise_token: the rare token that names the perturbation pattern.
        negative_prompt_text: the CDL negative prompt.

    Raises:
        ValueError: for an empty or padded noise token or negative prompt.
    """

    instance_suffix: bool = False
    class_suffix: bool = False
    inference_suffix: bool = False
    negative_prompt: bool = False
    noise_token: str = DEFAULT_NOISE_TOKEN
    negative_prompt_text: str = DEFAULT_CDL_NEGATIVE_PROMPT

    def __post_init__(self) -> None:
        for name in ("noise_token", "negative_prompt_text"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip() or value != value.strip():
                raise ValueError(
                    f"ContrastiveDecoupling: {name} must be a non-empty string without surrounding spaces, got {value!r}"
                )
        if any(character.isspace() for character in self.noise_token):
            raise ValueError(f"ContrastiveDecoupling: noise_token must be one word, got {self.noise_token!r}")

    @property
    def enabled(self) -> bool:
        """True when any part is on."""
        return self.instance_suffix or self.class_suffix or self.inference_suffix or self.negative_prompt

    def instance_prompt(self, prompt: str) -> str:
        """The training prompt of an instance image."""
        return instance_training_prompt(prompt, self.noise_token) if self.instance_suffix else prompt

    def class_prompt(self, prompt: str) -> str:
        """The training prompt of a class-prior image."""
        return class_training_prompt(prompt, self.noise_token) if self.class_suffix else prompt

    def sampling_prompt(self, prompt: str) -> str:
        """The positive prompt at sampling."""
        return inference_prompt(prompt, self.noise_token) if self.inference_suffix else prompt

    def sampling_negative_prompt(self, negative_prompt: str | None = None) -> str | None:
        """The negative prompt at sampling: the user's, then the CDL one when that switch is on."""
        return join_negative_prompts(negative_prompt, self.negative_prompt_text if self.negative_prompt else None)

    def to_dict(self) -> dict[str, Any]:
        """The settings as recorded beside exported weights."""
        return asdict(self)

    @classmethod
    def from_dict(cls, record: dict[str, Any] | None) -> ContrastiveDecoupling:
        """Rebuild from :meth:`to_dict` output (unknown keys are ignored; ``None`` gives CDL off)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in (record or {}).items() if k in names})
