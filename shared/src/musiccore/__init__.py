"""musiccore: the thin shared package of the music-intelligence monorepo.

Modules
-------
audio     load/resample/normalise/write audio (soundfile + soxr), windowed iteration
abc       ABC notation: split, headers, validate, transpose, render to MIDI/WAV/MusicXML
eval      metrics, MARBLE-style MLP probe, Frechet distance, sung-pitch accuracy, ABC validity stats
data      the offline data kit (`make data`): ABC tunes, rendered clips, sung songs
config    typed YAML configs with ``key=value`` overrides (OmegaConf structured configs)
runs      run folders (resolved config, git, environment), atomic writes
slurm     sbatch template rendering and submission
testing   pytest plugin: ``slow``/``gpu``/``slurm`` markers that skip cleanly
"""

__version__ = "0.1.0"
