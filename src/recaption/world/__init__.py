"""The shapes world: seeded scenes whose truth is known, so every model can be measured exactly.

- :mod:`.scene` vocabulary (SHAPES, COLORS, SIZES, FILLS, POSITIONS, BACKGROUNDS, GROUNDS, RELATIONS,
  HELD_OUT_COMBOS) and the scene graph (:class:`Scene`, :class:`Obj`, :class:`Sign`);
- :mod:`.sampler` seeded scene sampler; :mod:`.render` anti-aliased renderer (64 px default, any size);
- :mod:`.captions` alt-text simulator and true short / descriptive captions;
- :mod:`.oracle` parser (image -> scene); :mod:`.prompts` prompt suite with constraints; :mod:`.judge`;
- :mod:`.dataset` records for training (``captions={"alt": ...}`` only; truth under ``meta["world"]``).

Truth lives in ``record.meta["world"] = {"scene": {...}, "truth": {"short": ..., "descriptive": ...}}``;
read it with :func:`truth_caption` or :func:`record_scene`, never from ``record.captions``.
"""

from __future__ import annotations

from typing import Any

from recaption.world.scene import (
    BACKGROUNDS,
    CELL_NAMES,
    COLORS,
    FILLS,
    GRID,
    GROUNDS,
    HELD_OUT_COMBOS,
    POSITION_PHRASES,
    POSITIONS,
    RELATIONS,
    SHAPES,
    SIZES,
    TEXT_WORDS,
    Obj,
    Scene,
    SceneError,
    Sign,
    relation_holds,
)

TRUTH_FIELDS = ("short", "descriptive")


def _world_meta(record: Any) -> dict[str, Any]:
    meta = record.meta if hasattr(record, "meta") else record.get("meta", {})
    w = meta.get("world") if isinstance(meta, dict) else None
    if not isinstance(w, dict):
        key = getattr(record, "key", None) or (record.get("key") if isinstance(record, dict) else None)
        raise KeyError(f"record {key!r} has no meta['world'] (not a shapes-world record)")
    return w


def truth_caption(record: Any, field: str = "descriptive") -> str:
    """The TRUE caption of a world record (``field`` = 'short' or 'descriptive'); for measuring only.

    ``record`` is a :class:`recaption.records.Record` or its JSON dict. Raises KeyError naming the record
    when it carries no world truth.
    """
    if field not in TRUTH_FIELDS:
        raise ValueError(f"truth field must be one of {TRUTH_FIELDS}, got {field!r}")
    return _world_meta(record)["truth"][field]


def record_scene(record: Any) -> Scene:
    """The true scene graph of a world record."""
    return Scene.from_dict(_world_meta(record)["scene"])


_LAZY = {
    "render_array": "recaption.world.render", "parse": "recaption.world.oracle",
    "judge_scene": "recaption.world.judge", "Verdict": "recaption.world.judge", "Prompt": "recaption.world.prompts", "prompt_suite": "recaption.world.prompts",
    "load_prompts": "recaption.world.prompts", "scene_for": "recaption.world.prompts",
    "scene_breaking": "recaption.world.prompts", "generate_records": "recaption.world.dataset",
    "write_dataset": "recaption.world.dataset", "WorldConfig": "recaption.world.dataset",
    "sample_scene": "recaption.world.sampler", "SamplerConfig": "recaption.world.sampler",
    "AltTextConfig": "recaption.world.captions",
}


def __getattr__(name: str) -> Any:
    """Lazy access to the main functions of the submodules. ``render`` and ``judge`` are submodule names, so
    import those functions from their modules: ``from recaption.world.judge import judge``."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'recaption.world' has no attribute {name!r}")


__all__ = [*_LAZY,
    "BACKGROUNDS", "CELL_NAMES", "COLORS", "FILLS", "GRID", "GROUNDS", "HELD_OUT_COMBOS", "POSITION_PHRASES",
    "POSITIONS", "RELATIONS", "SHAPES", "SIZES", "TEXT_WORDS", "TRUTH_FIELDS", "Obj", "Scene", "SceneError",
    "Sign", "record_scene", "relation_holds", "truth_caption",
]
