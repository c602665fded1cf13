"""The HF Trainer, taught the TinyLLM loss: one forward pass over all tasks, loss from `distill.loss`.

Everything else — optimiser, schedule, gradient accumulation, mixed precision, checkpoints and resume,
logging, multi-GPU under `accelerate launch` / `torchrun` — is the stock `transformers.Trainer`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel, SchedulerType, Trainer, TrainingArguments

from distillery.distill.config import LoraParams, TrainConfig
from distillery.distill.loss import task_losses, tinyllm_loss

CURVE_KEYS = ("loss", "learning_rate", "grad_norm", "epoch")


def curve_point(step: int, logs: Mapping[str, Any]) -> dict[str, float]:
    """A loss-curve point of the run row from one Trainer log entry."""
    point: dict[str, float] = {"step": step}
    for key, value in logs.items():
        if key in CURVE_KEYS or key.startswith("loss_"):
            point[key] = float(f"{float(value):.6g}")
    return point


class DistillTrainer(Trainer):  # type: ignore[misc]  # transformers is untyped here (pyproject)
    """`Trainer` whose loss is L = w_A*L_A + sum_m alpha_m*L_Tm over the tasks of each batch."""

    # compute_loss returns a per-batch mean: the Trainer divides it by the accumulation steps.
    loss_is_scaled_for_ga = False

    def __init__(
        self,
        *args: Any,
        task_names: Sequence[str],
        weights: Sequence[float],
        causal: bool,
        selector: Callable[[nn.Module], dict[str, float]] | None = None,
        **kwargs: Any,
    ):
        super().__init__(*args, **kwargs)
        self.selector = selector
        # Our loss ignores num_items_in_batch; keep the Trainer from rescaling it as if it did not.
        self.model_accepts_loss_kwargs = False
        self.task_names = list(task_names)
        self.task_weights = torch.tensor(list(weights), dtype=torch.float32)
        self.causal = causal
        self._task_sum = torch.zeros(len(self.task_names), dtype=torch.float64)
        self._task_seen = torch.zeros(len(self.task_names), dtype=torch.float64)

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, torch.Tensor],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, Any]:
        inputs = dict(inputs)
        labels, task_ids = inputs.pop("labels"), inputs.pop("task_ids")
        if not self.causal:
            inputs["decoder_input_ids"] = decoder_inputs(self.accelerator.unwrap_model(model), labels)
        outputs = model(**inputs)
        losses = task_losses(outputs.logits, labels, task_ids, len(self.task_names), causal=self.causal)
        loss = tinyllm_loss(losses, self.task_weights)
        present = (torch.bincount(task_ids, minlength=len(self.task_names)) > 0).cpu()
        self._task_sum += losses.detach().double().cpu() * present
        self._task_seen += present
        return (loss, outputs) if return_outputs else loss

    def evaluate(
        self,
        eval_dataset: Any = None,
        ignore_keys: list[str] | None = None,
        metric_key_prefix: str = "eval",
    ) -> dict[str, float]:
        """Model selection's score (`selector`, e.g. acc_norm on dev) where the Trainer evaluates."""
        if self.selector is None:
            metrics: dict[str, float] = super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)
            return metrics
        found = {f"{metric_key_prefix}_{k}": v for k, v in self.selector(self.model).items()}
        self.log(found)
        return found

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add the mean of each task's loss since the last log (`loss_answer`, `loss_<teacher>`)."""
        if "loss" in logs:
            for i, name in enumerate(self.task_names):
                if self._task_seen[i] > 0:
                    logs[f"loss_{name}"] = round(float(self._task_sum[i] / self._task_seen[i]), 6)
            self._task_sum.zero_()
            self._task_seen.zero_()
        super().log(logs, start_time)


def decoder_inputs(model: nn.Module, labels: torch.Tensor) -> torch.Tensor:
    """Teacher-forced decoder inputs of a seq2seq model (labels shifted right, IGNORE_INDEX -> pad)."""
    base_of = getattr(model, "get_base_model", None)  # a PEFT model's
    base: PreTrainedModel = model if base_of is None else base_of()
    inputs: torch.Tensor = base.prepare_decoder_input_ids_from_labels(labels=labels)
    return inputs


def precision(cfg: TrainConfig) -> str:
    """fp32 on CPU (bf16 is far slower there), bf16 on a GPU that has it, unless the config says otherwise."""
    wanted = cfg.hyperparameters.precision
    if wanted != "auto":
        return wanted
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp32"


# Hyper-parameters TrainingArguments takes under the same name.
SAME_NAMES = {
    "learning_rate",
    "max_steps",
    "weight_decay",
    "max_grad_norm",
    "seed",
    "save_steps",
    "save_total_limit",
    "logging_steps",
}


# Below this many optimiser steps `lr_scheduler: auto` keeps the learning rate constant: a linear decay
# over a 4-step run trains at 5/8 of the rate on average and at 1/4 of it on the last step.
SHORT_RUN_STEPS = 200


def optimizer_steps(cfg: TrainConfig, train_examples: int, world_size: int = 1) -> int:
    """The optimiser steps a run takes, as the Trainer counts them (`max_steps`, else epochs x batches)."""
    hp = cfg.hyperparameters
    if hp.max_steps > 0:
        return hp.max_steps
    batches = math.ceil(train_examples / (hp.batch_size * world_size))
    return max(1, math.ceil(hp.epochs * max(batches // hp.grad_accum, 1)))


def lr_schedule(cfg: TrainConfig, steps: int) -> str:
    """The schedule of a run of `steps` optimiser steps: the config's, `auto` resolved by the run length."""
    wanted = cfg.hyperparameters.lr_scheduler
    if wanted != "auto":
        return wanted
    return "constant" if steps < SHORT_RUN_STEPS else "linear"


def training_arguments(
    cfg: TrainConfig, output_dir: Path, progress_bar: bool = False, train_examples: int | None = None
) -> TrainingArguments:
    """TrainingArguments of a run: the config's hyper-parameters, checkpoints in `output_dir`.

    `lr_scheduler: auto` is resolved from the run's length (`train_examples`; without it, from `max_steps`
    alone); `with_schedule` resolves it again once the training set is built."""
    hp = cfg.hyperparameters
    dtype = precision(cfg)
    same_names = hp.model_dump(include=SAME_NAMES - set(selection_arguments(cfg)))
    steps = optimizer_steps(cfg, train_examples) if train_examples is not None else hp.max_steps
    return TrainingArguments(
        output_dir=str(output_dir),
        per_device_train_batch_size=hp.batch_size,
        gradient_accumulation_steps=hp.grad_accum,
        num_train_epochs=hp.epochs,
        # transformers 5 dropped `warmup_ratio`; its `warmup_steps` takes both meanings: a value >= 1 is a
        # number of steps, a float below 1 is a fraction of the run's optimiser steps
        # (`TrainingArguments.get_warmup_steps`: ceil(total * warmup_steps)). Pinned by
        # tests/test_distill_trainer_args.py; under transformers 4 this would be 0 steps of warmup.
        warmup_steps=hp.warmup_ratio,
        **same_names,
        lr_scheduler_type=lr_schedule(cfg, steps if steps > 0 else SHORT_RUN_STEPS),
        save_strategy="steps",
        data_seed=hp.seed,
        logging_strategy="steps",
        logging_first_step=True,
        bf16=dtype == "bf16",
        fp16=dtype == "fp16",
        use_cpu=not torch.cuda.is_available(),
        report_to="none",
        # The collator needs `task_ids`, which no model's forward() names.
        remove_unused_columns=False,
        dataloader_num_workers=0,
        disable_tqdm=not progress_bar,
        **selection_arguments(cfg),
    )


SELECTION_METRIC = "acc_norm"


def selection_arguments(cfg: TrainConfig) -> dict[str, Any]:
    """Model selection as the Trainer does it: evaluate (our scorer, see `DistillTrainer.evaluate`) and
    save every `select_every` steps, load the best checkpoint at the end (the last one on ties)."""
    every = cfg.eval.select_every
    if every is None:
        return {"eval_strategy": "no"}
    return {
        "eval_strategy": "steps",
        "eval_steps": every,
        "save_steps": every,
        "load_best_model_at_end": True,
        "metric_for_best_model": SELECTION_METRIC,
        "greater_is_better": True,
    }


def with_schedule(args: TrainingArguments, cfg: TrainConfig, train_examples: int) -> TrainingArguments:
    """`args` with the learning-rate schedule of a run over `train_examples` (see `lr_schedule`)."""
    args.lr_scheduler_type = SchedulerType(
        lr_schedule(cfg, optimizer_steps(cfg, train_examples, args.world_size))
    )
    return args


def load_student(path: str | Path, seq2seq: bool, dtype: torch.dtype = torch.float32) -> PreTrainedModel:
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    auto = AutoModelForSeq2SeqLM if seq2seq else AutoModelForCausalLM
    return auto.from_pretrained(str(path), dtype=dtype)


def with_lora(model: PreTrainedModel, params: LoraParams, seq2seq: bool) -> nn.Module:
    """Wrap `model` in a trainable PEFT LoRA adapter (base weights frozen)."""
    from peft import LoraConfig, TaskType, get_peft_model

    config = LoraConfig(
        task_type=TaskType.SEQ_2_SEQ_LM if seq2seq else TaskType.CAUSAL_LM,
        r=params.r,
        lora_alpha=params.alpha,
        lora_dropout=params.dropout,
        target_modules=params.target_modules,
    )
    adapted: nn.Module = get_peft_model(model, config)
    return adapted
