"""Training the tokenizer, and fitting what ships beside its weights.

`train` runs stage 1 (full rate) and stage 2 (InfoTok's data-dependent rates) from
`TrainOptions`; `coder_fit` fits the token coders' tables for a network. The pieces the
benchmark scripts reuse (the validation windows, the stage-2 sampler, the schedule) are here
too, so they measure exactly what a run does.
"""

from infotok_codec.training.coder_fit import TokenChain, fit_coder, refit_model_file
from infotok_codec.training.data import ClipWindows, load_clip, validation_batch, validation_files
from infotok_codec.training.loop import learning_rate, psnr, reconstruction_loss, train, validate
from infotok_codec.training.options import TrainOptions, TrainReport, TrainState
from infotok_codec.training.sampling import sample_keep_masks, stage2_keep_masks
from infotok_codec.training.weights import init_weights, refuse_frozen_new

__all__ = [
    "ClipWindows",
    "TokenChain",
    "TrainOptions",
    "TrainReport",
    "TrainState",
    "fit_coder",
    "init_weights",
    "learning_rate",
    "load_clip",
    "psnr",
    "reconstruction_loss",
    "refit_model_file",
    "refuse_frozen_new",
    "sample_keep_masks",
    "stage2_keep_masks",
    "train",
    "validate",
    "validation_batch",
    "validation_files",
]
