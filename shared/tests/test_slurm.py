"""Slurm launch: template rendering (always) and real submissions on the local Slurm (marker ``slurm``)."""

import json
import subprocess
import time
from pathlib import Path

import pytest

from musiccore import slurm


def test_render_single_and_multi_node(tmp_path):
    spec = slurm.train_job("mert", "configs/tiny.yaml", ["optim.lr=0.001"], project_dir=tmp_path, log_dir=str(tmp_path))
    text = slurm.render(spec)
    assert "#SBATCH --job-name=mert-tiny" in text
    assert "#SBATCH --nodes=1" in text
    assert "-m mert.cli train --config configs/tiny.yaml optim.lr=0.001" in text
    assert "--nproc-per-node=1" in text
    assert "--gpus-per-node" not in text and "--partition" not in text
    # bash variables survive the template ($$ escapes), template fields are all filled
    assert "${SLURM_JOB_ID}" in text and "$(scontrol show hostnames" in text
    assert "${" not in text.replace("${SLURM", "").replace("${HEAD}", "").replace("${PORT}", "")

    spec = slurm.train_job("yue", "configs/x.yaml", [], nodes=4, gpus_per_node=8, partition="gpu", account="proj", log_dir=str(tmp_path))
    text = slurm.render(spec)
    for line in ("#SBATCH --nodes=4", "#SBATCH --gpus-per-node=8", "#SBATCH --partition=gpu", "#SBATCH --account=proj",
                 "#SBATCH --cpus-per-task=64"):
        assert line in text
    assert "--nproc-per-node=8" in text


def test_render_reads_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("SLURM_PARTITION", "long")
    monkeypatch.setenv("MUSIC_SLURM_TIME", "02:00:00")
    text = slurm.render(slurm.train_job("chatmusician", "c.yaml", log_dir=str(tmp_path)))
    assert "#SBATCH --partition=long" in text and "#SBATCH --time=02:00:00" in text


def test_rendered_script_is_valid_bash(tmp_path):
    text = slurm.render(slurm.train_job("mert", "configs/tiny.yaml", ["a=1"], log_dir=str(tmp_path)))
    p = tmp_path / "x.sbatch"
    p.write_text(text)
    assert subprocess.run(["bash", "-n", str(p)]).returncode == 0


def test_missing_sbatch_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(slurm.SlurmError, match="sbatch not found"):
        slurm.submit(slurm.JobSpec(module="x", log_dir=str(tmp_path)))


def _selftest_job(tmp_path, steps, step_seconds, nproc=2):
    return slurm.JobSpec(
        module="musiccore.slurm.selftest", args=["--out", str(tmp_path / "out"), "--steps", str(steps), "--step-seconds", str(step_seconds)],
        workdir=str(tmp_path), job_name=f"selftest-{tmp_path.name}", nproc_per_node=nproc, time="00:10:00", log_dir=str(tmp_path / "logs"),
    )


@pytest.mark.slurm
def test_torchrun_job_through_sbatch(tmp_path):
    job = slurm.submit(_selftest_job(tmp_path, steps=2, step_seconds=0.0))
    state = slurm.wait(job, timeout=300)
    log = next((tmp_path / "logs").glob("*.out")).read_text()
    assert state == "COMPLETED", log
    res = json.loads((tmp_path / "out" / "result.json").read_text())
    assert res["world_size"] == 2 and res["rank_sum"] == 1.0 and res["slurm_job_id"] == job


@pytest.mark.slurm
def test_warning_signal_checkpoints_requeues_and_resumes(tmp_path):
    job = slurm.submit(_selftest_job(tmp_path, steps=12, step_seconds=1.0, nproc=1))
    slurm.wait(job, timeout=120, until={"RUNNING"})
    started = tmp_path / "out" / "started-1.json"
    deadline = time.monotonic() + 90
    while not started.exists() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert started.exists(), "job never started stepping"
    time.sleep(3)  # a few steps, none of them saved
    slurm.signal_job(job, "USR1")
    deadline = time.monotonic() + 300
    while not (tmp_path / "out" / "result.json").exists() and time.monotonic() < deadline:
        time.sleep(1)
    log = "\n".join(p.read_text() for p in (tmp_path / "logs").glob("*.out"))
    assert (tmp_path / "out" / "result.json").exists(), log
    res = json.loads((tmp_path / "out" / "result.json").read_text())
    assert res["steps"] == 12
    assert res["launches"] == 2, log  # stopped once, resumed once
    # the ranks saved on the signal (state is saved at no other time before the end), and the rerun resumed there
    assert res["resumed_from"] is not None and 1 <= res["resumed_from"] < 12, res
    assert res["restart_count"] == 1
    assert "USR1: checkpoint and requeue" in log
    assert slurm.wait(job, timeout=120) == "COMPLETED"


# ---- GPUs per node: flag > environment > config `slurm:` section > what the partition offers (sinfo) ----------------
def _fake_sinfo(tmp_path, monkeypatch, output: str, rc: int = 0):
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    script = bindir / "sinfo"
    script.write_text(f"#!/bin/bash\ncat <<'OUT'\n{output}OUT\nexit {rc}\n")
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:{__import__('os').environ['PATH']}")
    for var in ("MUSIC_SLURM_GPUS_PER_NODE", "SLURM_PARTITION"):
        monkeypatch.delenv(var, raising=False)


SINFO = "debug*|(null)\ngpu|gpu:a100:8(S:0-1)\ngpu|gpu:a100:4(S:0)\nmixed|gpu:2,mps:100\n"


def test_gpus_default_to_what_the_partition_offers(tmp_path, monkeypatch):
    _fake_sinfo(tmp_path, monkeypatch, SINFO)
    assert slurm.partition_gpus("gpu") == (8, "gpu")
    assert slurm.partition_gpus(None) == (0, "debug")  # the default partition is the one marked '*'
    assert slurm.partition_gpus("mixed") == (2, "mixed")
    spec = slurm.train_job("yue", "c.yaml", partition="gpu", log_dir=str(tmp_path))
    text = slurm.render(spec)
    assert "#SBATCH --gpus-per-node=8" in text and "--nproc-per-node=8" in text
    assert "# GPUs per node: 8 (all GPUs of a node of partition 'gpu' (sinfo))" in text
    cpu = slurm.render(slurm.train_job("yue", "c.yaml", log_dir=str(tmp_path)))
    assert "--gpus-per-node=" not in cpu and "partition 'debug' offers no GPUs" in cpu


def test_gpus_per_node_precedence_flag_env_config(tmp_path, monkeypatch):
    _fake_sinfo(tmp_path, monkeypatch, SINFO)
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "big.yaml").write_text("slurm:\n  gpus_per_node: 4\n  nodes: 2\n  time: '48:00:00'\n")
    spec = slurm.train_job("mert", "configs/big.yaml", project_dir=tmp_path, partition="gpu", log_dir=str(tmp_path))
    assert (spec.gpus_per_node, spec.nodes, spec.time, spec.gpu_source) == (4, 2, "48:00:00", "config slurm section")
    monkeypatch.setenv("MUSIC_SLURM_GPUS_PER_NODE", "2")
    spec = slurm.train_job("mert", "configs/big.yaml", project_dir=tmp_path, log_dir=str(tmp_path))
    assert (spec.gpus_per_node, spec.gpu_source) == (2, "$MUSIC_SLURM_GPUS_PER_NODE")
    spec = slurm.train_job("mert", "configs/big.yaml", project_dir=tmp_path, gpus_per_node=1, log_dir=str(tmp_path))
    assert (spec.gpus_per_node, spec.gpu_source) == (1, "flag")


def test_no_sinfo_or_failing_sinfo_requests_no_gpus_loudly(tmp_path, monkeypatch, caplog):
    monkeypatch.delenv("MUSIC_SLURM_GPUS_PER_NODE", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))  # no sinfo at all
    with caplog.at_level("WARNING"):
        spec = slurm.train_job("mert", "c.yaml", log_dir=str(tmp_path))
    assert spec.gpus_per_node == 0 and "NO GPUs requested" in spec.gpu_source and "NO GPUs requested" in caplog.text
    assert "# GPUs per node: 0 (sinfo not found" in slurm.render(spec)
    _fake_sinfo(tmp_path, monkeypatch, "slurm_load_partitions: Unable to contact slurm controller\n", rc=1)
    spec = slurm.train_job("mert", "c.yaml", log_dir=str(tmp_path))
    assert spec.gpus_per_node == 0 and "sinfo failed" in spec.gpu_source


def test_dry_run_prints_the_script_and_bad_launch_section_is_an_error(tmp_path, monkeypatch, capsys):
    from musiccore.slurm.__main__ import main

    _fake_sinfo(tmp_path, monkeypatch, SINFO)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ok.yaml").write_text("slurm: {gpus_per_node: 8}\n")
    assert main(["submit", "--project", "yue", "--config", "ok.yaml", "--dry-run", "--", "a=1"]) == 0
    out = capsys.readouterr().out
    assert "#SBATCH --gpus-per-node=8" in out and "-m yue.cli train --config ok.yaml a=1" in out
    (tmp_path / "bad.yaml").write_text("slurm: {gpus: 8}\n")
    assert main(["submit", "--project", "yue", "--config", "bad.yaml", "--dry-run"]) == 1
    assert "unknown key 'slurm.gpus'" in capsys.readouterr().err
