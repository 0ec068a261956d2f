"""The network and its file: conv autoencoder, compressor, FSQ, the light router's head,
encoder-side refinement of the codes against the decoder, and the safetensors model file that
carries their weights, config, coder tables and head.

Nothing here imports the stream format or its coders: the coder tables travel in the model file
as JSON text (`LoadedModel.tables_json`), parsed only where tokens are coded.
"""

from infotok_codec.model.averaging import WeightAverage
from infotok_codec.model.fsq import FSQ
from infotok_codec.model.precision import autocast, use_bf16
from infotok_codec.model.refine import refine_indices
from infotok_codec.model.tokenizer import (
    FAST_DECODER_PATH,
    SPACE_FACTOR,
    LoadedModel,
    Tokenizer,
    TokenizerConfig,
    latent_shape,
    load_model,
    read_model_metadata,
    replace_tables,
    save_decoder_file,
    save_model,
    stream_hash,
)

__all__ = [
    "FAST_DECODER_PATH",
    "FSQ",
    "SPACE_FACTOR",
    "LoadedModel",
    "Tokenizer",
    "TokenizerConfig",
    "WeightAverage",
    "autocast",
    "latent_shape",
    "load_model",
    "read_model_metadata",
    "refine_indices",
    "replace_tables",
    "save_decoder_file",
    "save_model",
    "stream_hash",
    "use_bf16",
]
