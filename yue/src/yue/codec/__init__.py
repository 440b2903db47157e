"""X-Codec (transformers ``XcodecModel`` wrapper), converter from the released files, Vocos upsamplers, post-process."""

from yue.codec.config import SemanticConfig, XCodecConfig, released_config, tiny_config
from yue.codec.xcodec import CodecInputError, CodecLoadError, XCodec, prepare_waveform

__all__ = [
    "SemanticConfig",
    "XCodecConfig",
    "released_config",
    "tiny_config",
    "XCodec",
    "CodecInputError",
    "CodecLoadError",
    "prepare_waveform",
]
