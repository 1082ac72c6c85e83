"""Copy each `docs/results/<data set>/findings.md` into README.md and docs/results.md between its markers, so that
those pages state exactly what `hfreg report` derived from the committed runs and nothing else.

    .venv/bin/hfreg report docs/results/sst2 && .venv/bin/python benchmarks/readme_results.py

README.md holds, per data set, a block `<!-- findings:NAME -->` ... `<!-- /findings:NAME -->`, and one block
`<!-- pooled -->` ... `<!-- /pooled -->` for `docs/results/pooled.md` (its method and answer, and a link to its
tables and between-sizes tests, written by
`hfreg report docs/results/sst2 docs/results/rt-polarity --out docs/results`); `<!-- pooled:NAME -->` quotes
`docs/results/NAME/pooled.md` the same way (`--out docs/results/NAME`); in README.md a pooled block names its sources
and links the method paragraph rather than quote it (docs/results.md quotes it whole). A block `<!-- methods:NAME -->`
... `<!-- /methods:NAME -->` gets a table of each preset of `docs/results/NAME/summary.json` beside the paper its
preset file cites and the verdicts the report wrote there. A block `<!-- progress -->` ... `<!-- /progress -->`
gets what the decided answer's records hold so far (`decided_answer.py --progress`).
"""

import json
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# the pages that quote the tool's outputs between markers
PAGES = ("README.md", os.path.join("docs", "results.md"))


def main() -> int:
    texts = {}
    for page in PAGES:  # every page rebuilt before any is written: an error leaves them all as they were
        path = os.path.join(ROOT, page)
        if os.path.isfile(path):
            with open(path) as f:
                texts[path] = fill(f.read(), os.path.dirname(path), brief=page == "README.md")
            if texts[path] is None:
                return 2
    for path, text in texts.items():
        with open(path, "w") as f:
            f.write(text)
    return 0


def fill(text: str, page_dir: str = ROOT, brief: bool = False) -> str | None:
    """``text`` (a page in ``page_dir``) with every marked block replaced by what the tool wrote; None (said on
    stderr) on an error. ``brief`` (the README): pooled blocks link their method rather than quote it."""
    for name in re.findall(r"<!-- findings:([\w.-]+) -->", text):
        path = os.path.join(ROOT, "docs", "results", name, "findings.md")
        runs = os.path.join(os.path.dirname(path), "runs.jsonl")
        if not os.path.isfile(runs):
            body = f"No finished runs in `docs/results/{name}` yet."
        elif not os.path.isfile(path) or os.path.getmtime(path) < os.path.getmtime(runs):
            print(f"readme_results.py: error: {path} is missing or older than runs.jsonl; run `hfreg report` "
                  f"first", file=sys.stderr)
            return None
        else:
            with open(path) as f:
                body = f.read().replace("## Findings", f"#### Findings: {name}", 1).strip()
        text = re.sub(rf"<!-- findings:{name} -->.*?<!-- /findings:{name} -->",
                      lambda _: f"<!-- findings:{name} -->\n{body}\n<!-- /findings:{name} -->", text, flags=re.S)
    for name in re.findall(r"<!-- methods:([\w.-]+) -->", text):
        summary = os.path.join(ROOT, "docs", "results", name, "summary.json")
        body = methods_table(summary) if os.path.isfile(summary) else f"No summary in `docs/results/{name}` yet."
        text = re.sub(rf"<!-- methods:{name} -->.*?<!-- /methods:{name} -->",
                      lambda _: f"<!-- methods:{name} -->\n{body}\n<!-- /methods:{name} -->", text, flags=re.S)
    for name in re.findall(r"<!-- pooled(?::([\w.-]+))? -->", text):  # pooled:NAME reads docs/results/NAME/
        tag = f"pooled:{name}" if name else "pooled"
        out = os.path.join("docs", "results", name) if name else os.path.join("docs", "results")
        path = os.path.join(ROOT, out, "pooled.md")
        if not os.path.isfile(path):
            print(f"readme_results.py: error: {path} is missing; run `hfreg report ... --out {out}` first",
                  file=sys.stderr)
            return None
        text = re.sub(rf"<!-- {tag} -->.*?<!-- /{tag} -->",
                      lambda _: f"<!-- {tag} -->\n{pooled_overview(path, page_dir, brief)}\n<!-- /{tag} -->", text,
                      flags=re.S)
    if "<!-- progress -->" in text:
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # benchmarks/, where the design lies
        from decided_answer import progress

        text = re.sub(r"<!-- progress -->.*?<!-- /progress -->",
                      lambda _: f"<!-- progress -->\n{progress()}\n<!-- /progress -->", text, flags=re.S)
    return text


def pooled_overview(path: str, page_dir: str = ROOT, brief: bool = False) -> str:
    """pooled.md up to its per-size tables (the method, the answer, the rate sweeps), and a link, from a page in
    ``page_dir``, to the rest: the tables the method names and the between-sizes tests. ``brief``: the method
    paragraph's first sentence (its sources) and the link in its place."""
    with open(path) as f:
        body = f.read()
    body = body.split("\n### n=", 1)[0].strip().replace("## Pooled", "#### Pooled", 1)
    link = os.path.relpath(path, page_dir).replace(os.sep, "/")
    if brief:  # "Sources: `a`, `b`. Each arm's mean paired Δ ..." (some 2.4 KB): a page of answers links it
        paragraphs = body.split("\n\n")
        for i, text in enumerate(paragraphs):
            if text.startswith("Sources: "):
                paragraphs[i] = (f"{text.split('. ', 1)[0].rstrip('.')}; how they pool, the error control and the "
                                 f"margins: [{link}]({link}).")
        body = "\n\n".join(paragraphs)
    return f"{body}\n\nThe tables of each size and over all cells, and the between-sizes tests: [{link}]({link})."


_CITATION = re.compile(r"\b([A-Z][\w-]+(?: & [A-Z][\w-]+| et al\.),(?: [A-Za-z]+)? \d{4})")


def _source(preset: str) -> str:
    """The first paper a shipped preset's comment cites (``Lee et al., ICLR 2020``), or a dash."""
    path = os.path.join(ROOT, "configs", "presets", f"{preset}.toml")
    if not os.path.isfile(path):
        return "-"
    with open(path) as f:
        comment = " ".join(line.lstrip("# ").strip() for line in f if line.startswith("#"))
    found = _CITATION.search(comment)
    return found.group(1) if found else "-"


def _delta(row: dict, key: str) -> str:
    d = row.get(f"delta_{key}")
    if not d:
        return "-"
    lo, hi = d.get("ci_adjusted") or (None, None)
    interval = "[-, -]" if lo is None else f"[{lo:+.3f}, {hi:+.3f}]"  # one seed: no interval yet
    return f"{d['mean']:+.3f} {interval} {d['verdict']}"


def methods_table(summary_path: str) -> str:
    """Per arm of a summary (a preset against the baseline or against the control it names): the paper its preset
    file cites, its passes per optimizer step, seeds, and Δ test accuracy (early-stopped and at the fixed budget)
    with the simultaneous interval and the verdict, as the report wrote them."""
    with open(summary_path) as f:
        rows = json.load(f)
    lines = ["| size | preset | against | passes / step | from | seeds | Δ test acc, early-stopped | "
             "Δ test acc, fixed budget |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in rows:
        if row.get("delta_early_test_accuracy") or row.get("delta_fixed_test_accuracy"):
            lines.append(f"| {row['train_size']} | `{row['preset']}` | `{row.get('against', 'pretrain-zero')}` | "
                         f"{row.get('passes', 1)} | {_source(row['preset'])} | "
                         f"{len(row['seeds']) if isinstance(row['seeds'], list) else row['seeds']} | "
                         f"{_delta(row, 'early_test_accuracy')} | {_delta(row, 'fixed_test_accuracy')} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
