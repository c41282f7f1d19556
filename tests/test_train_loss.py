"""The training loss on response rows only equals transformers' full-logits loss, value and gradients."""

from __future__ import annotations

import torch

from harness.config import DataConfig, LoraConfig
from harness.data.collate import collate
from harness.data.instruct import load_records, tokenize_records
from harness.model.lora import attach_lora, resolve_targets
from harness.model.replace import quantizable_layer_names, replace_linear_layers
from harness.model.tiny import build_tiny_model
from harness.train.loop import causal_lm_loss, response_rows_only


def lora_grads(model, loss: torch.Tensor) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def test_response_rows_loss_matches_full_logits_loss():
    model, tokenizer = build_tiny_model()
    names = quantizable_layer_names(model, ["lm_head"])
    replace_linear_layers(model, "nf4", 64, True, torch.float32, torch.device("cpu"), ["lm_head"])
    peft_model = attach_lora(model, LoraConfig(r=4, dropout=0.0), resolve_targets("all-linear", names), 0)
    for name, param in peft_model.named_parameters():
        if "lora_B" in name:  # nonzero B, so that gradients reach every adapter
            torch.nn.init.normal_(param, std=0.02)
    data = DataConfig(num_synthetic=8)
    batch = collate(tokenize_records(load_records(data), tokenizer, data, 256)[:4], tokenizer.pad_token_id)
    assert response_rows_only(peft_model)
    peft_model.train()

    full = peft_model(**batch).loss
    rows = causal_lm_loss(peft_model, batch, response_rows=True)
    assert torch.allclose(rows, full, rtol=1e-5)
    expected = lora_grads(peft_model, full)
    for name, grad in lora_grads(peft_model, rows).items():
        assert torch.allclose(grad, expected[name], rtol=1e-4, atol=1e-7), name
