"""Oracle judge: score an image against a prompt's constraints, per constraint, with reasons.

It parses the image with :func:`recaption.world.oracle.parse` and evaluates each constraint on the parsed
scene. It plays the role GPT-4V and BLIP-VQA play for real images, exactly, inside the shapes world.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from recaption.world.oracle import parse
from recaption.world.prompts import Prompt, check
from recaption.world.scene import Scene


@dataclass(frozen=True)
class ConstraintResult:
    constraint: dict[str, Any]
    ok: bool
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"constraint": dict(self.constraint), "ok": self.ok, "reason": self.reason}


@dataclass(frozen=True)
class Verdict:
    """``correct`` when every constraint holds; ``results`` per constraint; ``scene`` the oracle's reading."""

    correct: bool
    results: tuple[ConstraintResult, ...]
    scene: Scene | None = None
    prompt_id: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def score(self) -> float:
        """Fraction of constraints that hold."""
        return sum(r.ok for r in self.results) / len(self.results) if self.results else 1.0

    def to_dict(self) -> dict[str, Any]:
        return {"prompt_id": self.prompt_id, "correct": self.correct, "score": round(self.score, 4),
                "results": [r.to_dict() for r in self.results],
                "scene": self.scene.to_dict() if self.scene else None, **self.extra}


def judge_scene(scene: Scene, prompt: Prompt) -> Verdict:
    """Evaluate ``prompt``'s constraints on a scene graph."""
    results = tuple(ConstraintResult(c, *check(scene, c)) for c in prompt.constraints)
    return Verdict(correct=all(r.ok for r in results), results=results, scene=scene, prompt_id=prompt.id)


def judge(image: Any, prompt: Prompt) -> Verdict:
    """Judge an image (PIL or (H, W, 3) array) against ``prompt``: parse it, then check every constraint."""
    return judge_scene(parse(image), prompt)
