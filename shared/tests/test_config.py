from dataclasses import dataclass, field

import pytest

from musiccore.config import ConfigError, config_hash, load_config, save_config, to_dict


@dataclass
class Optim:
    lr: float = 1e-3
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])


@dataclass
class Cfg:
    name: str = "base"
    steps: int = 10
    optim: Optim = field(default_factory=Optim)
    logging: dict = field(default_factory=lambda: {"every": 10})

    def __post_init__(self):
        if self.steps <= 0:
            raise ValueError(f"steps must be > 0, got {self.steps}")


def test_defaults_yaml_overrides(tmp_path):
    (tmp_path / "base.yaml").write_text("name: paper\noptim:\n  lr: 0.0005\n")
    (tmp_path / "tiny.yaml").write_text("_base_: base.yaml\nsteps: 3\n")
    cfg = load_config(Cfg, tmp_path / "tiny.yaml", ["optim.betas=[0.9,0.95]", "steps=7"])
    assert isinstance(cfg, Cfg) and isinstance(cfg.optim, Optim)
    assert (cfg.name, cfg.steps, cfg.optim.lr, cfg.optim.betas) == ("paper", 7, 0.0005, [0.9, 0.95])
    assert load_config(Cfg).steps == 10


@pytest.mark.parametrize(
    "yaml_text,overrides,match",
    [
        ("stpes: 3\n", [], "stpes"),  # typo in a file
        ("", ["optim.lrr=1"], "lrr"),  # typo on the command line
        ("steps: many\n", [], "steps"),  # wrong type
        ("steps: 0\n", [], "steps must be > 0"),  # validation in __post_init__
        ("- a\n- b\n", [], "mapping"),
        ("", ["steps"], "key=value"),
    ],
)
def test_bad_configs_name_the_problem(tmp_path, yaml_text, overrides, match):
    p = tmp_path / "c.yaml"
    p.write_text(yaml_text)
    with pytest.raises(ConfigError, match=match):
        load_config(Cfg, p, overrides)


def test_missing_file_and_cycle(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(Cfg, tmp_path / "nope.yaml")
    (tmp_path / "a.yaml").write_text("_base_: b.yaml\n")
    (tmp_path / "b.yaml").write_text("_base_: a.yaml\n")
    with pytest.raises(ConfigError, match="circular"):
        load_config(Cfg, tmp_path / "a.yaml")


def test_save_roundtrip_and_hash(tmp_path):
    cfg = load_config(Cfg, None, ["optim.lr=0.01"])
    save_config(cfg, tmp_path / "config.yaml")
    again = load_config(Cfg, tmp_path / "config.yaml")
    assert to_dict(again) == to_dict(cfg)
    assert config_hash(cfg) == config_hash(again)
    assert config_hash(cfg) != config_hash(load_config(Cfg, None, ["optim.lr=0.02"]))
    # logging does not change the experiment
    assert config_hash(cfg) == config_hash(load_config(Cfg, None, ["optim.lr=0.01", "logging.every=1"]))


def test_launch_section_is_not_part_of_the_run_config(tmp_path):
    import dataclasses

    from musiccore.config import ConfigError, config_hash, launch_section, load_config

    @dataclasses.dataclass
    class Optim:
        lr: float = 1e-3

    @dataclasses.dataclass
    class Cfg:
        optim: Optim = dataclasses.field(default_factory=Optim)

    (tmp_path / "base.yaml").write_text("slurm: {nodes: 2, gpus_per_node: 8}\noptim: {lr: 0.5}\n")
    (tmp_path / "child.yaml").write_text("_base_: base.yaml\nslurm: {time: '01:00:00'}\n")
    cfg = load_config(Cfg, tmp_path / "child.yaml")
    assert cfg.optim.lr == 0.5 and config_hash(cfg) == config_hash(load_config(Cfg, None, ["optim.lr=0.5"]))
    assert launch_section(tmp_path / "child.yaml") == {"nodes": 2, "gpus_per_node": 8, "time": "01:00:00"}
    (tmp_path / "bad.yaml").write_text("slurm: {gpus_per_node: -1}\n")
    with pytest.raises(ConfigError, match="bad.yaml.*slurm.gpus_per_node.*non-negative int"):
        load_config(Cfg, tmp_path / "bad.yaml")
