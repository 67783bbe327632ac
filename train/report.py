"""HTML reports: one training run (loss curves, lr, tok/s, recipe), and a comparison of runs with the
forgetting table (OP/BWT)."""

from __future__ import annotations

from pathlib import Path

from slm.figure import Figure
from slm.report.render import Chart, Table, new_figure, render_report, svg_of

HOW = "measured on this host during training (metrics.jsonl); eval = held-out perplexity, documents isolated"


SMOOTH = 10  # steps in the moving mean of the training loss


def _curves(runs: dict[str, tuple[list, list]]) -> list[Chart]:
    """Train loss and eval loss per set; lr; tok/s. runs: label → (step records, eval records)."""
    figs = []
    fig, ax = new_figure()
    for label, (steps, evals) in runs.items():
        x, y = [s["step"] for s in steps], [s["loss"] for s in steps]
        # small batches give noisy per-step losses: draw them faint, a moving mean on top
        if len(y) >= 2 * SMOOTH:
            line, = ax.plot(x, y, lw=0.6, alpha=0.35)
            mean = [sum(y[max(0, i - SMOOTH + 1):i + 1]) / len(y[max(0, i - SMOOTH + 1):i + 1])
                    for i in range(len(y))]
            ax.plot(x, mean, lw=1.6, color=line.get_color(),
                    label=f"{label} train (mean of last {SMOOTH} steps)")
        else:
            ax.plot(x, y, label=f"{label} train", lw=1)
        names = sorted({k for e in evals for k in e["eval"]})
        for k in names:
            pts = [(e["step"], e["eval"][k]["loss"]) for e in evals if k in e["eval"]]
            ax.plot(*zip(*pts), marker="o", ls="--", label=f"{label} eval {k}")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title("Training and held-out loss")
    ax.legend(fontsize=7)
    figs.append(Chart("Loss", svg_of(fig), HOW))
    figs.append(_per_step(runs, "lr", "learning rate", "Learning rate (linear warm-up, cosine)",
                          "Learning rate", "the scheduler's value at each step"))
    figs.append(_per_step(runs, "tok_s", "tokens/s (all ranks)", "Throughput", "Throughput",
                          "global batch tokens / wall time of the step, " + HOW))
    return figs


def _per_step(runs: dict[str, tuple[list, list]], key: str, ylabel: str, title: str, caption: str,
              how: str) -> Chart:
    """One line per run of a per-step metric (`key` of each step record) against the optimizer step."""
    fig, ax = new_figure(7, 2.6)
    for label, (steps, _) in runs.items():
        ax.plot([s["step"] for s in steps], [s[key] for s in steps], label=label)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if len(runs) > 1:
        ax.legend(fontsize=7)
    return Chart(caption, svg_of(fig), how)


def write_train_report(run: Path, recipe: dict, steps: list, evals: list, figures: list[Figure]) -> Path:
    rows = []
    if evals:
        for k in evals[-1]["eval"]:
            first = evals[0]["eval"].get(k, {})
            rows.append([k, first.get("ppl"), evals[-1]["eval"][k]["ppl"], evals[-1]["eval"][k]["tokens"]])
    tables = [Table("Held-out perplexity", ["set", "before (step 0 or resume)", "after", "tokens"], rows),
              Table("Recipe (resolved)", ["key", "value"], [[k, str(v)] for k, v in recipe.items()])]
    return render_report(Path(run) / "report.html", f"train: {Path(run).name}", "train", figures,
                         _curves({Path(run).name: (steps, evals)}), tables)


COMPARE_COLUMNS = ["run", "trainable params", "code ppl before", "code ppl after", "general ppl before",
                   "general ppl after", "OP (−nats)", "BWT (nats)", "tok/s"]


def write_comparison_report(out_html: Path, title: str, runs: dict, forgetting_rows: list,
                            figures: list[Figure], notes: list[str] | None = None,
                            columns: list[str] | None = None) -> Path:
    """runs: label → (steps, evals); forgetting_rows: one row per run under `columns` (default
    COMPARE_COLUMNS)."""
    table = Table("Forgetting (LLaMA Pro ablation at small scale)", columns or COMPARE_COLUMNS,
                  forgetting_rows,
                  note="OP = mean score over tasks after the last stage; BWT = change of the general score "
                       "since the base model (negative = forgetting); score = −loss in nats/token")
    return render_report(out_html, title, "train-compare", figures, _curves(runs), [table], notes=notes or [])
