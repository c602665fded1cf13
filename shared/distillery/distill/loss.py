"""The TinyLLM objective (arXiv 2402.04616):  L = w_A * L_A + sum_m alpha_m * L_Tm.

Every L_t is the token-mean cross-entropy over the target tokens of all sequences of task t in the batch:
the value a separate forward pass per task (the official code's three passes) would give. So one forward
pass over all tasks, concatenated along the batch, computes the paper's loss; `task_losses` splits it
back by task id. Task 0 is the answer task, task m (1..M) the rationale task of teacher m.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100  # label of prompt and padding positions: never scored


def token_nll(logits: torch.Tensor, labels: torch.Tensor, causal: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token negative log-likelihood [batch, length] and the mask of scored tokens.

    A causal LM predicts token i+1 at position i, so its labels are shifted left by one; a seq2seq
    decoder predicts its labels in place.
    """
    if causal:
        # Shift the labels, not the logits: the logits stay a free view (they are the biggest tensor).
        labels = F.pad(labels, (0, 1), value=IGNORE_INDEX)[:, 1:]
    nll = F.cross_entropy(
        logits.float().reshape(-1, logits.size(-1)),
        labels.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="none",
    )
    return nll.view(labels.shape), labels != IGNORE_INDEX


def task_losses(
    logits: torch.Tensor, labels: torch.Tensor, task_ids: torch.Tensor, num_tasks: int, causal: bool
) -> torch.Tensor:
    """L_t for t = 0..num_tasks-1: token-mean cross-entropy of each task's targets (0 if absent here)."""
    nll, mask = token_nll(logits, labels, causal)
    sums = torch.zeros(num_tasks, dtype=nll.dtype, device=nll.device).index_add(0, task_ids, nll.sum(dim=1))
    counts = torch.zeros(num_tasks, dtype=nll.dtype, device=nll.device).index_add(
        0, task_ids, mask.sum(dim=1).to(nll.dtype)
    )
    return sums / counts.clamp(min=1)


def tinyllm_loss(losses: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """L = sum_t weight_t * L_t, with weights = (w_A, alpha_1, ..., alpha_M)."""
    return (weights.to(losses.device, losses.dtype) * losses).sum()
