"""Every code block of the README and the documentation pages, checked: Python blocks run as written, with hub model
ids pointed at local stand-ins (`LOCAL`: a new hub id in an example needs one), and an excerpt of the library's code
(a block that opens with `class` or `def`, or a row of the architecture table) is found in it; `hfreg` commands that
need neither the hub nor recorded runs run, the others parse; every harness command line (`accelerate launch …
scripts/finetune.py …`, `python -m hfreg.finetune …`) goes through the harness's own parser; args files and preset
files load; a transcript is what the command prints today; a layout names only what the repository holds."""

import contextlib
import glob
import io
import os
import re
import shlex

import pytest
from harness import ROOT, tiny_decoder

PAGES = ["README.md", *sorted(p for p in glob.glob(os.path.join("docs", "**", "*.md"), root_dir=ROOT, recursive=True)
                              if not p.startswith(os.path.join("docs", "results", "")))]
BLOCK = re.compile(r"^```(\w+)\n(.*?)^```", re.S | re.M)
HUB_ID = re.compile(r"""["']([A-Za-z0-9][\w.-]*/[\w.-]+)["']""")
# tools outside hfreg: what they do is theirs (make's targets are the suite and the main job themselves)
EXTERNAL = {"make", "pip", "git", "cd", "ray", "python3", "source", "for", "done", "test=\"\";"}


def blocks():
    out = []
    for page in PAGES:
        with open(os.path.join(ROOT, page)) as f:
            for i, m in enumerate(BLOCK.finditer(f.read())):
                out.append(pytest.param(page, m.group(1), m.group(2), id=f"{page}:{i}:{m.group(1)}"))
    return out


@pytest.fixture(scope="module")
def local(tmp_path_factory, minilm_path):
    """The local stand-in of each hub id the examples load: the packaged MiniLM for itself, a tiny random Qwen2
    (with a cut of MiniLM's tokenizer) for Qwen2.5."""
    qwen = tiny_decoder(tmp_path_factory.mktemp("qwen"), "qwen2", minilm_path)
    return {"sentence-transformers/all-MiniLM-L6-v2": minilm_path, "Qwen/Qwen2.5-0.5B": qwen}


def commands(text: str) -> list[list[str]]:
    """The command lines of a shell block, continuation lines joined, comments dropped, the one loop's variables
    (docs/results.md) given their first value."""
    out = []
    for line in text.replace("\\\n", " ").splitlines():
        line = line.replace("$(nproc)", "2").replace("$ds", "sst2").replace("$test", "")
        tokens = shlex.split(line, comments=True)
        if tokens:
            tokens[0] = tokens[0].removeprefix(".venv/bin/")
            out.append(tokens)
    return out


def harness_argv(tokens: list[str]) -> list[str] | None:
    """The harness's own flags in a command line that launches it, else None."""
    for marker in ("scripts/finetune.py", "hfreg.finetune"):
        if marker in tokens:
            return tokens[tokens.index(marker) + 1:]
    return tokens[1:] if tokens[0] == "hfreg-finetune" else None


def run_hfreg(argv: list[str]) -> str:
    from hfreg import cli

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli.main(argv) == 0, f"hfreg {' '.join(argv)} failed"
    return out.getvalue()


def check_command(tokens: list[str], tmp_path) -> None:
    from hfreg import cli
    from hfreg.finetune import arguments

    argv = harness_argv(tokens)
    if argv is not None:
        if argv != ["--help"]:
            arguments.parse([a if not a.endswith(".yaml") else str(tmp_path / a) for a in argv]
                            if argv[-1:] != ["config.yaml"] else [str(tmp_path / "config.yaml")])
        return
    if tokens[0] == "hfreg":
        sub = tokens[1]
        if sub in ("compare", "inspect", "probe"):  # shipped configs: no download
            run_hfreg(tokens[1:])
        else:  # a model folder or recorded runs of the reader's own: the command line must parse
            args, rest = cli.build_parser().parse_known_args(tokens[1:])
            assert not rest or sub == "export", f"unrecognized: {rest}"
            if rest:
                arguments.parse(rest)
        return
    if tokens[0] in ("python", "python3") and tokens[1].endswith(".py"):  # a maintainer script: it must exist
        assert os.path.isfile(os.path.join(ROOT, tokens[1])), f"{tokens[1]} is not in the repository"
        return
    assert tokens[0] in EXTERNAL or tokens[0].startswith("test="), f"an unchecked command: {' '.join(tokens)}"


def layout(text: str) -> list[str]:
    """The paths a layout block names: a line's first words up to its description (two spaces), a comma-separated
    list allowed; an entry indented by two lies in the last folder named without indent."""
    paths, folder = [], ""
    for line in text.splitlines():
        if len(line) - len(line.lstrip()) > 2:  # a description's continuation
            continue
        names = line.strip().split("  ")[0]
        if not names or not re.fullmatch(r"[\w./-]+(, [\w./-]+)*", names):
            continue
        for name in names.split(", "):
            indented = line.startswith(" ")
            paths.append(os.path.join(folder, name) if indented else name)
            if not indented:
                folder = name if name.endswith("/") else ""
    return paths


@pytest.mark.parametrize("page, lang, text", blocks())
def test_code_block(page, lang, text, tmp_path, monkeypatch, request):
    monkeypatch.chdir(tmp_path)
    if lang == "python" and text.startswith('"'):  # an excerpt of the architecture table
        with open(os.path.join(ROOT, "hfreg", "architectures.py")) as f:
            table = f.read()
        for line in text.splitlines():
            assert line.split("  #")[0].strip() in table, f"{page} quotes a line the table lacks: {line}"
    elif lang == "python" and text.startswith(("class ", "def ", " ")):  # an excerpt of the library's code
        lines = [line.split("  #")[0].strip() for line in text.splitlines()]
        sources = {}
        for path in glob.glob(os.path.join(ROOT, "hfreg", "**", "*.py"), recursive=True):
            with open(path) as f:
                sources[path] = {line.split("  #")[0].strip() for line in f}
        assert any(all(line in found for line in lines) for found in sources.values()), \
            f"{page} quotes code no module of hfreg holds: {lines[0]}"
    elif lang == "python":
        local = request.getfixturevalue("local")
        missing = sorted(set(HUB_ID.findall(text)) - set(local))
        assert not missing, f"{page}: no local stand-in for {missing} (add one to LOCAL)"
        for hub_id, path in local.items():
            text = text.replace(f'"{hub_id}"', repr(str(path)))
        with contextlib.redirect_stdout(io.StringIO()):
            exec(compile(text, f"{page} block", "exec"), {"__name__": "__example__"})
    elif lang == "bash":
        (tmp_path / "config.yaml").write_text(next(
            (m.group(2) for p in ("docs/cli.md",) for m in BLOCK.finditer(open(os.path.join(ROOT, p)).read())
             if m.group(1) == "yaml"), ""))
        for tokens in commands(text):
            check_command(tokens, tmp_path)
    elif lang == "yaml":
        from hfreg.finetune import arguments

        (tmp_path / "config.yaml").write_text(text)
        assert arguments.parse([str(tmp_path / "config.yaml")]).presets
    elif lang == "toml":
        from hfreg.finetune.presets import load_preset

        (tmp_path / "example.toml").write_text(text)
        assert load_preset(str(tmp_path / "example.toml")).reg.knob_values()
    elif lang == "text" and text.startswith("$ hfreg "):  # a transcript: today's output, line for line
        command, _, shown = text.partition("\n")
        assert run_hfreg(shlex.split(command)[2:]) == shown, f"{page}: `{command[2:]}` prints otherwise today"
    elif lang == "text":  # a layout: every file and folder it names is there
        missing = [path for path in layout(text) if not os.path.exists(os.path.join(ROOT, path))]
        assert not missing, f"{page} shows {missing}, which the repository lacks"
    else:
        pytest.fail(f"{page}: a ```{lang} block this test does not know how to check")
