"""Test-only port of the official Vision-RWKV Bi-WKV CUDA forward (OpenGVLab/Vision-RWKV,
``classification/mmcls_custom/models/backbones/cuda_new/bi_wkv_kernel.cu``, same arithmetic as the older
``cuda/wkv_cuda.cu`` the released checkpoints were trained with).

Written from the kernel's loops, not from the project's formulas: it is the oracle the official operator
of ``vision_rwkv.kernels`` is tested against. The kernel gives each (batch, channel) one warp; lane j of
32 owns the tokens [j·L, j·L + L) with L = ceil(T / 32). Every loop below is one loop of the kernel,
run for all (batch, channel, lane) at once (tensors of shape (B, 32, C)); ``__shfl_sync(x, i)`` reads
lane i's value of x. Arithmetic in the dtype of the inputs (float64 in the tests).
"""
import torch

TOKEN_SPLIT = 32
MIN_VALUE = -1e38
EPS = 1e-6


def official_bi_wkv_forward(w: torch.Tensor, u: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                            eps: float = EPS) -> torch.Tensor:
    """y (B, T, C) of the official forward kernel for w, u (C,) and k, v (B, T, C)."""
    B, T, C = k.shape
    seg = -(-T // TOKEN_SPLIT)  # _T
    lane = torch.arange(TOKEN_SPLIT, device=k.device)
    start = seg * lane  # _t
    length = torch.clamp(torch.minimum(T - start, torch.full_like(start, seg)), min=0)  # _tokenLength (<= 0: idle)
    full = lambda value: torch.full((B, TOKEN_SPLIT, C), value, dtype=k.dtype, device=k.device)

    def token(x, idx):  # x[:, idx[j], :] per lane, clamped where the lane is idle
        return x[:, idx.clamp(0, T - 1), :]

    # loop 1: each lane's own tokens, (c, d, o1) from its start, (a, b, o2) towards its end
    a, b, c, d = full(0.), full(0.), full(0.), full(0.)
    o1, o2 = full(MIN_VALUE), full(MIN_VALUE)
    for step in range(seg):
        active = (step < length)[None, :, None]
        i = start + step
        ki, vi = token(k, i), token(v, i)
        no = torch.maximum(o1, ki - w * step)
        e1, e3 = torch.exp(o1 - no), torch.exp(ki - w * step - no)
        c, d, o1 = (torch.where(active, new, old) for new, old in
                    ((e1 * c + e3 * vi, c), (e1 * d + e3, d), (no, o1)))
        ni = 2 * start + length - 1 - i
        exp_w = (start + length - ni).to(k.dtype)[None, :, None]
        kn, vn = token(k, ni), token(v, ni)
        no = torch.maximum(o2, kn - w * exp_w)
        e2, e3 = torch.exp(o2 - no), torch.exp(kn - w * exp_w - no)
        a, b, o2 = (torch.where(active, new, old) for new, old in
                    ((e2 * a + e3 * vn, a), (e2 * b + e3, b), (no, o2)))

    # loop 2: lanes before this one, (a, b, o2) decayed to this lane's start
    a2, b2, o4 = full(0.), full(0.), full(MIN_VALUE)
    for i in range(TOKEN_SPLIT):
        before = (i < lane)[None, :, None]
        exp_w = ((lane - i - 1) * seg).to(k.dtype)[None, :, None]
        o2_i = o2[:, i:i + 1] - w * exp_w
        no = torch.maximum(o2_i, o4)
        new_a = a2 * torch.exp(o4 - no) + a[:, i:i + 1] * torch.exp(o2_i - no)
        new_b = b2 * torch.exp(o4 - no) + b[:, i:i + 1] * torch.exp(o2_i - no)
        a2, b2, o4 = (torch.where(before, new, old) for new, old in ((new_a, a2), (new_b, b2), (no, o4)))
    a, b, o2 = a2, b2, o4

    # loop 3: this lane and the lanes after it, (c, d, o1) decayed back to this lane's start
    c2, d2, o3 = full(0.), full(0.), full(MIN_VALUE)
    for i in range(TOKEN_SPLIT):
        after = (i >= lane)[None, :, None]
        exp_w = ((i - lane) * seg).to(k.dtype)[None, :, None]
        o1_i = o1[:, i:i + 1] - w * exp_w
        no = torch.maximum(o1_i, o3)
        new_c = c2 * torch.exp(o3 - no) + c[:, i:i + 1] * torch.exp(o1_i - no)
        new_d = d2 * torch.exp(o3 - no) + d[:, i:i + 1] * torch.exp(o1_i - no)
        c2, d2, o3 = (torch.where(after, new, old) for new, old in ((new_c, c2), (new_d, d2), (no, o3)))
    k0, v0 = token(k, start), token(v, start)
    c = c2 - torch.exp(k0 - o3) * v0
    d = d2 - torch.exp(k0 - o3)
    o1 = o3

    # loop 4: outputs, then the states move one token on
    y = torch.zeros_like(k)
    for step in range(seg):
        i = start + step
        active = step < length
        ki, vi = token(k, i), token(v, i)
        no = torch.maximum(torch.maximum(o1, u + ki), o2)
        e1, e2, e3 = torch.exp(o1 - no), torch.exp(o2 - no), torch.exp(u + ki - no)
        out = (c * e1 + a * e2 + e3 * vi) / (d * e1 + b * e2 + e3 + eps)
        y[:, i[active]] = out[:, active]
        no = torch.maximum(o2 - w, ki)
        e2, e3 = torch.exp(o2 - w - no), torch.exp(ki - no)
        a, b, o2 = e2 * a + e3 * vi, e2 * b + e3, no
        k2, v2 = token(k, (i + 1) % T), token(v, (i + 1) % T)
        no = torch.maximum(o1 + w, k2 + w)
        e1, e3 = torch.exp(o1 + w - no), torch.exp(k2 + w - no)
        c, d, o1 = e1 * c - e3 * v2, e1 * d - e3, no
    return y
