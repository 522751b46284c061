"""Results as files a reader opens: validated JSON, a Markdown report, a PNG chart.

``write_results`` validates a result against ``schemas/bench_result.schema.json`` before
writing it (a harness that writes what its own schema rejects has a bug), then writes
the Markdown and the chart of the per-stage breakdown beside it. matplotlib draws the
chart with its file-only backend; without matplotlib the JSON and Markdown still come.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

from ..bundle import format_bytes
from ..errors import MobileDiffError
from ..fileio import atomic_write_bytes, atomic_write_text

SCHEMA_PATH = Path(__file__).parent / "schemas" / "bench_result.schema.json"
STAGES = ("tokenize", "text_encoder", "unet", "sampler", "vae_decoder")
STAGE_COLORS = {
    "tokenize": "#9e9e9e",
    "text_encoder": "#4e79a7",
    "unet": "#e15759",
    "sampler": "#f28e2b",
    "vae_decoder": "#59a14f",
}


@lru_cache(maxsize=1)
def load_schema() -> dict[str, Any]:
    return json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))


def result_problems(result: dict[str, Any]) -> list[str]:
    """Every way ``result`` breaks the results schema, one line each."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(load_schema())
    return [
        f"at {'/'.join(map(str, e.absolute_path)) or '(top level)'}: {e.message[:200]}"
        for e in sorted(validator.iter_errors(result), key=lambda e: list(map(str, e.path)))
    ]


def write_json(path: Path, result: dict[str, Any]) -> None:
    problems = result_problems(result)
    if problems:  # a bug in the harness, not the user's input
        raise RuntimeError(f"benchmark result fails its schema: {problems[:3]}")
    atomic_write_text(path, json.dumps(result, indent=2, ensure_ascii=False) + "\n")


def _ms(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:,.0f}" if value >= 100 else f"{value:.2f}" if value < 10 else f"{value:.1f}"


def _size(value: int | None) -> str:
    return "–" if value is None else format_bytes(value)


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}%"


# ---------------------------------------------------------------------------- host


def host_markdown(result: dict[str, Any], chart: str | None = None) -> str:
    host = result["host"]
    peak = result.get("matmul_peak")
    lines = [
        "# Host benchmark",
        "",
        f"- Host: {host['cpu_model']} ({host['cpu_count']} CPUs, "
        f"{', '.join(host.get('cpu_flags') or []) or 'no AVX flags'}), {host['threads']} "
        f"threads per backend; load average at start {host['load_average_start']}, at end "
        f"{host.get('load_average_end')}",
        f"- Run: {result['created']} to {result.get('finished')}; status **{result['status']}**",
    ]
    if peak:
        lines.append(
            f"- Matmul peak (same run): **{peak['peak_gflops']:.0f} GFLOP/s** "
            f"(median {peak.get('median_gflops')}; {peak['method']})"
        )
    settings = result["settings"]
    lines.append(
        f"- Components: {settings['warmup']} warm-up + {settings['iterations']} timed runs each; "
        f"pipelines: {settings['pipeline_warmup']} warm-up + {settings['pipeline_iterations']} "
        "timed; every measurement in its own process (peak RSS = that process's ru_maxrss)"
    )
    for b in result["bundles"]:
        lines.append(
            f"- Bundle `{b['id']}`: model {b['model_name']}, {b['image_size']}x{b['image_size']}, "
            f"{b['steps']} steps, guidance {b.get('guidance')}, "
            f"{format_bytes(b.get('total_size_bytes'))}"
        )
    lines += ["", "## Per component", ""]
    lines.append(
        "| bundle | backend | component | precision | file size | load ms | first ms | "
        "median ms | p90 ms | GFLOP | GFLOP/s | of peak | peak RSS |"
    )
    lines.append("|" + "---|" * 13)
    for r in result["components"]:
        warm = r.get("warm_ms") or {}
        if r["status"] != "ok":
            lines.append(
                f"| {r['bundle']} | {r['backend']} | {r['component']} | {r.get('precision')} | "
                f"{format_bytes(r.get('size_bytes'))} | {r['status']}: {r.get('error')} |"
                + " |"
                * 7
            )
            continue
        flops = r.get("flops")
        lines.append(
            f"| {r['bundle']} | {r['backend']} | {r['component']} | {r.get('precision')} | "
            f"{format_bytes(r.get('size_bytes')) if r.get('size_bytes') else '–'} | "
            f"{_ms(r['load_ms'])} | {_ms(r['first_run_ms'])} | {_ms(warm.get('median'))} | "
            f"{_ms(warm.get('p90'))} | {flops / 1e9:.2f} | "
            f"{r.get('gflops') or '–'} | {_pct(r.get('fraction_of_peak'))} | "
            f"{format_bytes(r.get('peak_rss_bytes'))} |"
            if flops
            else f"| {r['bundle']} | {r['backend']} | {r['component']} | {r.get('precision')} | "
            f"– | {_ms(r['load_ms'])} | {_ms(r['first_run_ms'])} | {_ms(warm.get('median'))} | "
            f"{_ms(warm.get('p90'))} | – | – | – | {format_bytes(r.get('peak_rss_bytes'))} |"
        )
    if result["pipelines"]:
        lines += ["", "## End to end (prompt to decoded image)", ""]
        lines.append(pipeline_table(result["pipelines"]))
    if chart:
        lines += ["", f"![per-stage breakdown]({chart})"]
    lines += [
        "",
        "Stages are medians over the timed runs; `unet` is all steps together, `sampler` is "
        "the rest of the loop (update rule, guidance mix, copies). Load is all three models, "
        "LiteRT including XNNPACK's weight packing. 'of peak' is against the fp32 matmul peak, "
        "so int8 math (VNNI) can pass 100%.",
        "",
    ]
    return "\n".join(lines)


def pipeline_table(rows: list[dict[str, Any]]) -> str:
    out = [
        "| bundle | backend | steps | tokenize | text encoder | UNet (all steps) | per step | "
        "sampler | decoder | total median | total p90 | load ms | peak RSS |",
        "|" + "---|" * 13,
    ]
    for r in rows:
        if r["status"] != "ok":
            out.append(
                f"| {r['bundle']} | {r['backend']} | {r.get('requested_steps')} | "
                f"{r['status']}: {r.get('error')} |" + " |" * 9
            )
            continue
        s, total = r["stages_ms"], r["total_ms"]
        per_step = s["unet"] / r["steps"] if s.get("unet") is not None else None
        out.append(
            f"| {r['bundle']} | {r['backend']} | {r['steps']} | {_ms(s['tokenize'])} | "
            f"{_ms(s['text_encoder'])} | {_ms(s['unet'])} | {_ms(per_step)} | "
            f"{_ms(s['sampler'])} | {_ms(s['vae_decoder'])} | **{_ms(total['median'])}** | "
            f"{_ms(total['p90'])} | {_ms(r['load_ms'])} | {format_bytes(r['peak_rss_bytes'])} |"
        )
    return "\n".join(out)


def _pyplot() -> Any:
    """matplotlib's pyplot on the file-only Agg backend, or None when it is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def _save_png(plt: Any, fig: Any, path: Path) -> None:
    """The figure as a PNG at ``path``, written atomically; the figure is closed."""
    import io

    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def stage_chart(rows: list[dict[str, Any]], path: Path, title: str) -> bool:
    """Horizontal stacked bars of each pipeline's stages; False when matplotlib is missing."""
    plt = _pyplot()
    ok = [r for r in rows if r["status"] == "ok"]
    if plt is None or not ok:
        return False
    labels = [f"{r['bundle']} · {r['backend']} · {r['steps']} step(s)" for r in ok]
    fig, ax = plt.subplots(figsize=(10, 1.2 + 0.6 * len(ok)))
    left = [0.0] * len(ok)
    for stage in STAGES:
        widths = [(r["stages_ms"].get(stage) or 0.0) for r in ok]
        ax.barh(labels, widths, left=left, color=STAGE_COLORS[stage], label=stage)
        left = [a + b for a, b in zip(left, widths, strict=True)]
    for y, r in enumerate(ok):
        ax.text(left[y], y, f"  {r['total_ms']['median']:,.0f} ms", va="center", fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("median milliseconds per image")
    ax.set_title(title, fontsize=10)
    ax.set_xlim(0, max(left) * 1.18 or 1)
    ax.legend(
        ncol=len(STAGES),
        fontsize=8,
        loc="upper center",
        bbox_to_anchor=(0.5, -0.35 if len(ok) < 3 else -0.12),
        frameon=False,
    )
    _save_png(plt, fig, path)
    return True


def write_host_results(result: dict[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """``result.json``, ``report.md`` and ``stages.png`` (when it can be drawn) in ``out_dir``."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise MobileDiffError(f"{out_dir} is a file; give a folder for the results")
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {"json": out_dir / "result.json"}
    write_json(written["json"], result)
    chart = out_dir / "stages.png"
    title = f"Per-stage time, {result['host']['cpu_model']}, {result['host']['threads']} threads"
    drew = stage_chart(result["pipelines"], chart, title)
    if drew:
        written["chart"] = chart
    written["markdown"] = out_dir / "report.md"
    atomic_write_text(written["markdown"], host_markdown(result, chart.name if drew else None))
    return written


# ---------------------------------------------------------------------------- phone


def phone_markdown(result: dict[str, Any]) -> str:
    b, s = result["bundle"], result["settings"]
    lines = [
        "# Phone benchmark",
        "",
        f"- Bundle: {b['model_name']} ({b['image_size']}x{b['image_size']}, {b['steps']} "
        f"steps in the manifest, guidance {b.get('guidance')}), manifest sha256 "
        f"`{b['manifest_sha256'][:12]}…`",
        f"- Method: {s['mode']}; delegates {', '.join(s['delegates'])}; {s['warmup']} warm-up + "
        f"{s['iterations']} timed iterations; {s['cooldown_s']:g} s cool-down between delegates",
        f"- Budget: {s['budget_ms']:g} ms end to end; status **{result['status']}**",
    ]
    if b["image_size"] != 512:
        lines.append(
            f"- Note: this bundle makes {b['image_size']}x{b['image_size']} images; the "
            "one-second target is for 512x512"
        )
    for d in result["devices"]:
        info = d.get("device") or {}
        lines += [
            "",
            f"## {info.get('manufacturer') or ''} {info.get('model') or d['serial']} "
            f"(`{d['serial']}`)".replace("##  ", "## "),
            "",
            f"SoC {info.get('soc')}, Android {info.get('android_version')} (SDK "
            f"{info.get('sdk')}), RAM {format_bytes(info.get('ram_bytes'))}; status "
            f"**{d['status']}**" + (f": {d['error']}" if d.get("error") else ""),
        ]
        push = d.get("push")
        if push:
            lines.append(
                f"Push: {push['pushed']} file(s), {format_bytes(push['bytes_pushed'])}; "
                f"{push['skipped_same_sha256']} already on the device with the same sha256."
            )
        lines += [
            "",
            "| delegate | status | cold load ms | UNet step median | step p90 | end to end "
            "median | e2e p90 | peak memory | thermal before → after |",
            "|" + "---|" * 9,
        ]
        for r in d["runs"]:
            step, e2e = r.get("unet_step_ms") or {}, r.get("end_to_end_ms") or {}
            load = (r.get("cold_load_ms") or {}).get("total")
            mem = (r.get("memory") or {}).get("peak_rss_bytes") or (r.get("memory") or {}).get(
                "total_pss_bytes"
            )
            before = (r.get("thermal_before") or {}).get("status_name")
            after = (r.get("thermal_after") or {}).get("status_name")
            status = r["status"] + (f": {r['error']}" if r.get("error") else "")
            lines.append(
                f"| {r['delegate']} | {status} | {_ms(load)} | {_ms(step.get('median'))} | "
                f"{_ms(step.get('p90'))} | {_ms(e2e.get('median'))} | {_ms(e2e.get('p90'))} | "
                f"{format_bytes(mem) if mem else '–'} | {before} → {after} |"
            )
        budget = d["budget"]
        verdict = {True: "within budget", False: "**over budget**", None: "not judged"}[
            budget["within_budget"]
        ]
        lines += [
            "",
            f"Best: {budget['best_delegate']} at {_ms(budget['end_to_end_ms'])} ms end to end "
            f"against {budget['budget_ms']:g} ms: {verdict}.",
        ]
    lines.append("")
    return "\n".join(lines)


def write_phone_results(result: dict[str, Any], out_dir: str | Path) -> dict[str, Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {"json": out_dir / "phone_result.json", "markdown": out_dir / "report.md"}
    write_json(written["json"], result)
    atomic_write_text(written["markdown"], phone_markdown(result))
    return written


# ---------------------------------------------------------------------------- paper scale


def _verdict(met: bool | None) -> str:
    return {True: "met", False: "not met", None: "not measured"}[met]


def _ratio_text(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}x"


def _speed_target_lines(targets: dict[str, Any], paired: dict[str, Any] | None) -> list[str]:
    """Issue "Export"'s two targets, and the paired rounds they were read from."""

    def spread(key: str) -> str:
        bounds = targets.get(key)
        return f", rounds {bounds[0]:.2f}-{bounds[1]:.2f}x" if bounds else ""

    how = (
        "median of the per-round ratios of the paired rounds below"
        if targets.get("method") == "paired"
        else "one measurement of each, at different times"
    )
    lines = [
        '### Issue "Export" speed targets (UNet step, same model, this run)',
        "",
        f"Ratios: {how}.",
        "",
        f"- LiteRT {targets.get('litert_unet_precision')} UNet "
        f"{_ms(targets['litert_unet_ms'])} ms vs ONNX Runtime fp32 "
        f"{_ms(targets['onnxruntime_fp32_unet_ms'])} ms: "
        f"**{_ratio_text(targets['int8_over_ort'])}**{spread('int8_over_ort_range')} "
        f"(target at most 0.4x: {_verdict(targets['int8_met'])})",
        f"- LiteRT fp32 UNet {_ms(targets['litert_fp32_unet_ms'])} ms vs ONNX Runtime fp32: "
        f"**{_ratio_text(targets['fp32_over_ort'])}**{spread('fp32_over_ort_range')} "
        f"(target at most 1.0x: {_verdict(targets['fp32_met'])})",
    ]
    if not paired or not paired.get("rounds"):
        return lines
    keys = list(paired["step_ms"])
    lines += [
        "",
        f"Paired rounds: {paired['method']}.",
        "",
        "| round | order | "
        + " | ".join(f"{k} ms" for k in keys)
        + " | "
        + " | ".join(f"{k} / onnxruntime" for k in keys if k != "onnxruntime")
        + " |",
        "|" + "---|" * (2 + len(keys) + len(keys) - 1),
    ]
    for index, r in enumerate(paired["rounds"], 1):
        lines.append(
            f"| {index} | {', '.join(r['order'])} | "
            + " | ".join(_ms(r["step_ms"].get(k)) for k in keys)
            + " | "
            + " | ".join(
                _ratio_text(r["over_onnxruntime"].get(k)) for k in keys if k != "onnxruntime"
            )
            + " |"
        )
    lines.extend(f"- {key} failed: {error}" for key, error in paired.get("errors", {}).items())
    return lines


def _variant_rows(rows: list[dict[str, Any]], ratio_keys: tuple[str, ...]) -> list[str]:
    out = []
    for r in rows:
        step = r.get("step_ms") or {}
        status = "ok" if r["status"] == "ok" else f"{r['status']}: {r.get('error')}"
        ratios = " | ".join(_ratio_text(r.get(k)) for k in ratio_keys)
        convert = f"{r['convert_s']:.0f} s" if r.get("convert_s") is not None else "–"
        out.append(
            f"| {r['name']} | {r.get('what', '')} | {_ms(step.get('median'))} | "
            f"{_ms(step.get('p90'))} | {ratios} | {_ms(r.get('load_ms'))} | "
            f"{_size(r.get('peak_rss_bytes'))} | {_size(r.get('size_bytes'))} | "
            f"{convert} / {_size(r.get('convert_peak_rss_bytes'))} | {status} |"
        )
    return out


def paper_markdown(result: dict[str, Any], charts: dict[str, str]) -> str:
    host, peak = result["host"], result.get("matmul_peak") or {}
    lines = [
        "# Paper scale on this host, and peers side by side",
        "",
        f"Produced by `{result['command']}` from {result['created']} to "
        f"{result.get('finished')}; status **{result['status']}**.",
        "",
        f"- Host: {host['cpu_model']}, {host['cpu_count']} CPUs "
        f"({', '.join(host.get('cpu_flags') or [])}), {host['threads']} threads; "
        f"**load average {host['load_average_start']} at start, "
        f"{host.get('load_average_end')} at end** (1, 5, 15 min; a shared machine: judge the "
        "numbers by it)",
    ]
    if peak:
        lines.append(
            f"- fp32 matmul peak measured in this run: **{peak['peak_gflops']} GFLOP/s** "
            f"(median {peak.get('median_gflops')}; {peak['method']})"
        )
    lines.extend(f"- {n}" for n in result.get("notes") or [])
    paper = result.get("paper") or {}
    if paper.get("components"):
        b = paper["bundles"][0]
        lines += [
            "",
            f"## `{b['model_name']}` at {b['image_size']}x{b['image_size']} (random weights)",
            "",
            "Per component, warm median of one call (the UNet: one step at batch 1, guidance "
            "off as in the distilled model). GFLOP/s counts 2 FLOPs per multiply-accumulate; "
            "'of peak' is against the fp32 matmul peak above, so int8 math (VNNI) can pass 100%:",
            "",
            "| backend | component | precision | GFLOP | median ms | p90 ms | GFLOP/s | of peak "
            "| load ms | peak RSS |",
            "|" + "---|" * 10,
        ]
        for r in paper["components"]:
            warm = r.get("warm_ms") or {}
            flops = f"{r['flops'] / 1e9:.1f}" if r.get("flops") else "–"
            lines.append(
                f"| {r['backend']} | {r['component']} | {r.get('precision')} | {flops} | "
                f"{_ms(warm.get('median'))} | {_ms(warm.get('p90'))} | {r.get('gflops') or '–'} | "
                f"{_pct(r.get('fraction_of_peak'))} | {_ms(r.get('load_ms'))} | "
                f"{format_bytes(r.get('peak_rss_bytes'))} |"
                + ("" if r["status"] == "ok" else f" {r['status']}: {r.get('error')}")
            )
        size = b["image_size"]
        lines += ["", f"End to end, prompt to decoded {size}x{size} image:", ""]
        lines.append(pipeline_table(paper.get("pipelines") or []))
        if charts.get("stages"):
            lines += ["", f"![paper-scale stages]({charts['stages']})"]
    targets = result.get("speed_targets")
    if targets:
        lines += ["", *_speed_target_lines(targets, paper.get("paired"))]
    peers = result.get("peers") or {}
    if peers.get("rows"):
        lines += [
            "",
            f"## Peers: {peers['model']}, same weights",
            "",
            f"{peers['input']}"
            + (
                f" ({peers['unet_flops'] / 1e9:.0f} GFLOP per step)"
                if peers.get("unet_flops")
                else ""
            )
            + f". Ratio = that one's median step time over ours "
            f"(`{peers['ours']}`): above 1 means ours is faster.",
            "",
            "| variant | what | step median ms | p90 ms | ratio to ours | ratio to our fp32 | "
            "load ms | peak RSS | file | convert time / peak RSS | status |",
            "|" + "---|" * 11,
            *_variant_rows(peers["rows"], ("ratio_to_ours", "ratio_to_ours_fp32")),
        ]
        if charts.get("peers"):
            lines += ["", f"![peers]({charts['peers']})"]
    rewrites = result.get("rewrites") or {}
    if rewrites.get("rewrite_rows") or rewrites.get("recipe_rows"):
        header = [
            "| variant | what | step median ms | p90 ms | ratio | load ms | peak RSS | file | "
            "convert time / peak RSS | status |",
            "|" + "---|" * 10,
        ]
        lines += [
            "",
            f"## Mobile rewrites and recipes on `{rewrites['source']}`'s UNet (LiteRT, XNNPACK)",
            "",
            f"Each rewrite alone against {rewrites['rewrites_baseline']}; each recipe against "
            f"{rewrites['recipes_baseline']}; {rewrites['note']}.",
            "",
            *header,
            *_variant_rows(rewrites["rewrite_rows"], ("ratio_to_baseline",)),
            "",
            *header,
            *_variant_rows(rewrites["recipe_rows"], ("ratio_to_baseline",)),
        ]
    lines.append("")
    return "\n".join(lines)


def peers_chart(rows: list[dict[str, Any]], path: Path, title: str) -> bool:
    plt = _pyplot()
    ok = [r for r in rows if r["status"] == "ok"]
    if plt is None or not ok:
        return False
    fig, ax = plt.subplots(figsize=(9, 0.9 + 0.45 * len(ok)))
    values = [r["step_ms"]["median"] for r in ok]
    colors = ["#e15759" if r["name"].startswith("ours") else "#4e79a7" for r in ok]
    ax.barh([r["name"] for r in ok], values, color=colors)
    for y, r in enumerate(ok):
        ratio = r.get("ratio_to_ours")
        label = f"  {r['step_ms']['median']:,.0f} ms" + (f" ({ratio:.2f}x ours)" if ratio else "")
        ax.text(values[y], y, label, va="center", fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, max(values) * 1.45)
    ax.set_xlabel("median milliseconds per UNet step")
    ax.set_title(title, fontsize=10)
    _save_png(plt, fig, path)
    return True


def write_paper_results(result: dict[str, Any], out_dir: str | Path, stem: str) -> dict[str, Path]:
    """``<stem>.json``, ``<stem>.md`` and the charts in ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {"json": out_dir / f"{stem}.json"}
    write_json(written["json"], result)
    charts: dict[str, str] = {}
    host = result["host"]
    where = f"{host['cpu_model']}, {host['threads']} threads"
    pipelines = (result.get("paper") or {}).get("pipelines") or []
    if stage_chart(pipelines, out_dir / f"{stem}_stages.png", f"Paper scale per stage, {where}"):
        charts["stages"] = f"{stem}_stages.png"
        written["stages_chart"] = out_dir / charts["stages"]
    rows = (result.get("peers") or {}).get("rows") or []
    if peers_chart(rows, out_dir / f"{stem}_peers.png", f"UNet step, same weights, {where}"):
        charts["peers"] = f"{stem}_peers.png"
        written["peers_chart"] = out_dir / charts["peers"]
    written["markdown"] = out_dir / f"{stem}.md"
    atomic_write_text(written["markdown"], paper_markdown(result, charts))
    return written
