"""Reconstruct: after a cut, refit each output projection on the units it kept (least squares).

Removing attention heads or MLP channels removes their columns from the output projection (o_proj,
down_proj / fc2). The kept columns alone no longer reproduce the layer's output; the columns that best do,
on calibration activations X of the dense model (rows = input features), solve

    min_W' || W X - W' X_S ||^2   ->   W' = W G[:, S] (G[S, S] + damp I)^-1,    G = X X^T

(the layer-wise OBS / SparseGPT-style update, restricted to structured units as in SlimGPT or ZipLM).
Only the Gram matrix G of each projection's input is needed: it depends on the dense model alone, so a
search collects it once per experiment with the unit rankings (`compute_rankings(..., grams=True)`), and a
trial solves one small system per cut projection. Nothing about the architecture changes (no bias is
added), so exported models and the runtimes see ordinary smaller weights.

Bias compensation (FLAP, An et al. 2024, eq. 9; `Plan.compensate`): a removed input feature j of the projection
still had a mean value mu_j on calibration text; its mean contribution W[:, j] mu_j is moved into a bias,

    b' = b + W[:, R] mu_R          (R: the removed features)

so the layer's output keeps its dense mean. With reconstruction too, the refit gets an intercept: the same least
squares on the features [x; 1], whose Gram matrix is [[G, N mu], [N mu^T, N]] (N calibration tokens), so the
kept columns and the bias are fit jointly (`refit`).

Cost (why a search may leave it off, `gram_bytes`): G is in_features^2 FP32 values per projection, e.g.
0.9 GB for one Llama-3-8B down_proj, ~28 GB for the whole model.
"""
from __future__ import annotations

import torch

DAMP = 0.01            # ridge: this fraction of G[S, S]'s mean diagonal (SparseGPT's percdamp default)
MAX_DAMP_TRIES = 6     # a singular G[S, S] (units that never fired) retries with 10x the damping


def gram_bytes(shapes) -> int:
    """FP32 bytes of the Gram matrices a reconstruction needs for a model of these shapes."""
    total = 0
    for layer in shapes.layers:
        if layer.num_attention_heads:
            total += (layer.num_attention_heads * shapes.head_dim) ** 2
        if layer.intermediate_size:
            total += layer.intermediate_size ** 2
    return 4 * total


def check_gram_memory(shapes, device_type: str = "cpu") -> None:
    """One clear line instead of an out-of-memory kill: the Gram matrices accumulate on the model's device
    and are kept on the host."""
    from ._distill import available_memory
    need = gram_bytes(shapes)
    for kind in dict.fromkeys([device_type, "cpu"]):
        free = available_memory(kind)
        if need > free:
            raise ValueError(f"reconstruction needs {need / 1e9:.3g} GB of Gram matrices (every output projection's "
                             f"input, FP32) and {kind} has {free / 1e9:.3g} GB free: leave it off "
                             f"(plan \"reconstruct\": false, space.reconstruct: false)")


def least_squares(weight: torch.Tensor, gram: torch.Tensor, cols: torch.Tensor, *, intercept: bool = False) -> torch.Tensor:
    """The [out, len(cols)] weight over input features `cols` that best reproduces `weight` [out, in] on the
    activations whose Gram matrix is `gram` [in, in]. Solved in FP32 on the weight's device, returned in its dtype.
    intercept: the last of `cols` is the constant feature (refit's bias): not damped, nor part of the damping scale."""
    device = weight.device
    gram = gram.to(device=device, dtype=torch.float32)
    cols = cols.to(device)
    g_ss = gram.index_select(0, cols).index_select(1, cols)
    rhs = weight.float() @ gram.index_select(1, cols)                  # W G[:, S]   [out, |S|]
    features = g_ss.diagonal()[:-1] if intercept else g_ss.diagonal()
    scale = features.mean().clamp_min(torch.finfo(torch.float32).tiny)
    eye = torch.eye(len(cols), device=device, dtype=torch.float32)
    if intercept:
        eye[-1, -1] = 0.0
    damp = DAMP
    for _ in range(MAX_DAMP_TRIES):
        factor, info = torch.linalg.cholesky_ex(g_ss + damp * scale * eye)
        if int(info) == 0:
            # W' (G_SS + damp) = W G[:, S]  <=>  (G_SS + damp) W'^T = (W G[:, S])^T  (G symmetric)
            solved = torch.cholesky_solve(rhs.t(), factor).t()
            if torch.isfinite(solved).all():
                return solved.to(weight.dtype).contiguous()
        damp *= 10
    # no stable solve: keep the plain slice (what a cut without reconstruction does)
    return weight.index_select(1, cols).contiguous()


def refit(weight: torch.Tensor, bias: torch.Tensor | None, cols: torch.Tensor, *, gram: torch.Tensor | None = None,
          mean: torch.Tensor | None = None, count: int | None = None):
    """(weight', bias') of an output projection cut to input features `cols`: sliced, refit by least squares
    (`gram`), and/or with the removed features' mean contribution moved into the bias (`mean`; with `gram`
    too, an intercept fit jointly, which needs the calibration token `count`). bias' is None when neither the
    projection had a bias nor compensation gave it one."""
    if mean is None:
        return (weight.index_select(1, cols.to(weight.device)) if gram is None else
                least_squares(weight, gram, cols)), bias
    device = weight.device
    mean = mean.to(device=device, dtype=torch.float32)
    old_bias = torch.zeros(weight.shape[0], device=device) if bias is None else bias.float()
    if gram is None:
        removed = torch.ones(weight.shape[1], dtype=torch.bool, device=device)
        removed[cols.to(device)] = False
        new_bias = old_bias + weight.float()[:, removed] @ mean[removed]
        return weight.index_select(1, cols.to(device)), new_bias.to(weight.dtype)
    if not count:
        raise ValueError("an intercept refit needs the number of calibration tokens behind the Gram matrix")
    n = weight.shape[1]
    gram = gram.to(device=device, dtype=torch.float32)
    total = mean * count
    augmented = torch.cat([torch.cat([gram, total[:, None]], 1),
                           torch.cat([total, total.new_tensor([float(count)])])[None]], 0)
    padded = torch.cat([weight.float(), old_bias[:, None]], 1)
    solved = least_squares(padded, augmented, torch.cat([cols.to(device), cols.new_tensor([n]).to(device)]),
                           intercept=True)
    return solved[:, :-1].to(weight.dtype).contiguous(), solved[:, -1].to(weight.dtype).contiguous()
