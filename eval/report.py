"""report.md from results.json (of one run or a pool): both protocols side by side, then every figure per α, variant, dataset and modality."""

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
RANKING_TITLES = (("map", "mAP"), ("p1", "P@1"), ("map_r", "MAP@R"), ("r_precision", "R-precision"), ("retention", "retention"))

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


def position(values: Sequence[Any], wanted: Any) -> int | None:
    """Index of a grid value (α as a float, or a level name), None when the grid does not have it."""
    for i, value in enumerate(values):
        if value == wanted or (isinstance(value, (int, float)) and isinstance(wanted, (int, float)) and abs(value - wanted) < 1e-9):
            return i
    return None


def plural(count: int, one: str, many: str | None = None) -> str:
    """'1 patient', '3 patients'."""
    return f"{count} {one if count == 1 else (many or one + 's')}"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """A markdown table."""
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(row) + " |" for row in rows)]


def ran(methods: dict[str, Any]) -> dict[str, Any]:
    """The methods that produced figures."""
    return {name: m for name, m in methods.items() if "status" not in m}


def cell(block: dict[str, Any], key: str, index: int | None, form: Format = fixed) -> str:
    """One per-level figure of a protocol block with its interval; a dash where the grid lacks the level."""
    return DASH if index is None else with_ci(block[key][index], block["ci"][key][index], form)


def headline_rows(results: dict[str, Any], methods: dict[str, Any]) -> list[list[str]]:
    """Per method: clean-query figures, mAP and retention at the headline α in both protocols and the mixed gallery, tracking."""
    at = position(results["alphas"], HEADLINE_ALPHA)
    archive_at, mixed = position(results["levels"], f"{HEADLINE_ALPHA:g}"), position(results["levels"], "mixed")
    rows = []
    for name, m in methods.items():
        if "status" in m:
            rows.append([name, m["status"], *[""] * 8])
            continue
        q, a, ci = m["query"], m["archive"], m["ci"]
        rows.append([name, cell(q, "map", 0), cell(q, "p1", 0), cell(q, "map_r", 0),
                     f"{cell(q, 'map', at)} ({cell(q, 'retention', at, percent) if at is not None else DASH})",
                     f"{cell(a, 'map', archive_at)} ({cell(a, 'retention', archive_at, percent) if archive_at is not None else DASH})",
                     f"{cell(a, 'map', mixed)} ({cell(a, 'retention', mixed, percent) if mixed is not None else DASH})",
                     with_ci(m["spearman"], ci["spearman"]), with_ci(m["auc"], ci["auc"])])
    return rows


HEADLINE_HEADER = ["method", "mAP clean", "P@1 clean", "MAP@R clean", f"query α={HEADLINE_ALPHA:g}: mAP (retained)",
                   f"archive α={HEADLINE_ALPHA:g}: mAP (retained)", "archive mixed: mAP (retained)", "Spearman(d, α)", "AUC"]


def paper_rows(results: dict[str, Any]) -> list[list[str]]:
    """The paper's figures beside ours: Spearman, ratio, AUC, query-protocol retention at α = 0.8."""
    at = position(results["alphas"], HEADLINE_ALPHA)
    rows = [[f"paper: {name}", number(p["spearman"]), number(p["ratio"]), number(p["auc"]), number(p["retention_0.8"], percent)]
            for name, p in PAPER.items()]
    for name, m in ran(results["methods"]).items():
        ci = m["ci"]
        rows.append([name, with_ci(m["spearman"], ci["spearman"]), with_ci(m["ratio"], ci["ratio"]), with_ci(m["auc"], ci["auc"]),
                     cell(m["query"], "retention", at, percent)])
    return rows


def anatomy_ratio_lines(methods: dict[str, Any]) -> list[str]:
    """The learned metric's movement ratio without its β·|Δâ| term: the anatomy distance that search ranks by."""
    lines = []
    for name, m in methods.items():
        if "ratio_anatomy" in m:
            lines += ["", f"{name}, anatomy distance alone (what search ranks by; the identity movement as above): ratio "
                          f"{with_ci(m['ratio_anatomy'], m['ci']['ratio_anatomy'])}; the rest of its ratio is the β·|Δâ| term."]
    return lines


def level_tables(methods: dict[str, Any], protocol: str, labels: Sequence[str], keys: Sequence[tuple[str, str]]) -> list[str]:
    """One table per figure: rows = methods, columns = the protocol's levels."""
    lines: list[str] = []
    for key, title in keys:
        form = percent if key == "retention" else (significant if key == "distance" else fixed)
        rows = [[name, *(cell(m[protocol], key, i, form) for i in range(len(labels)))] for name, m in methods.items()]
        lines += ["", f"**{title}**", "", *table(["method", *labels], rows)]
    return lines


def variant_rows(results: dict[str, Any], methods: dict[str, Any]) -> list[list[str]]:
    """Per method: clean queries' mAP, then each variant's mAP and its ratio to it."""
    return [[name, cell(m["query"], "map", 0),
             *(f"{cell(m['variants'], 'map', i)} ({cell(m['variants'], 'retention', i, percent)})" for i in range(len(results["variants"])))]
            for name, m in methods.items()]


def group_sections(results: dict[str, Any], key: str) -> list[str]:
    """The headline table per dataset or modality, then that group's per-level tables folded away."""
    lines: list[str] = []
    alphas = [f"α={a:g}" for a in results["alphas"]]
    levels = [f"gallery α={v}" if v != "mixed" else "mixed" for v in results["levels"]]
    for group, entry in results["breakdown"][key].items():
        methods = entry["methods"]
        lines += ["", f"### {group} ({plural(entry['queries'], 'query', 'queries')} of {plural(entry['patients'], 'patient')})", "",
                  *table(HEADLINE_HEADER, headline_rows(results, methods)), "",
                  *table(["method", "original mAP", *(f"{v}: mAP (ratio)" for v in results["variants"])], variant_rows(results, methods)),
                  "", "<details><summary>every figure per α</summary>", "",
                  "Query protocol:", *level_tables(methods, "query", alphas, RANKING_TITLES), "",
                  "Archive protocol:", *level_tables(methods, "archive", levels, RANKING_TITLES), "", "</details>"]
    return lines


def calibration_lines(results: dict[str, Any]) -> list[str]:
    """The learned metric's â against α per modality and the median â of clean slices per dataset."""
    calibration = results.get("calibration")
    if not calibration:
        return []
    grid = [f"mean â at α={a:g}" for a in results["alphas"]]
    rows = [[modality, str(e["queries"]), with_ci(e["spearman"], e["ci"]["spearman"]), number(e.get("spearman_mixed_gallery")),
             *(with_ci(v, b) for v, b in zip(e["mean_alpha_hat"], e["ci"]["mean_alpha_hat"]))]
            for modality, e in calibration["by_modality"].items()]
    clean = [[d, str(e["slices"]), number(e["median_alpha_hat"])] for d, e in calibration["clean_by_dataset"].items()]
    return ["", "## α calibration of the learned metric", "",
            "Predicted â against the true α: Spearman over the query protocol's views, and over the mixed archive gallery "
            "(every slice at its own α ~ U(0, 1)); mean â of the queries at each α.", "",
            *table(["modality", "queries", "Spearman(â, α) queries", "Spearman(â, α) mixed gallery", *grid], rows), "",
            "Median â of clean slices (clean gallery and clean queries), per dataset:", "",
            *table(["dataset", "clean slices", "median â"], clean), "", "![â against α](calibration.png)"]


def timing_lines(results: dict[str, Any]) -> list[str]:
    """Per method: what the query protocol and the archive protocol cost."""
    timed = {n: m["timing"] for n, m in ran(results["methods"]).items() if "timing" in m}
    if not timed:
        return []
    distortion = results["protocol"]["archive"].get("distortion_seconds", {})
    rows = [[n, f"{t['gallery_seconds']:.1f}", f"{t['seconds_per_query']:.4f}", f"{t['archive_seconds']:.1f}",
             f"{t['archive_seconds_per_level']:.1f}", f"{t['archive_gallery_seconds']:.1f}"] for n, t in timed.items()]
    return ["", "## Time", "",
            "CPU seconds (bench runs single-threaded, so on an idle machine wall time is about the same). "
            f"Distorting the gallery once per archive level, shared by every method: {sum(distortion.values()):.1f} s in all.", "",
            *table(["method", "clean gallery, s", "s / query view", "archive protocol, s", "per level, s", "of which re-encoding galleries, s"], rows)]


def header_lines(results: dict[str, Any]) -> list[str]:
    """The honesty line, title, command, machine, checkpoint and data (for a pool: its runs)."""
    data, protocol = results["data"], results["protocol"]
    modalities = ", ".join(f"{k} {v}" for k, v in data["by_modality"].items())
    datasets = ", ".join(f"{k} {v['patients']}" for k, v in data.get("by_dataset", {}).items())
    checkpoints = results["checkpoint"] if isinstance(results["checkpoint"], list) else [results["checkpoint"]]
    models = "; ".join(f"`{c['path']}` (sha256 {c['sha256'][:12]}, {c.get('backbone') or '?'}, input {c['size']}×{c['size']}, "
                       f"invariance {c.get('invariance', 'none')}, layout weight {c.get('layout', 0.0):g})" for c in checkpoints)
    return [
        results["honesty"]["statement"], "", "# Retrieval benchmark", "",
        f"Command: `{results['command']}`  ",
        f"Run {results['date']} in {results['seconds'] / 60:.1f} min"
        f"{' (' + format(results['cpu_seconds'] / 60, '.1f') + ' min of CPU)' if 'cpu_seconds' in results else ''} on {results['machine']['description']}, "
        f"torch {results['versions']['torch']} with {results['machine']['torch_threads']} thread(s).", "",
        f"Checkpoint{'s' if len(checkpoints) > 1 else ''}: {models}. Data: {data['slices']} slices of {data['patients']} patients "
        f"({modalities}; patients per dataset: {datasets or 'no datasets named'}); gallery: {data['gallery']} slices of {data['gallery_patients']} patients"
        f"{'' if protocol.get('gallery_per_patient') is None else ' (at most ' + str(protocol['gallery_per_patient']) + ' per patient)'}; "
        f"queries: {data['queries']} slices of {data['query_patients']} patients (run seed {protocol['seed']}{', --quick' if protocol['quick'] else ''}).",
        "",
        "Two protocols on the same queries and seeds: **query** (each query distorted at every α, clean gallery; the paper's) and "
        "**archive** (clean queries; every gallery slice distorted with its own seed at one α of the grid, or at its own α ~ U(0, 1) "
        "in the *mixed* gallery). At α = 0 both are the same clean run. A gallery slice is relevant iff it belongs to the query's "
        f"patient. Brackets: 95% bootstrap intervals over patients ({protocol['resamples']} resamples). Retained: mAP over the clean mAP. "
        "Protocol: docs/benchmark-protocol.md.",
        *(["", "Pooled runs (each on its own data; figures recomputed from their per-query records):", "",
           *table(["run", "checkpoint", "queries", "data"], [[r["dir"], r["checkpoint"], str(r["queries"]), r["statement"].strip("*")]
                                                              for r in results["runs"]])] if "runs" in results else []),
    ]


def render(results: dict[str, Any]) -> str:
    """The whole report as markdown."""
    methods = ran(results["methods"])
    alphas = [f"α={a:g}" for a in results["alphas"]]
    levels = [f"gallery α={v}" if v != "mixed" else "mixed" for v in results["levels"]]
    lines = [*header_lines(results), "", "## Headline", "", *table(HEADLINE_HEADER, headline_rows(results, results["methods"])),
             "", "## The paper's figures beside ours", "",
             "Spearman: rank correlation of d(x, D_α(x)) with α (↑). Ratio: mean distortion movement over mean identity movement (↓). "
             f"AUC: d(x, D_α(x)) separating α > {results['protocol']['tau']:g} from α ≤ {results['protocol']['tau']:g} (↑). "
             "Retention: query-protocol mAP(0.8) / mAP(0) (↑). The learned metric's tracking distance is d_anat + β·|Δâ|; it retrieves by anatomy distance.",
             "", *table(["method", "Spearman ↑", "ratio ↓", "AUC ↑", "retention α=0.8 ↑"], paper_rows(results)), *anatomy_ratio_lines(methods),
             "", "## Query protocol: distorted queries, clean gallery",
             *level_tables(methods, "query", alphas, (*RANKING_TITLES, ("distance", "mean distance d(x, D_α(x))"))), "",
             *table(["method", "identity distance (clean query to other patients)"],
                    [[n, with_ci(m["identity_distance"], m["ci"]["identity_distance"], significant)] for n, m in methods.items()]),
             "", "## Archive protocol: clean queries, distorted gallery", *level_tables(methods, "archive", levels, RANKING_TITLES),
             "", "## Query variants", "",
             "Clean queries (α = 0) " + "; ".join(f"**{k}**: {v}" for k, v in results["protocol"]["variants"].items())
             + ", against the clean gallery; in brackets the ratio to the original queries' mAP.", "",
             *table(["method", "original mAP", *(f"{v}: mAP (ratio)" for v in results["variants"])], variant_rows(results, methods)),
             "", "## By dataset", *group_sections(results, "dataset"), "", "## By modality", *group_sections(results, "modality"),
             *calibration_lines(results), *timing_lines(results),
             "", "## Plots", "", "![mAP and retention against α, both protocols](retrieval.png)", "", "![distance against α](distance.png)", ""]
    if results["data"]["skipped"]:
        lines += ["## Skipped files", "", *(f"- `{s['path']}`: {s['reason']}" for s in results["data"]["skipped"]), ""]
    return "\n".join(lines)


def summary_lines(results: dict[str, Any]) -> list[str]:
    """One line per method for the terminal: clean mAP, mAP at the headline α in both protocols and mixed, Spearman, time."""
    at = position(results["alphas"], HEADLINE_ALPHA)
    archive_at, mixed = position(results["levels"], f"{HEADLINE_ALPHA:g}"), position(results["levels"], "mixed")

    def value(block: dict[str, Any], index: int | None) -> str:
        return DASH if index is None else number(block["map"][index])

    return [f"{name:8} {m['status']}" if "status" in m else
            f"{name:8} mAP clean {number(m['query']['map'][0])}  query α={HEADLINE_ALPHA:g} {value(m['query'], at)}  "
            f"archive α={HEADLINE_ALPHA:g} {value(m['archive'], archive_at)}  mixed {value(m['archive'], mixed)}  "
            f"P@1 {number(m['query']['p1'][0])}  Spearman {number(m['spearman'])}"
            + (f"  {m['timing']['seconds_per_query']:.3f} s/query" if "timing" in m else "")
            for name, m in results["methods"].items()]


def write_report(results: dict[str, Any], path: Path) -> Path:
    """Write report.md."""
    path.write_text(render(results), encoding="utf-8")
    return path
