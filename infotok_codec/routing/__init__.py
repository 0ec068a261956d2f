"""Which tokens a stream keeps: the routers (`router`), meeting a rate (`rate_control`), and
fitting the `light` router's head (`light_router_fit`; the head itself is in `model`).

Callers use the modules as namespaces (`from infotok_codec.routing import router as routing`,
`rate_control`) or the names below.
"""

from infotok_codec.routing.light_router_fit import (
    FIT_STEPS,
    FIT_WINDOWS,
    fit_light_router,
    refit_model_file,
)
from infotok_codec.routing.router import (
    ROUTERS,
    allocate_array,
    allocate_counts,
    keep_count,
    select_positions,
)

__all__ = [
    "FIT_STEPS",
    "FIT_WINDOWS",
    "ROUTERS",
    "allocate_array",
    "allocate_counts",
    "fit_light_router",
    "keep_count",
    "refit_model_file",
    "select_positions",
]
