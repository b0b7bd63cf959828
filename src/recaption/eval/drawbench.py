"""DrawBench judged by a vision-language model (paper section 5.2 and Appendix D).

Verdict files use the layout of the paper's published GPT-4V verdicts: a JSON object whose keys are image
paths ending in ``<model>/<prompt index>_<sample>.<ext>`` and whose values are ``{"correct": bool,
"response": text}``. :func:`aggregate` turns one into the share correct per DrawBench category and overall,
with bootstrap 95% intervals over prompts. :func:`judge_images` makes such a file: for each prompt, its
images (``<index>_<sample>.png``, 4 per prompt by default) are shown to a judge with the Appendix D prompt and
the ORIGINAL DrawBench prompt (also for images drawn from upsampled prompts), and the verdict is read from the
end of the judge's answer.

Prompt indices: the published DALL-E 3 and SDXL files count prompts from 0; the DALL-E 2 file counts from 1
(its indices run 1..200, and the responses describe prompt ``index - 1``). ``index_base="auto"`` reads
indices from 1 when none is 0 and the largest equals the number of prompts; the choice is logged and reported.
"""

from __future__ import annotations

import base64
import csv
import functools
import io
import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Protocol

from recaption.eval.stats import bootstrap_share, fmt_pct

log = logging.getLogger(__name__)

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp")


@dataclass(frozen=True)
class DrawBenchPrompt:
    index: int
    category: str
    prompt: str
    upsampled: str = ""


def load_prompts(path: str | Path | None = None) -> list[DrawBenchPrompt]:
    """DrawBench prompts from a TSV with ``prompt`` and ``category`` columns (``index``/``upsampled``
    optional); the packaged copy of the paper's 200 prompts by default."""
    if path is None:
        text = resources.files("recaption").joinpath("data/drawbench.tsv").read_text()
        where = "packaged drawbench.tsv"
    else:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"categories file {str(p)!r} not found")
        text, where = p.read_text(), str(p)
    rows = list(csv.DictReader(io.StringIO(text), delimiter="\t"))
    if not rows or "prompt" not in rows[0] or "category" not in rows[0]:
        raise ValueError(f"{where}: expected a TSV with 'prompt' and 'category' columns")
    return [DrawBenchPrompt(int(r.get("index") or i), r["category"], r["prompt"], r.get("upsampled") or "")
            for i, r in enumerate(rows)]


@functools.lru_cache(maxsize=1)
def judge_prompt() -> str:
    """The Appendix D judge prompt (package data)."""
    return resources.files("recaption").joinpath("data/drawbench_judge_prompt.txt").read_text().strip()


_VERDICT = re.compile(r"\b(in)?correct\b", re.I)


def parse_verdict(response: str) -> bool | None:
    """The judge's verdict: the LAST 'correct' / 'incorrect' in the answer (the prompt asks it to end with
    one). None when the answer holds neither."""
    found = _VERDICT.findall(response or "")  # group 1 per match: "in" or ""
    return None if not found else found[-1] == ""


_KEY = re.compile(r"(?:^|/)(?:(?P<model>[^/]+)/)?(?P<idx>\d+)_(?P<sample>\d+)\.\w+$")


def parse_key(key: str) -> tuple[str, int, int]:
    """``'/root/drawbench/3/110_1.png'`` -> ``('3', 110, 1)``."""
    m = _KEY.search(key)
    if not m:
        raise ValueError(f"verdict key {key!r} is not '<model>/<prompt index>_<sample>.<ext>'")
    return m.group("model") or "", int(m.group("idx")), int(m.group("sample"))


def load_verdicts(path: str | Path) -> dict[str, dict[str, Any]]:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"verdicts file {str(p)!r} not found")
    d = json.loads(p.read_text())
    if not isinstance(d, dict) or not all(isinstance(v, dict) and "correct" in v for v in d.values()):
        raise ValueError(f"{p}: expected {{image path: {{'correct': bool, 'response': text}}}}")
    return d


def detect_index_base(indices: list[int], n_prompts: int) -> int:
    """0 or 1: see the module docstring."""
    return 1 if indices and min(indices) >= 1 and max(indices) == n_prompts else 0


def aggregate(verdicts: dict[str, dict[str, Any]], prompts: list[DrawBenchPrompt], index_base: str | int = "auto",
              n_boot: int = 1000, seed: int = 0, name: str = "") -> dict[str, Any]:
    """Share correct per category and overall (percent, 95% bootstrap interval over prompts)."""
    parsed = [(parse_key(k), bool(v["correct"])) for k, v in verdicts.items()]
    base = detect_index_base([i for (_, i, _), _ in parsed], len(prompts)) if index_base == "auto" else int(index_base)
    by_idx = {p.index: p for p in prompts}
    per_prompt: dict[int, list[bool]] = {}
    for (_, i, _), ok in parsed:
        j = i - base
        if j not in by_idx:
            raise ValueError(f"verdict for prompt index {i} (base {base}) has no prompt among {len(prompts)}")
        per_prompt.setdefault(j, []).append(ok)
    cats: dict[str, list[list[bool]]] = {}
    for j in sorted(per_prompt):
        cats.setdefault(by_idx[j].category, []).append(per_prompt[j])
    overall = bootstrap_share([per_prompt[j] for j in sorted(per_prompt)], n_boot=n_boot, seed=seed)
    models = sorted({m for (m, _, _), _ in parsed})
    log.info("%s: %d verdicts on %d prompts, index base %d: %s%%", name or "drawbench", len(parsed),
             len(per_prompt), base, fmt_pct(overall.percent))
    errors = sum(1 for v in verdicts.values() if v.get("error"))
    unparsed = sum(1 for v in verdicts.values() if v.get("parsed") is False)
    return {"name": name, "models_in_keys": models, "index_base": base, "n_images": len(parsed),
            "judge_errors": errors, "unparsed_responses": unparsed,  # both counted as not correct
            "n_prompts": len(per_prompt), "missing_prompts": sorted(set(by_idx) - set(per_prompt)),
            "overall": overall.to_dict(),
            "categories": {c: bootstrap_share(v, n_boot=n_boot, seed=seed).to_dict() for c, v in sorted(cats.items())},
            "bootstrap": {"n": n_boot, "seed": seed, "unit": "prompt"}}


def results_table(results: dict[str, dict[str, Any]]) -> str:
    """Markdown: a row per category (and overall), a column per result, "70.4 [66.9, 74.0]"."""
    from recaption.eval.report import markdown_table

    names = list(results)
    cats: list[str] = []
    for r in results.values():
        cats += [c for c in r["categories"] if c not in cats]

    def cell(s: dict[str, Any] | None) -> str:
        if not s:
            return ""
        lo, hi = s["ci95"]
        return f"{fmt_pct(s['percent'])} [{fmt_pct(lo)}, {fmt_pct(hi)}] (n={s['total']})"

    rows = [[c, *[cell(results[n]["categories"].get(c)) for n in names]] for c in cats]
    rows.append(["**overall**", *[cell(results[n]["overall"]) for n in names]])
    if any(results[n].get("unparsed_responses") or results[n].get("judge_errors") for n in names):
        # a judge that answers without a verdict, or fails, counts as "incorrect": say how often it happened
        rows.append(["responses without a verdict / judge errors (counted incorrect)",
                     *[f"{results[n].get('unparsed_responses', 0)} / {results[n].get('judge_errors', 0)} of "
                       f"{results[n]['n_images']}" for n in names]])
    return markdown_table(rows, ["category", *names])


# -- judging -------------------------------------------------------------------------------------------------
class Judge(Protocol):
    name: str

    def judge(self, image: Any, prompt: str) -> str: ...


def _data_url(image: Any) -> str:
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def judge_messages(image_url: str, prompt: str) -> list[dict[str, Any]]:
    """The Appendix D turn: the judge prompt, then the image, then the ORIGINAL prompt."""
    return [{"role": "user", "content": [{"type": "text", "text": judge_prompt()},
                                         {"type": "image_url", "image_url": {"url": image_url}},
                                         {"type": "text", "text": prompt}]}]


class OpenAIJudge:
    """A vision endpoint speaking OpenAI chat completions; images go as base64 PNG data URLs."""

    def __init__(self, base_url: str | None, model: str = "gpt-4-vision-preview", timeout_s: float = 120.0,
                 retries: int = 4, backoff_s: float = 1.0, sleep: Callable[[float], None] | None = None) -> None:
        import time

        from recaption.upsample.chat import ChatConfig, OpenAIChat

        self.chat = OpenAIChat(ChatConfig(base_url=base_url, model=model, timeout_s=timeout_s, retries=retries,
                                          backoff_s=backoff_s, max_tokens=200), sleep=sleep or time.sleep)
        self.name = f"openai:{model}@{base_url or 'default'}"

    def judge(self, image: Any, prompt: str) -> str:
        return self.chat.complete(judge_messages(_data_url(image), prompt))


class TransformersJudge:
    """A local VLM (``AutoModelForImageTextToText`` + ``AutoProcessor`` with a chat template)."""

    def __init__(self, name_or_path: str, device: str = "cpu", max_new_tokens: int = 120) -> None:
        from transformers import AutoModelForImageTextToText, AutoProcessor

        try:
            self.processor = AutoProcessor.from_pretrained(name_or_path)
            self.model = AutoModelForImageTextToText.from_pretrained(name_or_path).eval().to(device)
        except OSError as e:
            raise FileNotFoundError(f"cannot load VLM {name_or_path!r}: not a local checkpoint and not "
                                    f"reachable on the model hub ({e.__class__.__name__})") from e
        self.device, self.max_new_tokens = device, max_new_tokens
        self.name = f"transformers:{name_or_path}"

    def judge(self, image: Any, prompt: str) -> str:
        import torch

        msgs = [{"role": "user", "content": [{"type": "text", "text": judge_prompt()},
                                             {"type": "image", "image": image.convert("RGB")},
                                             {"type": "text", "text": prompt}]}]
        inputs = self.processor.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True,
                                                    return_dict=True, return_tensors="pt").to(self.device)
        with torch.no_grad():
            out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
        return self.processor.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)


JUDGES: dict[str, Callable[..., Judge]] = {
    "openai": lambda spec, **kw: OpenAIJudge(spec or None, **kw),
    "transformers": lambda spec, **kw: TransformersJudge(spec, **{k: v for k, v in kw.items() if k == "device"}),
}


def load_judge(spec: str, **options: Any) -> Judge:
    """``http(s)://...`` (or ``openai``) -> :class:`OpenAIJudge`; any other name or folder -> local VLM."""
    opts = {k: v for k, v in options.items() if v is not None}
    if spec.startswith(("http://", "https://")) or spec == "openai":
        return JUDGES["openai"]("" if spec == "openai" else spec, **opts)
    return JUDGES["transformers"](spec.removeprefix("hf:"), **opts)


def find_images(images_dir: str | Path, index: int, per_prompt: int) -> list[Path]:
    """``<index>_<sample>.<ext>`` for sample 0..per_prompt-1 (those that exist)."""
    d = Path(images_dir)
    out = []
    for s in range(per_prompt):
        for ext in IMAGE_EXTS:
            f = d / f"{index}_{s}{ext}"
            if f.is_file():
                out.append(f)
                break
    return out


def judge_images(images_dir: str | Path, judge: Judge, prompts: list[DrawBenchPrompt], per_prompt: int = 4,
                 out_path: str | Path | None = None, progress: bool = True) -> dict[str, dict[str, Any]]:
    """Judge ``<images_dir>/<index>_<sample>.png`` against each ORIGINAL prompt; verdicts in the published
    layout (written to ``out_path`` as they come). A failed call is recorded with ``error`` and counts as
    not correct."""
    from PIL import Image
    from tqdm import tqdm

    d = Path(images_dir)
    if not d.is_dir():
        raise FileNotFoundError(f"images folder {str(d)!r} not found")
    verdicts: dict[str, dict[str, Any]] = {}
    todo = [(p, f) for p in prompts for f in find_images(d, p.index, per_prompt)]
    if not todo:
        raise FileNotFoundError(f"no images named <prompt index>_<sample>.png in {str(d)!r}")
    short = [p.index for p in prompts if len(find_images(d, p.index, per_prompt)) < per_prompt]
    if short:
        log.warning("%d prompts have fewer than %d images (first: %s)", len(short), per_prompt, short[:5])
    for p, f in tqdm(todo, desc=f"judge {judge.name}", disable=not progress):
        key = f"{d.name}/{f.name}"
        try:
            with Image.open(f) as im:
                response = judge.judge(im.convert("RGB"), p.prompt)  # the original prompt, always
            verdict = parse_verdict(response)
            verdicts[key] = {"correct": bool(verdict), "response": response, "parsed": verdict is not None}
        except Exception as e:  # one image's failure is recorded, never the run's end
            log.warning("judge failed on %s: %s", f, e)
            verdicts[key] = {"correct": False, "response": "", "error": f"{type(e).__name__}: {e}"}
        if out_path:
            Path(out_path).parent.mkdir(parents=True, exist_ok=True)
            Path(out_path).write_text(json.dumps(verdicts, indent=1, ensure_ascii=False))
    return verdicts


def run_drawbench(verdicts: list[str | Path], out_dir: str | Path | None = None,
                  categories: str | Path | None = None, index_base: str = "auto", n_boot: int = 1000,
                  seed: int = 0) -> dict[str, dict[str, Any]]:
    """Aggregate one or more verdict files; write ``drawbench.json``, ``drawbench.md`` and a bar plot."""
    from recaption.eval import report

    prompts = load_prompts(categories)
    results = {Path(v).stem: aggregate(load_verdicts(v), prompts, index_base=index_base, n_boot=n_boot, seed=seed,
                                       name=Path(v).stem) for v in verdicts}
    if out_dir:
        out = Path(out_dir)
        report.write_json(results, out / "drawbench.json")
        report.write_markdown(results_table(results), out / "drawbench.md",
                              title="DrawBench: share of images judged correct (%, 95% bootstrap CI over prompts)")
        report.plot_category_bars({n: {**r["categories"], "overall": r["overall"]} for n, r in results.items()},
                                  out / "drawbench.png")
    return results
