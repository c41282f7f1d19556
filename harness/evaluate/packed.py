"""Log-likelihoods that compute each token once: lm-eval's requests packed into token trees.

lm-eval's ``HFLM`` forwards context + continuation once per request, so a four-choice question runs its
context four times; it pads each batch to its longest member, runs ``lm_head`` and a ``log_softmax`` over the
whole vocabulary at every position (context included) and batches rolling-perplexity windows in document
order. :class:`PackedLM` answers the same requests with the same numbers:

- each request's model input is HFLM's own (:func:`model_input`); inputs are packed into rows of a few
  hundred tokens, a token tree each (a forest): every distinct prefix is one node, at its depth as position
  id, under a 4-D mask that lets it see only its ancestors, so each continuation attends to its context
  exactly as if alone, and a question's context runs once for all its choices;
- rows are sorted by length and batched up to a token budget (little padding);
- ``lm_head`` and the ``log_softmax`` run only where a continuation token is scored, a chunk at a time;
- rolling windows are lm-eval's (:func:`rolling_windows`), all of a call scored together, so they are
  batched by length too. They are disjoint already; the last one's context is part of lm-eval's semantics.

Answers, greedy flags and ``cache_hook`` entries follow ``HFLM._loglikelihood_tokens``. The decoder is called
directly and its hidden states go through the output embeddings: families whose causal-LM forward is exactly
that and whose attention takes a 4-D mask qualify (``PACKED_FAMILIES``, ``MASK_KINDS``); other models,
seq2seq ones and inputs longer than a sliding window go through HFLM's path unchanged (logged once).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from lm_eval.models.huggingface import HFLM
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
from tqdm import tqdm

from harness.model.attention import CPU_FP32_SDPA

log = logging.getLogger(__name__)

# Causal LMs whose forward is ``lm_head(decoder(...).last_hidden_state)`` and whose decoder applies a 4-D
# attention mask as given (transformers 5 ``create_causal_mask``) and rotary positions from position_ids.
PACKED_FAMILIES = frozenset(
    {"llama", "mistral", "qwen2"}
)  # each checked against HFLM in tests/test_eval_cache.py
# Attention implementations and the mask each takes: True = may attend (SDPA), or additive (eager).
MASK_KINDS = {"sdpa": "bool", CPU_FP32_SDPA: "bool", "eager": "additive"}
# Padded tokens per forward. On a 2-core CPU a forward of ~2k tokens runs the linear layers near their rate
# while activations stay small (SmolLM2-135M: ~5 MiB per hidden-state tensor in bf16).
BATCH_TOKENS = 2048
# Scored positions per lm_head + log_softmax chunk: 256 x 49,152 fp32 log-probabilities are 48 MiB, above
# glibc's mmap threshold, so each chunk maps and faults in fresh pages (~0.6 million faults, ~2 s of kernel
# time in a quickstart evaluation). 128 rows would stay in the heap, but moved the trained bf16-stored
# quickstart job's perplexity in its ninth digit (the three 4-bit jobs came out identical), so results change.
HEAD_ROWS = 256
# Nodes per row: inputs are packed into rows of up to this many tokens (an input longer than that gets a row
# of its own), so a row holds many short inputs with little padding; each query attends over its row under
# the mask, so a wider row costs attention FLOPs that are masked off (~4 x width x hidden per token per layer
# against ~2 x 3.5 M for SmolLM2's linear layers: ~8 % at 256).
ROW_TOKENS = 256

Request = tuple  # lm-eval's (request strings or None, context tokens, continuation tokens)


def model_input(context: list[int], continuation: list[int], max_length: int) -> list[int]:
    """HFLM's causal input row: context + continuation, left-truncated to ``max_length + 1``, last dropped."""
    return (context + continuation)[-(max_length + 1) :][:-1]


def rolling_windows(
    tokens: list[int], prefix_token: int, max_length: int
) -> list[tuple[list[int], list[int]]]:
    """lm-eval's rolling-perplexity windows, as ``HFLM.loglikelihood_rolling`` makes them (context_len 1)."""
    windows = get_rolling_token_windows(
        token_list=tokens, prefix_token=prefix_token, max_seq_len=max_length, context_len=1
    )
    return [make_disjoint_window(window) for window in windows]


def common_prefix(a: list[int], b: list[int]) -> int:
    """Length of the longest common prefix of two token lists."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


@dataclass
class TokenTree:
    """Model inputs sharing prefixes, as one row: node ``i`` holds ``tokens[i]`` at position ``depth[i]``
    and sees its ancestors; ``paths[m]`` are the nodes of member ``members[m]``'s input, in order."""

    tokens: list[int] = field(default_factory=list)
    depth: list[int] = field(default_factory=list)
    parent: list[int] = field(default_factory=list)
    members: list[int] = field(default_factory=list)
    paths: list[list[int]] = field(default_factory=list)
    _children: dict[tuple[int, int], int] = field(default_factory=dict, repr=False)

    def add(self, member: int, row: list[int]) -> None:
        """Insert ``row``: nodes it shares with earlier members are reused, the rest appended."""
        node, path = -1, []
        for token in row:
            child = self._children.get((node, token))
            if child is None:
                child = len(self.tokens)
                self._children[(node, token)] = child
                self.tokens.append(token)
                self.depth.append(len(path))
                self.parent.append(node)
            node = child
            path.append(node)
        self.members.append(member)
        self.paths.append(path)

    def is_chain(self) -> bool:
        """One path through every node: plain causal attention, no tree mask needed."""
        return len(self.tokens) == max(self.depth) + 1

    def ancestors(self) -> torch.Tensor:
        """``[n, n]`` bool: node i may attend to node j (j is i or an ancestor of i)."""
        n = len(self.tokens)
        if self.is_chain():
            return torch.ones(n, n, dtype=torch.bool).tril()
        depth, parent = torch.tensor(self.depth), torch.tensor(self.parent)
        seen = torch.zeros(n, n, dtype=torch.bool)
        for d in range(int(depth.max()) + 1):  # parents come a level earlier: copy their row, add oneself
            nodes = (depth == d).nonzero().squeeze(1)
            if d:
                seen[nodes] = seen[parent[nodes]]
            seen[nodes, nodes] = True
        return seen


def token_trees(rows: list[list[int]], width: int) -> list[TokenTree]:
    """Pack inputs into rows of at most ``width`` nodes (a longer input gets a row of its own). Sorted, so
    that inputs sharing a prefix are neighbours and share its nodes: a question's choices their context,
    WinoGrande's options their start; inputs that share nothing sit side by side in the row (a forest)."""
    trees: list[TokenTree] = []
    previous: list[int] = []
    for index in sorted(range(len(rows)), key=rows.__getitem__):
        row = rows[index]
        if not trees or len(trees[-1].tokens) + len(row) - common_prefix(previous, row) > width:
            trees.append(TokenTree())
        trees[-1].add(index, row)
        previous = row
    return trees


def length_batches(trees: list[TokenTree], budget: int) -> list[list[TokenTree]]:
    """Longest first (a memory error shows at once, as in HFLM); a batch takes trees while its padded size,
    rows x its first (longest) tree, stays within ``budget`` tokens (a longer tree goes alone)."""
    batches: list[list[TokenTree]] = []
    for tree in sorted(trees, key=lambda t: len(t.tokens), reverse=True):
        if batches and (len(batches[-1]) + 1) * len(batches[-1][0].tokens) <= budget:
            batches[-1].append(tree)
        else:
            batches.append([tree])
    return batches


def tree_mask(trees: list[TokenTree], width: int, kind: str, dtype: torch.dtype) -> torch.Tensor:
    """The batch's 4-D attention mask ``[rows, 1, width, width]``; a padding position sees itself only (a
    query that sees nothing would turn SDPA's softmax into NaN, which 0-weights would carry on)."""
    mask = torch.eye(width, dtype=torch.bool).repeat(len(trees), 1, 1, 1)
    for row, tree in enumerate(trees):
        n = len(tree.tokens)
        mask[row, 0, :n, :n] = tree.ancestors()
    if kind == "additive":
        return torch.zeros(mask.shape, dtype=dtype).masked_fill(~mask, torch.finfo(dtype).min)
    return mask


@dataclass
class ScoredTokens:
    """Where a batch's continuation tokens are scored: flat position (row * width + node), target token, and
    for each request its range of these items."""

    positions: list[int] = field(default_factory=list)
    targets: list[int] = field(default_factory=list)
    spans: list[tuple[int, int, int]] = field(default_factory=list)  # (request, first item, end item)

    @classmethod
    def of(cls, trees: list[TokenTree], width: int, continuations: list[list[int]]) -> ScoredTokens:
        scored = cls()
        for row, tree in enumerate(trees):
            for member, path in zip(tree.members, tree.paths, strict=True):
                targets = continuations[member]
                start = len(scored.targets)
                scored.positions += [row * width + node for node in path[len(path) - len(targets) :]]
                scored.targets += targets
                scored.spans.append((member, start, len(scored.targets)))
        return scored


class PackedLM(HFLM):
    """lm-eval's ``HFLM`` whose log-likelihood requests compute each distinct token once (module docstring);
    everything else — tokenization, generation, the request/response API — is HFLM's."""

    def __init__(self, *args, batch_tokens: int = BATCH_TOKENS, row_tokens: int = ROW_TOKENS, **kwargs):
        super().__init__(*args, **kwargs)
        self.batch_tokens, self.row_tokens = batch_tokens, row_tokens
        self.unsupported = self._unsupported_reason()
        if self.unsupported:
            log.warning(
                "eval.backend=packed: %s; these requests go through lm-eval's HFLM path", self.unsupported
            )

    def _unsupported_reason(self) -> str | None:
        config = self.model.config
        if self.backend != "causal":
            return f"backend {self.backend!r} is not a causal LM"
        if config.model_type not in PACKED_FAMILIES:
            return f"model type {config.model_type!r} is not one of {sorted(PACKED_FAMILIES)}"
        if config._attn_implementation not in MASK_KINDS:
            return f"attention {config._attn_implementation!r} is not one of {sorted(MASK_KINDS)}"
        return None

    def _causal_lm(self) -> torch.nn.Module:
        """The transformers causal LM inside a peft model (its LoRA layers injected), or the model itself."""
        return self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model

    def _fits(self, row: list[int]) -> bool:
        """Within a sliding window (if any), where full and windowed attention agree."""
        window = getattr(self.model.config, "sliding_window", None)
        return window is None or len(row) <= window

    def _loglikelihood_tokens(
        self,
        requests: list[Request],
        disable_tqdm: bool = False,
        override_bs: int | None = None,
        *,
        greedy: bool = True,
    ) -> list[tuple[float, bool]]:
        """HFLM's (log-likelihood, greedy) per request; ``greedy=False`` skips the argmax over the vocabulary
        for callers that only sum log-likelihoods (rolling windows), and every flag is then False."""
        rows = [model_input(context, continuation, self.max_length) for _, context, continuation in requests]
        for _, context, continuation in requests:  # HFLM's checks
            assert context and continuation and len(continuation) <= self.max_length
        packed = [i for i, row in enumerate(rows) if not self.unsupported and self._fits(row)]
        answers: list[tuple[float, bool] | None] = [None] * len(requests)
        if len(packed) < len(requests):
            rest = sorted(set(range(len(requests))) - set(packed))
            parent = super()._loglikelihood_tokens([requests[i] for i in rest], disable_tqdm, override_bs)
            for i, answer in zip(rest, parent, strict=True):
                answers[i] = answer
        continuations = [continuation for _, _, continuation in requests]
        trees = token_trees([rows[i] for i in packed], self.row_tokens)
        for tree in trees:
            tree.members = [packed[m] for m in tree.members]
        progress = tqdm(
            total=len(packed), disable=disable_tqdm or self.rank != 0, desc="Packed loglikelihood"
        )
        for batch in length_batches(trees, self.batch_tokens):
            for index, answer in self._score_batch(batch, continuations, greedy):
                answers[index] = answer
                if requests[index][0] is not None:
                    self.cache_hook.add_partial("loglikelihood", requests[index][0], answer)
            progress.update(sum(len(tree.members) for tree in batch))
        progress.close()
        return answers

    def _hidden_states(self, trees: list[TokenTree]) -> torch.Tensor:
        """The decoder's last hidden states ``[rows, width, hidden]``, trees right-padded to the longest; a
        batch of chains runs as HFLM's does (causal, no mask), a batch with a branch under the tree mask."""
        width = max(len(tree.tokens) for tree in trees)
        ids = torch.full((len(trees), width), self.tokenizer.pad_token_id or 0, dtype=torch.long)
        positions = torch.zeros_like(ids)
        for row, tree in enumerate(trees):
            ids[row, : len(tree.tokens)] = torch.tensor(tree.tokens)
            positions[row, : len(tree.tokens)] = torch.tensor(tree.depth)
        inputs = {"input_ids": ids.to(self.device)}
        if not all(tree.is_chain() for tree in trees):
            causal_lm = self._causal_lm()
            dtype = causal_lm.get_input_embeddings().weight.dtype
            kind = MASK_KINDS[self.model.config._attn_implementation]
            inputs["attention_mask"] = tree_mask(trees, width, kind, dtype).to(self.device)
            inputs["position_ids"] = positions.to(self.device)
        return self._causal_lm().get_decoder()(**inputs, use_cache=False).last_hidden_state

    def _score_batch(
        self, trees: list[TokenTree], continuations: list[list[int]], greedy: bool
    ) -> list[tuple[int, tuple[float, bool]]]:
        """(request index, (log-likelihood, greedy)) for every member of the batch's trees."""
        with torch.no_grad():
            with self._autocast():
                hidden = self._hidden_states(trees)
            scored = ScoredTokens.of(trees, hidden.shape[1], continuations)
            positions = torch.tensor(scored.positions, device=self.device)
            unique, item_row = torch.unique(positions, return_inverse=True)
            states = hidden.reshape(-1, hidden.shape[-1])[unique]
            targets = torch.tensor(scored.targets, device=self.device)
            chosen, argmax = self._scored_log_probs(states, item_row, targets, greedy)

        def is_greedy(a: int, b: int) -> bool:
            return greedy and bool((argmax[item_row[a:b]] == targets[a:b]).all())

        return [(request, (float(chosen[a:b].sum()), is_greedy(a, b))) for request, a, b in scored.spans]

    def _scored_log_probs(
        self, states: torch.Tensor, item_row: torch.Tensor, targets: torch.Tensor, greedy: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """lm_head and log_softmax (HFLM's dtype rules) over ``states``, ``HEAD_ROWS`` at a time: each item's
        log-probability of its target, and (if ``greedy``) each state's greedy (argmax) token."""
        head = self._causal_lm().get_output_embeddings()
        argmax = torch.empty(len(states) if greedy else 0, dtype=torch.long, device=states.device)
        chosen = None
        for start in range(0, len(states), HEAD_ROWS):
            with self._autocast():
                logits = head(states[start : start + HEAD_ROWS])
            log_probs = F.log_softmax(logits, dim=-1, dtype=self.softmax_dtype)
            if greedy:
                argmax[start : start + HEAD_ROWS] = log_probs.argmax(dim=-1)
            if chosen is None:
                chosen = torch.empty(len(item_row), dtype=log_probs.dtype, device=states.device)
            here = (item_row >= start) & (item_row < start + HEAD_ROWS)
            chosen[here] = log_probs[item_row[here] - start, targets[here]]
        return chosen, argmax

    def _autocast(self):
        """HFLM's autocast around the model call (off unless ``mixed_precision_dtype`` is set)."""
        dtype = self.mixed_precision_dtype
        return torch.autocast(device_type=self.device.type, dtype=dtype, enabled=dtype is not None)

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """HFLM's windows and sums, every window of the call scored in one length-batched pass."""
        if self.unsupported:
            return super().loglikelihood_rolling(requests, disable_tqdm)
        windows, owner = [], []
        for index, (string,) in enumerate(request.args for request in requests):
            for context, continuation in rolling_windows(
                self.tok_encode(string), self.prefix_token_id, self.max_length
            ):
                windows.append((None, context, continuation))
                owner.append(index)
        answers = self._loglikelihood_tokens(windows, disable_tqdm, greedy=False)
        per_request: list[list[float]] = [[] for _ in requests]
        for (value, _), index in zip(answers, owner, strict=True):
            per_request[index].append(value)
        totals = [sum(values) for values in per_request]  # HFLM's sum, window by window in order
        for request, total in zip(requests, totals, strict=True):
            self.cache_hook.add_partial("loglikelihood_rolling", request.args, total)
        return totals
