"""Caption audit (``recaption audit``): what captions get right and wrong.

For shapes-world records each caption is parsed against the record's true scene (``meta["world"]["scene"]``)
with the world's vocabulary (:mod:`recaption.world.scene`, fill synonyms from :mod:`recaption.world.captions`):

- an *object mention* is a shape word (singular or plural) with the attribute words right before it
  (colour, size, fill) and an optional number word ("two large striped red circles");
- ``object_precision``: mentions that fit some object of the scene (same shape and every named attribute);
  ``object_recall``: scene objects that some fitting mention covers;
- ``attribute_recall``: over every (object, attribute) of the scene (shape, colour, size, fill), the share
  a fitting mention of that object states; ``attribute_precision``: named attributes that hold for an object
  of the mentioned shape (binding-aware); per-attribute recalls as ``recall_<attr>``;
- ``hallucination_rate``: shape and attribute words named in mentions whose value no object of the scene has;
- ``count_accuracy``: number claims ("two ... stars", "four shapes") that equal the number of fitting objects;
- ``relation_accuracy``: "the A is to the left of / right of / above / below the B" claims that hold for
  some pair of fitting objects (positions named in A or B narrow them);
- ``text_accuracy``: scenes with a sign whose caption quotes its text exactly, and captions that quote a
  text where there is no sign count as wrong;
- ``names_main_subjects``: every (colour, shape) group named with both words (and the sign, if any) —
  the SSC criterion; ``words_per_caption``;
- ``<attr>_accuracy_given_object`` (size, fill): of the objects named by their colour and shape whose mention
  also states that attribute, the share stated right (any such mention stating the object's value counts), and
  ``objects_named``, the share of objects some mention names by colour and shape. The recalls above credit an
  attribute only through a mention whose every word fits, so one wrong fill uncredits the size beside it; these
  say which attribute a caption gets wrong once it has found the object. ``attribute_recall_named`` is the
  attribute recall read that way: each object's shape and colour are credited when some mention names it by both,
  its size and fill when such a mention states them right; a wrong fill costs the fill alone. ``attribute_recall``
  (every word of a mention must fit) stays the headline figure: it is the stricter one.

For any data: length and vocabulary statistics, the share of boilerplate openers ("The image depicts…"),
degenerate repetition (a word 3+ times in a row, a span repeated back to back, a sentence twice), and the share of captions over
77 CLIP tokens. Tokens are counted with a CLIP tokenizer when one is given; otherwise approximated as
CLIP's pre-tokenizer pieces (words, single digits, punctuation marks) plus the two special tokens, which
undercounts words that CLIP's BPE splits (rare in plain English captions).
"""

from __future__ import annotations

import json
import logging
import re
import statistics
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from recaption.records import Record

log = logging.getLogger(__name__)

CLIP_CONTEXT = 77
BOILERPLATE = re.compile(
    r"^\s*(the|this) (image|picture|photo|photograph|illustration|scene|drawing) "
    r"(depicts|shows|features|displays|presents|contains|portrays|captures|is)\b"
    r"|^\s*(an?|the) (image|picture|photo|photograph|illustration|drawing) (of|showing|depicting)\b"
    r"|^\s*in (this|the) (image|picture|photo|illustration|scene)\b", re.I)
"""Openers that say nothing about the content ("The image depicts...", "An image of...")."""
_CLIP_PIECES = re.compile(r"'s|'t|'re|'ve|'m|'ll|'d|[^\W\d_]+|\d|[^\s\w]+", re.I)
_WORDS = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")
NUMBERS = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9,
           "single": 1, "pair": 2}
ATTRS = ("shape", "color", "size", "fill")
GIVEN_ATTRS = ("size", "fill")  # judged given an object named by its colour and shape


# -- vocabulary -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Vocab:
    """Word -> (attribute, value) tables built from the world's vocabulary."""

    shapes: dict[str, str]
    colors: dict[str, str]
    sizes: dict[str, str]
    fills: dict[str, str]
    positions: list[tuple[str, str]]  # (phrase, position name), longest phrases first
    masks: tuple[str, ...] = field(default_factory=tuple)  # phrases whose colour words are not object colours


def world_vocab() -> Vocab:
    from recaption.world import scene as S

    try:
        from recaption.world.captions import FILL_WORDS, GROUND_PHRASES
    except ImportError:  # pragma: no cover - the world's caption writer is optional here
        FILL_WORDS, GROUND_PHRASES = {f: (f,) for f in S.FILLS}, {}
    shapes = {s: s for s in S.SHAPES} | {S.SHAPE_PLURALS.get(s, s + "s"): s for s in S.SHAPES}
    shapes |= {s + "es": s for s in S.SHAPES if s.endswith("x")}
    fills = {w: f for f, ws in FILL_WORDS.items() for w in ws} | {f: f for f in S.FILLS}
    fills |= {"dots": "dotted", "stripes": "striped", "outlines": "outline", "polka": "dotted"}
    positions = sorted(((p, name) for name, ps in S.POSITION_PHRASES.items() for p in ps),
                       key=lambda t: -len(t[0]))
    masks = tuple(f"{b} background" for b in S.BACKGROUNDS) + tuple(f"on {b}" for b in S.BACKGROUNDS) \
        + tuple(p for ps in GROUND_PHRASES.values() for p in ps) + ("light blue", "green grass", "white sign")
    return Vocab(shapes=shapes, colors={c: c for c in S.COLORS}, sizes={s: s for s in S.SIZES}, fills=fills,
                 positions=positions, masks=tuple(sorted(set(masks), key=len, reverse=True)))


# -- parsing ----------------------------------------------------------------------------------------------

@dataclass
class Mention:
    """One object mention: its shape, the attributes named before it, a count if one was said."""

    shape: str
    attrs: dict[str, str]
    count: int | None
    plural: bool
    position: str | None = None


def _sentences(text: str) -> list[str]:
    return [s for s in re.split(r"(?<=[.!?;])\s+|\n+", text.lower()) if s.strip()]


def _mask(text: str, v: Vocab) -> str:
    for m in v.masks:
        text = text.replace(m, " " + "_" * len(m.split()) + " ")
    return text


def _position(text: str, v: Vocab) -> str | None:
    for phrase, name in v.positions:
        if re.search(rf"\b{re.escape(phrase)}\b", text):
            return name
    return None


def parse_mentions(text: str, v: Vocab) -> list[Mention]:
    """Object mentions in ``text`` (lower-cased, background/ground colour phrases masked)."""
    words = _WORDS.findall(_mask(text.lower(), v))
    out = []
    for i, w in enumerate(words):
        if w not in v.shapes:
            continue
        attrs: dict[str, str] = {}
        count = None
        j = i - 1
        while j >= 0 and i - j <= 5:
            u = words[j]
            for name, table in (("color", v.colors), ("size", v.sizes), ("fill", v.fills)):
                if u in table and name not in attrs:
                    attrs[name] = table[u]
                    break
            else:
                if u in NUMBERS:
                    count = NUMBERS[u]
                elif u.isdigit() and 0 < int(u) < 100:
                    count = int(u)
                break
            j -= 1
        plural = w != v.shapes[w]
        out.append(Mention(shape=v.shapes[w], attrs=attrs, count=count, plural=plural))
    return out


def _fits(m: Mention, o: Any) -> bool:
    return o.shape == m.shape and all(getattr(o, a) == val for a, val in m.attrs.items()) and \
        (m.position is None or o.position == m.position)


_REL = re.compile(r"\b(to the left of|to the right of|left of|right of|above|below|under|beneath|over)\b")
_REL_NAME = {"to the left of": "left of", "left of": "left of", "to the right of": "right of",
             "right of": "right of", "above": "above", "over": "above", "below": "below", "under": "below",
             "beneath": "below"}


def parse_relations(text: str, v: Vocab) -> list[tuple[Mention, str, Mention]]:
    """(A, relation, B) claims: the last mention before a relation phrase and the first after it."""
    claims = []
    for s in _sentences(text):
        s = _mask(s, v)
        for m in _REL.finditer(s):
            left, right = s[:m.start()], s[m.end():]
            right = re.split(r"\b(and|while|but|,)\b", right)[0]
            a = parse_mentions(left, v)
            b = parse_mentions(right, v)
            if not a:
                continue
            A = a[-1]
            A.position = _position(left[left.rfind(A.shape):] if A.shape in left else left, v)
            if b:
                B = b[0]
            elif re.search(r"\b(the )?(one|other)\b", right):  # "the one at the top"
                B = Mention(shape=A.shape, attrs=dict(A.attrs), count=None, plural=False)
            else:
                continue
            B.position = _position(right, v)
            claims.append((A, _REL_NAME[m.group(1)], B))
    return claims


_QUOTED = re.compile(r"[\"“”']([A-Za-z]{1,12})[\"“”']")
_SAYS = re.compile(r"\b(?:reads|says|saying|reading|text|word|letters)\s+[\"“”']?([A-Za-z]{1,12})\b", re.I)


def claimed_texts(text: str) -> set[str]:
    """Texts a caption says are written in the image (quoted, or after 'reads'/'says')."""
    found = {t.upper() for t in _QUOTED.findall(text)}
    found |= {t.upper() for t in _SAYS.findall(text) if t.isupper() or len(t) <= 3}
    return found


# -- per caption ------------------------------------------------------------------------------------------

def audit_world_caption(caption: str, scene: Any, v: Vocab) -> dict[str, Any]:
    """Counts for one caption against its scene; :func:`summarise` turns the sums into rates."""
    from recaption.world.scene import relation_holds

    objs = list(scene.objects)
    mentions = parse_mentions(caption, v)
    r: Counter = Counter()
    covered_attrs: set[tuple[int, str]] = set()
    for m in mentions:
        fitting = [i for i, o in enumerate(objs) if _fits(m, o)]
        r["mentions"] += 1
        r["mentions_fit"] += bool(fitting)
        for i in fitting:
            covered_attrs.add((i, "shape"))
            for a in m.attrs:
                covered_attrs.add((i, a))
        # hallucination: values named that no object of the scene has
        r["named"] += 1 + len(m.attrs)
        r["named_absent"] += (m.shape not in {o.shape for o in objs}) + sum(
            val not in {getattr(o, a) for o in objs} for a, val in m.attrs.items())
        # attribute precision: the attribute holds for some object of this shape
        same_shape = [o for o in objs if o.shape == m.shape]
        r["attrs_named"] += len(m.attrs)
        r["attrs_named_ok"] += sum(any(getattr(o, a) == val for o in same_shape) for a, val in m.attrs.items())
        if m.count is not None:
            r["count_claims"] += 1
            r["count_ok"] += m.count == len(fitting)
    # totals: "four shapes", "three objects"
    for n_word in re.findall(r"\b(one|two|three|four|five|six|seven|eight|nine|\d)\s+(?:\w+\s+)?"
                             r"(?:shapes|objects|things|figures|items)\b", caption.lower()):
        r["count_claims"] += 1
        r["count_ok"] += (NUMBERS.get(n_word) or int(n_word)) == len(objs)
    for o in objs:  # per attribute, given the object is named by its colour and shape
        same = [m for m in mentions if m.shape == o.shape and m.attrs.get("color") == o.color]
        r["objects_named"] += bool(same)
        for a in GIVEN_ATTRS:
            stated = {m.attrs[a] for m in same if a in m.attrs}
            if stated:
                r[f"given_total_{a}"] += 1
                r[f"given_ok_{a}"] += getattr(o, a) in stated
    r["objects"] = len(objs)
    r["objects_covered"] = len({i for i, a in covered_attrs if a == "shape"})
    for a in ATTRS:
        r[f"attr_total_{a}"] = len(objs)
        r[f"attr_ok_{a}"] = len({i for i, b in covered_attrs if b == a})
    for A, rel, B in parse_relations(caption, v):
        r["relation_claims"] += 1
        r["relation_ok"] += any(_fits(A, a) and _fits(B, b) and a is not b and relation_holds(a, rel, b)
                                for a in objs for b in objs)
    claimed = claimed_texts(caption)
    if scene.sign is not None or claimed:
        r["text_cases"] += 1
        r["text_ok"] += scene.sign is not None and scene.sign.text.upper() in claimed
    groups = {(o.color, o.shape) for o in objs}
    named = {(m.attrs.get("color"), m.shape) for m in mentions}
    sign_ok = scene.sign is None or "sign" in caption.lower()
    r["main_subjects_ok"] = int(groups <= named and sign_ok)
    return dict(r)


def _ratio(a: float, b: float) -> float | None:
    return round(a / b, 4) if b else None


def summarise_world(rows: list[dict[str, Any]]) -> dict[str, Any]:
    t: Counter = Counter()
    for r in rows:
        t.update(r)
    attr_total = sum(t[f"attr_total_{a}"] for a in ATTRS)
    attr_ok = sum(t[f"attr_ok_{a}"] for a in ATTRS)
    out = {
        "object_precision": _ratio(t["mentions_fit"], t["mentions"]),
        "object_recall": _ratio(t["objects_covered"], t["objects"]),
        "attribute_precision": _ratio(t["attrs_named_ok"], t["attrs_named"]),
        "attribute_recall": _ratio(attr_ok, attr_total),
        **{f"recall_{a}": _ratio(t[f"attr_ok_{a}"], t[f"attr_total_{a}"]) for a in ATTRS},
        "hallucination_rate": _ratio(t["named_absent"], t["named"]),
        "count_accuracy": _ratio(t["count_ok"], t["count_claims"]),
        "count_claims": t["count_claims"],
        "relation_accuracy": _ratio(t["relation_ok"], t["relation_claims"]),
        "relation_claims": t["relation_claims"],
        "text_accuracy": _ratio(t["text_ok"], t["text_cases"]),
        "text_cases": t["text_cases"],
        "names_main_subjects": _ratio(t["main_subjects_ok"], len(rows)),
        "objects_named": _ratio(t["objects_named"], t["objects"]),
        **{f"{a}_accuracy_given_object": _ratio(t[f"given_ok_{a}"], t[f"given_total_{a}"]) for a in GIVEN_ATTRS},
        # shape and colour of each object named by both, + its size and fill where such a mention states them right
        "attribute_recall_named": _ratio((len(ATTRS) - len(GIVEN_ATTRS)) * t["objects_named"]
                                         + sum(t[f"given_ok_{a}"] for a in GIVEN_ATTRS), len(ATTRS) * t["objects"]),
    }
    return out


# -- any data ---------------------------------------------------------------------------------------------

def clip_token_count(text: str, tokenizer: Any = None) -> int:
    """CLIP tokens of ``text`` incl. start/end tokens: exact with ``tokenizer``, else the approximation."""
    if tokenizer is not None:
        return len(tokenizer(text, truncation=False)["input_ids"])
    return len(_CLIP_PIECES.findall(text.lower())) + 2


def is_degenerate(text: str) -> bool:
    """The loops greedy decoding falls into: a word 3+ times in a row, a span of 2-8 words repeated back
    to back ("red circle red circle"), or a sentence said twice. Legitimate repeats of a phrase in
    different sentences ("is to the left of the") do not count."""
    w = _WORDS.findall(text.lower())
    if any(w[i] == w[i + 1] == w[i + 2] for i in range(len(w) - 2)):
        return True
    sents = [_WORDS.findall(s) for s in _sentences(text)]
    for w in sents:  # within a sentence: "the blue circle. The blue circle is ..." is fine
        if any(w[i:i + n] == w[i + n:i + 2 * n] for n in range(2, 9) for i in range(len(w) - 2 * n + 1)):
            return True
    joined = [" ".join(w) for w in sents if w]
    return len(joined) != len(set(joined))


def general_stats(captions: list[str], tokenizer: Any = None) -> dict[str, Any]:
    words = [len(_WORDS.findall(c.lower())) for c in captions]
    vocab = Counter(w for c in captions for w in _WORDS.findall(c.lower()))
    toks = [clip_token_count(c, tokenizer) for c in captions]
    n = len(captions)
    return {
        "captions": n,
        "words_per_caption": round(statistics.fmean(words), 2) if n else None,
        "words_median": statistics.median(words) if n else None,
        "words_p95": sorted(words)[int(0.95 * (n - 1))] if n else None,
        "words_max": max(words) if n else None,
        "chars_per_caption": round(statistics.fmean(len(c) for c in captions), 1) if n else None,
        "vocabulary_size": len(vocab),
        "type_token_ratio": _ratio(len(vocab), sum(vocab.values())),
        "distinct_captions": _ratio(len(set(captions)), n),
        "empty_share": _ratio(sum(not c.strip() for c in captions), n),
        "boilerplate_share": _ratio(sum(bool(BOILERPLATE.search(c)) for c in captions), n),
        "degenerate_share": _ratio(sum(is_degenerate(c) for c in captions), n),
        "over_77_tokens_share": _ratio(sum(t > CLIP_CONTEXT for t in toks), n),
        "clip_tokens_mean": round(statistics.fmean(toks), 1) if n else None,
        "clip_token_count": "tokenizer" if tokenizer is not None else "approximate",
    }


def audit(records: Iterable[Record], captions: dict[str, str], clip_tokenizer: Any = None,
          mode: str | None = None) -> dict[str, Any]:
    """Audit ``captions`` ({key: caption}) of ``records``; world figures where records carry a scene."""
    from recaption.world import Scene

    v = None
    rows, texts, per = [], [], []
    for r in records:
        cap = captions.get(r.key)
        if cap is None:
            continue
        texts.append(cap)
        w = r.meta.get("world") if isinstance(r.meta, dict) else None
        if isinstance(w, dict) and "scene" in w:
            v = v or world_vocab()
            row = audit_world_caption(cap, Scene.from_dict(w["scene"]), v)
            rows.append(row)
            per.append({"key": r.key, "caption": cap, **row})
    if not texts:
        raise ValueError("no caption matches a record key of the input dataset")
    report: dict[str, Any] = {"mode": mode, "matched": len(texts), "captions_given": len(captions),
                              **general_stats(texts, clip_tokenizer)}
    if rows:
        report.update(summarise_world(rows))
        report["world_records"] = len(rows)
    report["per_caption"] = per
    return report


def audit_file(input: str, captions_path: str, out: str | None = None, clip_tokenizer: str | None = None,
               mode: str | None = None) -> dict[str, Any]:
    """Audit a captions JSONL against a dataset; writes the report JSON to ``out`` when given."""
    from recaption.captioners.caption_file import read_captions
    from recaption.io import read_records

    caps = read_captions(captions_path)
    if mode is None:
        with open(captions_path) as f:
            first = next((json.loads(line) for line in f if line.strip()), {})
        mode = first.get("mode")
    tok = None
    if clip_tokenizer:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(clip_tokenizer)
    report = audit(read_records(input), caps, tok, mode)
    if out:
        with open(out, "w") as f:
            json.dump(report, f, indent=1)
    return report


FIGURES = ("matched", "words_per_caption", "words_max", "vocabulary_size", "boilerplate_share", "degenerate_share",
           "over_77_tokens_share", "object_precision", "object_recall", "attribute_precision", "attribute_recall",
           "recall_shape", "recall_color", "recall_size", "recall_fill", "hallucination_rate", "count_accuracy",
           "relation_accuracy", "text_accuracy", "names_main_subjects", "objects_named",
           "size_accuracy_given_object", "fill_accuracy_given_object", "attribute_recall_named")


def audit_table(report: dict[str, Any], title: str | None = None) -> Any:
    """A rich table of the headline figures of a report."""
    from rich.table import Table

    t = Table(title=title or f"caption audit ({report.get('mode') or 'captions'})")
    t.add_column("figure")
    t.add_column("value", justify="right")
    for k in FIGURES:
        if k in report:
            val = report[k]
            t.add_row(k, "-" if val is None else f"{val:.3f}" if isinstance(val, float) else str(val))
    return t
