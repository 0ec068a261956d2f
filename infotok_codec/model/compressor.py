"""The adaptive compressor and de-compressor: transformers over latent positions.

Attention is full inside a spatial window of `window × window` latent positions (64×64 pixels at
8× space) and block-causal across latent frames: a position sees its window in its own and earlier
latent frames. Windows keep the cost linear in resolution, and training crops the size of one
window see exactly what inference sees. Grids that do not divide into windows are padded; padded
keys are masked out.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

WINDOW_GROUP = 16  # windows per pass through the blocks (a 512×512 tile has 64)


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.proj(y.transpose(1, 2).reshape(b, n, d))


class TransformerBlock(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), mask)
        return x + self.mlp(self.norm2(x))


class WindowTransformer(nn.Module):
    """`(B, dim, T', h, w)` → `(B, dim, T', h, w)`, windowed and block-causal in time.

    T' ≤ max_latent_frames (a 64-frame chunk at 4× time by default).
    """

    def __init__(
        self, dim: int, depth: int, heads: int, window: int, max_latent_frames: int = 16
    ) -> None:
        super().__init__()
        self.window = window
        self.pos_space = nn.Parameter(torch.zeros(window * window, dim))
        self.pos_time = nn.Parameter(torch.zeros(max_latent_frames, dim))
        nn.init.trunc_normal_(self.pos_space, std=0.02)
        nn.init.trunc_normal_(self.pos_time, std=0.02)
        self.blocks = nn.ModuleList([TransformerBlock(dim, heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, recompute: bool = False) -> torch.Tensor:
        """With `recompute` (under autograd), each block's activations are recomputed in the
        backward pass rather than held (`torch.utils.checkpoint`)."""
        b, d, t, h, w = x.shape
        win = self.window
        ph, pw = -h % win, -w % win
        valid = torch.ones(1, 1, t, h, w, dtype=torch.bool, device=x.device)
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph))
            valid = F.pad(valid, (0, pw, 0, ph))
        nh, nw = (h + ph) // win, (w + pw) // win
        # (B, d, t, nh, win, nw, win) → (B·nh·nw, t·win·win, d): one sequence per window.
        seq = x.reshape(b, d, t, nh, win, nw, win).permute(0, 3, 5, 2, 4, 6, 1)
        seq = seq.reshape(b * nh * nw, t * win * win, d)
        pos = (self.pos_time[:t, None, :] + self.pos_space[None, :, :]).reshape(t * win * win, d)
        seq = seq + pos
        key_valid = valid.reshape(1, t, nh, win, nw, win).permute(0, 2, 4, 1, 3, 5)
        key_valid = key_valid.reshape(nh * nw, 1, 1, t * win * win).repeat(b, 1, 1, 1)
        frame = torch.arange(t, device=x.device).repeat_interleave(win * win)
        causal = frame[:, None] >= frame[None, :]
        mask = causal[None, None] & key_valid
        # Windows are independent, so they run in groups: the blocks' working memory (the MLP's
        # hidden layer is 4× the sequence) stays that of WINDOW_GROUP windows at any frame size.
        parts = []
        for first in range(0, seq.shape[0], WINDOW_GROUP):
            part, part_mask = seq[first : first + WINDOW_GROUP], mask[first : first + WINDOW_GROUP]
            for block in self.blocks:
                if recompute:
                    part = checkpoint(block, part, part_mask, use_reentrant=False)
                else:
                    part = block(part, part_mask)
            parts.append(self.norm(part))
        seq = torch.cat(parts) if len(parts) > 1 else parts[0]
        # (B, d, t, h, w) as a view of (B, t, h, w, d): the decoder copies it into its layout.
        y = seq.reshape(b, nh, nw, t, win, win, d).permute(0, 3, 1, 4, 2, 5, 6)
        y = y.reshape(b, t, nh * win, nw * win, d)[:, :, :h, :w]
        return y.permute(0, 4, 1, 2, 3)
