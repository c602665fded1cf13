"""The experiments' report: a markdown table in the shape of the paper's, and PNG plots."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Any

from distillery.distill.experiments import Preset
from distillery.distill.stats import compare

PAIRED_SCORES = {"correct": "generated answer", "acc_norm_correct": "option likelihood (lm-eval acc_norm)"}


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def _cell(result: dict[str, Any] | None) -> str:
    if result is None:
        return "n/a"  # not planned: a teacher without rationales for that dataset (PIQA has no LLaMA ones)
    status: str = result["status"]
    if status != "completed":
        return status
    text = f"{_pct(result['accuracy'])} ± {_pct(result['stderr'])}"
    if result.get("likelihood_accuracy") is not None:
        text += f" ({_pct(result['likelihood_accuracy'])} / {_pct(result.get('calibrated_accuracy'))})"
    return text


def _selected(result: dict[str, Any]) -> str:
    """The step whose checkpoint is the result: the best one by model selection, else the last."""
    step, selection = result.get("selected_step"), result.get("selection")
    if step is None or not selection:
        return "last"
    return f"{step} (best {selection['split']} acc_norm of every {selection['every']})"


def _letters(dist: dict[str, Any] | None) -> str:
    return " ".join(f"{k}:{v}" for k, v in (dist or {}).items())


def _grid(
    results: list[dict[str, Any]],
) -> tuple[list[str], list[str], dict[tuple[str, str], dict[str, Any]]]:
    labels = list(OrderedDict.fromkeys(r["label"] for r in results))
    datasets = list(OrderedDict.fromkeys(r["dataset"] for r in results))
    return labels, datasets, {(r["label"], r["dataset"]): r for r in results}


def markdown(
    results: list[dict[str, Any]], preset: Preset, student: str, data_lines: list[str], minutes: float | None
) -> str:
    labels, datasets, by = _grid(results)
    lines = [
        f"# Experiments: preset `{preset.name}`",
        "",
        preset.description,
        "",
        f"Student: `{student}`. " + (f"Wall time of this invocation: {minutes:.1f} min." if minutes else ""),
        "",
        "## Accuracy (%)",
        "",
        "Generated-answer accuracy ± standard error; in brackets the option-likelihood accuracy and the "
        "calibrated (content-free prompt) likelihood accuracy. n/a: not run, because a teacher the cell "
        "needs has no rationales for that dataset.",
        "",
        "| method | " + " | ".join(datasets) + " |",
        "|---|" + "---|" * len(datasets),
    ]
    for label in labels:
        lines.append(f"| {label} | " + " | ".join(_cell(by.get((label, d))) for d in datasets) + " |")
    lines += paired_section(results)
    lines += [
        "",
        "## Predicted letters (generation)",
        "",
        "| method | dataset | predicted | gold | n |",
        "|---|---|---|---|---|",
    ]
    for r in results:
        if r["status"] == "completed":
            lines.append(
                f"| {r['label']} | {r['dataset']} | {_letters(r['letter_distribution'])} | "
                f"{_letters(r['gold_distribution'])} | {r['n']} |"
            )
    lines += ["", "## Training", ""]
    lines += ["| method | dataset | examples | steps | model of step | s | tokens/s | final loss |"]
    lines.append("|---|---|---|---|---|---|---|---|")
    for r in results:
        if r["method"] != "inference_only" and r["status"] == "completed":
            final = r["loss_curve"][-1]["loss"] if r["loss_curve"] else None
            lines.append(
                f"| {r['label']} | {r['dataset']} | {r['train_examples']} | {r['steps']} | "
                f"{_selected(r)} | {r['train_runtime_s']} | {r.get('train_tokens_per_s') or '-'} | "
                f"{final if final is not None else '-'} |"
            )
    lines += [
        "",
        "## Plots",
        "",
        "![accuracy](accuracy.png)",
        "",
        "![alpha](alpha.png)",
        "",
        "![loss](loss_curves.png)",
    ]
    lines += ["", "## Choices of this preset", ""] + [f"- {note}" for note in preset.notes]
    hp = ", ".join(f"{k}={v}" for k, v in preset.hyperparameters.items())
    lines += [
        f"- Training examples per dataset: {preset.train_limit or 'all'}; evaluation: {preset.eval_split}, "
        f"{preset.eval_limit or 'all'} questions; main alpha {preset.alpha}; "
        f"sweep {list(preset.alpha_sweep)} on {', '.join(preset.sweep_datasets)}.",
        f"- Hyper-parameters: {hp}.",
        "",
        "## Data",
        "",
    ]
    lines += [f"- {line}" for line in data_lines]
    return "\n".join(lines) + "\n"


def paired_comparisons(results: list[dict[str, Any]], baseline: str | None = None) -> list[dict[str, Any]]:
    """Every pair of completed methods answered on the same questions, per score (`PAIRED_SCORES`) and
    dataset, A before B in plan order: `stats.compare` of their per-question correctness, with the score,
    dataset and labels. With `baseline` (a label, e.g. `label-ft`): only each other method (A) against it.
    """
    done = [r for r in results if r.get("status") == "completed" and r.get("question_ids")]
    datasets = list(OrderedDict.fromkeys(r["dataset"] for r in done))
    out = []
    for key in PAIRED_SCORES:
        for dataset in datasets:
            runs = [r for r in done if r["dataset"] == dataset and r.get(key) is not None]
            for i, first in enumerate(runs):
                for second in runs[i + 1 :]:
                    a, b = first, second
                    if a["question_ids"] != b["question_ids"]:
                        continue
                    if baseline is not None and baseline not in (a["label"], b["label"]):
                        continue
                    if a["label"] == baseline:
                        a, b = b, a
                    pair = {"score": key, "dataset": dataset, "a": a["label"], "b": b["label"]}
                    out.append({**pair, **compare(a[key], b[key])})
    return out


def paired_section(results: list[dict[str, Any]]) -> list[str]:
    """Markdown of every pair of completed methods answered on the same questions, per dataset and score:
    both right, only A, only B, exact McNemar p and the bootstrap 95 % CI of accuracy(A) - accuracy(B)."""
    lines = [
        "",
        "## Paired comparisons",
        "",
        "Each pair of methods on the same questions: both right, only A right, only B right, the exact "
        "McNemar p-value and a bootstrap 95 % CI of the accuracy difference A - B (points). A CI that "
        "contains 0 (p >= 0.05) is a difference inside the noise.",
    ]
    comparisons = paired_comparisons(results)
    for key, name in PAIRED_SCORES.items():
        rows = []
        for c in comparisons:
            if c["score"] != key:
                continue
            low, high = c["ci95"]
            cells = [c["dataset"], c["a"], c["b"], c["n"], c["both"], c["only_a"], c["only_b"]]
            cells += [f"{100 * c['difference']:+.1f}", f"[{100 * low:+.1f}, {100 * high:+.1f}]"]
            rows.append("| " + " | ".join(map(str, [*cells, f"{c['mcnemar_p']:.3g}"])) + " |")
        if rows:
            lines += [
                "",
                f"### {name}",
                "",
                "| dataset | A | B | n | both | only A | only B | A - B | 95 % CI | McNemar p |",
                "|---|---|---|---|---|---|---|---|---|---|",
                *rows,
            ]
    if len(lines) == 4:
        lines += ["", "No two completed methods with per-question predictions on the same questions."]
    return lines


def plots(results: list[dict[str, Any]], out_dir: Path) -> list[Path]:
    """accuracy.png (per method and dataset), alpha.png (accuracy vs alpha), loss_curves.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [r for r in results if r["status"] == "completed"]
    labels, datasets, by = _grid(done)
    written = []

    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(labels) * max(1, len(datasets))), 4))
    width = 0.8 / max(1, len(datasets))
    for i, dataset in enumerate(datasets):
        xs, ys, errs = [], [], []
        for j, label in enumerate(labels):
            r = by.get((label, dataset))
            if r and r["accuracy"] is not None:
                xs.append(j + i * width)
                ys.append(100 * r["accuracy"])
                errs.append(100 * (r["stderr"] or 0))
        ax.bar(xs, ys, width, yerr=errs, capsize=3, label=dataset)
    ax.set_xticks([j + width * (len(datasets) - 1) / 2 for j in range(len(labels))])
    ax.set_xticklabels(labels, rotation=30, ha="right")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title("Generated-answer accuracy per method")
    ax.legend()
    fig.tight_layout()
    written.append(out_dir / "accuracy.png")
    fig.savefig(written[-1], dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    for dataset in datasets:
        points = sorted((r["alpha"], r) for r in done if r["dataset"] == dataset and r["alpha"] is not None)
        if len(points) > 1:
            alphas = [a for a, _ in points]
            ax.plot(
                alphas, [100 * r["accuracy"] for _, r in points], marker="o", label=f"{dataset} generated"
            )
            if points[0][1].get("calibrated_accuracy") is not None:
                cal = [100 * r["calibrated_accuracy"] for _, r in points]
                ax.plot(alphas, cal, marker="s", linestyle="--", label=f"{dataset} calibrated likelihood")
    ax.set_xscale("log")
    ax.set_xlabel("alpha (weight of each teacher's rationale loss)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title("TinyLLM: sensitivity to alpha")
    if ax.lines:
        ax.legend()
    fig.tight_layout()
    written.append(out_dir / "alpha.png")
    fig.savefig(written[-1], dpi=120)
    plt.close(fig)

    trained = [r for r in done if r["loss_curve"]]
    fig, axes = plt.subplots(1, max(1, len(datasets)), figsize=(6 * max(1, len(datasets)), 4), squeeze=False)
    for ax, dataset in zip(axes[0], datasets or [""], strict=False):
        for r in trained:
            if r["dataset"] == dataset:
                steps = [p["step"] for p in r["loss_curve"]]
                ax.plot(steps, [p.get("loss_answer", p["loss"]) for p in r["loss_curve"]], label=r["label"])
        ax.set_title(f"{dataset}: answer-task loss")
        ax.set_xlabel("step")
        ax.set_ylabel("token cross-entropy")
        if ax.lines:
            ax.legend(fontsize=7)
    fig.tight_layout()
    written.append(out_dir / "loss_curves.png")
    fig.savefig(written[-1], dpi=120)
    plt.close(fig)
    return written
