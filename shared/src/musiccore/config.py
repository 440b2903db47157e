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

T = TypeVar("T")

BASE_KEY = "_base_"


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
            base = OmegaConf.merge(base, _read_yaml(Path(path)))
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
    from .runs import atomic_write_text

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
