"""Host mode: results JSON (schema), Markdown and chart; statistics; failures as data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fake_adb.scenario import bench_main, stub_bundle

from mobilediff_export.bench.host import run_worker, sampler_for_steps
from mobilediff_export.bench.report import paper_markdown, result_problems
from mobilediff_export.bench.stats import percentile, summarize


def test_nearest_rank_percentiles_are_values_of_real_runs():
    samples = [5.0, 1.0, 4.0, 2.0, 3.0, 10.0, 9.0, 8.0, 7.0, 6.0]
    assert percentile(samples, 50) == 5.0
    assert percentile(samples, 90) == 9.0
    assert percentile([3.0], 90) == 3.0
    s = summarize(samples)
    assert (s["n"], s["min"], s["max"], s["mean"]) == (10, 1.0, 10.0, 5.5)
    assert summarize([])["median"] is None


def test_worker_failure_comes_back_as_data(tmp_path):
    spec = {
        "mode": "component",
        "bundle": str(tmp_path / "missing"),
        "backend": "onnxruntime",
        "component": "unet",
        "warmup": 0,
        "iterations": 1,
        "threads": 1,
        "seed": 0,
    }
    result = run_worker(spec, timeout_s=120)
    assert result["status"] == "error"
    assert "bundle not found" in result["error"]


def test_missing_bundle_is_one_line_error(tmp_path, capsys):
    assert bench_main(["bench", str(tmp_path / "nope"), "-o", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nope" in err[0]


def test_paper_result_schema_and_markdown():
    """A paper-scale result as run_paper_scale writes it (synthetic numbers)."""
    host = {"cpu_model": "cpu", "cpu_count": 2, "threads": 2, "load_average_start": [0.5, 0.4, 0.3]}
    row = {
        "name": "ours-litert",
        "what": "ours",
        "status": "ok",
        "step_ms": {"median": 700.0},
        "ratio_to_ours": 1.0,
        "ratio_to_ours_fp32": 0.5,
    }
    result = {
        "schema_version": 1,
        "kind": "paper_scale",
        "created": "now",
        "status": "complete",
        "command": "python benchmarks/run_paper_scale.py",
        "host": host,
        "matmul_peak": {"method": "torch.mm", "threads": 2, "peak_gflops": 300.0},
        "paper": {},
        "peers": {"model": "peer", "input": "one step", "ours": "ours-litert", "rows": [row]},
        "rewrites": {},
    }
    assert result_problems(result) == []
    text = paper_markdown(result, {})
    assert "load average [0.5, 0.4, 0.3] at start" in text
    assert "| ours-litert | ours | 700 |" in text
    assert result_problems({**result, "command": 3})  # the producing command is a string
    assert result_problems({k: v for k, v in result.items() if k != "host"})


def test_recorded_results_match_the_schema():
    results = Path(__file__).parents[1] / "benchmarks" / "results"
    files = sorted(results.glob("*.json"))
    for path in files:
        data = json.loads(path.read_text())
        if data.get("kind") in ("host", "phone", "paper_scale"):
            assert result_problems(data) == [], path


@pytest.fixture(scope="module")
def demo_bundle(tmp_path_factory) -> Path:
    from mobilediff_export.export import export_bundle

    out = tmp_path_factory.mktemp("host") / "tiny-bundle"
    return export_bundle("tiny", out, targets=("tflite", "onnx"), progress=False)


def test_sampler_for_other_step_counts(tmp_path):
    manifest = json.loads((stub_bundle(tmp_path / "tiny") / "bundle.json").read_text())
    assert sampler_for_steps(manifest, 4) is manifest["pipeline"]["sampler"]
    one = sampler_for_steps(manifest, 1)
    assert one["name"] == "onestep" and len(one["timesteps"]) == 1
    two = sampler_for_steps(manifest, 2)
    assert two["name"] == "ddim" and two["num_inference_steps"] == 2


@pytest.mark.slow
def test_bench_demo_bundle_writes_json_markdown_and_chart(demo_bundle, tmp_path, capsys):
    out = tmp_path / "results"
    code = bench_main(
        [
            "bench",
            str(demo_bundle),
            "-o",
            str(out),
            "--iterations",
            "2",
            "--warmup",
            "0",
            "--pipeline-iterations",
            "1",
            "--no-peak",
            "--threads",
            "1",
            "-q",
        ]
    )
    assert code == 0, capsys.readouterr()
    result = json.loads((out / "result.json").read_text())
    assert result_problems(result) == []
    assert result["status"] == "complete"
    got = {(r["backend"], r["component"]) for r in result["components"]}
    assert got == {
        (b, c)
        for b in ("pytorch", "litert", "onnxruntime")
        for c in ("text_encoder", "unet", "vae_decoder")
    }
    litert_unet = next(
        r for r in result["components"] if (r["backend"], r["component"]) == ("litert", "unet")
    )
    assert litert_unet["precision"] == "int8" and litert_unet["size_bytes"] > 0
    assert litert_unet["peak_rss_bytes"] >= litert_unet["baseline_rss_bytes"] > 0
    assert len(litert_unet["samples_ms"]) == 2
    pipelines = {r["backend"]: r for r in result["pipelines"]}
    assert set(pipelines) == {"pytorch", "litert", "onnxruntime"}
    for row in pipelines.values():
        assert row["steps"] == 4 and row["runs"][0]["unet_calls"] == 4
        stages = row["stages_ms"]
        assert sum(stages.values()) == pytest.approx(row["total_ms"]["median"], rel=0.01)
    assert result["host"]["load_average_start"] is not None
    report = (out / "report.md").read_text()
    assert "## End to end" in report and "stages.png" in report
    assert (out / "stages.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "end to end" in capsys.readouterr().out


def test_speed_targets_come_from_alternating_paired_rounds(tmp_path):
    """Every round measures all three UNets, in alternating order; the targets read the
    median of the per-round ratios, so a slow stretch of the machine (round 2 here, where
    everything runs 1.5x slower) moves the times but not the verdict."""
    from mobilediff_export.bench.paper import (
        PaperSettings,
        _Variants,
        paired_unet_rounds,
        speed_targets,
    )

    bundle = tmp_path / "bundle"
    bundle.mkdir()
    unet = {"file": "x", "inputs": [], "outputs": []}
    (bundle / "bundle.json").write_text(
        json.dumps({"components": {"tflite": {"unet": unet}, "onnx": {"unet": unet}}})
    )
    base = {"litert": 400.0, "litert_fp32": 990.0, "onnxruntime": 1000.0}
    calls: list[tuple[str, str]] = []

    class FakeVariants(_Variants):
        def _call(self, function, **spec):
            key = (
                "onnxruntime"
                if spec["runner"] == "onnx"
                else ("litert_fp32" if spec["work"] == str(tmp_path / "work") else "litert")
            )
            calls.append((key, spec["work"]))
            slow = 1.5 if len({c for c, _ in calls}) == 3 and len(calls) in (4, 5, 6) else 1.0
            ms = base[key] * slow
            return {"status": "ok", "step_ms": {"median": ms}, "samples_ms": [ms, ms]}

    settings = PaperSettings(work=tmp_path / "work", threads=2, paired_rounds=3)
    quiet = lambda message: None  # noqa: E731
    paired = paired_unet_rounds(settings, FakeVariants(settings, quiet), bundle, unet, quiet)
    orders = [r["order"] for r in paired["rounds"]]
    assert orders[0] == ["litert", "litert_fp32", "onnxruntime"] and orders[1] == orders[0][::-1]
    assert [k for k, _ in calls] == orders[0] + orders[1] + orders[2]
    assert paired["rounds"][1]["step_ms"]["onnxruntime"] == 1500.0  # the slow round
    assert paired["over_onnxruntime"]["litert_fp32"] == {
        "median": 0.99,
        "min": 0.99,
        "max": 0.99,
        "n": 3,
    }
    targets = speed_targets({"components": []}, None, paired)
    assert targets["method"] == "paired" and targets["fp32_met"] and targets["int8_met"]
    assert targets["fp32_over_ort"] == 0.99 and targets["int8_over_ort"] == 0.4
    assert targets["fp32_over_ort_range"] == [0.99, 0.99]

    # A contestant that fails is reported, not counted; no fp32 entry: no fp32 contestant.
    class Failing(FakeVariants):
        def _call(self, function, **spec):
            if spec["runner"] == "onnx":
                return {"status": "error", "error": "boom"}
            return super()._call(function, **spec)

    calls.clear()
    failed = paired_unet_rounds(settings, Failing(settings, quiet), bundle, None, quiet)
    assert failed["status"] == "error" and failed["errors"] == {"onnxruntime": "boom"}
    assert "litert_fp32" not in failed["step_ms"]
    assert speed_targets({"components": []}, None, failed)["int8_met"] is None


def test_paper_markdown_shows_the_paired_rounds():
    paired = {
        "method": "2 alternating rounds",
        "rounds": [
            {
                "order": ["litert_fp32", "onnxruntime"],
                "step_ms": {"litert_fp32": 990.0, "onnxruntime": 1000.0},
                "over_onnxruntime": {"litert_fp32": 0.99},
            },
            {
                "order": ["onnxruntime", "litert_fp32"],
                "step_ms": {"litert_fp32": 1050.0, "onnxruntime": 1000.0},
                "over_onnxruntime": {"litert_fp32": 1.05},
            },
        ],
        "step_ms": {"litert_fp32": {"median": 1020.0}, "onnxruntime": {"median": 1000.0}},
        "over_onnxruntime": {"litert_fp32": {"median": 1.02, "min": 0.99, "max": 1.05, "n": 2}},
        "errors": {},
    }
    from mobilediff_export.bench.paper import speed_targets

    targets = speed_targets({"components": []}, None, paired)
    assert targets["fp32_met"] is False and targets["int8_met"] is None
    result = {
        "schema_version": 1,
        "kind": "paper_scale",
        "created": "now",
        "status": "complete",
        "command": "c",
        "matmul_peak": None,
        "peers": {},
        "rewrites": {},
        "host": {"cpu_model": "cpu", "cpu_count": 2, "threads": 2, "load_average_start": None},
        "paper": {"paired": paired},
        "speed_targets": targets,
    }
    assert result_problems(result) == []
    text = paper_markdown(result, {})
    assert "**1.02x**, rounds 0.99-1.05x (target at most 1.0x: not met)" in text
    assert "| 2 | onnxruntime, litert_fp32 | 1,050 | 1,000 | 1.05x |" in text
