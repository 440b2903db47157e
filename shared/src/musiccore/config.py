"""Typed configs: a dataclass schema, YAML files that hold deltas, and ``key=value`` overrides.

Every project declares one dataclass tree (sections such as ``model``, ``data``, ``optim``, ``trainer``) and
loads it with :func:`load_config`. The merge is strict: a key that the schema lacks is an error, so a typo in a
YAML file or on the command line fails loudly instead of being silently ignored.

A YAML file may start from another with ``_base_: other.yaml`` (a path relative to the file); bases are merged
first, so a paper config can be written as the delta from a shared base.

Example::

    cfg = load_config(TrainConfig, "configs/tiny.yaml", ["optim.lr=1e-3", "trainer.max_steps=20"])
    save_config(cfg, run_dir / "config.yaml")
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any, Iterable, TypeVar

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .atomic import atomic_write_text

T = TypeVar("T")

BASE_KEY = "_base_"
#: Top-level YAML section with the job's launch resources (read by ``musiccore.slurm``, never part of the run config).
LAUNCH_KEY = "slurm"
LAUNCH_FIELDS = {"nodes": int, "gpus_per_node": int, "nproc_per_node": int, "cpus_per_task": int, "time": str}


class ConfigError(ValueError):
    """A config file or override that does not fit the schema (names the file/override and the reason)."""


def _read_yaml(path: Path, _seen: tuple[Path, ...] = ()) -> dict:
    path = Path(path).resolve()
    if path in _seen:
        raise ConfigError(f"{path}: circular {BASE_KEY} chain: {' -> '.join(map(str, _seen + (path,)))}")
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    base = data.pop(BASE_KEY, None)
    if base is None:
        return data
    bases = [base] if isinstance(base, str) else list(base)
    merged = OmegaConf.create({})
    for b in bases:
        merged = OmegaConf.merge(merged, _read_yaml(path.parent / b, _seen + (path,)))
    return OmegaConf.to_container(OmegaConf.merge(merged, data))  # type: ignore[return-value]


def launch_section(path: str | Path) -> dict:
    """The ``slurm:`` section of a config file (with its ``_base_`` chain), validated; ``{}`` when it has none.

    It holds what a recipe needs from the cluster (e.g. ``gpus_per_node: 8``, ``nodes: 2``, ``time: "48:00:00"``);
    :func:`load_config` drops it, so it never changes a run's config or its hash.

    Raises:
        ConfigError: unknown key or wrong type, naming the file.
    """
    sec = _read_yaml(Path(path)).get(LAUNCH_KEY) or {}
    if not isinstance(sec, dict):
        raise ConfigError(f"{path}: '{LAUNCH_KEY}' must be a mapping, got {type(sec).__name__}")
    out = {}
    for k, v in sec.items():
        if k not in LAUNCH_FIELDS:
            raise ConfigError(f"{path}: unknown key '{LAUNCH_KEY}.{k}' (known: {', '.join(LAUNCH_FIELDS)})")
        typ = LAUNCH_FIELDS[k]
        if isinstance(v, bool) or not isinstance(v, typ) or (typ is int and v < 0):
            raise ConfigError(f"{path}: '{LAUNCH_KEY}.{k}' must be a non-negative {typ.__name__}, got {v!r}")
        out[k] = v
    return out


def load_config(schema: type[T], path: str | Path | None = None, overrides: Iterable[str] = ()) -> T:
    """Build a ``schema`` instance from its defaults, a YAML file and dotted overrides.

    Args:
        schema: a dataclass type (nested dataclasses allowed).
        path: YAML file holding deltas from the defaults (``None``: defaults only).
        overrides: ``section.key=value`` strings, applied last (values parsed as YAML scalars/lists).

    Returns:
        An instance of ``schema`` (``__post_init__`` validation has run).

    Raises:
        ConfigError: unknown key, wrong type, bad YAML or a failing validation, naming the source.
    """
    base = OmegaConf.structured(schema)
    source = "defaults"
    try:
        if path is not None:
            source = str(path)
            data = _read_yaml(Path(path))
            if LAUNCH_KEY not in {f.name for f in dataclasses.fields(schema)}:  # type: ignore[arg-type]
                launch_section(path)  # validated here, used by the Slurm launcher only
                data.pop(LAUNCH_KEY, None)
            base = OmegaConf.merge(base, data)
        overrides = list(overrides)
        for ov in overrides:
            if "=" not in ov:
                raise ConfigError(f"override {ov!r}: expected key=value")
        if overrides:
            source = f"overrides {overrides}"
            base = OmegaConf.merge(base, OmegaConf.from_dotlist(overrides))
        return OmegaConf.to_object(base)  # type: ignore[return-value]
    except ConfigError:
        raise
    except (OmegaConfBaseException, ValueError, TypeError) as e:
        raise ConfigError(f"{source}: {e}") from e


def to_dict(cfg: Any) -> dict:
    """A plain ``dict`` of a config dataclass (JSON/YAML-serialisable)."""
    if dataclasses.is_dataclass(cfg):
        return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)  # type: ignore[return-value]
    return dict(cfg)


def to_yaml(cfg: Any) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def save_config(cfg: Any, path: str | Path) -> Path:
    """Write the resolved config as YAML, atomically."""
    return atomic_write_text(path, to_yaml(cfg))


def config_hash(cfg: Any, exclude: Iterable[str] = ("logging", "output_dir", "run_dir", "num_workers", "device")) -> str:
    """Short stable hash of a config, ignoring keys that do not change the experiment (any depth)."""
    skip = set(exclude)

    def strip(x: Any) -> Any:
        if isinstance(x, dict):
            return {k: strip(v) for k, v in sorted(x.items()) if k not in skip}
        if isinstance(x, list):
            return [strip(v) for v in x]
        return x

    blob = json.dumps(strip(to_dict(cfg)), sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:8]
