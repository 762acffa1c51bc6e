"""Test-only port of the official VRWKV6 WKV forward (OpenGVLab/Vision-RWKV,
classification/mmcls_custom/models/backbones/cuda_v6/wkv6_cuda.cu ``kernel_forward``, and the ``WKV_6``
wrapper of vrwkv6.py), loop for loop in float64 Python numbers: an oracle independent of
``kernels.reference``. Small T only (B * H * 64 * T * 64 steps per pass).

The wrapper passes ew = -exp(w) and the kernel decays by exp(ew). One CUDA thread per (batch, head, value
channel i), with the head's r, k and decay of the current token in shared memory:

1. right to left, t = T-1 .. 0: y_t = sum_j r_tj s_j, then s_j = s_j * decay_tj + k_tj v_ti
   (the state holds the tokens after t, not t itself), written to y;
2. left to right, t = 0 .. T-1: y_t += sum_j r_tj (u_j k_tj v_ti + s_j), then the same update.
"""
import math
from typing import List

import torch


def official_wkv6_forward(r: torch.Tensor, k: torch.Tensor, v: torch.Tensor, w: torch.Tensor,
                          u: torch.Tensor) -> torch.Tensor:
    """y (B, T, C) float64 of the official kernel for r, k, v, w (B, T, C) and u (H, N)."""
    B, T, C = k.shape
    H, N = u.shape
    r, k, v, w = (x.double().tolist() for x in (r, k, v, w))
    u = u.double().tolist()
    y = [[[0.0] * C for _ in range(T)] for _ in range(B)]
    for b in range(B):
        for h in range(H):
            for i in range(N):  # the thread's value channel
                c_i = h * N + i
                state2: List[float] = [0.0] * N
                for t in range(T - 1, -1, -1):
                    decay = [math.exp(-math.exp(w[b][t][h * N + j])) for j in range(N)]  # exp(ew)
                    vt = v[b][t][c_i]
                    acc = 0.0
                    for j in range(N):
                        x = k[b][t][h * N + j] * vt
                        acc += r[b][t][h * N + j] * state2[j]
                        state2[j] = state2[j] * decay[j] + x
                    y[b][t][c_i] = acc
                state1: List[float] = [0.0] * N
                for t in range(T):
                    decay = [math.exp(-math.exp(w[b][t][h * N + j])) for j in range(N)]
                    vt = v[b][t][c_i]
                    acc = 0.0
                    for j in range(N):
                        x = k[b][t][h * N + j] * vt
                        acc += r[b][t][h * N + j] * (u[h][j] * x + state1[j])
                        state1[j] = state1[j] * decay[j] + x
                    y[b][t][c_i] += acc
    return torch.tensor(y, dtype=torch.float64)
