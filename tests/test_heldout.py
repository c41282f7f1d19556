"""The held-out instruction slice (issue 14): training never sees it, and alpaca_heldout_local scores
exactly it, per document, through lm-eval."""

from __future__ import annotations

import json

import datasets.config
import huggingface_hub.constants
import pytest
import torch

from harness.config import ALPACA_HELDOUT, ConfigError, DataConfig, EvalConfig, group_options, validate_config
from harness.data.heldout import HeldoutError, split_heldout
from harness.data.instruct import load_records, read_records
from harness.data.paths import DataDirError, resolve_data_dir
from harness.data.prompts import format_prompt
from harness.evaluate import evaluate_model
from harness.evaluate.tasks import task_manager
from harness.model.tiny import build_tiny_model
from harness.tasks.alpaca_heldout import heldout_rows

SOURCE = "instruct/alpaca_5000.json"
N_RECORDS = ALPACA_HELDOUT + 6
# Record i's response has i + 1 words, so a document's word count names the record it came from.
RECORDS = [
    {
        "instruction": f"Repeat the word {i} times.",
        "input": "go" if i % 2 else "",
        "output": " ".join(["yes"] * (i + 1)),
    }
    for i in range(N_RECORDS)
]


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """The hub libraries read the offline switches at import: set the constants they read too."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A data directory with an instruction file where the real Alpaca subset lives."""
    root = tmp_path_factory.mktemp("data")
    (root / "instruct").mkdir()
    (root / SOURCE).write_text(json.dumps(RECORDS))
    return str(root)


def test_split_holds_out_the_last_records_by_index() -> None:
    train, held = split_heldout(list(range(10)), 3)
    assert (train, held) == (list(range(7)), [7, 8, 9])
    assert split_heldout(list(range(4)), 0) == ([0, 1, 2, 3], [])


@pytest.mark.parametrize("heldout", [10, 11, -1])
def test_split_that_leaves_nothing_to_train_names_the_setting(heldout: int) -> None:
    with pytest.raises(HeldoutError, match=rf"data.heldout={heldout} .*below the number of records \(10\)"):
        split_heldout(list(range(10)), heldout)


def test_negative_heldout_is_rejected_by_the_config() -> None:
    with pytest.raises(ConfigError, match="data.heldout"):
        DataConfig(heldout=-1)


def test_data_alpaca_holds_out_what_the_task_scores(job_config) -> None:
    """The data=alpaca option and the task agree on the slice, and the job's config records it."""
    assert group_options()["data"]["alpaca"].heldout == ALPACA_HELDOUT
    assert validate_config(job_config("data=alpaca")).data.heldout == ALPACA_HELDOUT


def test_training_never_sees_a_heldout_record(data_dir: str) -> None:
    cfg = DataConfig(source=SOURCE, data_dir=data_dir, heldout=ALPACA_HELDOUT)
    train = load_records(cfg)
    held = [RECORDS[row["record"]] for row in heldout_rows(read_records(cfg), ALPACA_HELDOUT)]

    assert train == RECORDS[: N_RECORDS - ALPACA_HELDOUT]
    assert not any(record in held for record in train)
    assert train + held == RECORDS
    # max_examples takes the first N of the training records, never reaching into the held-out slice
    assert (
        load_records(DataConfig(source=SOURCE, data_dir=data_dir, heldout=ALPACA_HELDOUT, max_examples=10**6))
        == train
    )


def test_task_documents_are_the_heldout_records_in_the_training_prompt_format(data_dir: str) -> None:
    task = task_manager((), data_dir, defaults=False).load(["alpaca_heldout_local"])["tasks"][
        "alpaca_heldout_local"
    ]
    docs = list(task.eval_docs)
    first = N_RECORDS - ALPACA_HELDOUT

    assert [doc["record"] for doc in docs] == list(range(first, N_RECORDS))
    for doc in docs[:3]:
        record = RECORDS[doc["record"]]
        assert task.doc_to_text(doc) == format_prompt(record["instruction"], record["input"])
        assert task.doc_to_target(doc) == record["output"]


def test_task_scores_each_heldout_response_per_document(data_dir: str) -> None:
    """Through lm-eval on the tiny model: one sample per record, weighted by that record's response."""
    torch.manual_seed(0)
    model, tokenizer = build_tiny_model()
    cfg = EvalConfig(tasks=["alpaca_heldout_local"], limit=4, batch_size=4, bootstrap_iters=10)
    evaluation = evaluate_model(model, tokenizer, cfg, data_dir)

    scores = evaluation.metrics["alpaca_heldout_local"]
    assert scores["n"] == 4
    assert scores["word_perplexity"] > 1 and scores["bits_per_byte"] > 0
    samples = evaluation.samples
    words = samples[samples.metric == "word_perplexity"].sort_values("doc_id")
    first = N_RECORDS - ALPACA_HELDOUT
    assert list(words.doc_id) == [0, 1, 2, 3]
    assert list(words.weight) == [first + i + 1 for i in range(4)]  # record first + i has first + i + 1 words
    assert (words.value < 0).all()  # a log-likelihood of the response


def test_real_alpaca_heldout_slice_is_the_last_records_of_the_file() -> None:
    try:
        data_dir = str(resolve_data_dir())
    except DataDirError as exc:
        pytest.skip(f"no real data directory: {exc}")
    cfg = DataConfig(source=SOURCE, data_dir=data_dir, heldout=ALPACA_HELDOUT)
    everything = read_records(cfg)
    rows = heldout_rows(everything, ALPACA_HELDOUT)

    assert len(everything) == 5000
    assert [row["record"] for row in rows] == list(range(5000 - ALPACA_HELDOUT, 5000))
    assert load_records(cfg) == everything[: 5000 - ALPACA_HELDOUT]


def test_training_on_the_heldout_records_is_refused():
    """Evaluating alpaca_heldout_local while training on the records it scores fails before any work."""
    leaky = {"data": {"source": "instruct/alpaca_5000.json", "heldout": 0}}
    with pytest.raises(ConfigError, match="data.heldout=0"):
        validate_config({**leaky, "eval": {"tasks": ["alpaca_heldout_local"]}})
    validate_config({**leaky, "eval": {"tasks": ["wikitext2_local"]}})  # no held-out task: allowed
