"""The figures a search logs to MLflow: a trial's kept ratios per layer, the experiment's score vs memory.

Both are laid out by matplotlib's constrained layout, so every label stays inside the saved figure, and
memory axes use the binary unit that suits the numbers (B, KiB, MiB, GiB: a sub-MB model reads in KiB).
"""
from __future__ import annotations

UNITS = (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024), ("B", 1))
LABEL_ROWS = 6          # the top-k label column is spaced for at least this many labels


def byte_unit(values) -> tuple[str, int]:
    """The largest binary unit in which the biggest value is at least 1."""
    top = max((abs(v) for v in values if v is not None), default=0)
    return next(((name, scale) for name, scale in UNITS if top >= scale), UNITS[-1])


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def kept_ratios(realised, base_shapes) -> tuple[list[float], list[float]]:
    """Per base layer: the fraction of attention heads and of MLP channels kept (0 = removed)."""
    heads0 = base_shapes.layers[0].num_attention_heads
    ffn0 = base_shapes.layers[0].intermediate_size
    return ([s.num_attention_heads / heads0 for s in realised], [s.intermediate_size / ffn0 for s in realised])


def kept_ratio_figure(realised, base_shapes, kept_fraction: float):
    plt = _pyplot()
    attn, mlp = kept_ratios(realised, base_shapes)
    layers = range(len(realised))
    fig, ax = plt.subplots(figsize=(6, 3.2), layout="constrained")
    ax.bar([i - 0.2 for i in layers], attn, 0.4, label="attention heads")
    ax.bar([i + 0.2 for i in layers], mlp, 0.4, label="MLP channels")
    ax.set_xlabel("layer"), ax.set_ylabel("kept fraction"), ax.set_ylim(0, 1.05), ax.set_xticks(list(layers))
    ax.legend(loc="upper right", fontsize=8)
    ax.set_title(f"realised plan: {kept_fraction:.1%} of parameters kept")
    plt.close(fig)
    return fig


def score_vs_memory_figure(rows: list[dict], *, top: list[dict], budget_bytes: float, front: list[dict],
                           title: str):
    """Every scored trial (complete and ASHA-stopped drawn apart, at their last rung), the Pareto front of the
    complete ones (higher score, less memory), the top k ringed and numbered, the budget."""
    plt = _pyplot()
    scored = [r for r in rows if r.get("score") is not None and r.get("peak_memory_bytes")]
    unit, scale = byte_unit([r["peak_memory_bytes"] for r in scored] + [budget_bytes])
    fig, ax = plt.subplots(figsize=(9, 4.5), layout="constrained")
    for status, style in (("complete", dict(marker="o", c="tab:blue")),
                          ("stopped early", dict(marker="x", c="tab:gray"))):
        pts = [r for r in scored if r["status"] == status]
        if pts:
            ax.scatter([r["peak_memory_bytes"] / scale for r in pts], [r["score"] for r in pts], s=22,
                       label=f"{status} ({len(pts)})", **style)
    if front:
        pts = sorted((r["peak_memory_bytes"] / scale, r["score"]) for r in front)
        ax.step(*zip(*pts), where="post", color="k", ls="--", lw=1, label="Pareto front")
    # the top k sit close together (the best candidates all fill the budget): their labels go in a column
    # right of the plot, one line each, with a line to the point, so they never print over each other
    shown = [t for t in top if t.get("peak_memory_bytes") and t.get("score") is not None]
    for i, t in enumerate(shown):
        x, y = t["peak_memory_bytes"] / scale, t["score"]
        ax.scatter([x], [y], s=160, facecolors="none", edgecolors="tab:red", linewidths=1.5,
                   label="top k" if i == 0 else None)
        ax.annotate(f"#{t['rank']} {t.get('name') or ''}\n{t['score']:.4f}, {x:.4f} {unit}", (x, y),
                    xytext=(1.03, 1 - (i + 0.5) / max(len(shown), LABEL_ROWS)), textcoords="axes fraction",
                    fontsize=7, va="center", arrowprops=dict(arrowstyle="-", color="tab:red", lw=0.5, alpha=0.6))
    ax.axvline(budget_bytes / scale, color="r", lw=1, label="budget")
    ax.set_xlabel(f"simulated peak memory ({unit})"), ax.set_ylabel("proxy score (higher is better)")
    ax.set_title(title)
    ax.legend(fontsize=7, loc="lower right")
    plt.close(fig)
    return fig
