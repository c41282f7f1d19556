"""lm-eval evaluation of the in-memory model (harness.evaluate), its dense weights during evaluation, and
the shipped ``*_local`` tasks, offline."""

from __future__ import annotations

import json
import math
import re
import subprocess
from pathlib import Path

import lm_eval.evaluator
import pytest
import torch
import torch.utils.collect_env
from omegaconf import OmegaConf
from peft import LoraConfig, get_peft_model

import harness.evaluate.tasks as eval_tasks
from harness.config import EvalConfig, validate_config
from harness.config import LoraConfig as JobLoraConfig
from harness.data.paths import DataDirError, resolve_data_dir
from harness.data.prompts import format_prompt
from harness.data.synthetic import synthetic_examples
from harness.evaluate import evaluate_model, metric_delta, task_metrics, validate_tasks
from harness.evaluate.dense import dense_bytes, dense_weights
from harness.evaluate.samples import sample_frame
from harness.evaluate.tasks import lm_eval_limit, task_manager
from harness.job import run_job
from harness.model.lora import attach_lora, resolve_targets
from harness.model.replace import quantizable_layer_names, replace_linear_layers
from harness.model.tiny import build_tiny_model
from harness.paths import CONF_DIR
from harness.quant import QuantLinear
from harness.stats import aggregate, read_samples, write_samples
from harness.tasks import TASKS_DIR
from harness.tasks.utils import split_wikitext_articles

CONF_EVAL = CONF_DIR / "eval"
ARC_ROWS = [
    {"query": f"Question: Which number is {n}?", "choices": ["one", "two", "three", "four"], "gold": n - 1}
    for n in (1, 2, 3, 4, 1, 2)
]
WIKI_TEXT = (
    " = First Article = \n The first article is short . \n = = History = = \n It has a section . \n"
    " = Second Article = \n The second one has 1 @,@ 000 words , roughly . \n"
)


# lm-eval on tiny models: offline, one thread (fastest for small tensors, steady on shared cores).
pytestmark = pytest.mark.usefixtures("hf_offline_constants", "single_thread")


@pytest.fixture(scope="module")
def tiny_data_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A data directory laid out like the real one: six ARC rows, two WikiText articles with CRLF."""
    root = tmp_path_factory.mktemp("data")
    (root / "mc").mkdir()
    (root / "mc" / "arc_easy.jsonl").write_text("".join(json.dumps(row) + "\n" for row in ARC_ROWS))
    (root / "wikitext-2" / "raw").mkdir(parents=True)
    (root / "wikitext-2" / "raw" / "wiki.test.raw").write_bytes(WIKI_TEXT.replace("\n", "\r\n").encode())
    return str(root)


def test_multiple_choice_and_perplexity_tasks_run_through_lm_eval(tiny_data_dir: str) -> None:
    """A plain transformers model: metrics in range, with stderr where lm-eval has one, and n."""
    model, tokenizer = build_tiny_model()
    cfg = EvalConfig(tasks=["arc_easy_local", "wikitext2_local"], batch_size=4, bootstrap_iters=10)
    scores = evaluate_model(model, tokenizer, cfg, tiny_data_dir).metrics

    arc, wiki = scores["arc_easy_local"], scores["wikitext2_local"]
    assert arc["n"] == len(ARC_ROWS)
    assert 0 <= arc["acc"] <= 1 and 0 <= arc["acc_norm"] <= 1
    assert arc["acc_stderr"] >= 0
    assert wiki["n"] == 2
    assert math.isfinite(wiki["word_perplexity"]) and wiki["word_perplexity"] > 1
    assert wiki["byte_perplexity"] > 1
    assert wiki["bits_per_byte"] == pytest.approx(math.log2(wiki["byte_perplexity"]))


def test_per_sample_results_rebuild_every_task_metric_exactly(tiny_data_dir: str, tmp_path: Path) -> None:
    """lm-eval's logged samples, as a frame: one row per document and metric, and aggregating the rows gives
    back the task's own acc, acc_norm, word/byte perplexity and bits per byte; samples.parquet keeps them."""
    model, tokenizer = build_tiny_model()
    cfg = EvalConfig(tasks=["arc_easy_local", "wikitext2_local"], batch_size=4, bootstrap_iters=0)
    evaluation = evaluate_model(model, tokenizer, cfg, tiny_data_dir)
    samples = evaluation.samples

    counts = samples.groupby(["task", "metric"]).size().to_dict()
    assert counts == {
        ("arc_easy_local", "acc"): 6,
        ("arc_easy_local", "acc_norm"): 6,
        ("wikitext2_local", "bits_per_byte"): 2,
        ("wikitext2_local", "byte_perplexity"): 2,
        ("wikitext2_local", "word_perplexity"): 2,
    }
    for (task, metric, aggregation), rows in samples.groupby(["task", "metric", "aggregation"]):
        rebuilt = aggregate(rows["value"].to_numpy(), rows["weight"].to_numpy(), aggregation)
        assert rebuilt == pytest.approx(evaluation.metrics[task][metric], rel=1e-9), (task, metric)
    words = samples[samples["metric"] == "word_perplexity"].sort_values("doc_id")["weight"].tolist()
    assert words == [len(re.split(r"\s+", a)) for a in split_wikitext_articles(WIKI_TEXT)]
    assert sorted(set(samples.loc[samples["task"] == "arc_easy_local", "doc_id"])) == list(range(6))
    assert samples["doc_hash"].str.fullmatch("[0-9a-f]{16}").all()

    path = write_samples(tmp_path, {"before": samples, "after": samples})
    assert len(read_samples(path)) == 2 * len(samples)


def test_log_samples_false_returns_metrics_only(tiny_data_dir: str) -> None:
    model, tokenizer = build_tiny_model()
    cfg = EvalConfig(tasks=["arc_easy_local"], bootstrap_iters=0, log_samples=False)
    evaluation = evaluate_model(model, tokenizer, cfg, tiny_data_dir)
    assert evaluation.samples is None and evaluation.metrics["arc_easy_local"]["n"] == len(ARC_ROWS)


def test_evaluation_skips_lm_evals_run_metadata(tiny_data_dir: str, monkeypatch) -> None:
    """simple_evaluate's environment report (torch's collect_env: pip and friends in subprocesses) and its
    ``git describe`` (noise outside a checkout) are not run, since the harness drops both; lm-eval's own
    functions are back in place afterwards."""
    reports, commands = [], []
    monkeypatch.setattr(torch.utils.collect_env, "get_pretty_env_info", lambda: reports.append(1) or "")
    monkeypatch.setattr(subprocess, "check_output", lambda args, **kwargs: commands.append(args) or b"abc")
    originals = lm_eval.evaluator.add_env_info, lm_eval.evaluator.get_git_commit_hash
    model, tokenizer = build_tiny_model()
    cfg = EvalConfig(tasks=["arc_easy_local"], bootstrap_iters=0, log_samples=False)
    metrics = evaluate_model(model, tokenizer, cfg, tiny_data_dir).metrics
    assert metrics["arc_easy_local"]["n"] == len(ARC_ROWS)
    assert reports == [] and commands == []
    assert (lm_eval.evaluator.add_env_info, lm_eval.evaluator.get_git_commit_hash) == originals
    storage: dict = {}
    originals[0](storage)  # the spies see lm-eval's own calls
    assert originals[1]() == "abc" and commands == [["git", "describe", "--always"]]
    assert reports == [1] and "pretty_env_info" in storage


@pytest.mark.parametrize("log_samples", [True, False])
def test_job_writes_samples_beside_result_json(job_config, tmp_path: Path, log_samples: bool) -> None:
    """The smoke job (before and after training) stores both phases, and they rebuild result.json's acc;
    eval.log_samples=false writes no file and removes one an earlier run left."""
    (tmp_path / "samples.parquet").write_text("an earlier run's file")
    cfg = job_config(
        "model=tiny",
        "train=smoke",
        "eval=synthetic",
        "eval.before=true",
        "train.steps=4",
        f"eval.log_samples={str(log_samples).lower()}",
    )
    result = run_job(cfg, tmp_path)
    assert result.ok, result.error
    if not log_samples:
        assert not (tmp_path / "samples.parquet").exists()
        return
    samples = read_samples(tmp_path / "samples.parquet")
    for phase, metrics in (("before", result.eval_before), ("after", result.eval)):
        rows = samples[(samples["phase"] == phase) & (samples["metric"] == "acc")]
        assert len(rows) == metrics["synthetic_local"]["n"] == 32
        assert rows["value"].mean() == pytest.approx(metrics["synthetic_local"]["acc"])


def test_sample_frame_keeps_filters_brier_per_document_and_drops_corpus_metrics() -> None:
    """Metric names as result.json spells them; the Brier score per document; f1 (corpus-level) left out."""
    results = {
        "configs": {"t": {"metric_list": [{"metric": "brier_score", "aggregation": "brier_score"}]}},
        "samples": {
            "t": [
                {
                    "doc_id": 3,
                    "doc_hash": "ab" * 32,
                    "filter": "strict-match",
                    "metrics": ["exact_match", "brier_score", "f1"],
                    "exact_match": 1.0,
                    "brier_score": (1, [0.25, 0.75]),
                    "f1": (1, 1),
                }
            ]
        },
    }
    frame = sample_frame(results)
    assert frame.to_dict("records") == [
        {
            "task": "t",
            "doc_id": 3,
            "doc_hash": "ab" * 8,
            "metric": "exact_match/strict-match",
            "aggregation": "mean",
            "value": 1.0,
            "weight": 1.0,
        },
        {
            "task": "t",
            "doc_id": 3,
            "doc_hash": "ab" * 8,
            "metric": "brier_score/strict-match",
            "aggregation": "mean",
            "value": 0.125,
            "weight": 1.0,
        },
    ]  # Brier: 0.25² + (0.75 - 1)² = 0.125


def test_user_task_folder_reuses_the_shipped_template(tiny_data_dir: str, tmp_path: Path) -> None:
    """eval.include_path adds a task that reads its own file from the data directory, checked up front."""
    (tmp_path / "my_arc.yaml").write_text(
        f"include: {TASKS_DIR / '_mc.yaml'}\ntask: my_arc\n"
        "dataset_kwargs: {reader: jsonl, files: {test: mc/arc_easy.jsonl}}\n"
    )
    cfg = EvalConfig(tasks=["my_arc"], include_path=[str(tmp_path)], bootstrap_iters=0)
    model, tokenizer = build_tiny_model()
    assert evaluate_model(model, tokenizer, cfg, tiny_data_dir).metrics["my_arc"]["n"] == len(ARC_ROWS)
    with pytest.raises(DataDirError, match="arc_easy.jsonl"):
        validate_tasks(cfg, str(tmp_path))


def test_wikitext_articles_split_at_titles_with_crlf_removed() -> None:
    """Sections stay inside their article; CRLF becomes LF; no text is lost."""
    articles = split_wikitext_articles(WIKI_TEXT.replace("\n", "\r\n"))
    assert [a.splitlines()[0] for a in articles] == [" = First Article = ", " = Second Article = "]
    assert " = = History = = " in articles[0]
    assert "".join(articles) == WIKI_TEXT


def _train_on_synthetic(model: torch.nn.Module, tokenizer, num_facts: int, steps: int) -> None:
    """A plain torch loop on the training text (prompt + answer), loss on the answer tokens only."""
    examples = synthetic_examples(num_facts)
    prompts = [format_prompt(ex["instruction"]) for ex in examples]
    batch = tokenizer(
        [p + ex["output"] for p, ex in zip(prompts, examples, strict=True)], return_tensors="pt", padding=True
    )
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    for row, prompt in enumerate(prompts):
        labels[row, : len(tokenizer(prompt)["input_ids"])] = -100
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for _ in range(steps):
        model(**batch, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()


def test_the_adapted_peft_model_is_what_gets_evaluated() -> None:
    """Training only LoRA moves synthetic_local's Brier score; with adapters off it is back where it was."""
    model, tokenizer = build_tiny_model()
    torch.manual_seed(0)
    lora = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=["q_proj", "v_proj", "lm_head"])
    peft_model = get_peft_model(model, lora)
    cfg = EvalConfig(tasks=["synthetic_local"], limit=8, bootstrap_iters=0)

    before = evaluate_model(peft_model, tokenizer, cfg, None).metrics["synthetic_local"]
    _train_on_synthetic(peft_model, tokenizer, num_facts=8, steps=20)
    after = evaluate_model(peft_model, tokenizer, cfg, None).metrics["synthetic_local"]
    with peft_model.disable_adapter():
        adapters_off = evaluate_model(peft_model, tokenizer, cfg, None).metrics["synthetic_local"]

    assert before["n"] == after["n"] == 8
    assert after["brier_score"] < before["brier_score"] - 0.2  # lower is better
    assert adapters_off["brier_score"] == pytest.approx(before["brier_score"])
    assert peft_model.training, "evaluation must hand the model back in the mode it was in"


def test_unknown_task_lists_close_matches() -> None:
    """A typo is caught before training, with the intended name suggested."""
    with pytest.raises(ValueError, match="arc_easy_locl.*did you mean arc_easy_local"):
        validate_tasks(EvalConfig(tasks=["synthetic_local", "arc_easy_locl"]), None)


def test_a_typo_of_an_lm_eval_task_fails_from_the_kept_names_without_indexing_lm_eval(monkeypatch, tmp_path):
    """lm-eval's own task names are kept under the cache dir, stamped with its install: a name neither the
    shipped tasks nor those kept names know is refused with the kept names' close matches, and lm-eval's
    ~15k task files are not indexed for it (no TaskManager with its defaults is built)."""
    monkeypatch.setenv("QLORA_CACHE_DIR", str(tmp_path))
    eval_tasks.builtin_task_names.cache_clear()
    path, stamp = eval_tasks._builtin_names_file()
    assert path.parent == tmp_path
    path.write_text(json.dumps({"stamp": stamp, "names": ["hellaswag", "piqa", "zzz_only_kept_here"]}))
    task_manager((), None, defaults=False)  # the shipped tasks' index, as validate_tasks builds it
    indexed = task_manager.cache_info().currsize
    try:
        with pytest.raises(ValueError, match="'helaswag': did you mean hellaswag"):
            validate_tasks(EvalConfig(tasks=["arc_easy_local", "helaswag"]), None)
        assert eval_tasks.builtin_task_names() == {"hellaswag", "piqa", "zzz_only_kept_here"}
    finally:
        eval_tasks.builtin_task_names.cache_clear()
    assert task_manager.cache_info().currsize == indexed


@pytest.mark.parametrize(
    ("task", "missing"),
    [("piqa_local", "mc/piqa.jsonl"), ("mmlu_local", "mmlu/dev/abstract_algebra_dev.csv")],
)
def test_missing_data_file_names_the_file_and_the_setting(tmp_path: Path, task: str, missing: str) -> None:
    """Tasks and groups alike: the message says which file and where the data directory comes from."""
    with pytest.raises(DataDirError) as caught:
        validate_tasks(EvalConfig(tasks=[task]), str(tmp_path))
    assert missing in str(caught.value) and "QLORA_DATA_DIR" in str(caught.value)


def test_synthetic_task_needs_no_data_directory(tmp_path: Path) -> None:
    """synthetic_local reads no files, so even a data directory that does not exist is fine."""
    validate_tasks(EvalConfig(tasks=["synthetic_local"]), str(tmp_path / "absent"))


@pytest.mark.parametrize(("limit", "expected"), [(None, None), (5, 5), (0.25, 0.25), (1.0, None)])
def test_limit_is_passed_as_lm_eval_reads_it(limit: object, expected: object) -> None:
    """1.0 means the whole task (lm-eval alone would read it as one example)."""
    assert lm_eval_limit(limit) == expected


@pytest.mark.parametrize("limit", [0, -3, 1.5, True, "10"])
def test_bad_limit_is_rejected_before_training(limit: object) -> None:
    with pytest.raises(ValueError, match="eval.limit"):
        validate_tasks(EvalConfig(tasks=[], limit=limit), None)


def test_task_metrics_keep_filters_and_drop_missing_stderrs() -> None:
    """``"<metric>,<filter>"`` keys are flattened; "N/A" and NaN stderrs are left out; n comes along."""
    results = {
        "results": {
            "t": {
                "alias": "t",
                "sample_len": 3,
                "acc,none": 1,
                "acc_stderr,none": float("nan"),
                "exact_match,strict-match": 0.5,
                "exact_match_stderr,strict-match": 0.1,
                "bits_per_byte_stderr,none": "N/A",
            }
        }
    }
    assert task_metrics(results) == {
        "t": {"acc": 1.0, "exact_match/strict-match": 0.5, "exact_match/strict-match_stderr": 0.1, "n": 3}
    }


def test_metric_delta_subtracts_shared_metrics_only() -> None:
    after = {"a": {"acc": 0.75, "acc_stderr": 0.1, "n": 4, "new": 1.0}, "only_after": {"acc": 1.0}}
    before = {"a": {"acc": 0.5, "acc_stderr": 0.1, "n": 4}}
    assert metric_delta(after, before) == {"a": {"acc": 0.25}}


@pytest.mark.parametrize("group", sorted(p.stem for p in CONF_EVAL.glob("*.yaml")))
def test_eval_group_configs_compose_and_use_shipped_tasks(job_config, group: str) -> None:
    """Each conf/eval file composes against the schema (as qlora-bench would) and names offline tasks."""
    cfg = job_config(f"eval={group}").eval
    shipped = task_manager((), None, defaults=False).task_index
    assert all(name in shipped for name in cfg.tasks)
    validate_config({"eval": OmegaConf.to_container(cfg)})  # its limit and other values are in range


REAL_SIZES = {
    "arc_easy_local": 2376,
    "arc_challenge_local": 1172,
    "piqa_local": 1838,
    "boolq_local": 3270,
    "winogrande_local": 1267,
    "hellaswag_local": 10042,
    "hellaswag_subset1000_local": 1000,
    "wikitext2_local": 62,  # articles
}


def test_real_data_dir_loads_with_manifest_counts() -> None:
    """Every shipped task reads the real files (no model run): row counts as in shared/data/MANIFEST.md."""
    try:
        data_dir = str(resolve_data_dir())
    except DataDirError as exc:
        pytest.skip(f"no real data directory: {exc}")
    tm = task_manager((), data_dir, defaults=False)
    loaded = tm.load([*REAL_SIZES, "mmlu_local"])["tasks"]

    assert {name: len(loaded[name].eval_docs) for name in REAL_SIZES} == REAL_SIZES
    pages = loaded["wikitext2_local"].eval_docs["page"]
    assert sum(len(page.split()) for page in pages) == 241_211  # MANIFEST's word count: nothing lost
    mmlu = {name: task for name, task in loaded.items() if name.startswith("mmlu_local_")}
    assert len(mmlu) == 57
    assert sum(len(task.eval_docs) for task in mmlu.values()) == 14_042
    assert all(len(task.fewshot_docs()) == 5 for task in mmlu.values())


# Evaluation cost: the 4-bit weights dequantized once per evaluation (harness.evaluate.dense).


def quantized_tiny_with_lora(compute_dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """The tiny Llama in NF4 (lm_head kept) with the harness's LoRA on every block linear, B made nonzero
    so that the adapters change the output."""
    model, _ = build_tiny_model()
    targets = resolve_targets("all-linear", quantizable_layer_names(model, ["lm_head"]))
    replace_linear_layers(model, "nf4", 64, True, compute_dtype, torch.device("cpu"), ["lm_head"])
    peft_model = attach_lora(model, JobLoraConfig(r=4, alpha=8, dropout=0.0), targets, seed=0)
    for name, parameter in peft_model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(parameter, std=0.1)
    return peft_model


def quant_layers(model: torch.nn.Module) -> list[QuantLinear]:
    return [m for m in model.modules() if isinstance(m, QuantLinear)]


def lora_gradients(model: torch.nn.Module, input_ids: torch.Tensor) -> list[torch.Tensor]:
    model.zero_grad()
    model(input_ids).logits.square().mean().backward()
    return [p.grad.clone() for p in model.parameters() if p.requires_grad]


@pytest.mark.parametrize("compute_dtype", [torch.float32, torch.bfloat16])
def test_dense_weights_give_the_same_logits_and_leave_training_as_before(compute_dtype: torch.dtype) -> None:
    """Inside the block every 4-bit layer holds its dequantized weight and the logits are bit-identical;
    after it no layer holds one and training's gradients are those of on-the-fly dequantization."""
    model = quantized_tiny_with_lora(compute_dtype)
    input_ids = torch.randint(0, 256, (3, 17), generator=torch.Generator().manual_seed(1))
    gradients = lora_gradients(model, input_ids)
    with torch.no_grad():
        logits = model(input_ids).logits

    layers = quant_layers(model)
    with dense_weights(model, budget_bytes=2**30) as held, torch.no_grad():
        assert held == sum(dense_bytes(layer) for layer in layers) > 0
        assert all(layer.dense_weight.dtype == compute_dtype for layer in layers)
        assert torch.equal(model(input_ids).logits, logits)

    assert all(layer.dense_weight is None for layer in layers)
    for after, before in zip(lora_gradients(model, input_ids), gradients, strict=True):
        assert torch.equal(after, before)


def test_budget_bounds_the_dense_copies() -> None:
    """A budget of one layer's copy holds exactly that layer; 0 holds none; an error inside frees them."""
    model = quantized_tiny_with_lora()
    first = quant_layers(model)[0]
    with dense_weights(model, budget_bytes=dense_bytes(first)) as held:
        assert held == dense_bytes(first)
        assert [layer for layer in quant_layers(model) if layer.dense_weight is not None] == [first]
    with dense_weights(model, budget_bytes=0) as held:
        assert held == 0 and all(layer.dense_weight is None for layer in quant_layers(model))
    with pytest.raises(RuntimeError, match="inside"), dense_weights(model, budget_bytes=2**30):
        raise RuntimeError("inside")
    assert all(layer.dense_weight is None for layer in quant_layers(model))


@pytest.mark.parametrize("mib", [-1, 1.5, "64"])
def test_bad_dense_weights_budget_is_rejected(mib: object) -> None:
    with pytest.raises(ValueError, match="eval.dense_weights_mib"):
        EvalConfig(dense_weights_mib=mib)


def test_dense_weights_leave_every_score_as_it_was(tiny_data_dir: str) -> None:
    """A 4-bit model with LoRA evaluated with its weights dequantized once (``dense_weights_mib=64``) and on
    every forward (the default): the same metrics and per-document values (log-likelihoods for WikiText)."""
    model = quantized_tiny_with_lora()
    _, tokenizer = build_tiny_model()
    tasks = ["arc_easy_local", "wikitext2_local"]
    once = evaluate_model(
        model, tokenizer, EvalConfig(tasks=tasks, bootstrap_iters=0, dense_weights_mib=64), tiny_data_dir
    )
    every = evaluate_model(model, tokenizer, EvalConfig(tasks=tasks, bootstrap_iters=0), tiny_data_dir)
    for task in tasks:
        assert once.metrics[task] == pytest.approx(every.metrics[task], rel=1e-4)
    assert once.samples["value"].to_numpy() == pytest.approx(every.samples["value"].to_numpy(), rel=1e-4)
    assert once.samples.drop(columns="value").equals(every.samples.drop(columns="value"))
