"""Report files for an evaluation: a reward-vs-KL frontier plot, training curves, and an HTML page with the
results table, the plots and side-by-side samples (reference vs each policy on the same prompts)."""

from __future__ import annotations

import html
import json
from pathlib import Path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _frontier_y(results: dict, name: str, e: dict) -> tuple[float, float] | None:
    """(value, 95% half-width) a model is plotted at: its gold score, or without a gold scorer the judge's win rate
    against the reference (the reference itself at 0.5)."""
    if "gold_mean" in e:
        return e["gold_mean"], e["gold_ci95"]
    if "judge" in results:
        j = e.get("judge") or {}
        return (0.5, 0.0) if name == "reference" else (j["win_rate"], j["win_rate_ci95"]) if "win_rate" in j else None
    return None


def frontier_plot(results: dict, path: str | Path) -> None:
    """Gold score (mean ± 95% CI), or without gold the judge's win rate, against sampled KL to the reference, one
    point per model."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.5), dpi=120)
    for name, e in results["models"].items():
        y = _frontier_y(results, name, e)
        if y is None:
            continue
        ax.errorbar(e["kl"], y[0], xerr=e["kl_ci95"], yerr=y[1], fmt="o", capsize=3,
                    color="black" if name == "reference" else None, label=name)
        ax.annotate(name, (e["kl"], y[0]), textcoords="offset points", xytext=(5, 5), fontsize=8)
    ax.set_xlabel("KL to reference (nats per response, sampled)")
    ax.set_ylabel(f"gold reward ({results['gold']})" if results.get("gold") else
                  f"judge win rate vs reference ({results.get('judge', {}).get('name', 'judge')})")
    ax.set_title("Reward vs KL frontier (held-out prompts)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _running_mean(values: list[float], window: int = 4) -> list[float]:
    return [sum(values[max(0, i - window + 1) : i + 1]) / (i + 1 - max(0, i - window + 1)) for i in range(len(values))]


def curves_plot(runs: dict[str, Path], path: str | Path) -> None:
    """Training curves from each run's metrics.jsonl: loss for offline methods; for online ones the reward of the
    rollouts, the KL and, when the run logged one (`--monitor-reward`), the monitor score of its rollouts. Online
    curves are drawn thin per step with their running mean over 4 steps on top; panels with nothing to show are
    left out."""
    panels: dict[str, list[tuple[str, list[int], list[float]]]] = {
        "offline methods: training loss": [], "online: reward of the rollouts": [], "online: KL": [],
        "online: monitor (gold) score, not trained on": []}
    titles = list(panels)
    for name, run in runs.items():
        f = Path(run) / "metrics.jsonl"
        if not f.exists():
            continue
        train = [json.loads(x) for x in f.read_text().splitlines()]
        train = [m for m in train if m["split"] == "train"]
        steps = [m["step"] for m in train]
        if train and "reward" in train[0]:
            for title, key in zip(titles[1:], ("reward", "kl", "monitor"), strict=True):
                if key in train[0]:
                    panels[title].append((name, steps, [m[key] for m in train]))
        elif train:
            panels[titles[0]].append((name, steps, [m["loss"] for m in train]))
    shown = {t: series for t, series in panels.items() if series} or {titles[0]: []}
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(shown), figsize=(4.3 * len(shown), 3.8), dpi=110, squeeze=False)
    for ax, (title, series) in zip(axes[0], shown.items(), strict=True):
        for name, steps, values in series:
            if title == titles[0]:
                ax.plot(steps, values, label=name)
            else:
                line = ax.plot(steps, values, linewidth=0.7, alpha=0.45)[0]
                ax.plot(steps, _running_mean(values), color=line.get_color(), linewidth=1.8, label=name)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _prompt_text(prompt) -> str:
    if isinstance(prompt, str):
        return prompt
    return "\n".join(f"{m['role']}: {m['content']}" for m in prompt)


def html_report(results: dict, path: str | Path, *, images: dict[str, str], table: str, samples: int = 8) -> None:
    """One self-contained page (images by relative path); every model text is escaped."""
    esc = html.escape
    models = results["models"]
    names = [n for n in models if n != "reference"]
    rows = []
    ref_samples = models["reference"]["samples"]
    def cell(sample: dict) -> str:
        gold = "<b>{:.2f}</b> ".format(sample["gold"]) if "gold" in sample else ""
        p = sample.get("judge")
        verdict = f"<i>judge {p:.2f}</i> " if p is not None else ""
        return f"<td>{gold}{verdict}{esc(sample['response'])}</td>"

    for i in range(min(samples, len(ref_samples))):
        cells = "".join(cell(models[n]["samples"][i]) for n in ["reference", *names])
        rows.append(f"<tr><td class=p>{esc(_prompt_text(ref_samples[i]['prompt']))}</td>{cells}</tr>")
    head = "".join(f"<th>{esc(n)}</th>" for n in ["prompt", "reference", *names])
    imgs = "".join(f"<h2>{esc(title)}</h2><img src='{esc(src)}' alt='{esc(title)}'>" for title, src in images.items())
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>alignkit report</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1400px}} pre{{background:#f5f5f5;padding:1em}}
table{{border-collapse:collapse;font-size:13px}} td,th{{border:1px solid #ccc;padding:6px;vertical-align:top}}
td.p{{max-width:260px;color:#444}} img{{max-width:100%}}</style></head><body>
<h1>alignkit evaluation</h1>
<p>Held-out prompts; gold scorer: {esc(str(results.get('gold')))}; judge: {esc(str(results.get('judge', {}).get('name')))};
reference: {esc(str(results.get('reference')))}.</p>
<h2>Results</h2><pre>{esc(table)}</pre>{imgs}
<h2>Side by side (gold score in bold; the judge's P(policy better than the reference) in italics)</h2><table><tr>{head}</tr>{''.join(rows)}</table>
</body></html>"""
    Path(path).write_text(page)


def write_report(results: dict, out_dir: str | Path, runs: dict[str, Path], table: str) -> Path:
    """frontier.png, curves.png and report.html in `out_dir`; returns the HTML path."""
    out = Path(out_dir)
    frontier_plot(results, out / "frontier.png")
    curves_plot(runs, out / "curves.png")
    page = out / "report.html"
    html_report(results, page, images={"Reward vs KL frontier": "frontier.png", "Training curves": "curves.png"},
                table=table)
    return page
