"""A training run's configuration: the request body of POST /v1/training-runs and of `distillery train`.

Field checks that need no database live here (pydantic); checks against stored data (does the dataset,
the job, the teacher exist, are there rationales) are in `distillery.distill.checks`.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationInfo, field_validator

from distillery.rationales.prompts import AnswerFormat

METHODS = ("tinyllm", "label_ft", "lora", "inference_only")
Method = Literal["tinyllm", "label_ft", "lora", "inference_only"]
Split = Literal["train", "dev", "test"]  # distillery.datasets.SPLITS
DEFAULT_ALPHA = 0.5


class _Strict(BaseModel):
    # Unknown fields are an error (a typo must not fall back to a default); NaN/inf are no numbers.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


# Names and ids: printable, bounded (they end up in SQL parameters and file paths).
Name = Annotated[str, StringConstraints(min_length=1, max_length=500, pattern=r"^[^\x00-\x1f\x7f]+$")]
MAX_COUNT = 100_000_000


class LoraParams(_Strict):
    """PEFT LoRA adapter; merged into the base weights when the model is exported."""

    r: int = Field(default=16, ge=1, le=1024)
    alpha: int = Field(default=32, ge=1, le=4096)
    dropout: float = Field(default=0.05, ge=0.0, lt=1.0)
    target_modules: list[Name] | Literal["all-linear"] = "all-linear"


class Hyperparameters(_Strict):
    """Optimiser, schedule, lengths and checkpointing (paper: AdamW, lr 5e-5, batch 16, 1 epoch)."""

    learning_rate: float = Field(default=5e-5, gt=0.0, le=1.0)
    epochs: float = Field(default=1.0, gt=0.0, le=1000.0)
    max_steps: int = Field(
        default=-1,
        ge=-1,
        le=MAX_COUNT,
        description="Stop after this many optimiser steps (-1 = epochs decide).",
    )
    batch_size: int = Field(
        default=8, ge=1, le=4096, description="Training examples per device step (each 1 + M tasks)."
    )
    grad_accum: int = Field(default=1, ge=1, le=1024)
    warmup_ratio: float = Field(
        default=0.0, ge=0.0, lt=1.0, description="Fraction of the run's optimiser steps to warm up over."
    )
    weight_decay: float = Field(default=0.0, ge=0.0, le=1.0)
    lr_scheduler: Literal["auto", "linear", "constant", "constant_with_warmup", "cosine"] = Field(
        default="auto",
        description="auto = constant for a short run (fewer than 200 optimiser steps: a linear decay over a "
        "few steps spends most of them at a fraction of the learning rate), linear otherwise.",
    )
    max_grad_norm: float = Field(default=1.0, gt=0.0, le=1e6)
    seed: int = Field(default=42, ge=0, le=2**32 - 1)
    max_input_tokens: int = Field(
        default=512, ge=8, le=32768, description="Cap on the task input's content tokens."
    )
    max_target_tokens: int = Field(
        default=128, ge=4, le=8192, description="Cap on target (rationale) tokens."
    )
    save_steps: int = Field(
        default=50, ge=1, le=MAX_COUNT, description="Checkpoint every this many steps (resume point)."
    )
    save_total_limit: int = Field(default=2, ge=1, le=100)
    keep_checkpoints: bool = Field(
        default=True,
        description="Keep the last checkpoint after a successful run (to continue it); false frees the disk.",
    )
    logging_steps: int = Field(default=5, ge=1, le=MAX_COUNT)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        default="auto",
        description="auto = bf16 on a GPU that supports it, fp32 on CPU (bf16 is slow on CPUs).",
    )


class DataFilters(_Strict):
    """Which rationales become teacher tasks."""

    drop_truncated: bool = Field(default=False, description="Skip rationales flagged truncated.")
    drop_disagreeing: bool = Field(default=True, description="Skip rationales that state a non-gold answer.")
    clean: bool = Field(
        default=True, description="Cut invented follow-up items and the 'Let's think step by step.' lead-in."
    )
    samples_per_teacher: int = Field(
        default=1, ge=1, le=64, description="Rationales per example and teacher (at most)."
    )
    shuffle_options: bool = Field(
        default=True,
        description="Shuffle option order (seeded per example) in the answer task, against a learned letter "
        "prior; rationale tasks keep the original order their rationales refer to.",
    )


class EvalParams(_Strict):
    """Evaluation after training (or alone, for inference_only)."""

    split: Split | None = Field(default="dev", description="Split to evaluate on; null = no evaluation.")
    limit: int | None = Field(
        default=None,
        ge=1,
        le=MAX_COUNT,
        description="First N questions of the split (same ones for every run).",
    )
    batch_size: int = Field(default=16, ge=1, le=1024)
    max_new_tokens: int = Field(default=32, ge=1, le=1024)
    likelihood: bool = Field(default=True, description="Also score options by length-normalised likelihood.")
    calibrate: bool = Field(
        default=True, description="Also calibrate option scores against a content-free prompt."
    )
    explain: int = Field(
        default=0, ge=0, le=1000, description="Generate teacher-prefixed explanations for N questions."
    )
    select_every: int | None = Field(
        default=None,
        ge=1,
        le=MAX_COUNT,
        description="Model selection: every N optimiser steps score the student (lm-eval acc_norm) on "
        "`select_split` and keep the best checkpoint as the result; null = the last step's model.",
    )
    select_split: Split | Literal["heldout"] = Field(
        default="dev",
        description="Split model selection scores on (the test split stays untouched); `heldout`: the last "
        "`select_limit` questions of the training split, which training then leaves out.",
    )
    select_limit: int = Field(
        default=100,
        ge=1,
        le=MAX_COUNT,
        description="Questions model selection scores: the first N of select_split (`heldout`: the last N "
        "of the training split).",
    )


class TrainConfig(_Strict):
    """Everything a training run needs; stored verbatim in training_run.config."""

    student: Name = Field(..., description="Known model name (smollm2-135m ...) or HF model dir.")
    method: Method = "tinyllm"
    dataset: Name = Field(...)
    split: Split = "train"
    limit: int | None = Field(
        default=None, ge=1, le=MAX_COUNT, description="Train on the first N examples of the split."
    )
    rationale_jobs: list[Name] = Field(
        default_factory=list, description="Rationale job ids to take rationales from."
    )
    teachers: list[Name] | None = Field(
        default=None,
        description="Teacher names (e.g. precomputed flan-t5-xl); default: every teacher of the jobs.",
    )
    alphas: dict[Name, Annotated[float, Field(ge=0.0, le=1000.0)]] = Field(
        default_factory=dict, description="alpha_m per teacher name."
    )
    alpha: float = Field(
        default=DEFAULT_ALPHA, ge=0.0, le=1000.0, description="alpha of teachers absent from `alphas`."
    )
    answer_weight: float = Field(
        default=1.0, ge=0.0, le=1000.0, description="w_A, the weight of the answer task."
    )
    answer_format: AnswerFormat = Field(
        default="option_text",
        description="The answer task's target: option_text (the gold option's text, the official label) "
        "or letter_text (`(b) option text`); evaluation reads both and scores options in this form.",
    )
    lora: LoraParams | None = Field(
        default=None, validate_default=True, description="LoRA adapter (default one for method lora)."
    )
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)
    filters: DataFilters = Field(default_factory=DataFilters)
    eval: EvalParams = Field(default_factory=EvalParams)
    model_name: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$",
        description="Registry name of the trained model.",
    )

    @field_validator("rationale_jobs", "teachers")
    @classmethod
    def _no_duplicates(cls, value: list[str] | None, info: ValidationInfo) -> list[str] | None:
        if value is not None and len(set(value)) != len(value):
            raise ValueError("must not repeat an entry")
        if info.field_name == "teachers" and value == [] and info.data.get("method") == "tinyllm":
            raise ValueError("method 'tinyllm' needs at least one teacher (or leave it unset: all teachers)")
        return value

    @field_validator("alphas")
    @classmethod
    def _alphas_of_teachers(cls, value: dict[str, float], info: ValidationInfo) -> dict[str, float]:
        teachers = info.data.get("teachers")
        unknown = sorted(set(value) - set(teachers)) if teachers is not None else []
        if unknown:
            raise ValueError(f"names {unknown} are not among teachers {teachers}")
        return value

    @field_validator("lora")
    @classmethod
    def _lora_fits_method(cls, value: LoraParams | None, info: ValidationInfo) -> LoraParams | None:
        method = info.data.get("method")
        if value is not None and method in ("label_ft", "inference_only"):
            raise ValueError(f"not used by method '{method}' (LoRA goes with method 'lora' or 'tinyllm')")
        return LoraParams() if value is None and method == "lora" else value

    @field_validator("eval")
    @classmethod
    def _eval_for_inference_only(cls, value: EvalParams, info: ValidationInfo) -> EvalParams:
        if info.data.get("method") == "inference_only" and value.split is None:
            raise ValueError("method 'inference_only' only evaluates, so eval.split must be a split")
        return value

    @property
    def trains(self) -> bool:
        return self.method != "inference_only"

    @property
    def uses_teachers(self) -> bool:
        return self.method == "tinyllm"

    def alpha_of(self, teacher: str) -> float:
        return self.alphas.get(teacher, self.alpha)

    def registry_name(self) -> str:
        return self.model_name or f"{self.dataset}-{self.method}"
