"""What the run's TrainingArguments mean under the installed transformers: warmup and the LR schedule."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import get_scheduler

from distillery.distill.config import TrainConfig
from distillery.distill.trainer import SHORT_RUN_STEPS, optimizer_steps, training_arguments, with_schedule


def _cfg(**hyperparameters) -> TrainConfig:
    return TrainConfig.model_validate(
        {"student": "tiny-causal", "method": "label_ft", "dataset": "arc", "hyperparameters": hyperparameters}
    )


def _rates(args, steps: int) -> list[float]:
    """The learning rate of each optimiser step under the Trainer's own scheduler construction."""
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=args.learning_rate)
    scheduler = get_scheduler(
        args.lr_scheduler_type,
        optimizer,
        args.get_warmup_steps(steps),
        steps,
        **(args.lr_scheduler_kwargs or {}),
    )
    rates = []
    for _ in range(steps):
        rates.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    return rates


def test_warmup_ratio_is_a_fraction_of_the_run(tmp_path: Path):
    # transformers 5 has no warmup_ratio: warmup_steps < 1 is a fraction of the total optimiser steps.
    args = training_arguments(_cfg(warmup_ratio=0.1, lr_scheduler="linear"), tmp_path)
    assert args.warmup_steps == 0.1
    assert args.get_warmup_steps(100) == 10 and args.get_warmup_steps(4) == 1
    rates = _rates(args, 100)
    assert rates[0] == 0.0 and rates[10] == max(rates) == args.learning_rate
    assert training_arguments(_cfg(), tmp_path).get_warmup_steps(100) == 0


def test_short_runs_keep_a_constant_rate_long_runs_decay(tmp_path: Path):
    short = with_schedule(training_arguments(_cfg(batch_size=8), tmp_path), _cfg(batch_size=8), 32)
    assert optimizer_steps(_cfg(batch_size=8), 32) == 4
    assert short.lr_scheduler_type.value == "constant"
    assert set(_rates(short, 4)) == {5e-5}
    n = 8 * SHORT_RUN_STEPS
    long = with_schedule(training_arguments(_cfg(batch_size=8), tmp_path), _cfg(batch_size=8), n)
    assert long.lr_scheduler_type.value == "linear"
    rates = _rates(long, SHORT_RUN_STEPS)
    assert rates[0] == 5e-5 and rates[-1] < 1e-6
    # An explicit schedule is kept whatever the length; max_steps decides the length when set.
    assert optimizer_steps(_cfg(max_steps=7), 10_000) == 7
    assert optimizer_steps(_cfg(batch_size=4, grad_accum=2, epochs=2), 33) == 8
    explicit = _cfg(lr_scheduler="linear")
    assert (
        with_schedule(training_arguments(explicit, tmp_path), explicit, 32).lr_scheduler_type.value
        == "linear"
    )
