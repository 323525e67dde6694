"""Training steps (bench/train.py): weights updated in train mode, a grad scaler for fp16, checkpointing where
the model has it."""

from __future__ import annotations


import pytest
import torch
import torch.nn as nn

import zoo
from bench.backends import Eager
from bench.spec import Unavailable
from bench.train import training_step
from bench.worker import _drop_path_rate  # what the worker records, read without running one


@pytest.mark.parametrize("precision", ["fp32", "amp-bf16"])
def test_training_step_updates_the_weights_in_train_mode(precision, make_spec):
    model = zoo.load("test_convnext", drop_path_rate=0.1)
    x = torch.randn(2, 3, 64, 64)
    before = [p.detach().clone() for p in model.parameters()]
    step, fields = training_step(model, Eager(), make_spec("eager", precision, mode="train"), x)
    step()
    assert model.training and fields["optimizer"] == "SGD(lr=1e-4)" and fields["grad_scaler"] is False
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert _drop_path_rate(model) == pytest.approx(0.1)


def test_fp16_training_uses_a_grad_scaler_and_checkpointing_needs_model_support(make_spec):
    _, fields = training_step(
        zoo.load("test_convnext"), Eager(), make_spec("eager", "amp-fp16", mode="train"), torch.randn(2, 3, 64, 64)
    )
    assert fields["grad_scaler"] is True
    with pytest.raises(Unavailable, match="has no set_grad_checkpointing"):
        training_step(
            nn.Sequential(nn.Flatten(), nn.Linear(12, 3)),
            Eager(),
            make_spec("eager", mode="train", grad_checkpointing=True),
            torch.randn(2, 3, 2, 2),
        )
