"""TinyLLM distillation: the multi-task data, the one-pass loss, the HF Trainer subclass, evaluation.

config.py      a run's configuration (the API body); checks.py: checks against the stored data
loss.py        L = w_A*L_A + sum_m alpha_m*L_Tm (the paper's equation, ~40 lines)
encoding.py    how a student sees a task (prompt tokens masked out of the labels)
collator.py    all tasks of a batch in one padded tensor
tasks.py       the training set from the database (answer task + one task per teacher)
multitask.py   one example's tasks and token ids (no database; tasks.py and the offline GPU run)
trainer.py     transformers.Trainer with that loss
evaluate.py    accuracy (generated letter and option likelihood), letter distribution
export.py      the trained student as a plain HF model directory (LoRA merged)
runner.py      one run end to end (resumable), used by the trainer service and the CLI
experiments.py / report.py   the paper's table at a chosen size
"""
