"""Phone mode against the scripted adb (tests/fake_adb/adb): full runs, failures, the budget."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from fake_adb.scenario import HERE, bench_main, device, stub_bundle, use_fake_adb

from mobilediff_export.bench import devicestate
from mobilediff_export.bench.phone import parse_benchmark_model
from mobilediff_export.bench.report import result_problems


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return stub_bundle(tmp_path_factory.mktemp("phone") / "tiny-bundle")


def run_phone(bundle: Path, out: Path, *extra: str) -> tuple[int, dict]:
    code = bench_main(
        [
            "bench",
            str(bundle),
            "--phone",
            "--cooldown",
            "0",
            "--iterations",
            "3",
            "--warmup",
            "1",
            "-q",
            "-o",
            str(out),
            *extra,
        ]
    )
    result = json.loads((out / "phone_result.json").read_text())
    assert result_problems(result) == []
    return code, result


def test_fake_adb_is_executable():
    assert (HERE / "adb").stat().st_mode & stat.S_IXUSR


def test_full_run_two_phones_in_parallel(monkeypatch, tmp_path, bundle, capsys):
    root = use_fake_adb(monkeypatch, tmp_path, {"PX8": device(), "S24": device()})
    code, result = run_phone(bundle, tmp_path / "out")
    assert code == 0
    assert result["status"] == "complete"
    assert [d["serial"] for d in result["devices"]] == ["PX8", "S24"]
    px8 = result["devices"][0]
    assert px8["device"]["model"] == "Pixel 8 Pro"
    assert px8["device"]["soc"] == "Google Tensor G3"
    assert px8["device"]["android_version"] == "15"
    runs = {r["delegate"]: r for r in px8["runs"]}
    assert runs["cpu"]["status"] == runs["gpu"]["status"] == "ok"
    assert runs["npu"]["status"] == "unavailable"  # the phone has no NPU delegate
    # Cold load apart from per-step latency; steps from the manifest (tiny: 4).
    assert runs["gpu"]["cold_load_ms"]["total"] == pytest.approx(1400.0)
    assert runs["gpu"]["unet_step_ms"]["median"] == pytest.approx(60.6)
    assert px8["steps"] == 4
    e2e = 0.4 + 12.12 + 4 * 60.6 + 1.2 + 80.8  # the run at the median
    assert runs["gpu"]["end_to_end_ms"]["median"] == pytest.approx(e2e)
    assert px8["budget"] == {
        "budget_ms": 1000.0,
        "best_delegate": "gpu",
        "end_to_end_ms": pytest.approx(e2e),
        "within_budget": True,
    }
    assert "app_result_problems" not in runs["cpu"]  # the fake app keeps the app's contract
    assert runs["cpu"]["thermal_before"]["status_name"] == "none"
    assert runs["cpu"]["memory"]["total_pss_bytes"] == 812345 * 1024
    assert (tmp_path / "out" / "PX8" / "gpu.json").is_file()  # the app's own JSON, pulled
    assert "Pixel 8 Pro" in (tmp_path / "out" / "report.md").read_text()
    log = (root / "adb.log").read_text()
    assert "am start -W -n dev.mobilediff.app/.BenchmarkActivity" in log
    assert "--es delegate gpu" in log and "--ei iterations 3" in log
    assert "within budget" in capsys.readouterr().out


def test_second_push_skips_files_with_the_same_sha256(monkeypatch, tmp_path, bundle):
    use_fake_adb(monkeypatch, tmp_path, {"PX8": device()})
    _, first = run_phone(bundle, tmp_path / "one", "--delegate", "cpu")
    _, second = run_phone(bundle, tmp_path / "two", "--delegate", "cpu")
    n = first["devices"][0]["push"]["files"]
    assert first["devices"][0]["push"]["pushed"] == n
    assert second["devices"][0]["push"] == {
        **second["devices"][0]["push"],
        "pushed": 0,
        "skipped_same_sha256": n,
        "bytes_pushed": 0,
    }


def test_disconnect_mid_run_keeps_partial_results(monkeypatch, tmp_path, bundle, capsys):
    flaky = device(disconnect_at={"match": "am start", "count": 2})
    use_fake_adb(monkeypatch, tmp_path, {"PX8": flaky, "OK1": device()})
    code, result = run_phone(bundle, tmp_path / "out", "--delegate", "cpu,gpu")
    assert code == 4
    assert result["status"] == "incomplete"
    px8, ok1 = result["devices"]
    assert px8["status"] == "incomplete"
    assert "PX8 disconnected" in px8["error"]
    assert [r["delegate"] for r in px8["runs"]] == ["cpu"]  # measured before it went away
    assert px8["runs"][0]["status"] == "ok"
    assert ok1["status"] == "complete"  # the other phone is unaffected
    out = capsys.readouterr().out
    assert "PX8: incomplete (PX8 disconnected" in out


def test_full_disk_is_refused_before_pushing(monkeypatch, tmp_path, bundle):
    root = use_fake_adb(monkeypatch, tmp_path, {"PX8": device(free_bytes=1 << 20)})
    code, result = run_phone(bundle, tmp_path / "out")
    assert code == 4
    px8 = result["devices"][0]
    assert px8["status"] == "incomplete" and px8["runs"] == []
    assert "not enough space for the bundle" in px8["error"]
    assert px8["budget"]["within_budget"] is None
    assert " push " not in (root / "adb.log").read_text()


def test_disk_filling_up_during_push_is_a_clear_error(monkeypatch, tmp_path, bundle):
    from mobilediff_export.bench import phone

    monkeypatch.setattr(phone, "free_bytes", lambda adb, folder: None)  # df says nothing
    use_fake_adb(monkeypatch, tmp_path, {"PX8": device(free_bytes=600_000)})
    code, result = run_phone(bundle, tmp_path / "out")
    assert code == 4
    assert "no space left on device" in result["devices"][0]["error"]


def test_missing_app(monkeypatch, tmp_path, bundle):
    use_fake_adb(monkeypatch, tmp_path, {"PX8": device(app_installed=False)})
    code, result = run_phone(bundle, tmp_path / "out", "--delegate", "cpu")
    assert code == 4
    assert "dev.mobilediff.app is not installed" in result["devices"][0]["error"]


def test_over_budget_exits_3(monkeypatch, tmp_path, bundle, capsys):
    slow = {"cpu": {"text_encoder_ms": 50.0, "unet_ms": 400.0, "vae_decoder_ms": 300.0}}
    use_fake_adb(monkeypatch, tmp_path, {"PX8": device(delegates=slow)})
    code, result = run_phone(bundle, tmp_path / "out", "--delegate", "cpu")
    assert code == 3
    budget = result["devices"][0]["budget"]
    assert budget["within_budget"] is False and budget["end_to_end_ms"] > 1000
    assert "OVER BUDGET" in capsys.readouterr().out
    # A looser budget passes the same numbers.
    code, _ = run_phone(bundle, tmp_path / "out2", "--delegate", "cpu", "--budget-ms", "5000")
    assert code == 0


def test_benchmark_model_binary(monkeypatch, tmp_path, bundle):
    root = use_fake_adb(monkeypatch, tmp_path, {"PX8": device()})
    binary = tmp_path / "benchmark_model"
    binary.write_bytes(b"\x7fELF placeholder")
    code, result = run_phone(
        bundle, tmp_path / "out", "--benchmark-model", str(binary), "--delegate", "cpu,gpu"
    )
    assert code == 0
    runs = {r["delegate"]: r for r in result["devices"][0]["runs"]}
    gpu = runs["gpu"]
    assert gpu["method"] == "benchmark_model"
    assert gpu["components"]["unet"]["warm_ms"]["median"] == pytest.approx(60.0)
    assert gpu["cold_load_ms"]["unet"] == pytest.approx(240.0)  # Init, apart from steps
    # Composed: 2 text-encoder calls (guidance) + 4 steps + one decode.
    assert gpu["end_to_end_ms"]["median"] == pytest.approx(2 * 12 + 4 * 60 + 80)
    log = (root / "adb.log").read_text()
    assert "push" in log and "/data/local/tmp/mobilediff/benchmark_model" in log
    assert "--use_gpu=true" in log and "--use_xnnpack=true" in log


def test_missing_benchmark_model_binary(monkeypatch, tmp_path, bundle, capsys):
    use_fake_adb(monkeypatch, tmp_path, {"PX8": device()})
    code = bench_main(
        [
            "bench",
            str(bundle),
            "--phone",
            "--benchmark-model",
            str(tmp_path / "nope"),
            "-o",
            str(tmp_path / "out"),
        ]
    )
    assert code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "benchmark_model binary not found" in err[0]


def test_no_phone_attached(monkeypatch, tmp_path, bundle, capsys):
    use_fake_adb(monkeypatch, tmp_path, {})
    code = bench_main(["bench", str(bundle), "--phone", "-o", str(tmp_path / "out")])
    assert code == 1
    assert "no phone given or connected" in capsys.readouterr().err


def test_list_devices(monkeypatch, tmp_path, capsys):
    use_fake_adb(monkeypatch, tmp_path, {"PX8": device(), "S24": device()})
    assert bench_main(["bench", "--devices"]) == 0
    out = capsys.readouterr().out
    assert "PX8" in out and "Pixel 8 Pro" in out and "Google Tensor G3" in out


def test_pulled_app_result_matches_the_app_schema(monkeypatch, tmp_path, bundle):
    """What the fake app writes is what the real one must: phone_bench_result.schema.json."""
    import jsonschema

    schema_path = (
        Path(__file__).parents[1] / "mobilediff_export/schemas/phone_bench_result.schema.json"
    )
    if not schema_path.is_file():
        pytest.skip("the app's result schema is not in the repo yet")
    use_fake_adb(monkeypatch, tmp_path, {"PX8": device()})
    run_phone(bundle, tmp_path / "out", "--delegate", "cpu")
    pulled = json.loads((tmp_path / "out" / "PX8" / "cpu.json").read_text())
    jsonschema.validate(pulled, json.loads(schema_path.read_text()))


# ---------------------------------------------------------------------------- parsers


def test_parse_df_toybox_and_wrapped_busybox():
    toybox = "Filesystem 1K-blocks Used Available Use% Mounted on\n/dev/dm-5 100 40 60 40% /data\n"
    assert devicestate.parse_df_available(toybox) == 60 * 1024
    wrapped = (
        "Filesystem 1K-blocks Used Available Use% Mounted on\n/dev/block/by-name/userdata\n"
        "   100 40 55 40% /data\n"
    )
    assert devicestate.parse_df_available(wrapped) == 55 * 1024
    assert devicestate.parse_df_available("df: /x: No such file") is None


def test_parse_thermal_and_meminfo():
    text = (
        "Thermal Status: 3\nCached temperatures:\n\tTemperature{mValue=99.0, mType=0, mName=old}\n"
        "Current temperatures from HAL:\n\tTemperature{mValue=44.5, mType=0, mName=cpu0, "
        "mStatus=0}\n\tTemperature{mValue=38.0, mType=3, mName=skin, mStatus=0}\n"
    )
    thermal = devicestate.parse_thermal(text)
    assert thermal["status"] == 3 and thermal["status_name"] == "severe"
    assert thermal["max_cpu_c"] == 44.5 and thermal["max_skin_c"] == 38.0
    mem = devicestate.parse_meminfo("  TOTAL PSS:   1000   TOTAL RSS:  2000  TOTAL SWAP PSS: 0")
    assert mem == {"total_pss_bytes": 1000 * 1024, "total_rss_bytes": 2000 * 1024}


def test_parse_benchmark_model_output():
    text = (
        "INFO: count=2 first=9000 curr=5000 min=5000 max=9000 avg=7000 std=2000\n"
        "INFO: count=10 first=5100 curr=5000 min=4900 max=5300 avg=5050 std=100\n"
        "INFO: Inference timings in us: Init: 250000, First inference: 9000, "
        "Warmup (avg): 7000, Inference (avg): 5050\n"
        "INFO: Overall peak memory footprint (MB) via periodic monitoring: 321.5\n"
    )
    parsed = parse_benchmark_model(text)
    assert parsed["init_ms"] == 250.0 and parsed["first_run_ms"] == 9.0
    assert parsed["warm_ms"]["n"] == 10 and parsed["warm_ms"]["min"] == 4.9
    assert parsed["warm_ms"]["median"] == 5.05 and parsed["warm_ms"]["median_is_mean"]
    assert parsed["peak_memory_bytes"] == int(321.5 * 2**20)
