"""Training history: one row per epoch, saved as CSV, JSON and a three-panel PNG.

Columns (``train_`` and ``val_`` versions of each of the first six):

``d_loss``, ``g_loss``          discriminator and generator losses
``d_acc_real``, ``d_acc_fake``  discriminator accuracy on real / synthetic windows
``d_score_real``, ``d_score_fake``  mean discriminator score on real / synthetic
                                (probability for the BCE loss, raw critic for WGAN)
``quality``                     the sample-quality statistic (:mod:`crab.models.gan.quality`)
``epoch``, ``phase`` ("pretrain" or "gan"), ``seconds`` (wall time of the epoch)

The PNG follows the paper's Fig. 3: losses, accuracies, scores against epoch,
training solid and validation dashed.  All three files are rewritten
atomically after every epoch.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Any

from crab.core.provenance import atomic_write_bytes, to_jsonable

METRICS = ("d_loss", "g_loss", "d_acc_real", "d_acc_fake", "d_score_real", "d_score_fake")
COLUMNS = ("epoch", "phase", *(f"{s}_{m}" for s in ("train", "val") for m in METRICS), "train_gp", "quality", "seconds")


class History:
    """Per-epoch records; ``rows`` is a list of dicts with :data:`COLUMNS` keys."""

    def __init__(self, rows: list[dict[str, Any]] | None = None, meta: dict[str, Any] | None = None) -> None:
        self.rows: list[dict[str, Any]] = [dict(r) for r in (rows or [])]
        self.meta: dict[str, Any] = dict(meta or {})

    def append(self, row: dict[str, Any]) -> None:
        self.rows.append({c: row.get(c) for c in COLUMNS})

    def column(self, name: str) -> list:
        return [r.get(name) for r in self.rows]

    def __len__(self) -> int:
        return len(self.rows)

    def to_dict(self) -> dict[str, Any]:
        return {"meta": to_jsonable(self.meta), "rows": to_jsonable(self.rows)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "History":
        return cls(d.get("rows", []), d.get("meta", {}))

    def save(self, out_dir: str | os.PathLike, plot: bool = True) -> None:
        """Write ``history.csv``, ``history.json`` and (if ``plot``) ``history.png`` atomically."""
        out = Path(out_dir)
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=list(COLUMNS), lineterminator="\n")
        w.writeheader()
        for r in self.rows:
            w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in COLUMNS})
        atomic_write_bytes(out / "history.csv", buf.getvalue().encode())
        atomic_write_bytes(out / "history.json", (json.dumps(self.to_dict(), indent=1) + "\n").encode())
        if plot and self.rows:
            atomic_write_bytes(out / "history.png", self.plot_png())

    def plot_png(self) -> bytes:
        """The three-panel figure (paper Fig. 3) as PNG bytes."""
        import matplotlib

        matplotlib.use("Agg", force=False)
        from matplotlib.figure import Figure

        ep = self.column("epoch")
        fig = Figure(figsize=(15, 4.2), dpi=90)
        axes = fig.subplots(1, 3)
        panels = [
            ("Loss", [("d_loss", "discriminator", "C0"), ("g_loss", "generator", "C1")]),
            ("Discriminator accuracy", [("d_acc_real", "real", "C2"), ("d_acc_fake", "synthetic", "C3")]),
            ("Discriminator score", [("d_score_real", "real", "C2"), ("d_score_fake", "synthetic", "C3")]),
        ]
        for ax, (title, series) in zip(axes, panels):
            for key, label, color in series:
                for split, style in (("train", "-"), ("val", "--")):
                    y = [float("nan") if v is None else float(v) for v in self.column(f"{split}_{key}")]
                    ax.plot(ep, y, style, color=color, label=f"{label} ({split})", lw=1.3)
            n_pre = sum(1 for p in self.column("phase") if p == "pretrain")
            if n_pre:
                ax.axvspan(0.5, n_pre + 0.5, color="0.9", zorder=0, label="D pretraining")
            ax.set_title(title)
            ax.set_xlabel("epoch")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        axes[1].set_ylim(-0.02, 1.02)
        q = [v for v in self.column("quality") if v is not None]
        if q:
            best = min(q)
            fig.suptitle(f"CRAB training history (best sample-quality statistic {best:.3f}" + (f", real-vs-real floor {self.meta['quality_floor']:.3f})" if "quality_floor" in self.meta else ")"), fontsize=10)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        return buf.getvalue()
