"""The FastGRNN cell's maths: the fused inference pass and backpropagation through time.

    pre_t = W x_t + U h_{t-1}          W = W1 W2, U = U1 U2 when a rank is set
    z_t   = sigmoid(pre_t + b_z)       gate
    c_t   = tanh(pre_t + b_h)          candidate
    h_t   = (sigmoid(zeta) (1 - z_t) + sigmoid(nu)) c_t + z_t h_{t-1},   h_0 = 0
    y     = FC h_T + b_fc

Everything here is a function of named parameter arrays (``params["W1"]`` …), so it can be read
and gradient-checked without the model object around it.  Batches and sequences are one NumPy
expression per time step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np

from .normalization import Normalizer

Params = Mapping[str, np.ndarray]


def sigmoid(x: np.ndarray) -> np.ndarray:
    # tanh form: exact, and never overflows (1/(1+exp(-x)) warns for x < -88 in float32)
    return 0.5 * np.tanh(0.5 * x) + 0.5


def softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=-1, keepdims=True)
    np.exp(x, out=x)
    x /= x.sum(axis=-1, keepdims=True)
    return x


def effective_weights(p: Params) -> tuple[np.ndarray, np.ndarray]:
    """Dense W (H, D) and U (H, H), multiplying out low-rank factors."""
    w = p["W"] if "W" in p else p["W1"] @ p["W2"]
    u = p["U"] if "U" in p else p["U1"] @ p["U2"]
    return w, u


# ---------------------------------------------------------------------- inference
@dataclass
class InferencePlan:
    """Inference constants derived from the parameters (rebuilt after every change).

    The gate and the candidate share W, so one matrix product serves both: with
    sigmoid(a) = (1 + tanh(a/2)) / 2, the columns [W/2 | W] give tanh's argument for both halves,
    and one tanh call evaluates the whole cell.
    """

    a_w: np.ndarray  # (D, 2H): [W/2 ; W]^T
    a_u: np.ndarray  # (H, 2H): [U/2 ; U]^T
    a_b: np.ndarray  # (2H,):   [b_z/2 ; b_h]
    alpha: float  # sigmoid(zeta)/2 + sigmoid(nu)
    beta: float  # sigmoid(zeta)/2
    fc_t: np.ndarray  # (H, O)
    fc_b: np.ndarray  # (O,)
    fc_half_t: np.ndarray  # (H, O) FC/2 for the fused output sigmoid
    fc_half_b: np.ndarray
    hidden_dim: int
    #: (2H, D) and (2H, 1): ``a_w`` and ``a_b`` with the hidden units along rows (probabilities_one_step)
    a_w_rows: np.ndarray | None = None
    a_b_col: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.a_w_rows is None:
            self.a_w_rows = np.ascontiguousarray(self.a_w.T)
            self.a_b_col = np.ascontiguousarray(self.a_b[:, None])


def compile_plan(p: Params, dtype: np.dtype, normalizer: Normalizer | None = None) -> InferencePlan:
    """The plan for normalized input, or with ``normalizer`` the plan for raw features.

    ((x - mu) / sigma) W^T = x (W / sigma)^T - (mu / sigma) W^T, so predicting from raw
    features costs exactly what predicting from normalized ones does.  A quantized model holds
    its dequantized values in ``p``, so inference needs no separate integer path.
    """
    w, u = effective_weights(p)
    zeta_s = float(sigmoid(p["zeta"][0]))
    nu_s = float(sigmoid(p["nu"][0]))
    fc = p["fc_w"]
    a_w = np.concatenate([0.5 * w, w]).T  # (D, 2H)
    a_b = np.concatenate([0.5 * p["b_z"], p["b_h"]]).astype(np.float64)
    if normalizer is not None:
        inv = 1.0 / normalizer.stds
        a_b = a_b - (normalizer.means * inv) @ a_w
        a_w = a_w * inv[:, None]
    return InferencePlan(
        a_w=np.ascontiguousarray(a_w, dtype=dtype),
        a_u=np.ascontiguousarray(np.concatenate([0.5 * u, u]).T),
        a_b=a_b.astype(dtype),
        alpha=0.5 * zeta_s + nu_s,
        beta=0.5 * zeta_s,
        fc_t=np.ascontiguousarray(fc.T),
        fc_b=p["fc_b"].copy(),
        fc_half_t=np.ascontiguousarray(0.5 * fc.T),
        fc_half_b=0.5 * p["fc_b"],
        hidden_dim=int(w.shape[0]),
    )


def hidden(plan: InferencePlan, x: np.ndarray, h: np.ndarray | None) -> np.ndarray:
    """h_T for (B, D) input (one step) or (B, T, D) sequences; ``h`` is h_0 (None: zeros)."""
    hd = plan.hidden_dim
    steps = (x,) if x.ndim == 2 else tuple(x[:, t] for t in range(x.shape[1]))
    for x_t in steps:
        a = x_t @ plan.a_w
        a += plan.a_b
        if h is not None:
            a += h @ plan.a_u
        np.tanh(a, out=a)
        t_gate = a[:, :hd]
        cand = a[:, hd:]
        h_new = (plan.alpha - plan.beta * t_gate) * cand
        if h is not None:
            # z = (1 + t_gate) / 2
            h_new += (0.5 * t_gate + 0.5) * h
        h = h_new
    assert h is not None
    return h


def logits(plan: InferencePlan, x: np.ndarray, h0: np.ndarray | None) -> np.ndarray:
    out = hidden(plan, x, h0) @ plan.fc_t
    out += plan.fc_b
    return out


def probabilities(plan: InferencePlan, x: np.ndarray, h0: np.ndarray | None, activation: str) -> np.ndarray:
    h = hidden(plan, x, h0)
    if activation == "sigmoid":
        out = h @ plan.fc_half_t
        out += plan.fc_half_b
        np.tanh(out, out=out)  # sigmoid(x) = (1 + tanh(x / 2)) / 2, never overflows
        out *= 0.5
        out += 0.5
        return out
    out = h @ plan.fc_t
    out += plan.fc_b
    return softmax(out)


def probabilities_one_step(plan: InferencePlan, x: np.ndarray, activation: str) -> np.ndarray:
    """``probabilities(plan, x, None, activation)`` for one step from h_0 = 0, with the hidden units
    along rows.

    The gate and candidate halves of the cell are then contiguous blocks; as columns of a (B, 2H)
    array they are strided, and NumPy's elementwise loops cost 3-4x as much per element on strided
    operands (the candidate router's hot path, 100 candidates: ~31 µs of its ~45 went there).  The
    float32 operations are the same, in the same order, and the output layer runs on a contiguous
    copy of h as before: the router's scores are bit-identical (tests/test_routing.py checks it).
    ``x`` is (B, D); pass the transpose of a (D, B) C-contiguous array to save a copy.
    """
    if activation != "sigmoid":
        return probabilities(plan, x, None, activation)
    hd = plan.hidden_dim
    a = plan.a_w_rows @ x.T  # (2H, B)
    a += plan.a_b_col
    np.tanh(a, out=a)
    h = np.multiply(a[:hd], np.float32(plan.beta) if a.dtype == np.float32 else plan.beta)
    np.subtract(np.float32(plan.alpha) if a.dtype == np.float32 else plan.alpha, h, out=h)
    h *= a[hd:]
    out = np.ascontiguousarray(h.T) @ plan.fc_half_t
    out += plan.fc_half_b
    np.tanh(out, out=out)
    out *= 0.5
    out += 0.5
    return out


# ---------------------------------------------------------------------- training
@dataclass
class ForwardCache:
    """What backpropagation through time needs from a training forward pass."""

    x_tb: np.ndarray  # (T, B, D) inputs, time-major
    w: np.ndarray  # effective W (H, D)
    u: np.ndarray  # effective U (H, H)
    z: np.ndarray  # (T, B, H) gates
    c: np.ndarray  # (T, B, H) candidates
    h: np.ndarray  # (T+1, B, H) hidden states, h[0] = h_0
    zeta_s: float
    nu_s: float


def forward_train(p: Params, x: np.ndarray) -> tuple[np.ndarray, ForwardCache]:
    """Logits (B, O) and the cache for :func:`backward`.  ``x`` is (B, T, D), validated."""
    w, u = effective_weights(p)
    dtype = w.dtype
    b, t_len, d = x.shape
    hd = w.shape[0]
    x_tb = np.ascontiguousarray(x.transpose(1, 0, 2))
    xw = (x_tb.reshape(t_len * b, d) @ w.T).reshape(t_len, b, hd)
    zeta_s = float(sigmoid(p["zeta"][0]))
    nu_s = float(sigmoid(p["nu"][0]))
    z_all = np.empty((t_len, b, hd), dtype=dtype)
    c_all = np.empty((t_len, b, hd), dtype=dtype)
    h_all = np.zeros((t_len + 1, b, hd), dtype=dtype)
    b_z_half = 0.5 * p["b_z"]
    for t in range(t_len):
        pre = xw[t]
        if t > 0:
            pre = pre + h_all[t] @ u.T
        z = np.tanh(0.5 * pre + b_z_half)
        z *= 0.5
        z += 0.5
        c = np.tanh(pre + p["b_h"])
        z_all[t] = z
        c_all[t] = c
        h_all[t + 1] = (zeta_s * (1.0 - z) + nu_s) * c + z * h_all[t]
    out = h_all[t_len] @ p["fc_w"].T + p["fc_b"]
    return out, ForwardCache(x_tb, w, u, z_all, c_all, h_all, zeta_s, nu_s)


def backward(p: Params, g: Mapping[str, np.ndarray], cache: ForwardCache, dlogits: np.ndarray) -> None:
    """BPTT: write the gradient of every parameter into ``g`` (zeroed views named like ``p``)."""
    t_len, b, hd = cache.z.shape
    d = cache.x_tb.shape[2]
    dtype = cache.z.dtype
    h_last = cache.h[t_len]
    g["fc_w"][...] = dlogits.T @ h_last
    g["fc_b"][...] = dlogits.sum(axis=0)
    dh = dlogits @ p["fc_w"]
    d_pre = np.empty((t_len, b, hd), dtype=dtype)
    zs, ns = cache.zeta_s, cache.nu_s
    d_zeta_s = 0.0
    d_nu_s = 0.0
    for t in range(t_len - 1, -1, -1):
        z, c, h_prev = cache.z[t], cache.c[t], cache.h[t]
        dh_c = dh * c
        d_nu_s += float(dh_c.sum())
        d_zeta_s += float(dh_c.sum() - (dh_c * z).sum())
        dc = dh * (zs * (1.0 - z) + ns)
        dz = dh * (h_prev - zs * c)
        dpz = dz * z * (1.0 - z)
        dpc = dc * (1.0 - c * c)
        g["b_z"][...] += dpz.sum(axis=0)
        g["b_h"][...] += dpc.sum(axis=0)
        dp = dpz + dpc
        d_pre[t] = dp
        dh = dh * z
        if t > 0:
            dh += dp @ cache.u
    dw = d_pre.reshape(t_len * b, hd).T @ cache.x_tb.reshape(t_len * b, d)
    if t_len > 1:
        du = d_pre[1:].reshape((t_len - 1) * b, hd).T @ cache.h[1:t_len].reshape((t_len - 1) * b, hd)
    else:
        du = np.zeros((hd, hd), dtype=dtype)
    if "W" in g:
        g["W"][...] = dw
    else:
        g["W1"][...] = dw @ p["W2"].T
        g["W2"][...] = p["W1"].T @ dw
    if "U" in g:
        g["U"][...] = du
    else:
        g["U1"][...] = du @ p["U2"].T
        g["U2"][...] = p["U1"].T @ du
    g["zeta"][0] = d_zeta_s * zs * (1.0 - zs)
    g["nu"][0] = d_nu_s * ns * (1.0 - ns)
