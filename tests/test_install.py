"""hfreg installed from a wheel, not from this checkout: presets, published configs and the harness all work."""

import glob
import os
import shutil
import subprocess
import sys
import sysconfig

import pytest
from harness import ROOT


@pytest.mark.slow
def test_wheel_installs_and_runs_outside_the_checkout(tmp_path, tiny_classifier, csv_data):
    dist, src = tmp_path / "dist", tmp_path / "src"
    # build from a copy: no build/ left in the checkout, and nothing stale from an earlier build in the wheel
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".venv", ".git", "build", "runs", "docs", "*.egg-info",
                                                             "__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist),
                    str(src)], check=True, capture_output=True)
    wheel = glob.glob(str(dist / "hfreg-*.whl"))[0]
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    bin_ = venv / "bin"
    site = subprocess.run([bin_ / "python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    # dependencies come from the test environment's site-packages (a plain path entry: its editable hfreg
    # finder is not run, so `import hfreg` can only find the wheel's copy)
    with open(os.path.join(site, "deps.pth"), "w") as f:
        f.write(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([bin_ / "python", "-m", "pip", "install", "-q", "--no-deps", "--no-index", wheel], check=True,
                   capture_output=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}

    def run(*cmd):
        proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, cwd=tmp_path, env=env)
        assert proc.returncode == 0, proc.stderr[-2000:]
        return proc.stdout

    where = run(bin_ / "python", "-c", "import hfreg; print(hfreg.__file__)")
    assert where.startswith(site), where
    table = run(bin_ / "hfreg", "compare", "bert-base-uncased", "gpt2")
    assert table.splitlines()[0].split() == ["knob", "bert-base-uncased", "gpt2"]
    names = run(bin_ / "python", "-c", "from hfreg.finetune.presets import available, load_preset; "
                                       "print(' '.join(load_preset(n).name for n in available()))").split()
    assert {"pretrain-zero", "checkpoint", "classic", "drop-path", "heavy", "weight-decay"} <= set(names)
    out = tmp_path / "out"
    run(bin_ / "python", "-m", "hfreg.finetune", "--model_name_or_path", tiny_classifier,
        "--train_file", csv_data / "train.csv", "--validation_file", csv_data / "validation.csv",
        "--presets", "classic", "--train_sizes", "16", "--seeds", "0", "--num_train_epochs", "1",
        "--min_steps", "0", "--output_dir", out, "--no_plots")
    assert len((out / "runs.jsonl").read_text().splitlines()) == 1


# the library's floors, bottom up: a module imports only from floors below its own (the harness, `finetune`, sits
# above the patcher and imports within itself freely, without a circle)
FLOORS = (("config", "files", "hub"), ("layers", "architectures", "unapplied", "resources", "cache"), ("provenance",),
          ("twin", "sites"),
          ("state",), ("hooks",), ("fast_masks", "knobs"), ("inject",), ("probing",), ("patcher",),
          ("schedule", "mc", "rdrop"), ("finetune",), ("cli", "__init__"))


def test_a_checkout_on_pythonpath_alone_finds_its_presets(tmp_path):
    """Not installed at all (a copy of the tree on PYTHONPATH, as on a machine that cannot pip install): the
    presets and published configs come from configs/ beside the package."""
    script = ("import sys; sys.path.append(sys.argv[1]); import importlib.util as u; "
              "assert u.find_spec('hfreg.configs') is None; "
              "from hfreg.finetune.presets import available, load_preset; "
              "assert 'classic' in available() and load_preset('classic').reg.hidden > 0; print('ok')")
    # -S: no site-packages processing, so the editable install's finder (which maps hfreg.configs) is not run
    out = subprocess.run([sys.executable, "-S", "-c", script, sysconfig.get_paths()["purelib"]], cwd=tmp_path,
                         env={**os.environ, "PYTHONPATH": ROOT}, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def test_floors_hold_no_import_circle_and_no_private_names_across_modules():
    """Each module imports downwards only, by the floors above; no import circle anywhere, the harness included; no
    module reads another's private names (the patch state goes through `patch_state`)."""
    import ast

    package = os.path.join(ROOT, "hfreg")
    imports: dict[str, set[str]] = {}
    for path in glob.glob(os.path.join(package, "**", "*.py"), recursive=True):
        module = os.path.relpath(path, package)[:-3].replace(os.sep, ".")
        imports[module] = set()
        for node in ast.walk(ast.parse(open(path).read())):
            if isinstance(node, ast.ImportFrom) and node.level:
                base = ".".join(module.split(".")[:-node.level] + ([node.module] if node.module else []))
                targets = [base] if node.module else [".".join(filter(None, (base, a.name))) for a in node.names]
                imports[module] |= {t for t in targets if t}
                private = [a.name for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
                assert not private, f"{module} imports private {private} from {base}"
    floor = {m: i for i, names in enumerate(FLOORS) for m in names}

    def floor_of(module):
        top = module.split(".")[0]
        if top not in floor:
            raise AssertionError(f"hfreg.{module} is on no floor: add it to FLOORS")
        return floor[top]

    for module, targets in imports.items():
        if module.split(".")[0] == "finetune":
            targets = {t for t in targets if t.split(".")[0] != "finetune"}
        for target in targets:
            if target in imports or target.split(".")[0] in floor:
                assert floor_of(target) < floor_of(module) or module == "__init__", \
                    f"hfreg.{module} (floor {floor_of(module)}) imports hfreg.{target} (floor {floor_of(target)})"
    # no circle: a depth-first walk that never meets a module still on its path
    done: set[str] = set()

    def walk(module, path):
        assert module not in path, f"import circle: {' -> '.join([*path, module])}"
        if module in done or module not in imports:
            return
        for target in imports[module]:
            walk(target, (*path, module))
        done.add(module)

    for module in imports:
        walk(module, ())


def test_public_names_are_static_and_all_resolve():
    """`hfreg.__all__` is a literal list (IDEs and static tools read it), names every lazy export, and each one
    resolves."""
    import ast

    import hfreg

    tree = ast.parse(open(os.path.join(ROOT, "hfreg", "__init__.py")).read())
    [node] = [n for n in tree.body if isinstance(n, ast.Assign) and n.targets[0].id == "__all__"]
    listed = ast.literal_eval(node.value)
    assert sorted(listed) == sorted(set(hfreg._LAZY) | {"KNOBS", "RegularizationConfig", "Schedule"})
    assert all(getattr(hfreg, name) is not None for name in listed)


def test_site_and_probe_share_their_fields_in_one_order():
    from dataclasses import fields

    import hfreg

    site, probe = [f.name for f in fields(hfreg.Site)], [f.name for f in fields(hfreg.Probe)]
    shared = [f for f in site if f in probe]
    assert shared == ["path", "kind", "rate", "source"] and probe[:len(shared)] == shared
