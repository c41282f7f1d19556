"""The training loss on response rows only equals transformers' full-logits loss, value and gradients."""

from __future__ import annotations

import pytest
import torch

import harness.train.loop as loop
from harness.config import DataConfig, LoraConfig, TrainConfig
from harness.data.collate import collate
from harness.data.instruct import load_records, tokenize_records
from harness.model.lora import attach_lora, resolve_targets
from harness.model.replace import quantizable_layer_names, replace_linear_layers
from harness.model.tiny import build_tiny_model
from harness.train.loop import causal_lm_loss, logit_rows_alive, response_rows_only


def lora_grads(model, loss: torch.Tensor) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.fixture(scope="module")
def fp64_lora_model():
    """The tiny Llama with LoRA on every linear layer, in float64 (the frozen layers stay dense: their
    storage does not enter the identity checked here), a batch of 4 synthetic examples, and the reference:
    transformers' full-logits loss and its LoRA gradients."""
    model, tokenizer = build_tiny_model()
    names = quantizable_layer_names(model, ["lm_head"])
    peft_model = attach_lora(
        model.to(torch.float64), LoraConfig(r=4, dropout=0.0), resolve_targets("all-linear", names), 0
    )
    for name, param in peft_model.named_parameters():
        if "lora_B" in name:  # nonzero B, so that gradients reach every adapter
            torch.nn.init.normal_(param, std=0.02)
    assert {p.dtype for p in peft_model.parameters() if p.requires_grad} == {torch.float64}
    data = DataConfig(num_synthetic=8)
    batch = collate(tokenize_records(load_records(data), tokenizer, data, 256)[:4], tokenizer.pad_token_id)
    peft_model.train()
    full = peft_model(**batch).loss
    return peft_model, batch, full.detach(), lora_grads(peft_model, full)


@pytest.mark.numerical
@pytest.mark.parametrize("chunk_rows", [None, 7])
def test_response_rows_loss_matches_full_logits_loss(monkeypatch, fp64_lora_model, chunk_rows):
    """Also with the head run 7 rows at a time (several checkpointed chunks, the last one shorter).

    The claim is an identity, so it is checked in float64, where a different reduction order (AVX2 vs
    AVX-512 kernels, another matmul blocking for fewer rows) moves a sum of K terms by at most ~K * 2^-53
    of the sum of their magnitudes: ~1e-13 for the ~1000-row reductions here. Both paths upcast the logits
    to fp32 for the cross-entropy (transformers and the harness alike), the same per-row arithmetic on
    logits equal to ~1e-16, so each row's fp32 gradient is the same in both. Hence the gradients are held
    to 1e-10 of each tensor's largest entry. The loss itself is the fp32 mean of N positive per-row terms,
    summed whole (transformers) or chunk by chunk: each order is within (N - 1) * 2^-24 of the exact sum,
    so the two are within 2 * N * 2^-24 of the loss (Higham, Accuracy and Stability, eq. 4.4)."""
    if chunk_rows:
        monkeypatch.setattr(loop, "LOSS_CHUNK_ROWS", chunk_rows)
    peft_model, batch, full, expected = fp64_lora_model
    assert response_rows_only(peft_model)
    targets = int((batch["labels"][:, 1:] != -100).sum())
    assert logit_rows_alive(batch, True) == min(targets, loop.LOSS_CHUNK_ROWS)
    assert chunk_rows is None or targets % chunk_rows and targets > 3 * chunk_rows
    assert logit_rows_alive(batch, False) == batch["labels"].numel()

    rows = causal_lm_loss(peft_model, batch, response_rows=True)
    assert rows.dtype == full.dtype == torch.float32
    torch.testing.assert_close(rows.detach(), full, rtol=2 * targets * 2**-24, atol=0)
    for name, grad in lora_grads(peft_model, rows).items():
        scale = expected[name].abs().max().item()
        assert scale > 0, name
        torch.testing.assert_close(grad, expected[name], rtol=0, atol=1e-10 * scale, msg=name)


def nf4_setup(checkpointing: bool, dtype: torch.dtype = torch.bfloat16, checkpoint_every: int = 1):
    """The tiny Llama in ``dtype``, NF4 + DQ, LoRA (dropout 0.1, B nonzero) on every linear layer, ready
    to train; and a batch of 4 synthetic examples."""
    from harness.train.loop import prepare_for_training

    torch.manual_seed(0)
    model, tokenizer = build_tiny_model()
    names = quantizable_layer_names(model, ["lm_head"])
    model = model.to(dtype)
    replace_linear_layers(model, "nf4", 64, True, dtype, torch.device("cpu"), ["lm_head"])
    peft_model = attach_lora(model, LoraConfig(r=4, dropout=0.1), resolve_targets("all-linear", names), 0)
    for name, param in peft_model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.02)
    data = DataConfig(num_synthetic=8)
    batch = collate(tokenize_records(load_records(data), tokenizer, data, 256)[:4], tokenizer.pad_token_id)
    train = TrainConfig(gradient_checkpointing=checkpointing, checkpoint_every=checkpoint_every)
    return prepare_for_training(peft_model, train), batch


@pytest.mark.numerical
def test_bf16_step_runs_adapters_in_bf16_and_keeps_fp32_weights():
    """In a bf16 model every LoRA matmul takes its input in bf16 (no cast up to the fp32 weights, also when
    checkpointing recomputes), while the adapter weights, their gradients and the optimizer stay fp32; the
    loss equals peft's fp32-adapter loss within bf16 rounding."""
    from harness.train.loop import train_step

    setup, batch = nf4_setup(checkpointing=True)
    assert setup.compute_dtype == torch.bfloat16
    seen: set[torch.dtype] = set()
    hooks = [
        m.register_forward_pre_hook(lambda _, args: seen.add(args[0].dtype))
        for n, m in setup.model.named_modules()
        if n.endswith(("lora_A.default", "lora_B.default"))
    ]
    setup.model.eval()  # no dropout: the same loss both ways
    with torch.no_grad():
        fp32_adapters = causal_lm_loss(setup.model, batch, response_rows=True)
    setup.model.train()
    seen.clear()
    torch.manual_seed(0)
    loss = train_step(setup, [batch])
    for hook in hooks:
        hook.remove()
    assert seen == {torch.bfloat16}
    trainable = [p for p in setup.model.parameters() if p.requires_grad]
    assert trainable and all(p.dtype == torch.float32 for p in trainable)
    assert all(
        s.dtype == torch.float32 for p in trainable for s in setup.optimizer.state[p].values() if s.ndim
    )
    assert torch.isfinite(loss) and abs(loss.item() - fp32_adapters.item()) < 0.1


@pytest.mark.parametrize("checkpoint_every", [1, 2])
def test_checkpointing_recomputes_exactly_what_the_forward_computed(checkpoint_every):
    """Gradient checkpointing only trades memory for time: two training steps of an fp32 NF4 model with LoRA
    dropout give bit-identical losses and adapter weights with it on (every layer, or every other one) or
    off. The recompute runs the same kernels on the same inputs in the same order (one process, one thread
    count) and draws its dropout masks from the generator state checkpointing restores
    (harness.model.dropout), so there is no rounding to allow for; a mask drawn afresh, or a recompute that
    saw other inputs, fails at once."""
    from harness.train.loop import train_step

    results = []
    for checkpointing in (True, False):
        setup, batch = nf4_setup(checkpointing, torch.float32, checkpoint_every if checkpointing else 1)
        torch.manual_seed(1)
        losses = [train_step(setup, [batch]) for _ in range(2)]
        weights = {n: p.detach().clone() for n, p in setup.model.named_parameters() if p.requires_grad}
        results.append((losses, weights))
    (on_losses, on_weights), (off_losses, off_weights) = results
    assert on_losses[0] != on_losses[1]  # the first step changed the adapters
    assert [x.item() for x in on_losses] == [x.item() for x in off_losses]
    assert on_weights.keys() == off_weights.keys() and on_weights
    for name, weight in on_weights.items():
        assert torch.equal(weight, off_weights[name]), name


@pytest.mark.parametrize(("checkpoint_every", "runs"), [(1, [2, 2]), (2, [2, 1]), (3, [2, 1])])
def test_checkpoint_every_recomputes_only_the_selected_layers(checkpoint_every, runs):
    """``train.checkpoint_every=k`` recomputes decoder layers 0, k, 2k, ... in backward (transformers'
    ``every_n_layers`` rule) and no other: in one training step of the tiny model's two layers a checkpointed
    layer runs its forward twice, the others once; the memory model counts the same layers."""
    from harness.train.loop import train_step

    setup, batch = nf4_setup(True, torch.float32, checkpoint_every)
    layers = setup.model.get_base_model().model.layers
    calls = [0] * len(layers)
    for index, layer in enumerate(layers):
        layer.mlp.register_forward_pre_hook(lambda *_, i=index: calls.__setitem__(i, calls[i] + 1))
    train_step(setup, [batch])
    assert calls == runs
    train = TrainConfig(checkpoint_every=checkpoint_every)
    assert train.checkpointed_layers(len(layers)) == sum(n == 2 for n in runs)
