"""T2I-CompBench "disentangled BLIP-VQA" for attribute binding (colour, shape, texture).

Follows the benchmark's own code (``BLIPvqa_eval/BLIP_vqa.py`` and ``models/blip_vqa.py`` in
Karine-Huang/T2I-CompBench): split the prompt into noun phrases (spaCy ``en_core_web_sm`` ``noun_chunks``),
ask BLIP-VQA one question per phrase, ``"<noun phrase>?"`` (at most 8 phrases), read the probability of
"yes" from the answer decoder's first token (``p(yes) / (p(yes) + p(no))`` after a softmax over the vocabulary),
and score the image by the PRODUCT over its phrases; the benchmark score is the mean over images. As in the
benchmark, the question's first token is replaced by BLIP's ``[ENC]`` token when the tokenizer has one.

The model is transformers' ``BlipForQuestionAnswering`` by name (``Salesforce/blip-vqa-base`` by default,
the benchmark's BLIP-VQA base checkpoint) or folder. spaCy and its English model are used when installed
(``chunker="spacy"``); otherwise a rule chunker splits the prompt at conjunctions, prepositions and
punctuation and keeps determiner-led phrases. On the benchmark's dominant pattern ("a green bench and a
blue bowl", about 80% of the colour/shape/texture prompts) both give the same phrases; on longer sentences
the rules are an approximation, and the report names the chunker used.

Images: ``<prompt index>_<sample>.<ext>`` with prompts from the category's prompt file (packaged copy of the
T2I-CompBench validation prompts), or the benchmark's own naming ``<prompt>_<number>.png``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

from recaption.eval.stats import bootstrap_mean

log = logging.getLogger(__name__)

CATEGORIES = ("color", "shape", "texture")
DEFAULT_BLIP = "Salesforce/blip-vqa-base"
NP_NUM = 8  # the benchmark's --np_num default
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp")


def load_prompts(category: str, path: str | Path | None = None) -> list[str]:
    """The category's prompts, one a line (packaged T2I-CompBench ``<category>_val.txt`` by default)."""
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"prompt file {str(p)!r} not found")
        text = p.read_text()
    else:
        if category not in CATEGORIES:
            raise ValueError(f"category must be one of {CATEGORIES}, got {category!r}")
        text = resources.files("recaption").joinpath(f"data/t2i_compbench/{category}_val.txt").read_text()
    return [s.strip() for s in text.splitlines() if s.strip()]


# -- noun phrases --------------------------------------------------------------------------------------------
_PREPS = set("""with without on in of at to by for from near under over above below beside behind next into onto
across through against among between inside outside around""".split())
_BOUNDARY = _PREPS | set("""and or but nor while as which that who whose where when""".split())
_VERBS = set("""is are was were be been being has have had sits sit stands stand lies lie make makes made hold holds
held hang hangs hung decorate decorates jot jots provide provides create creates add adds keep keeps kept look
looks shine shines reflect reflects rest rests lay lays float floats grow grows""".split())
_ED_ADJ = set("""red striped dotted checkered colored coloured shaped patterned polished painted carved knitted
speckled spotted faded tinted frosted""".split())
_STARTERS = set("a an the its their his her this these those my our your one two three four five six some".split())


def _ends_chunk(word: str, cur: list[str]) -> bool:
    """A verb after a noun phrase: a known verb, or a past form in -ed that is not a known adjective."""
    w = word.lower()
    return bool(cur) and (w in _VERBS or (len(cur) >= 2 and len(w) > 4 and w.endswith("ed") and w not in _ED_ADJ))


def rule_chunks(prompt: str) -> list[str]:
    """Noun phrases by rules: split at punctuation, conjunctions, prepositions and verbs; a phrase starts at a
    determiner, or right after a conjunction or preposition."""
    chunks: list[str] = []
    for clause in re.split(r"[,.;:!?()]", prompt):
        cur: list[str] = []
        prev = ""
        for w in clause.split():
            lw = w.lower()
            if lw in _BOUNDARY or _ends_chunk(w, cur):
                if cur:
                    chunks.append(" ".join(cur))
                cur = []
            elif lw in _STARTERS and cur:
                chunks.append(" ".join(cur))
                cur = [w]
            elif lw in _STARTERS or cur or prev in _BOUNDARY:
                cur.append(w)
            prev = lw
        if cur:
            chunks.append(" ".join(cur))
    return [c for c in chunks if c.lower() not in _STARTERS]


def spacy_chunks(prompt: str) -> list[str]:
    """spaCy ``en_core_web_sm`` noun chunks (the benchmark's own chunker)."""
    return [c.text for c in _spacy_nlp()(prompt).noun_chunks]


_NLP: list[Any] = []


def _spacy_nlp() -> Any:
    if not _NLP:
        import spacy

        _NLP.append(spacy.load("en_core_web_sm"))
    return _NLP[0]


def _spacy_available() -> bool:
    try:
        _spacy_nlp()
        return True
    except (ImportError, OSError):
        return False


CHUNKERS: dict[str, Callable[[str], list[str]]] = {"spacy": spacy_chunks, "rules": rule_chunks}


def resolve_chunker(name: str = "auto") -> str:
    if name == "auto":
        return "spacy" if _spacy_available() else "rules"
    if name not in CHUNKERS:
        raise ValueError(f"chunker must be one of {sorted(CHUNKERS)} or auto, got {name!r}")
    return name


def questions(prompt: str, chunker: str = "rules", np_num: int = NP_NUM) -> list[str]:
    """The benchmark's questions: ``"<noun phrase>?"`` for the first ``np_num`` noun phrases."""
    return [f"{c}?" for c in CHUNKERS[chunker](prompt)[:np_num]]


# -- BLIP-VQA ------------------------------------------------------------------------------------------------
class BlipVQA:
    """``yes_prob(images, questions)``: the benchmark's ``vqa_prob`` with transformers' BLIP VQA."""

    def __init__(self, name_or_path: str = DEFAULT_BLIP, device: str = "cpu") -> None:
        from transformers import AutoProcessor, BlipForQuestionAnswering

        try:
            self.processor = AutoProcessor.from_pretrained(name_or_path)
            self.model = BlipForQuestionAnswering.from_pretrained(name_or_path).eval().to(device)
        except OSError as e:
            raise FileNotFoundError(f"cannot load BLIP VQA {name_or_path!r}: not a local checkpoint and not "
                                    f"reachable on the model hub ({e.__class__.__name__})") from e
        tok = self.processor.tokenizer
        self.yes_id, self.no_id = tok.convert_tokens_to_ids("yes"), tok.convert_tokens_to_ids("no")
        if self.yes_id == tok.unk_token_id or self.no_id == tok.unk_token_id:
            raise ValueError(f"{name_or_path}: tokenizer has no 'yes'/'no' tokens")
        enc = tok.convert_tokens_to_ids("[ENC]") if "[ENC]" in tok.get_vocab() else None
        self.enc_id = enc
        self.device = device
        self.name = name_or_path

    def yes_prob(self, images: list[Any], qs: list[str]) -> list[float]:
        """``p(yes) / (p(yes) + p(no))`` of the answer decoder's first token, per (image, question)."""
        import torch

        m = self.model
        px = self.processor.image_processor(images=[im.convert("RGB") for im in images],
                                            return_tensors="pt")["pixel_values"].to(self.device)
        q = self.processor.tokenizer(qs, padding="longest", truncation=True, max_length=35, return_tensors="pt")
        ids, att = q["input_ids"].to(self.device), q["attention_mask"].to(self.device)
        if self.enc_id is not None:
            ids[:, 0] = self.enc_id  # as BLIP_VQA.forward does
        with torch.no_grad():
            img = m.vision_model(pixel_values=px)[0]  # (B, P, D)
            img_att = torch.ones(img.shape[:-1], dtype=torch.long, device=img.device)
            qe = m.text_encoder(input_ids=ids, attention_mask=att, encoder_hidden_states=img,
                                encoder_attention_mask=img_att, return_dict=False)[0]  # (B, T, D)
            bos = torch.full((len(qs), 1), m.decoder_start_token_id, device=img.device)
            logits = m.text_decoder(input_ids=bos, encoder_hidden_states=qe, encoder_attention_mask=att,
                                    return_dict=True).logits[:, 0, :]  # first token's logits
            prob = torch.softmax(logits.float(), dim=-1)
            p = prob[:, self.yes_id] / (prob[:, self.yes_id] + prob[:, self.no_id])
        return p.tolist()


def score_image(vqa: Any, image: Any, prompt: str, chunker: str = "rules", np_num: int = NP_NUM) -> dict[str, Any]:
    """Product over the prompt's noun-phrase questions of p(yes); 1.0 for a prompt with no phrase."""
    qs = questions(prompt, chunker, np_num)
    probs = vqa.yes_prob([image] * len(qs), qs) if qs else []
    score = 1.0
    for p in probs:
        score *= p
    return {"questions": qs, "yes": probs, "score": score}


def find_images(images_dir: str | Path, prompts: list[str]) -> list[tuple[int, Path]]:
    """(prompt index, file) pairs: ``<index>_<sample>.<ext>``, or the benchmark's ``<prompt>_<n>.<ext>``."""
    d = Path(images_dir)
    if not d.is_dir():
        raise FileNotFoundError(f"images folder {str(d)!r} not found")
    by_text = {p: i for i, p in enumerate(prompts)}
    out = []
    for f in sorted(d.iterdir()):
        if f.suffix.lower() not in IMAGE_EXTS:
            continue
        head = f.stem.split("_")[0]
        if head.isdigit() and int(head) < len(prompts):
            out.append((int(head), f))
        elif head in by_text:
            out.append((by_text[head], f))
        else:
            log.warning("compbench: %s matches no prompt, skipped", f.name)
    if not out:
        raise FileNotFoundError(f"no images named <prompt index>_<sample>.png in {str(d)!r}")
    return out


def evaluate_compbench(vqa: Any, images_dir: str | Path, prompts: list[str], chunker: str = "rules",
                       np_num: int = NP_NUM, n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Mean BLIP-VQA score over the folder's images (95% bootstrap interval over prompts)."""
    from PIL import Image
    from tqdm import tqdm

    per_image = {}
    per_prompt: dict[int, list[float]] = {}
    for idx, f in tqdm(find_images(images_dir, prompts), desc="blip-vqa"):
        with Image.open(f) as im:
            r = score_image(vqa, im.convert("RGB"), prompts[idx], chunker, np_num)
        per_image[f.name] = {"prompt": prompts[idx], **r}
        per_prompt.setdefault(idx, []).append(r["score"])
    scores = [s for v in per_prompt.values() for s in v]
    prompt_means = [sum(v) / len(v) for v in per_prompt.values()]
    _, lo, hi = bootstrap_mean(prompt_means, n_boot=n_boot, seed=seed)
    return {"blip": getattr(vqa, "name", ""), "chunker": chunker, "np_num": np_num, "n_images": len(scores),
            "n_prompts": len(per_prompt), "score": sum(scores) / len(scores), "ci95": [lo, hi],
            "per_image": per_image}


def compbench_table(result: dict[str, Any]) -> str:
    from recaption.eval.report import markdown_table

    return markdown_table([[result.get("category", ""), f"{result['score']:.4f}",
                            f"[{result['ci95'][0]:.4f}, {result['ci95'][1]:.4f}]", result["n_images"],
                            result["n_prompts"], result["chunker"]]],
                          ["category", "BLIP-VQA", "95% CI", "images", "prompts", "noun phrases"])


def run_compbench(images: str | Path, category: str, blip: str = DEFAULT_BLIP, prompts: str | Path | None = None,
                  chunker: str = "auto", out_dir: str | Path | None = None, device: str = "cpu",
                  seed: int = 0) -> dict[str, Any]:
    """Load BLIP VQA, score the folder, write ``compbench_<category>.json`` and ``.md``."""
    from recaption.eval import report

    ch = resolve_chunker(chunker)
    res = {"category": category, **evaluate_compbench(BlipVQA(blip, device=device), images,
                                                      load_prompts(category, prompts), chunker=ch, seed=seed)}
    if out_dir:
        report.write_json(res, Path(out_dir) / f"compbench_{category}.json")
        report.write_markdown(compbench_table(res), Path(out_dir) / f"compbench_{category}.md",
                              title=f"T2I-CompBench BLIP-VQA ({category})")
    return res
