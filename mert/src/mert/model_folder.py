"""Finding a model folder (config.json + weights) inside what a user passed: the folder itself or a run folder.

Kept apart from the CLI so that the library modules that resolve ``--model`` / ``model.init_from`` (extraction,
training, evaluation) do not import ``mert.cli``, which imports them.
"""

from __future__ import annotations

from pathlib import Path

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")


def is_model_folder(path: str | Path) -> bool:
    """True when ``path`` holds ``config.json`` and one of :data:`WEIGHT_FILES`."""
    p = Path(path)
    return (p / "config.json").is_file() and any((p / n).is_file() for n in WEIGHT_FILES)


def find_model_folder(path: str | Path) -> Path | None:
    """A folder with config.json + weights: ``path`` itself, its ``encoder/`` (written by ``mert train``), ``final/``,
    ``export/``, ``model/``, or its newest ``checkpoint-*``."""
    path = Path(path)
    if is_model_folder(path):
        return path
    for name in ("encoder", "final", "export", "model"):
        if is_model_folder(path / name):
            return path / name
    ckpts = sorted(
        (p for p in path.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()),
        key=lambda p: int(p.name.split("-")[-1]), reverse=True,
    )
    for p in ckpts:
        if is_model_folder(p):
            return p
    return None
