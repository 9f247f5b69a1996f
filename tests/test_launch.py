"""Launch plumbing: argv rewriting, option checks, shipped accelerate configs (no processes here;
real launches are in test_distributed.py)."""

from __future__ import annotations

import sys

import pytest

from llmtune.errors import LlmtuneError
from llmtune.launch import (
    LaunchOptions,
    check_options,
    launch_command,
    resolve_accelerate_config,
    shipped_accelerate_configs,
    strip_launch_flags,
)

REQUIRED = {"compute_environment", "distributed_type", "num_machines", "num_processes", "mixed_precision"}


def test_strip_launch_flags():
    argv = ["finetune", "--num-processes", "4", "-d", "x.csv", "--accelerate-config=fsdp", "--main-process-port", "1"]
    assert strip_launch_flags(argv) == ["finetune", "-d", "x.csv"]


def test_launch_command_without_config():
    cmd = launch_command(["finetune", "-d", "x.csv"], LaunchOptions(num_processes=2))
    assert cmd[:3] == [sys.executable, "-m", "llmtune.launch"]
    assert "--multi_gpu" in cmd and cmd[cmd.index("--num_processes") + 1] == "2"
    assert cmd[-5:] == ["-m", "llmtune", "finetune", "-d", "x.csv"]


def test_launch_command_multinode_with_config():
    opts = LaunchOptions(
        num_processes=16, num_machines=2, machine_rank=1, main_process_ip="10.0.0.1", main_process_port=29500,
        accelerate_config="fsdp",
    )  # fmt: skip
    check_options(opts)
    cmd = launch_command(["pretrain"], opts)
    assert cmd[cmd.index("--config_file") + 1].endswith("accelerate/fsdp.yaml")
    assert "--multi_gpu" not in cmd  # the config decides the distributed type
    for flag, value in [("--num_processes", "16"), ("--num_machines", "2"), ("--machine_rank", "1")]:
        assert cmd[cmd.index(flag) + 1] == value
    assert cmd[cmd.index("--main_process_ip") + 1] == "10.0.0.1"


@pytest.mark.parametrize(
    ("opts", "message"),
    [
        (LaunchOptions(num_processes=0), "--num-processes must be >= 1"),
        (LaunchOptions(num_machines=2, num_processes=4), "needs --machine-rank"),
        (LaunchOptions(num_machines=2, machine_rank=2, main_process_ip="h", main_process_port=1), "machine-rank"),
        (
            LaunchOptions(num_machines=2, machine_rank=0, main_process_ip="h", main_process_port=1, num_processes=3),
            "multiple",
        ),
        (LaunchOptions(main_process_port=70000), "port"),
    ],
)
def test_bad_options(opts, message):
    with pytest.raises(LlmtuneError, match=message):
        check_options(opts)


def test_launch_flags_inside_a_launched_run_are_refused(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(LlmtuneError, match="inside a launched run"):
        check_options(LaunchOptions(num_processes=2))


def test_one_process_needs_no_launch():
    assert not LaunchOptions(num_processes=1).requested
    assert LaunchOptions(num_processes=2).requested


@pytest.mark.parametrize("name", ["ddp", "fsdp", "deepspeed-zero2", "deepspeed-zero3"])
def test_shipped_accelerate_configs_parse(name):
    import yaml
    from accelerate.commands.config.config_args import load_config_from_file

    path = resolve_accelerate_config(name)
    raw = yaml.safe_load(path.read_text())
    assert set(raw) >= REQUIRED
    cfg = load_config_from_file(str(path))  # accelerate's own parser and validation
    expected = {"ddp": "MULTI_GPU", "fsdp": "FSDP"}.get(name, "DEEPSPEED")
    assert str(cfg.distributed_type).endswith(expected)
    if name == "fsdp":
        assert cfg.fsdp_config["fsdp_reshard_after_forward"] is True  # full shard
    if name.startswith("deepspeed"):
        assert cfg.deepspeed_config["zero_stage"] == int(name[-1])


def test_accelerate_configs_stay_out_of_recipes_list(cli):
    assert set(shipped_accelerate_configs()) >= {"ddp", "fsdp", "deepspeed-zero2", "deepspeed-zero3"}
    listed = cli("recipes", "list").output
    assert "ddp" not in listed.split() and "deepspeed-zero2" not in listed


def test_launch_options_on_both_training_commands(cli):
    for command in ("finetune", "pretrain"):
        text = cli(command, "--help").output
        for flag in ("--num-processes", "--num-machines", "--machine-rank", "--main-process-ip", "--accelerate-config"):
            assert flag in text, (command, flag)
