"""The packed log-likelihood path (harness.evaluate.packed, eval.backend=packed) against lm-eval's HFLM: the
same log-likelihoods, greedy flags and per-document samples, from fewer computed tokens, on tiny random
models through the real lm-eval tasks and the real data files.

Tolerance: both paths compute the same sums in fp32, only with other matmul shapes and attention kernels
(masked vs causal), i.e. another reduction order: each log-probability carries a relative rounding error of
a few fp32 ulps (1.2e-7) times the square root of the reduction lengths (hidden 64, vocabulary 258, a few
hundred keys), ~1e-6; a summed log-likelihood keeps that relative error. 1e-4 relative (the issue's bound)
leaves two orders of magnitude, and a wrong mask or position moves these random models' log-likelihoods by
far more (their logits span several nats).
"""

from __future__ import annotations

import pytest
import torch
from lm_eval.api.instance import Instance
from lm_eval.models.huggingface import HFLM

from harness.config import EvalConfig
from harness.config import LoraConfig as JobLoraConfig
from harness.data.paths import DataDirError, resolve_data_dir
from harness.evaluate import evaluate_model
from harness.evaluate.packed import PackedLM, TokenTree, model_input, token_trees
from harness.evaluate.runner import precision_kwargs
from harness.evaluate.tasks import task_manager
from harness.model.lora import attach_lora, resolve_targets
from harness.model.replace import quantizable_layer_names, replace_linear_layers
from harness.model.tiny import build_tiny_family

RELATIVE = 1e-4
MC_TASKS = ("arc_easy_local", "winogrande_local", "hellaswag_local", "piqa_local")


# lm-eval on tiny models: offline, one thread (fastest for small tensors, steady on shared cores).
pytestmark = pytest.mark.usefixtures("hf_offline_constants", "single_thread")


@pytest.fixture(scope="module")
def data_dir() -> str:
    try:
        return str(resolve_data_dir())
    except DataDirError as exc:
        pytest.skip(f"no real data directory: {exc}")


def task_requests(data_dir: str, names: tuple[str, ...], limit: int) -> dict[str, list[Instance]]:
    """lm-eval's own requests for the first ``limit`` documents of each task, by request type."""
    tasks = task_manager((), data_dir, False).load(list(names))["tasks"]
    requests: dict[str, list[Instance]] = {}
    for name in names:
        tasks[name].build_all_requests(limit=limit, rank=0, world_size=1)
        for instance in tasks[name].instances:
            requests.setdefault(instance.request_type, []).append(instance)
    return requests


def assert_same_answers(expected: list, actual: list) -> None:
    """Same length; log-likelihoods within RELATIVE; greedy flags (multiple choice) identical."""
    assert len(actual) == len(expected)
    value = lambda answer: answer[0] if isinstance(answer, tuple) else answer  # noqa: E731
    for e, a in zip(expected, actual, strict=True):
        assert abs(value(a) - value(e)) <= RELATIVE * abs(value(e)), (e, a)
    assert [a[1] for a in actual if isinstance(a, tuple)] == [e[1] for e in expected if isinstance(e, tuple)]


def test_token_tree_shares_prefixes_and_sees_only_ancestors() -> None:
    """Rows sharing a prefix share its nodes; a node sees itself and its ancestors, nothing else."""
    rows = [[5, 6], [1, 2, 4], [1, 2, 3]]
    (tree,) = token_trees(rows, width=16)
    assert tree.tokens == [1, 2, 3, 4, 5, 6] and tree.depth == [0, 1, 2, 2, 0, 1]
    assert [tree.members[m] for m in range(3)] == [2, 1, 0]  # sorted order
    seen = tree.ancestors()
    expected = torch.zeros(6, 6, dtype=torch.bool)
    for node, ancestors in {0: [0], 1: [0, 1], 2: [0, 1, 2], 3: [0, 1, 3], 4: [4], 5: [4, 5]}.items():
        expected[node, ancestors] = True
    assert torch.equal(seen, expected)
    assert [len(t.tokens) for t in token_trees(rows, width=4)] == [4, 2]  # a full row starts another


def test_chain_mask_is_causal() -> None:
    tree = TokenTree()
    tree.add(0, [7, 8, 9])
    assert tree.is_chain() and torch.equal(tree.ancestors(), torch.ones(3, 3, dtype=torch.bool).tril())


@pytest.mark.parametrize("family", ["llama", "qwen2", "mistral"])
def test_multiple_choice_loglikelihoods_match_hflm(family: str, data_dir: str) -> None:
    """ARC, WinoGrande, HellaSwag and PIQA requests: HFLM's answers, from fewer computed tokens."""
    model, tokenizer = build_tiny_family(family)
    requests = task_requests(data_dir, MC_TASKS, limit=4)["loglikelihood"]
    hflm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=4)
    packed = PackedLM(pretrained=model, tokenizer=tokenizer, batch_size=4, row_tokens=128, batch_tokens=512)
    assert packed.unsupported is None

    assert_same_answers(hflm.loglikelihood(requests, True), packed.loglikelihood(requests, True))
    rows = [model_input(*hflm._encode_pair(*r.args), hflm.max_length) for r in requests]
    prefixes = {tuple(row[: i + 1]) for row in rows for i in range(len(row))}
    assert sum(len(tree.tokens) for tree in token_trees(rows, 10**6)) == len(prefixes)  # each token once
    arc = [row for row, r in zip(rows, requests, strict=True) if r.task_name == "arc_easy_local"]
    nodes = sum(len(tree.tokens) for tree in token_trees(arc, 512))
    assert nodes < 0.6 * sum(len(row) for row in arc)  # a question's context once, not once per choice


def test_rolling_windows_match_hflm(data_dir: str) -> None:
    """WikiText paragraphs longer than max_length: lm-eval's windows (the last one with its overlapping
    context), scored in one length-batched pass, sum to HFLM's log-likelihoods."""
    model, tokenizer = build_tiny_family("llama")
    requests = task_requests(data_dir, ("wikitext2_para_local",), limit=4)["loglikelihood_rolling"]
    assert max(len(r.args[0]) for r in requests) > 3 * 96  # byte tokens: several windows each
    hflm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=4, max_length=96)
    packed = PackedLM(pretrained=model, tokenizer=tokenizer, batch_size=4, max_length=96)
    assert_same_answers(
        hflm.loglikelihood_rolling(requests, True), packed.loglikelihood_rolling(requests, True)
    )


def test_unsupported_family_goes_through_hflm(data_dir: str) -> None:
    """A family outside PACKED_FAMILIES (GPT-2) says so and gets HFLM's own answers, bit for bit."""
    model, tokenizer = build_tiny_family("gpt2")
    requests = task_requests(data_dir, ("arc_easy_local",), limit=2)["loglikelihood"]
    packed = PackedLM(pretrained=model, tokenizer=tokenizer, batch_size=4)
    assert "gpt2" in packed.unsupported
    hflm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=4)
    assert packed.loglikelihood(requests, True) == hflm.loglikelihood(requests, True)


def quantized_llama_with_lora() -> torch.nn.Module:
    """The job's model on the tiny Llama: NF4 blocks (lm_head kept), peft LoRA with B made nonzero."""
    model, tokenizer = build_tiny_family("llama")
    targets = resolve_targets("all-linear", quantizable_layer_names(model, ["lm_head"]))
    replace_linear_layers(model, "nf4", 64, True, torch.float32, torch.device("cpu"), ["lm_head"])
    peft_model = attach_lora(model, JobLoraConfig(r=4, alpha=8, dropout=0.0), targets, seed=0)
    for name, parameter in peft_model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(parameter, std=0.1)
    return peft_model, tokenizer


def test_evaluate_model_writes_the_same_samples_with_either_backend(data_dir: str) -> None:
    """Through evaluate_model on the quantized model with LoRA: the per-document rows of samples.parquet
    are the same (accuracies identical, perplexity sums within RELATIVE), and so are the metrics."""
    model, tokenizer = quantized_llama_with_lora()
    frames = {}
    for backend in ("hflm", "packed"):
        cfg = EvalConfig(
            tasks=["arc_easy_local", "wikitext2_para_local"], limit=6, bootstrap_iters=10, backend=backend
        )
        frames[backend] = evaluate_model(model, tokenizer, cfg, data_dir).samples
    before, after = frames["hflm"], frames["packed"]
    keys = ["task", "doc_id", "doc_hash", "metric", "aggregation", "weight"]
    assert before[keys].equals(after[keys]) and len(before) > 0
    mean = before["aggregation"] == "mean"
    assert before["value"][mean].tolist() == after["value"][mean].tolist()
    assert ((after["value"] - before["value"]).abs() <= RELATIVE * before["value"].abs()).all()


def test_a_bf16_model_is_scored_as_trained_with_fp32_log_likelihoods() -> None:
    """evaluate_model's settings (precision_kwargs): a bf16 model runs under the autocast training used and
    its log-likelihoods are fp32 sums of fp32 log-probabilities. A 3,900-token window's value equals the
    float64 sum of its per-token log-probabilities within fp32 summation error (pairwise: a few ulps times
    log2(n), < 1e-6 relative; 1e-5 allowed); lm-eval's default, a bf16 log_softmax summed in bf16, rounds it
    to a multiple of 128 nats here (38 nats off: 1.4e-3 relative). An fp32 model gets no autocast."""
    model, tokenizer = build_tiny_family("llama")
    assert precision_kwargs(model)["mixed_precision_dtype"] is None
    model = model.to(torch.bfloat16)
    lm = PackedLM(pretrained=model, tokenizer=tokenizer, max_length=4096, **precision_kwargs(model))
    assert lm.mixed_precision_dtype == torch.bfloat16
    text = " ".join(f"word{i % 97} and {i * 7 % 13}" for i in range(300))
    (value,) = lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (text,), 0)], True)

    tokens = lm.tok_encode(text)
    ids = torch.tensor([[lm.prefix_token_id, *tokens[:-1]]])
    with torch.no_grad(), lm._autocast():  # the path's own forward of a one-row chain
        hidden = lm._causal_lm().get_decoder()(input_ids=ids).last_hidden_state[0]
    log_probs, _ = lm._scored_log_probs(hidden, torch.arange(len(tokens)), torch.tensor(tokens), greedy=False)
    expected = log_probs.double().sum().item()
    assert abs(value - expected) <= 1e-5 * abs(expected), (value, expected)
