"""Run the README's world recipe as written, line by line, timing each line, and audit every captioner it trains.

The README's step-by-step block (section "The paper, step by step, in the shapes world") is the recipe users run;
this script runs its lines from the first through the last ``recaption audit`` (world data, CLIP, the six captioner
runs, the held-out captions and their audits) in a work directory, each as its own process, with the paths the README
writes (``data/``, ``ckpt/``, the caption and audit files) moved under ``--work``. So the figures it reports are those
of the recipe as documented, not of a re-implementation of it (``bench_captioner.py`` runs the first four captioner
lines in one process, for a quick rerun of those).

Afterwards (``--audit-all``, the default) every captioner checkpoint the recipe trained is also audited on the held-out
scenes in its own stage's mode (greedy, one view), so each line's gain is visible. Everything is written to
``WORK/recipe.json`` as it goes; a rerun with the same ``--work`` skips the lines already done with the same command
up to the first that is not (a line killed part way, or one the README changed), which runs again from its start with
every line after it. ``--reuse ckpt/clip=PATH`` copies an existing output instead
of running the line that writes it (say so when quoting the figures).

Full size (about two hours on 2 CPU cores): ``python bench/readme_recipe.py --work bench_out/recipe``.
Toy size (seconds; what the tests run): ``python bench/readme_recipe.py --work /tmp/r --toy``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pathlib
import shlex
import shutil
import subprocess
import sys
import time

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"
SECTION = "## The paper, step by step, in the shapes world"
TOY = {"world make": {"--n": lambda a: "24" if "data/world" in a else "8"},
       "clip train": {"--steps": "2", "+": ["--batch-size", "8", "--heldout", "4"]},
       "captioner train": {"--steps": "2", "--max-minutes": "0", "+": ["--finetune-size", "4"]}}


def readme_lines(readme: pathlib.Path = README) -> list[list[str]]:
    """The commands of the README's step-by-step block, split as a shell would (comments and blank lines dropped)."""
    text = readme.read_text()
    if SECTION not in text:
        raise SystemExit(f"{readme}: no section {SECTION!r}")
    block = text.split(SECTION, 1)[1].split("```bash", 1)[1].split("```", 1)[0].replace("\\\n", " ")
    return [x for x in (shlex.split(line.split("#", 1)[0]) for line in block.splitlines()) if x]


def recipe_lines(lines: list[list[str]]) -> list[list[str]]:
    """From the first line through the last ``recaption audit`` (what makes and measures the captioners)."""
    last = max((i for i, x in enumerate(lines) if x[:2] == ["recaption", "audit"]), default=None)
    if last is None:
        raise SystemExit("the README's block has no `recaption audit` line")
    return lines[:last + 1]


def relocate(args: list[str], work: str) -> list[str]:
    """The README's relative outputs (``data/...``, ``ckpt/...``, bare ``*.jsonl``/``*.json`` files) under ``work``."""
    return [os.path.join(work, a) if a.startswith(("data/", "ckpt/")) or
            (a.endswith((".jsonl", ".json")) and "/" not in a) else a for a in args]


def toy(args: list[str]) -> list[str]:
    """The same line at toy size (tiny data, two steps, no time box), as the tests run it."""
    out = list(args)
    for cmd, changes in TOY.items():
        if " ".join(out[1:3]) != cmd:
            continue
        for flag, value in changes.items():
            if flag == "+":
                out += value
            elif flag in out:
                out[out.index(flag) + 1] = value(args) if callable(value) else value
    return out


def output_of(args: list[str]) -> str | None:
    return args[args.index("--out") + 1] if "--out" in args else None


def run_line(args: list[str], log: str, in_process: bool = False) -> tuple[int, float]:
    """Run ``recaption ARGS`` in its own process (output to ``log``): (exit code, seconds). ``in_process``: call the
    CLI in this process instead (no interpreter start per line; for the toy check)."""
    t = time.time()
    with open(log, "w") as f:
        if in_process:
            from recaption.cli import main as cli

            with contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
                try:
                    cli(args[1:])
                    rc = 0
                except SystemExit as e:
                    rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        else:
            rc = subprocess.call([sys.executable, "-c", "from recaption.cli import main; main()", *args[1:]],
                                 stdout=f, stderr=subprocess.STDOUT)
    return rc, round(time.time() - t, 1)


def audit_figures(path: str) -> dict:
    """The headline figures of a ``recaption audit`` JSON."""
    with open(path) as f:
        rep = json.load(f)
    keys = ("attribute_recall", "hallucination_rate", "count_accuracy", "relation_accuracy",
            "fill_accuracy_given_object", "attribute_recall_named", "names_main_subjects", "words_per_caption",
            "words_max")
    return {k: rep[k] for k in keys if k in rep}


def main(argv: list[str] | None = None) -> dict:
    """Run the recipe (see the module docstring); returns the state written to ``WORK/recipe.json``."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", required=True, help="directory for the data, checkpoints, captions and logs")
    ap.add_argument("--toy", action="store_true", help="tiny data and two steps a run (a check that the lines run)")
    ap.add_argument("--reuse", action="append", default=[], metavar="OUT=PATH",
                    help="copy PATH to the README output OUT (e.g. ckpt/clip=bench_out/x/clip) instead of running "
                         "the line that writes it")
    ap.add_argument("--no-audit-all", dest="audit_all", action="store_false",
                    help="audit only what the README's own audit lines audit")
    ap.add_argument("--in-process", action="store_true",
                    help="run each line in this process (faster for --toy; a full run wants a process a line)")
    ap.add_argument("--readme", default=str(README))
    a = ap.parse_args(argv)
    work = a.work
    os.makedirs(os.path.join(work, "logs"), exist_ok=True)
    state_path = os.path.join(work, "recipe.json")
    state = json.load(open(state_path)) if os.path.isfile(state_path) else {"lines": {}, "audits": {}}
    bad = [r for r in a.reuse if "=" not in r]
    if bad:
        raise SystemExit(f"--reuse {bad[0]!r}: want OUT=PATH, e.g. ckpt/clip=bench_out/x/clip")
    reuse = dict(r.split("=", 1) for r in a.reuse)

    def save() -> None:
        tmp = state_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(state, f, indent=1)
        os.replace(tmp, state_path)  # a kill never leaves a torn state file

    lines = recipe_lines(readme_lines(pathlib.Path(a.readme)))
    trained: list[tuple[str, str]] = []  # (checkpoint, stage)
    audits = [x for x in lines if x[1] == "audit"]
    heldout = relocate(audits[-1], work)[audits[-1].index("--input") + 1]  # the scenes the README audits on
    dirty = False  # a line has run in this call: the later ones cannot be taken as done
    kept: set[str | None] = set()  # outputs of the lines taken as done
    for i, readme_args in enumerate(lines):
        args = relocate(toy(readme_args) if a.toy else readme_args, work)
        cmd = shlex.join(args)
        out = output_of(args)
        name = f"{i:02d} " + " ".join(w for w in readme_args[1:3] if not w.startswith("-"))
        if readme_args[1:3] == ["captioner", "train"]:
            trained.append((out, readme_args[readme_args.index("--stage") + 1]))
        if not dirty and state["lines"].get(name, {}).get("command") == cmd and state["lines"][name].get("rc") == 0:
            print(f"{name}: done before ({state['lines'][name]['seconds']} s)", flush=True)
            kept.add(out)
            continue
        if not dirty:  # from here on every line runs again (its inputs may have changed), and every later audit
            dirty = True
            state["lines"] = {k: v for k, v in state["lines"].items() if k < name}
            state["audits"] = {k: v for k, v in state["audits"].items() if k in kept}
        src = reuse.get(output_of(readme_args) or "")
        if src:
            shutil.copytree(src, out, dirs_exist_ok=True)
            rc, secs = 0, 0.0
            state["lines"][name] = {"command": cmd, "rc": 0, "seconds": 0.0, "reused": src}
        else:
            print(f"{name}: {cmd}", flush=True)
            rc, secs = run_line(args, os.path.join(work, "logs", f"{i:02d}.log"), a.in_process)
            state["lines"][name] = {"command": cmd, "rc": rc, "seconds": secs}
        if readme_args[1] == "audit":
            state["audits"][out] = audit_figures(out) if rc == 0 else None
        save()
        print(f"{name}: rc {rc}, {secs} s", flush=True)
        if rc:
            raise SystemExit(f"{name} failed (rc {rc}); its log: {work}/logs/{i:02d}.log")
    if a.audit_all:
        for ckpt, mode in [(c, m) for c, s in trained for m in (("short", "descriptive") if s == "alt" else (s,))]:
            cap_file, audit_file = f"{ckpt}/heldout_{mode}.jsonl", f"{ckpt}/heldout_{mode}_audit.json"
            if audit_file in state["audits"]:
                continue
            for what, args in (("caption", ["recaption", "caption", "--captioner", ckpt, "--mode", mode, "--input",
                                             heldout, "--out", cap_file]),
                               ("audit", ["recaption", "audit", "--input", heldout, "--captions", cap_file,
                                          "--out", audit_file])):
                rc, _ = run_line(args, os.path.join(work, "logs", f"{what}_{os.path.basename(ckpt)}_{mode}.log"),
                                 a.in_process)
                if rc:
                    raise SystemExit(f"auditing {ckpt} failed (rc {rc})")
            state["audits"][audit_file] = audit_figures(audit_file)
            save()
    print(f"\n{'line':32s} {'rc':>3s} {'seconds':>8s}")
    for name, v in state["lines"].items():
        print(f"{name:32s} {v['rc']:3d} {v['seconds']:8.1f}" + (f"  (reused {v['reused']})" if v.get("reused") else ""))
    print(f"\n{'audit':60s} recall / halluc. / count / relation / fill|obj / names main / words max")
    for path, f in state["audits"].items():
        if f:
            print(f"{os.path.relpath(path, work):60s} " + " / ".join(
                "-" if f.get(k) is None else str(f[k]) for k in ("attribute_recall", "hallucination_rate",
                                                               "count_accuracy", "relation_accuracy",
                                                               "fill_accuracy_given_object", "names_main_subjects",
                                                               "words_max")))
    print(f"\nall figures: {state_path}")
    return state


if __name__ == "__main__":
    main()
