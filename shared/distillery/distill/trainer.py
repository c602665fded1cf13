"""The HF Trainer, taught the TinyLLM loss: one forward pass over all tasks, loss from `distill.loss`.

Everything else — optimiser, schedule, gradient accumulation, mixed precision, checkpoints and resume,
logging, multi-GPU under `accelerate launch` / `torchrun` — is the stock `transformers.Trainer`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel, Trainer, TrainingArguments

from distillery.distill.config import LoraParams, TrainConfig
from distillery.distill.loss import task_losses, tinyllm_loss


class DistillTrainer(Trainer):
    """`Trainer` whose loss is L = w_A*L_A + sum_m alpha_m*L_Tm over the tasks of each batch."""

    # compute_loss returns a per-batch mean: the Trainer divides it by the accumulation steps.
    loss_is_scaled_for_ga = False

    def __init__(
        self, *args: Any, task_names: Sequence[str], weights: Sequence[float], causal: bool, **kwargs: Any
    ):
        super().__init__(*args, **kwargs)
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
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.prepare_decoder_input_ids_from_labels(labels=labels)


def precision(cfg: TrainConfig) -> str:
    """fp32 on CPU (bf16 is far slower there), bf16 on a GPU that has it, unless the config says otherwise."""
    wanted = cfg.hyperparameters.precision
    if wanted != "auto":
        return wanted
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp32"


def training_arguments(cfg: TrainConfig, output_dir: Path, progress_bar: bool = False) -> TrainingArguments:
    """TrainingArguments of a run: the config's hyper-parameters, checkpoints in `output_dir`."""
    hp = cfg.hyperparameters
    dtype = precision(cfg)
    return TrainingArguments(
        output_dir=str(output_dir),
        per_device_train_batch_size=hp.batch_size,
        gradient_accumulation_steps=hp.grad_accum,
        learning_rate=hp.learning_rate,
        num_train_epochs=hp.epochs,
        max_steps=hp.max_steps,
        warmup_steps=hp.warmup_ratio,
        weight_decay=hp.weight_decay,
        lr_scheduler_type=hp.lr_scheduler,
        max_grad_norm=hp.max_grad_norm,
        seed=hp.seed,
        data_seed=hp.seed,
        save_strategy="steps",
        save_steps=hp.save_steps,
        save_total_limit=hp.save_total_limit,
        logging_strategy="steps",
        logging_steps=hp.logging_steps,
        logging_first_step=True,
        bf16=dtype == "bf16",
        fp16=dtype == "fp16",
        use_cpu=not torch.cuda.is_available(),
        report_to="none",
        # The collator needs `task_ids`, which no model's forward() names.
        remove_unused_columns=False,
        dataloader_num_workers=0,
        disable_tqdm=not progress_bar,
        eval_strategy="no",
    )


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
    return get_peft_model(model, config)
