"""The experiments' report: a markdown table in the shape of the paper's, and PNG plots."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

from distillery.distill.experiments import Preset


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def _cell(result: dict | None) -> str:
    if result is None:
        return ""
    if result["status"] != "completed":
        return result["status"]
    text = f"{_pct(result['accuracy'])} ± {_pct(result['stderr'])}"
    if result.get("likelihood_accuracy") is not None:
        text += f" ({_pct(result['likelihood_accuracy'])} / {_pct(result.get('calibrated_accuracy'))})"
    return text


def _letters(dist: dict | None) -> str:
    return " ".join(f"{k}:{v}" for k, v in (dist or {}).items())


def _grid(results: list[dict]) -> tuple[list[str], list[str], dict[tuple[str, str], dict]]:
    labels = list(OrderedDict.fromkeys(r["label"] for r in results))
    datasets = list(OrderedDict.fromkeys(r["dataset"] for r in results))
    return labels, datasets, {(r["label"], r["dataset"]): r for r in results}


def markdown(
    results: list[dict], preset: Preset, student: str, data_lines: list[str], minutes: float | None
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
        "calibrated (content-free prompt) likelihood accuracy.",
        "",
        "| method | " + " | ".join(datasets) + " |",
        "|---|" + "---|" * len(datasets),
    ]
    for label in labels:
        lines.append(f"| {label} | " + " | ".join(_cell(by.get((label, d))) for d in datasets) + " |")
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
    lines += ["", "## Training", "", "| method | dataset | examples | steps | s | tokens/s | final loss |"]
    lines.append("|---|---|---|---|---|---|---|")
    for r in results:
        if r["method"] != "inference_only" and r["status"] == "completed":
            final = r["loss_curve"][-1]["loss"] if r["loss_curve"] else None
            lines.append(
                f"| {r['label']} | {r['dataset']} | {r['train_examples']} | {r['steps']} | "
                f"{r['train_runtime_s']} | {r.get('train_tokens_per_s') or '-'} | "
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


def plots(results: list[dict], out_dir: Path) -> list[Path]:
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
