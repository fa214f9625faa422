"""`ray job submit` against a local head (token authentication on) runs bert-debug to the registry."""

from lmplatform.registry import Registry
from raycli import job_submit, start_head, stop

DASHBOARD = 8275


def test_ray_job_submit_pretrains_and_registers(tmp_path):
    head = start_head(6390, DASHBOARD, agent_port=52366)
    try:
        out = tmp_path / "out"
        submit = job_submit(
            DASHBOARD,
            [
                "jobs/pretrain.py",
                "--config",
                "jobs/configs/pretrain/bert-debug.yaml",
                f"output_dir={out}",
                f"registry={out}/registry",
                "train.max_steps=6",
                "train.checkpoint_every=6",
            ],
            timeout=600,
        )
        assert submit.returncode == 0, submit.stdout[-3000:] + submit.stderr[-3000:]
        assert "succeeded" in submit.stdout + submit.stderr
        # the progress line reaches the submitter, once; Ray Train's own per-report and
        # per-checkpoint lines and DeepSpeed's start-up prints stay off the console
        assert submit.stdout.count("[pretrain bert-debug] step 6/6") == 1, submit.stdout[-3000:]
        for noise in (
            "Reporting training result",
            "Checkpoint successfully created",
            "Setting accelerator to CPU",
            "built successfully",
            "Processing zero checkpoint",
        ):
            assert noise not in submit.stdout + submit.stderr, noise
        reg = Registry(out / "registry")
        assert reg.versions("pretrained", "bert-debug") == ["v0001"]
        assert reg.metadata("pretrained", "bert-debug", "v0001")["lineage"]["steps"] == 6
    finally:
        stop(head)
