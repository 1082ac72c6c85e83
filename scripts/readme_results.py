"""Copy each `docs/results/<data set>/findings.md` into README.md between its markers, so that the README states
exactly what `hfreg report` derived from the committed runs and nothing else.

    .venv/bin/hfreg report docs/results/sst2 && .venv/bin/python scripts/readme_results.py

README.md holds, per data set, a block `<!-- findings:NAME -->` ... `<!-- /findings:NAME -->`, and one block
`<!-- pooled -->` ... `<!-- /pooled -->` for `docs/results/pooled.md` (its answer and overall table, written by
`hfreg report docs/results/sst2 docs/results/rt-polarity --out docs/results`).
"""

import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main() -> int:
    readme = os.path.join(ROOT, "README.md")
    with open(readme) as f:
        text = f.read()
    for name in re.findall(r"<!-- findings:([\w.-]+) -->", text):
        path = os.path.join(ROOT, "docs", "results", name, "findings.md")
        runs = os.path.join(os.path.dirname(path), "runs.jsonl")
        if not os.path.isfile(runs):
            body = f"No finished runs in `docs/results/{name}` yet."
        elif not os.path.isfile(path) or os.path.getmtime(path) < os.path.getmtime(runs):
            print(f"readme_results.py: error: {path} is missing or older than runs.jsonl; run `hfreg report` "
                  f"first", file=sys.stderr)
            return 2
        else:
            with open(path) as f:
                body = f.read().replace("## Findings", f"#### Findings: {name}", 1).strip()
        text = re.sub(rf"<!-- findings:{name} -->.*?<!-- /findings:{name} -->",
                      lambda _: f"<!-- findings:{name} -->\n{body}\n<!-- /findings:{name} -->", text, flags=re.S)
    if "<!-- pooled -->" in text:
        path = os.path.join(ROOT, "docs", "results", "pooled.md")
        if not os.path.isfile(path):
            print(f"readme_results.py: error: {path} is missing; run `hfreg report ... --out docs/results` first",
                  file=sys.stderr)
            return 2
        text = re.sub(r"<!-- pooled -->.*?<!-- /pooled -->",
                      lambda _: f"<!-- pooled -->\n{pooled_overview(path)}\n<!-- /pooled -->", text, flags=re.S)
    with open(readme, "w") as f:
        f.write(text)
    return 0


def pooled_overview(path: str) -> str:
    """pooled.md up to its per-size tables: the method, the answer and the table over all cells."""
    with open(path) as f:
        body = f.read()
    body = body.split("\n### n=", 1)[0].strip()
    return body.replace("## Pooled", "#### Pooled", 1).replace("### All cells", "##### All cells", 1)


if __name__ == "__main__":
    sys.exit(main())
