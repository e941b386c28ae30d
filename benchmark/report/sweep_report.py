"""`benchmark table --table sweep`: accuracy against each swept value (the paper's Fig. 3), and the
point each model-selection rule would choose (DomainBed's protocol: choose hyperparameters on
the training domain, report the test accuracy of that choice).

Per method, source and sweep point: the mean over seeds of the unseen-target mean (with its 95%
t-interval), of the source's own test accuracy, and of the source's validation accuracy, each
read at the epochs the rule picked. A figure per method and source has one panel per swept key:
the value on the x axis, one line per target and one for the unseen mean, with intervals over
seeds; where other keys were swept too, the panel is the slice at their method defaults when
the sweep has it, else their mean (the title says which).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .figures import save_figure, t_half_width
from ..core.sources import seen_mask
from ..store import schema


def _half_width(values: pd.Series) -> float:
    """NaN, not None, where there is no interval: it goes into frames and errorbar arrays."""
    half = t_half_width(values.std(ddof=1), len(values))
    return float("nan") if half is None else half


def parse_point(label: str) -> dict[str, str]:
    return dict(part.split("=", 1) for part in label.split(", ")) if label else {}


def point_summary(chosen: pd.DataFrame, history: pd.DataFrame, metric: str) -> pd.DataFrame:
    """One row per (method, source, sweep point): unseen mean, source test and source val
    accuracy, each a mean over seeds (unseen with its t half-width), and how many seeds."""
    acc = chosen[chosen["metric"] == metric]
    val = history[(history["target"] == schema.SOURCE_VAL) & (history["metric"] == "acc")]
    at = chosen.drop_duplicates(["job_hash", "epoch"])[["job_hash", "epoch"]]
    val = val.merge(at, on=["job_hash", "epoch"])[["job_hash", "value"]].rename(columns={"value": "val"})
    rows = []
    for (method, source, point), group in acc.groupby(["method", "source", "sweep"], sort=True):
        per_seed = []
        for (seed, job), runs in group.groupby(["seed", "job_hash"]):
            mine = seen_mask(runs)
            unseen = runs[~mine]["value"].mean()
            own = runs[mine]["value"].mean()
            per_seed.append({"seed": seed, "job_hash": job, "unseen": unseen, "source_test": own})
        seeds = pd.DataFrame(per_seed).merge(val, on="job_hash", how="left").drop_duplicates("job_hash")
        rows.append({"method": method, "source": source, "point": point, "seeds": len(seeds),
                     "unseen": seeds["unseen"].mean(), "unseen_hw": _half_width(seeds["unseen"]),
                     "source_test": seeds["source_test"].mean(), "source_val": seeds["val"].mean()})
    return pd.DataFrame(rows)


PICKED_BY = {"source_val": ("source_val", "the source validation split"),
             "source_test": ("source_test", "the source test set"),
             "oracle": ("unseen", "the unseen targets (oracle)")}


def picks(summary: pd.DataFrame) -> pd.DataFrame:
    """Per (method, source), the point each criterion chooses and its unseen-target mean."""
    rows = []
    for (method, source), group in summary.groupby(["method", "source"], sort=False):
        for name, (column, words) in PICKED_BY.items():
            valid = group.dropna(subset=[column])
            if valid.empty:
                rows.append({"method": method, "source": source, "chosen by": words, "point": "–", "unseen": None})
                continue
            best = valid.loc[valid[column].idxmax()]
            rows.append({"method": method, "source": source, "chosen by": words, "point": best["point"],
                         "unseen": best["unseen"]})
    return pd.DataFrame(rows)


def render(summary: pd.DataFrame, chosen_points: pd.DataFrame, selection_label: str) -> str:
    from tabulate import tabulate

    def pct(x) -> str:
        return "–" if x is None or pd.isna(x) else f"{100 * x:.2f}"

    body = [[r.method, r.source, r.point, r.seeds,
             pct(r.unseen) + ("" if pd.isna(r.unseen_hw) else f" ± {100 * r.unseen_hw:.2f}"),
             pct(r.source_test), pct(r.source_val)] for r in summary.itertuples()]
    out = [f"**Sweep ({selection_label}; unseen: mean over unseen targets, ± 95% t-interval over seeds)**", "",
           tabulate(body, headers=["method", "source", "point", "seeds", "unseen", "source test", "source val"],
                    tablefmt="github", disable_numparse=True), "",
           "**The point each criterion chooses, and its unseen-target accuracy**", "",
           tabulate([[r.method, r.source, r._3, r.point, pct(r.unseen)] for r in chosen_points.itertuples()],
                    headers=["method", "source", "chosen by", "point", "unseen"], tablefmt="github",
                    disable_numparse=True)]
    return "\n".join(out) + "\n"


def figures(chosen: pd.DataFrame, metric: str, defaults: dict[str, dict[str, object]], folder: Path,
            selection_label: str, display=lambda name: name, order: list[str] | None = None) -> list[Path]:
    """Fig. 3: per method and source, one panel per swept key (PNG and PDF)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    acc = chosen[chosen["metric"] == metric].copy()
    written = []
    for (method, source), frame in acc.groupby(["method", "source"], sort=True):
        points = frame["sweep"].map(parse_point)
        keys = sorted({k for p in points for k in p})
        if not keys:
            continue
        fig, axes = plt.subplots(1, len(keys), figsize=(5.5 * len(keys), 4), squeeze=False)
        for ax, key in zip(axes[0], keys):
            others = [k for k in keys if k != key]
            part, where = frame, "mean over the other swept values" if others else ""
            at_default = points.map(lambda p: all(str(defaults.get(method, {}).get(k)) == p.get(k) for k in others))
            if others and at_default.any():
                part, where = frame[at_default.to_numpy()], "others at their defaults"
            part = part.assign(x=part["sweep"].map(lambda s: float(parse_point(s)[key])))
            present = set(part["target"])
            targets = [t for t in (order or []) if t in present] + sorted(present - set(order or []))
            lines = {display(t): part[part["target"] == t] for t in targets}
            unseen = part[~seen_mask(part)].groupby(["x", "seed"], as_index=False)["value"].mean()
            lines["unseen mean"] = unseen
            for name, line in lines.items():
                stats = line.groupby("x")["value"].agg(["mean", "std", "count"]).reset_index()
                hw = [_half_width(line[line["x"] == x]["value"]) for x in stats["x"]]
                style = {"linewidth": 2.5, "color": "black"} if name == "unseen mean" else {}
                ax.errorbar(stats["x"], 100 * stats["mean"], yerr=100 * np.nan_to_num(hw), marker="o", capsize=3,
                            label=name, **style)
            if (part["x"] > 0).all():
                ax.set_xscale("log")
            values = sorted(part["x"].unique())
            ax.set_xticks(values, [f"{v:g}" for v in values])
            ax.minorticks_off()
            ax.set_ylim(0, 100)  # an interval from two seeds can reach far past the possible range
            ax.set_xlabel(key)
            ax.set_ylabel(f"{metric} (%)")
            ax.set_title(f"{method} trained on {display(source)}: {key}" + (f"\n({where})" if where else ""))
        axes[0][-1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0))
        fig.suptitle(f"{selection_label}; bars: 95% t-interval over seeds", fontsize=9)
        fig.tight_layout()
        written += save_figure(fig, folder / f"sweep_{method}_{schema.safe_name(source)}")
        plt.close(fig)
    return written
