"""Module-side plumbing: settings from the environment, weights, tiny-weight determinism."""

from __future__ import annotations

from pathlib import Path

import pytest

from lilypad.errors import InferenceError
from lilypad.ml import job, tiny


def test_bad_environment_values_are_clear_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAMPLER", "eulerr")
    with pytest.raises(InferenceError, match="SAMPLER='eulerr' is not allowed; allowed: euler, "):
        job.env_choice("SAMPLER", "euler", ["euler", "heun"])
    monkeypatch.setenv("STEPS", "500")
    with pytest.raises(InferenceError, match=r"STEPS=500 is out of range; allowed: 5\.\.200"):
        job.env_int("STEPS", 50, 5, 200)
    monkeypatch.setenv("STEPS", "ten")
    with pytest.raises(InferenceError, match="STEPS='ten' is not an integer"):
        job.env_int("STEPS", 50, 5, 200)
    monkeypatch.setenv("LILYPAD_WEIGHTS", "huge")
    with pytest.raises(InferenceError, match="LILYPAD_WEIGHTS='huge' is not allowed"):
        job.weights_mode()


def test_real_weights_come_from_model_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LILYPAD_WEIGHTS", "real")
    monkeypatch.setenv("MODEL_DIR", str(tmp_path))
    with pytest.raises(InferenceError, match="stable-video-diffusion-img2vid-xt-1-1 not found"):
        job.weights_path(job.SVD_11)
    (tmp_path / "svd-xt-1.1").mkdir()
    (tmp_path / "svd-xt-1.1" / "model_index.json").write_text("{}")
    assert job.weights_path(job.SVD_11) == tmp_path / "svd-xt-1.1"


def test_tiny_weights_are_generated_deterministically(tmp_path: Path) -> None:
    first = tiny.ensure("svd", tmp_path / "a")
    second = tiny.ensure("svd", tmp_path / "b")
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert any(str(f).endswith(".safetensors") for f in files)
    assert files == sorted(p.relative_to(second) for p in second.rglob("*") if p.is_file())
    for f in files:
        assert (first / f).read_bytes() == (second / f).read_bytes(), f
    assert tiny.ensure("svd", tmp_path / "a") == first  # cached: not generated again
    with pytest.raises(InferenceError, match="no tiny weights for model 'sd3'"):
        tiny.ensure("sd3", tmp_path)
