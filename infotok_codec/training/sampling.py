"""Stage 2's keep-masks: InfoTok's data-dependent rate sampler (r = clip(b·L(x)/EMA(L), 1/16,
1), InfoTok §3.3), with positions chosen as the codec's own routers choose them."""

from __future__ import annotations

import random
from collections.abc import Sequence

import numpy as np
import torch

from infotok_codec.model.tokenizer import Tokenizer
from infotok_codec.routing import keep_count, select_positions

# Stage-2 rate sampler: r = clip(b · L(x) / EMA(L), 1/16, 1), b drawn from these (InfoTok §3.3).
STAGE2_BUDGETS = (1.0, 0.75, 0.5, 0.25)


MIN_RATE = 1 / 16


def stage2_keep_masks(
    error: torch.Tensor, rates: torch.Tensor, routers: Sequence[str]
) -> torch.Tensor:
    """Each clip's keep-mask: ⌈r·N⌉ positions of error map `(B, T', h, w)` chosen by the codec's
    own `router.select_positions`, so stage 2 trains on exactly the masks encoding makes."""
    t, h, w = error.shape[1:]
    shape = (int(t), int(h), int(w))
    n = t * h * w
    masks = [
        select_positions(router, e, shape, keep_count(r, n))
        for e, r, router in zip(error.float().cpu().numpy(), rates.tolist(), routers, strict=True)
    ]
    return torch.from_numpy(np.stack(masks)).to(error.device)


@torch.no_grad()
def sample_keep_masks(
    model: Tokenizer,
    x: torch.Tensor,
    err_ema: float | None,
    amp: bool,
    spread_share: float,
    full_rate_share: float = 0.0,
) -> tuple[torch.Tensor, float]:
    """InfoTok's data-dependent sampler: per clip r = clip(b·L(x)/EMA(L), 1/16, 1); ⌈r·N⌉
    positions are kept as the `fixed` router keeps them (as `uniform` does for a `spread_share`
    of clips, so that baseline is measured with a model that has seen its masks). A
    `full_rate_share` of clips is kept whole."""
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
        error = model.error_map(x).float()
    per_clip = error.flatten(1).mean(dim=1)
    mean = per_clip.mean().item()
    err_ema = mean if err_ema is None else 0.99 * err_ema + 0.01 * mean
    b = torch.tensor([random.choice(STAGE2_BUDGETS) for _ in range(x.shape[0])], device=x.device)
    rates = (b * per_clip / err_ema).clamp(MIN_RATE, 1.0)
    whole = torch.tensor([random.random() < full_rate_share for _ in range(len(x))])
    rates[whole.to(rates.device)] = 1.0
    routers = ["uniform" if random.random() < spread_share else "fixed" for _ in range(len(x))]
    return stage2_keep_masks(error, rates, routers), err_ema
