"""report.md from results.json: the paper's figures beside ours, then mAP, retention and distance per α, all with CIs."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

# The reference paper's figures (learned metric vs MSE); retention is mAP(0.8) / mAP(0).
PAPER: dict[str, dict[str, float]] = {
    "learned": {"spearman": 0.71, "ratio": 0.08, "auc": 0.999, "retention_0.8": 0.88},
    "mse": {"spearman": 0.52, "ratio": 0.30, "auc": 0.97, "retention_0.8": 0.71},
}
HEADLINE_ALPHA = 0.8
DASH = "—"


Format = Callable[[float], str]


def fixed(value: float) -> str:
    """0.712"""
    return f"{value:.3f}"


def percent(value: float) -> str:
    """71.2%"""
    return f"{100 * value:.1f}%"


def significant(value: float) -> str:
    """Three significant digits, for distances whose scale differs by method (0.00152, 0.451)."""
    return f"{value:.3g}"


def number(value: float | None, form: Format = fixed) -> str:
    """A figure in its format; a dash where undefined."""
    return DASH if value is None else form(value)


def with_ci(value: float | None, bounds: Sequence[float | None] | None, form: Format = fixed) -> str:
    """'0.712 [0.650, 0.770]': an estimate and its 95% interval."""
    if value is None or not bounds or bounds[0] is None or bounds[1] is None:
        return number(value, form)
    return f"{form(value)} [{form(bounds[0])}, {form(bounds[1])}]"


def alpha_index(alphas: Sequence[float], alpha: float) -> int | None:
    """Position of α in the grid, None when the grid does not have it."""
    matches = [i for i, a in enumerate(alphas) if abs(a - alpha) < 1e-9]
    return matches[0] if matches else None


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """A markdown table."""
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(row) + " |" for row in rows)]


def headline_rows(results: dict[str, Any]) -> list[list[str]]:
    """One row per paper figure set and per method: Spearman, ratio, AUC, retention at 0.8, mAP(0), time per query."""
    at = alpha_index(results["alphas"], HEADLINE_ALPHA)
    rows = [[f"paper: {name}", number(p["spearman"]), number(p["ratio"]), number(p["auc"]), number(p["retention_0.8"], percent), DASH, DASH]
            for name, p in PAPER.items()]
    for name, m in results["methods"].items():
        if "status" in m:
            rows.append([name, m["status"], "", "", "", "", ""])
            continue
        ci = m["ci"]
        retention = with_ci(m["retention"][at], ci["retention"][at], percent) if at is not None else DASH
        rows.append([name, with_ci(m["spearman"], ci["spearman"]), with_ci(m["ratio"], ci["ratio"]), with_ci(m["auc"], ci["auc"]),
                     retention, with_ci(m["map"][0], ci["map"][0]), f"{m['seconds_per_query']:.3f}"])
    return rows


def per_alpha_rows(results: dict[str, Any], key: str, form: Format) -> list[list[str]]:
    """One row per method that ran: the figure `key` at every α with its interval."""
    return [[name, *(with_ci(v, b, form) for v, b in zip(m[key], m["ci"][key]))] for name, m in results["methods"].items() if "status" not in m]


def render(results: dict[str, Any]) -> str:
    """The whole report as markdown."""
    data, ckpt, protocol = results["data"], results["checkpoint"], results["protocol"]
    alphas = results["alphas"]
    grid = ", ".join(f"{a:g}" for a in alphas)
    modalities = ", ".join(f"{k} {v}" for k, v in data["by_modality"].items())
    lines = [
        "# Retrieval benchmark",
        "",
        f"Command: `{results['command']}`  ",
        f"Run {results['date']} in {results['seconds'] / 60:.1f} min on {results['machine']['description']}, "
        f"torch {results['versions']['torch']} with {results['machine']['torch_threads']} thread(s).",
        "",
        f"Checkpoint `{ckpt['path']}` (sha256 {ckpt['sha256'][:12]}, {ckpt.get('backbone') or '?'}, input {ckpt['size']}×{ckpt['size']}). "
        f"Data: {data['slices']} slices of {data['patients']} patients ({modalities}); gallery: {data['gallery']} clean slices of "
        f"{data['gallery_patients']} patients; queries: {data['queries']} slices of {data['query_patients']} patients, each distorted at "
        f"α ∈ {{{grid}}} with its own seed (run seed {protocol['seed']}{', --quick' if protocol['quick'] else ''}). "
        f"A gallery slice is relevant iff it belongs to the query's patient. Brackets: 95% bootstrap intervals over patients "
        f"({protocol['resamples']} resamples). Protocol: docs/benchmark-protocol.md.",
        "",
        "## The paper's figures beside ours",
        "",
        "Spearman: rank correlation of d(x, D_α(x)) with α (↑). Ratio: mean distortion movement over mean identity movement (↓). "
        f"AUC: d(x, D_α(x)) separating α > {protocol['tau']:g} from α ≤ {protocol['tau']:g} (↑). Retention: mAP(0.8) / mAP(0) (↑). "
        "The learned metric's tracking distance is the distortion-aware distance d_anat + β·|Δâ|; it retrieves by anatomy distance.",
        "",
        *table(["method", "Spearman ↑", "ratio ↓", "AUC ↑", "retention α=0.8 ↑", "mAP α=0", "s / query"], headline_rows(results)),
    ]
    header = ["method", *(f"α={a:g}" for a in alphas)]
    for title, key, form in (("mAP by α", "map", fixed), ("Retention by α (mAP(α) / mAP(0))", "retention", percent),
                             ("Mean distance d(x, D_α(x)) by α", "distance", significant)):
        lines += ["", f"## {title}", "", *table(header, per_alpha_rows(results, key, form))]
    identity = [[n, with_ci(m["identity_distance"], m["ci"]["identity_distance"], significant)] for n, m in results["methods"].items() if "status" not in m]
    lines += ["", "Identity movement (mean distance from a clean query to gallery slices of other patients):", "",
              *table(["method", "identity distance"], identity)]
    lines += ["", "## Plots", "", "![mAP and retention against α](retrieval.png)", "", "![distance against α](distance.png)", ""]
    if data["skipped"]:
        lines += ["## Skipped files", "", *(f"- `{s['path']}`: {s['reason']}" for s in data["skipped"]), ""]
    return "\n".join(lines)


def summary_lines(results: dict[str, Any]) -> list[str]:
    """One line per method for the terminal: mAP(0), retention at the largest α, Spearman, ratio, AUC, time."""
    last = results["alphas"][-1]
    return [f"{name:8} {m['status']}" if "status" in m else
            f"{name:8} mAP(0) {number(m['map'][0])}  retention(α={last:g}) {number(m['retention'][-1], percent)}  Spearman {number(m['spearman'])}  "
            f"ratio {number(m['ratio'])}  AUC {number(m['auc'])}  {m['seconds_per_query']:.3f} s/query"
            for name, m in results["methods"].items()]


def write_report(results: dict[str, Any], path: Path) -> Path:
    """Write report.md."""
    path.write_text(render(results), encoding="utf-8")
    return path
