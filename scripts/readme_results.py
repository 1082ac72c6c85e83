"""Copy each `docs/results/<data set>/findings.md` into README.md between its markers, so that the README states
exactly what `hfreg report` derived from the committed runs and nothing else.

    .venv/bin/hfreg report docs/results/sst2 && .venv/bin/python scripts/readme_results.py

README.md holds, per data set, a block `<!-- findings:NAME -->` ... `<!-- /findings:NAME -->`.
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
    with open(readme, "w") as f:
        f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
