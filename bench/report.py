"""One Markdown page of everything measured: the latest benchmark, soak, chaos and quality JSON
of bench/results/ with PNG plots, so a reader sees at a glance what was measured, on which
machine, and how it compares with its baselines.

    python bench/report.py [--results bench/results] [--out bench/results]
    aisle report                     # the same

Inputs, the newest file of each kind (names as the benchmarks write them):
``encoder-*.json``, ``refresh-*.json``, ``gateway-*.json``, ``soak-*.json`` (bench/),
``chaos-*.json`` (tests/chaos with AISLE_RESULTS set) and the quality reports of
``aisle eval search|recommend|classifier|sentiment --json`` saved as ``eval-<what>-*.json``.
A kind with no file is listed as "not measured"; an unreadable file is named, not fatal.
Writes ``REPORT.md`` and its plots (``report-*.png``) into ``--out``.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import typer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import RESULTS  # noqa: E402

KINDS = ("encoder", "refresh", "gateway", "soak", "chaos",
         "eval-search", "eval-recommend", "eval-classifier", "eval-sentiment")
TITLES = {
    "encoder": "Encoder throughput (bench/encoder.py)",
    "refresh": "Refresh throughput (bench/refresh.py)",
    "gateway": "Gateway latency and QPS (bench/gateway.py)",
    "soak": "Soak (bench/soak.py)",
    "chaos": "Chaos (tests/chaos)",
    "eval-search": "Search quality (aisle eval search)",
    "eval-recommend": "Recommendation quality (aisle eval recommend)",
    "eval-classifier": "Classifier quality (aisle eval classifier)",
    "eval-sentiment": "Sentiment quality (aisle eval sentiment)",
}
# A generic table of numbers stops here: the JSON file has the rest.
MAX_ROWS = 40
# Time stamp the benchmarks put in file names (bench/common.write_result).
STAMP_CHARS = len("20260101-120000")


@dataclass
class Input:
    kind: str
    path: Path | None
    data: dict | None
    error: str | None = None


def latest(results: Path, kind: str) -> Input:
    """The newest ``<kind>-<stamp>.json`` (the stamp sorts by time); a longer kind sharing the
    prefix (``eval-search`` vs ``eval-search-x``) is not taken for it."""
    files = sorted(p for p in results.glob(f"{kind}-*.json") if len(p.stem) == len(kind) + 1 + STAMP_CHARS)
    if not files:
        return Input(kind, None, None)
    path = files[-1]
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        return Input(kind, path, data)
    except (OSError, ValueError) as exc:
        return Input(kind, path, None, f"unreadable: {exc}")


def numbers(data, prefix: str = "") -> list[tuple[str, float]]:
    """Every numeric leaf as (dotted path, value), lists by index; booleans left out."""
    out: list[tuple[str, float]] = []
    if isinstance(data, dict):
        for key, value in data.items():
            out += numbers(value, f"{prefix}{key}.")
    elif isinstance(data, list):
        for i, value in enumerate(data):
            out += numbers(value, f"{prefix}{i}.")
    elif isinstance(data, (int, float)) and not isinstance(data, bool):
        out.append((prefix.rstrip("."), float(data)))
    return out


def fmt(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def table(header: list[str], rows: list[list]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(c) for c in row) + " |" for row in rows]
    return lines


def goals_rows(data: dict) -> list[list]:
    rows = []
    for name, goal in (data.get("goals") or {}).items():
        if isinstance(goal, dict) and "pass" in goal:
            verdict = "not measured" if goal["pass"] is None else ("pass" if goal["pass"] else "FAIL")
            rows.append([name, goal.get("value"), goal.get("goal"), verdict])
        elif not isinstance(goal, dict):
            # bench/refresh.py and bench/encoder.py write bare thresholds: the value sits at the
            # top level under the same key (or ``ratio_<key>``); a share is a ceiling, a ratio a floor.
            value = data.get(name, data.get(f"ratio_{name}"))
            if not isinstance(value, (int, float)):
                rows.append([name, value, goal, "not measured"])
                continue
            met = value <= goal if "share" in name else value >= goal
            rows.append([name, round(value, 4), goal, "pass" if met else "FAIL"])
    return rows


# --- Plots -------------------------------------------------------------------------------------

def _pyplot():
    import matplotlib

    # No display on servers and CI: render to files only.
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_gateway(data: dict, out: Path) -> Path | None:
    rpcs = [rpc for rpc in ("search", "recommend") if data.get(rpc)]
    if not rpcs:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for rpc in rpcs:
        rows = sorted(data[rpc], key=lambda r: r["concurrency"])
        levels = [r["concurrency"] for r in rows]
        for target, style in (("gateway", "-o"), ("in_process", "--x")):
            axes[0].plot(levels, [r[target].get("qps") for r in rows], style, label=f"{rpc} {target}")
            axes[1].plot(levels, [r[target].get("p99_ms") for r in rows], style, label=f"{rpc} {target}")
    levels = sorted({r["concurrency"] for rpc in rpcs for r in data[rpc]})
    for ax, label in ((axes[0], "QPS"), (axes[1], "p99 ms")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(levels, [str(c) for c in levels])
        ax.set_xlabel("concurrency")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Gateway vs in-process pipeline")
    return _save(plt, fig, out / "report-gateway-qps.png")


def plot_soak(data: dict, out: Path) -> Path | None:
    minutes = data.get("per_minute") or []
    if not minutes:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    x = [m["minute"] for m in minutes]
    axes[0].plot(x, [m.get("p50_ms") for m in minutes], "-o", label="p50")
    axes[0].plot(x, [m.get("p99_ms") for m in minutes], "-o", label="p99")
    axes[0].set_ylabel("latency ms")
    samples = data.get("samples") or []
    for name in sorted({n for s in samples for n in (s.get("rss_mb") or {})}):
        axes[1].plot([s["minute"] for s in samples], [s["rss_mb"].get(name) for s in samples], "-o", label=name)
    axes[1].set_ylabel("resident MB")
    for ax in axes:
        ax.set_xlabel("minute")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Soak: latency and memory over time")
    return _save(plt, fig, out / "report-soak-latency.png")


def ratios(inputs: list[Input]) -> list[tuple[str, float]]:
    """Every measured throughput or quality ratio to a baseline (a numeric leaf with *ratio* in
    its path), across inputs."""
    found = []
    for inp in inputs:
        if inp.data is None or inp.kind == "chaos":
            continue
        for path, value in numbers(inp.data):
            leaf = path.rsplit(".", 1)[-1]
            # Throughput and quality ratios; latency ratios (lower is better) would read backwards.
            if "ratio" in path and "goal" not in path and not any(p in leaf for p in ("p50", "p95", "p99")):
                found.append((f"{inp.kind}: {path}", value))
    return found


def plot_ratios(found: list[tuple[str, float]], out: Path) -> Path | None:
    if not found:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 0.35 * len(found) + 1.2))
    ax.barh([name for name, _ in found], [v for _, v in found])
    # 1.0 = as fast (or as good) as the baseline it is compared with.
    ax.axvline(1.0, color="grey", linestyle="--")
    ax.invert_yaxis()
    ax.tick_params(axis="y", labelsize=7)
    ax.set_xlabel("ratio to baseline")
    fig.suptitle("Throughput and quality ratios")
    return _save(plt, fig, out / "report-ratios.png")


def _save(plt, fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# --- Sections ----------------------------------------------------------------------------------

def section(inp: Input, plots: dict[str, Path]) -> list[str]:
    lines = [f"## {TITLES[inp.kind]}", ""]
    if inp.path is None:
        return lines + ["not measured", ""]
    if inp.data is None:
        return lines + [f"not measured: `{inp.path.name}` {inp.error}", ""]
    lines += [f"From `{inp.path.name}`.", ""]
    goals = goals_rows(inp.data)
    if goals:
        lines += table(["goal", "value", "target", "verdict"], goals) + [""]
    body = {"gateway": gateway_lines, "soak": soak_lines, "chaos": chaos_lines}.get(inp.kind, generic_lines)
    lines += body(inp.data)
    if inp.kind in plots:
        lines += ["", f"![{inp.kind}]({plots[inp.kind].name})"]
    return lines + [""]


def generic_lines(data: dict) -> list[str]:
    rows = [[path, value] for path, value in numbers({k: v for k, v in data.items() if k not in ("machine", "goals")})]
    more = len(rows) - MAX_ROWS
    lines = table(["measure", "value"], rows[:MAX_ROWS])
    return lines + (["", f"… and {more} more in the JSON file."] if more > 0 else [])


def gateway_lines(data: dict) -> list[str]:
    rows = []
    for rpc in ("search", "recommend"):
        for r in sorted(data.get(rpc) or [], key=lambda r: r["concurrency"]):
            g, b = r.get("gateway", {}), r.get("in_process", {})
            rows.append([rpc, r["concurrency"], g.get("qps"), g.get("p50_ms"), g.get("p99_ms"), g.get("errors"),
                         b.get("qps"), b.get("p99_ms"), (r.get("ratios") or {}).get("qps_gateway_over_in_process")])
    if not rows:
        return ["(no runs in the file)"]
    return table(["rpc", "concurrency", "QPS", "p50 ms", "p99 ms", "errors", "in-process QPS", "in-process p99 ms",
                  "QPS ratio"], rows)


def soak_lines(data: dict) -> list[str]:
    headline = (f"{data.get('minutes')} min at {fmt(data.get('qps'))} QPS: sent {data.get('sent')}, answered "
                f"{data.get('answered')}, failed {data.get('failed')}, degraded {data.get('degraded')}.")
    lines = [headline, ""]
    samples = {s["minute"]: s for s in data.get("samples") or []}
    names = sorted({n for s in samples.values() for n in (s.get("rss_mb") or {})})
    rows = []
    for m in data.get("per_minute") or []:
        rss = (samples.get(m["minute"]) or {}).get("rss_mb") or {}
        rows.append([m["minute"], m.get("sent"), m.get("failed"), m.get("degraded"), m.get("p50_ms"), m.get("p99_ms"),
                     *[rss.get(n) for n in names]])
    return lines + table(["minute", "sent", "failed", "degraded", "p50 ms", "p99 ms", *[f"{n} MB" for n in names]], rows)


def chaos_lines(data: dict) -> list[str]:
    rows = []
    for nodeid, entry in sorted((data.get("tests") or {}).items()):
        measured = entry.get("measured") or {}
        shown = ", ".join(f"{k} {compact(v)}" for k, v in measured.items())
        rows.append([nodeid.split("::")[-1], entry.get("outcome", "not run"), entry.get("seconds"), shown])
    return table(["test", "outcome", "seconds", "measured"], rows) if rows else ["(no tests in the file)"]


def compact(value) -> str:
    """A measurement in one table cell: dicts as {k: v}, lists comma-separated; no pipes."""
    if isinstance(value, dict):
        text = "{" + ", ".join(f"{k}: {compact(v)}" for k, v in value.items()) + "}"
    elif isinstance(value, list):
        text = "[" + ", ".join(compact(v) for v in value) + "]"
    else:
        text = fmt(value)
    return text.replace("|", "/")


def machine_of(inputs: list[Input]) -> dict | None:
    for inp in inputs:
        if inp.data and isinstance(inp.data.get("machine"), dict):
            return inp.data["machine"]
    return None


def build(results: Path = RESULTS, out: Path | None = None) -> Path:
    """Write REPORT.md (and its plots) for the newest inputs under ``results``; returns its path."""
    out = out or results
    out.mkdir(parents=True, exist_ok=True)
    inputs = [latest(results, kind) for kind in KINDS]
    by_kind = {i.kind: i for i in inputs}
    plots: dict[str, Path] = {}
    for kind, plot in (("gateway", plot_gateway), ("soak", plot_soak)):
        data = by_kind[kind].data
        made = plot(data, out) if data else None
        if made:
            plots[kind] = made
    ratio_plot = plot_ratios(ratios(inputs), out)

    lines = ["# aisle: what was measured", "", f"Generated {time.strftime('%Y-%m-%d %H:%M:%S')} from `{results}`.", ""]
    m = machine_of(inputs)
    if m:
        lines += ["Machine: " + ", ".join(f"{k} {fmt(v)}" for k, v in m.items()), ""]
    lines += ["| input | file | goals |", "|---|---|---|"]
    for inp in inputs:
        if inp.data is None:
            state = "not measured" if inp.path is None else f"not measured ({inp.error})"
            lines.append(f"| {inp.kind} | {inp.path.name if inp.path else '–'} | {state} |")
            continue
        verdicts = [r[3] for r in goals_rows(inp.data)]
        passed = sum(v == "pass" for v in verdicts)
        failed = sum(v == "FAIL" for v in verdicts)
        summary = f"{passed} pass, {failed} fail" if passed or failed else "no goals"
        if inp.kind == "chaos":
            outcomes = [e.get("outcome") for e in (inp.data.get("tests") or {}).values()]
            summary = f"{outcomes.count('passed')} of {len(outcomes)} tests passed"
        lines.append(f"| {inp.kind} | {inp.path.name} | {summary} |")
    lines.append("")
    if ratio_plot:
        lines += ["## Ratios to baselines", "", f"![ratios]({ratio_plot.name})", ""]
    for inp in inputs:
        lines += section(inp, plots)
    path = out / "REPORT.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def main(
    results: Path = typer.Option(RESULTS, help="Folder of the benchmark JSON files."),
    out: Path = typer.Option(None, help="Where REPORT.md and the plots go (default: the results folder)."),
) -> None:
    path = build(results, out)
    print(f"wrote {path}")


if __name__ == "__main__":
    typer.run(main)
