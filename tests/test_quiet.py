"""Converter chatter on fds 1/2 is captured; our progress still reaches the real stderr."""

from __future__ import annotations

import os

import pytest

from mobilediff_export.quiet import native_output_captured


def test_native_output_is_dropped_on_success(capfd):
    with native_output_captured() as console:
        os.write(2, b"I0000 absl chatter\n")
        os.write(1, b"converter progress 10%\n")
        console.write("export [1/3] unet: convert\n")
    out, err = capfd.readouterr()
    assert "chatter" not in err and "converter progress" not in out
    assert "export [1/3] unet: convert" in err
    os.write(2, b"after\n")  # the descriptors are back
    assert "after" in capfd.readouterr().err


def test_the_tail_is_replayed_when_the_block_fails(capfd):
    with pytest.raises(RuntimeError, match="boom"), native_output_captured():
        for i in range(60):
            os.write(2, f"tool line {i}\n".encode())
        raise RuntimeError("boom")
    err = capfd.readouterr().err
    assert "last 40 of 60 lines" in err
    assert "tool line 59" in err and "tool line 19\n" not in err


def test_verbose_turns_the_capture_off(capfd, monkeypatch):
    monkeypatch.setenv("MOBILEDIFF_VERBOSE", "1")
    with native_output_captured():
        os.write(2, b"visible chatter\n")
    assert "visible chatter" in capfd.readouterr().err
