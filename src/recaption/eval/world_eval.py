"""World evaluation: the oracle judge over the world prompt suite, per category, plus the world CLIP score.

For each model: classifier-free guidance is chosen on the suite's VALIDATION split (highest share correct;
ties go to the lower guidance), and only then the TEST split is generated with that guidance, for one or
more seeds, and judged. Shares come with bootstrap 95% intervals that resample prompts (all images of a
prompt, over seeds, move together). The world CLIP score (an instrument CLIP trained on true captions) is
100 x cosine between each test image and its prompt text. With ``upsample``, the generator gets the
upsampled prompt while the judge always checks the ORIGINAL prompt's constraints (as the paper does).

Generation goes through a ``generate_fn(prompts, guidance, seed) -> list[PIL]``; :func:`model_generate_fn`
builds one from a trained model folder with :func:`recaption.t2i.generate.generate`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from recaption.eval.stats import bootstrap_mean, bootstrap_share, fmt_pct

log = logging.getLogger(__name__)

GenerateFn = Callable[[list[str], float, int], list[Any]]
VAL_SEED = 1000  # validation images use their own seed, never one of the test seeds


def model_generate_fn(model_dir: str, steps: int = 25, batch_size: int = 64) -> GenerateFn:
    """``generate_fn`` for a trained world t2i model folder (loaded once)."""
    from recaption.t2i.generate import T2IPipeline, generate

    pipe = T2IPipeline.from_pretrained(model_dir)

    def fn(prompts: list[str], guidance: float, seed: int) -> list[Any]:
        return generate(pipe, prompts, seed=seed, guidance=guidance, steps=steps, batch_size=batch_size)

    return fn


def _judge_all(images: Sequence[Any], prompts: Sequence[Any], judge_fn: Callable[[Any, Any], Any]) -> list[bool]:
    """Oracle verdicts; an image the oracle cannot read (e.g. too small) counts as not correct, and is logged."""
    out = []
    for im, p in zip(images, prompts, strict=True):
        try:
            out.append(bool(judge_fn(im, p).correct))
        except ValueError as e:  # SceneError / bad image: the model's failure, not the run's
            log.warning("oracle could not judge the image for %s: %s", getattr(p, "id", p), e)
            out.append(False)
    return out


def choose_guidance(generate_fn: GenerateFn, val_prompts: Sequence[Any], guidances: Sequence[float],
                    judge_fn: Callable[[Any, Any], Any], texts: Sequence[str] | None = None,
                    seed: int = VAL_SEED) -> tuple[float, dict[float, float]]:
    """The guidance with the highest share correct on the validation prompts, and the share of each."""
    texts = list(texts) if texts is not None else [p.text for p in val_prompts]
    shares: dict[float, float] = {}
    for g in guidances:
        ok = _judge_all(generate_fn(texts, g, seed), val_prompts, judge_fn)
        shares[g] = 100.0 * sum(ok) / max(len(ok), 1)
        log.info("val guidance %.2f: %s%% correct", g, fmt_pct(shares[g]))
    best = max(sorted(shares), key=lambda g: shares[g])  # sorted: ties go to the lower guidance
    return best, shares


def evaluate_world_model(generate_fn: GenerateFn, val_prompts: Sequence[Any], test_prompts: Sequence[Any],
                         guidances: Sequence[float] = (1.0, 2.0, 3.0, 5.0), seeds: Sequence[int] = (0,),
                         judge_fn: Callable[[Any, Any], Any] | None = None, clip: Any = None,
                         upsample: Callable[[list[str]], list[str]] | None = None, n_boot: int = 1000,
                         keep_images: int = 0) -> dict[str, Any]:
    """Choose guidance on val, then judge the test split; per-category shares, CLIP score, chosen values."""
    if judge_fn is None:
        from recaption.world.judge import judge as judge_fn
    val_texts = upsample([p.text for p in val_prompts]) if upsample else [p.text for p in val_prompts]
    test_texts = upsample([p.text for p in test_prompts]) if upsample else [p.text for p in test_prompts]
    g, val_shares = choose_guidance(generate_fn, val_prompts, guidances, judge_fn, val_texts)
    per_prompt: dict[int, list[bool]] = {i: [] for i in range(len(test_prompts))}
    clip_per_image: list[float] = []
    kept: dict[str, list[Any]] = {}
    for seed in seeds:
        images = generate_fn(test_texts, g, seed)
        for i, ok in enumerate(_judge_all(images, test_prompts, judge_fn)):
            per_prompt[i].append(ok)
        if clip is not None:
            from recaption.eval.clipscore import clip_scores

            clip_per_image += clip_scores(clip, images, [p.text for p in test_prompts])[0]  # the ORIGINAL text
        for i in range(min(keep_images, len(test_prompts))):
            kept.setdefault(test_prompts[i].id, []).append(images[i])
    cats: dict[str, list[list[bool]]] = {}
    for i, p in enumerate(test_prompts):
        cats.setdefault(p.category, []).append(per_prompt[i])
    res: dict[str, Any] = {
        "guidance": g, "val_shares": {str(k): v for k, v in val_shares.items()}, "seeds": list(seeds),
        "n_val": len(val_prompts), "n_test": len(test_prompts), "upsampled": upsample is not None,
        "overall": bootstrap_share(list(per_prompt.values()), n_boot=n_boot).to_dict(),
        "categories": {c: bootstrap_share(v, n_boot=n_boot).to_dict() for c, v in cats.items()},
        "per_prompt": {p.id: per_prompt[i] for i, p in enumerate(test_prompts)},
    }
    if clip is not None:
        mean, lo, hi = bootstrap_mean(clip_per_image, n_boot=n_boot)
        res["clip_score"] = {"score": max(mean, 0.0), "ci95": [lo, hi], "n": len(clip_per_image),
                             "clip": getattr(clip, "name", "")}
    if keep_images:
        res["_images"] = kept  # PIL images for grids; removed before JSON
    return res


def world_table(results: dict[str, dict[str, Any]]) -> str:
    """Markdown: a row per category and overall, a column per model; guidance and CLIP score below."""
    from recaption.eval.report import markdown_table

    names = list(results)
    cats: list[str] = []
    for r in results.values():
        cats += [c for c in r["categories"] if c not in cats]

    def cell(s: dict[str, Any] | None) -> str:
        return "" if not s else f"{fmt_pct(s['percent'])} [{fmt_pct(s['ci95'][0])}, {fmt_pct(s['ci95'][1])}]"

    rows = [[c, *[cell(results[n]["categories"].get(c)) for n in names]] for c in cats]
    rows.append(["**overall**", *[cell(results[n]["overall"]) for n in names]])
    rows.append(["guidance (chosen on val)", *[f"{results[n]['guidance']:g}" for n in names]])
    rows.append(["val share per guidance", *[", ".join(f"{k}: {fmt_pct(v)}" for k, v in results[n]["val_shares"].items())
                                             for n in names]])
    if any("clip_score" in r for r in results.values()):
        rows.append(["world CLIP score", *[f"{results[n]['clip_score']['score']:.2f}" if "clip_score" in results[n]
                                           else "" for n in names]])
    return markdown_table(rows, ["category", *names])


def write_world_report(results: dict[str, dict[str, Any]], out_dir: str | Path,
                       prompts: Sequence[Any] = ()) -> dict[str, Path]:
    """JSON, markdown, per-category bars and an image grid per kept prompt across models."""
    from recaption.eval import report

    out = Path(out_dir)
    images = {n: r.pop("_images", {}) for n, r in results.items()}
    paths = {"json": report.write_json(results, out / "world.json"),
             "md": report.write_markdown(world_table(results), out / "world.md",
                                         title="World prompt suite: share judged correct by the oracle (%, 95% CI)"),
             "bars": report.plot_category_bars({n: {**r["categories"], "overall": r["overall"]}
                                                for n, r in results.items()}, out / "world_categories.png")}
    text = {p.id: p.text for p in prompts}
    ids = sorted({pid for imgs in images.values() for pid in imgs})
    for pid in ids:
        report.image_grid({n: images[n].get(pid, []) for n in results}, out / "grids" / f"{pid}.png",
                          title=text.get(pid, pid))
    return paths


def _per_category(prompts: Sequence[Any], len_limit: int | None) -> list[Any]:
    """At most ``len_limit`` prompts, taken round-robin over categories so each stays represented."""
    if not len_limit or len_limit >= len(prompts):
        return list(prompts)
    by: dict[str, list[Any]] = {}
    for p in prompts:
        by.setdefault(p.category, []).append(p)
    out: list[Any] = []
    while len(out) < len_limit:
        for c in list(by):
            if by[c] and len(out) < len_limit:
                out.append(by[c].pop(0))
    return out


def run_world_eval(models: Sequence[str], out_dir: str | Path, clip: str | None = None,
                   guidances: Sequence[float] = (1.0, 2.0, 3.0, 5.0), seeds: Sequence[int] = (0,),
                   val_limit: int | None = None, test_limit: int | None = None, n_boot: int = 1000,
                   generate_fns: dict[str, GenerateFn] | None = None, upsample: str | None = None,
                   grid_prompts: int = 8, val_prompts: Sequence[Any] | None = None,
                   test_prompts: Sequence[Any] | None = None) -> dict[str, dict[str, Any]]:
    """Evaluate each model folder (or each given ``generate_fn``) on the world suite; write the report.

    ``val_limit``/``test_limit`` keep every category: the first prompts of each, in suite order.
    """
    from recaption.world.prompts import prompt_suite

    val = list(val_prompts) if val_prompts is not None else _per_category(prompt_suite("val"), len_limit=val_limit)
    test = list(test_prompts) if test_prompts is not None else _per_category(prompt_suite("test"),
                                                                               len_limit=test_limit)
    encoder = None
    if clip:
        from recaption.clip import load_clip

        encoder = load_clip(clip)
    up = None
    if upsample:
        from recaption.upsample import load_upsampler

        ups = load_upsampler(upsample)
        up = ups.upsample  # list in -> list out
    fns = dict(generate_fns or {})
    for m in models:
        fns.setdefault(Path(m).name or str(m), model_generate_fn(str(m)))
    results = {name: evaluate_world_model(fn, val, test, guidances=guidances, seeds=seeds, clip=encoder, upsample=up,
                                          n_boot=n_boot, keep_images=grid_prompts)
               for name, fn in fns.items()}
    write_world_report(results, out_dir, test)
    return results
