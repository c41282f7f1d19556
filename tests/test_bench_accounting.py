"""What the benchmarks count: the FLOPs ``benchmarks.perf.eval_cost`` calls needed (attention pairs of causal
rows and token trees) and the speed ratios ``benchmarks.perf`` and ``eval_cost`` pair by round."""

import importlib
import sys
from pathlib import Path
from types import SimpleNamespace

from harness.evaluate.packed import token_trees

ROOT = Path(__file__).resolve().parents[1]


def _from_checkout(module: str):
    """A module of benchmarks/, which is no part of the installed package: imported from the checkout
    (harness, imported above, stays the one pytest runs)."""
    sys.path.insert(0, str(ROOT))
    try:
        return importlib.import_module(module)
    finally:
        sys.path.remove(str(ROOT))


eval_cost = _from_checkout("benchmarks.perf.eval_cost")
attention_flops, attention_width = eval_cost.attention_flops, eval_cost.attention_width
causal_pairs, tree_pairs = eval_cost.causal_pairs, eval_cost.tree_pairs
round_speedups = eval_cost.round_speedups
round_ratios = _from_checkout("benchmarks.perf.render").round_ratios


def test_a_chain_attends_as_a_causal_row():
    """A single input packed as a tree is a chain: its pairs are the causal row's, 1 + 2 + ... + n."""
    (tree,) = token_trees([[5, 6, 7, 8]], width=256)
    assert tree_pairs(tree) == causal_pairs(4) == 10


def test_shared_context_is_attended_once():
    """Two choices after one context [1, 2]: nodes at depths 0, 1, 2, 2 see 1, 2, 3, 3 nodes (9 pairs),
    where two causal rows of 3 tokens would score 12."""
    (tree,) = token_trees([[1, 2, 3], [1, 2, 4]], width=256)
    assert sorted(tree.depth) == [0, 1, 2, 2]
    assert tree_pairs(tree) == 9 < 2 * causal_pairs(3)


def test_attention_flops_are_four_per_pair_per_width_per_layer():
    """q·k and p·v: 2 + 2 FLOPs per pair for each of heads x head size, in every layer."""
    config = SimpleNamespace(num_attention_heads=9, hidden_size=576, head_dim=64)
    assert attention_width(config) == 576
    assert attention_flops({"attention_width": 576, "layers": 30, "attended": 10}) == 4 * 576 * 30 * 10
    assert attention_width(SimpleNamespace(num_attention_heads=8, hidden_size=512)) == 512


def test_speed_ratios_pair_the_runs_of_one_round():
    """Round k's harness run over round k's standard run; a round where either failed is left out."""
    harness = {"tokens_per_s_rounds": [150.0, 120.0, None]}
    standard = {"tokens_per_s_rounds": [100.0, 100.0, 90.0]}
    line = round_ratios("harness", harness, standard)
    assert "1.50, 1.20;" in line and "median 1.35" in line and "in 1 of 2" in line


def test_evaluation_speedups_pair_the_runs_of_one_round():
    """Round k's HFLM wall time over round k's packed one, and how many rounds halve it."""
    before = [{"wall_s": 30.0}, {"wall_s": 14.0}, {"wall_s": 18.0}]
    after = [{"wall_s": 10.0}, {"wall_s": 8.0}, {"wall_s": 8.0}]
    line = round_speedups(before, after)
    assert "3.00x, 1.75x, 2.25x;" in line and "median 2.25x" in line and "in 2 of 3" in line
