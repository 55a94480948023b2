"""ControlNet and upscaling on the local network with tiny weights, as the README writes the
workflow: text to image, a ControlNet from that picture's edges, then upscaled, three jobs chained
by CID; then every control type of both ControlNet modules and both upscalers through the market."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from lilypad.ml import tiny_control
from lilypad.storage import NETWORK_PROFILE
from tests.conftest import Reference
from tests.e2e.conftest import Up, run_job

NETWORK = "e2e-images"
TINY_SIDE = 64  # the tiny weights' largest picture side


def picture(record: dict[str, Any], name: str = "image-0.png") -> tuple[int, int]:
    """The size of an output picture of ``record``'s job, decoded in full."""
    with Image.open(Path(record["output_dir"]) / "outputs" / name) as image:
        image.load()
        assert image.mode in ("RGB", "RGBA"), name
        return image.size


def output(record: dict[str, Any]) -> str:
    """The IPFS path of the job's first picture, as the next job of a workflow takes it."""
    return f"ipfs://{record['result_cid']}/outputs/image-0.png"


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_text_then_controlnet_then_upscale_and_every_control_type(
    tmp_path: Path, network_up: Up, js_reference: Reference
) -> None:
    network_up(NETWORK, "--port-offset", "3400", "--executor", "process", "--providers", "2")
    # the workflow, audited: the mediator re-runs each job and agrees
    still = run_job(NETWORK, "sd15:v1.0-lilypad1", "Prompt=a lighthouse on a cliff", "Seed=7",
                    timeout=600, verify="always")  # fmt: skip
    controlled = run_job(
        NETWORK, "sd15-controlnet:v1.0-lilypad1", f"Image={output(still)}", "Control=canny",
        "Prompt=the same lighthouse as a watercolour", timeout=600, verify="always",
    )  # fmt: skip
    upscaled = run_job(NETWORK, "upscale:v1.0-lilypad1", f"Image={output(controlled)}",
                       "Scale=4", timeout=600, verify="always")  # fmt: skip
    assert [r["state"] for r in (still, controlled, upscaled)] == ["upheld"] * 3
    assert picture(still) == (TINY_SIDE, TINY_SIDE)
    assert picture(controlled) == picture(controlled, "control-canny.png") == picture(still)
    assert picture(upscaled) == (4 * TINY_SIDE, 4 * TINY_SIDE)
    for record in (still, controlled, upscaled):
        assert js_reference(Path(record["output_dir"]), NETWORK_PROFILE) == record["result_cid"]

    # every control type of both modules, and both upscalers, through the market (two providers)
    source = tmp_path / "source.png"
    Image.open(Path(still["output_dir"]) / "outputs" / "image-0.png").resize((96, 72)).save(source)
    jobs = [
        (f"{module}:v1.0-lilypad1", f"Image=@{source}", f"Control={control.value}", "Prompt=a fox")
        for module, controls in (
            ("sd15-controlnet", tiny_control.SD15_CONTROLS),
            ("sdxl-controlnet", tiny_control.SDXL_CONTROLS),
        )
        for control in controls
    ]
    jobs += [
        ("upscale:v1.0-lilypad1", f"Image=@{source}", "Scale=2", "Model=realesrgan"),
        ("upscale:v1.0-lilypad1", f"Image=@{source}", "Scale=2", "Model=sd-x4", "Prompt=a fox"),
    ]
    with ThreadPoolExecutor(2) as pool:
        records = list(
            pool.map(lambda job: run_job(NETWORK, *job, timeout=900, verify="never"), jobs)
        )
    for job, record in zip(jobs, records, strict=True):
        assert (Path(record["output_dir"]) / "exitCode").read_text() == "0", job
        if job[0].startswith("upscale"):
            assert picture(record) == (2 * TINY_SIDE, 2 * 48), job  # 96x72 worked at 64x48
        else:
            control = job[2].removeprefix("Control=")
            assert picture(record) == picture(record, f"control-{control}.png"), job
    assert len({r["result_cid"] for r in records}) == len(jobs), "two jobs gave the same result"
