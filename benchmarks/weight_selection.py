"""Which evaluation's weights should adaptation keep? Trajectories scored against ground truth.

The product keeps the EMA weights with the best NIQE on the evaluation crops (the paper's early
stop). On groups where the backbone's NIQE is already below the photos' own, NIQE rises as the
output gets more faithful and the backbone is kept (benchmarks/README.md, "NIQE early stop on").
This benchmark asks whether a no-reference signal the product could compute picks better weights.

For each synthetic group and seed it adapts with the product's CPU defaults (``--device cuda``: its
GPU defaults, the paper's settings with all layers trained) but without the early stop and without
the time budget (``--steps``, default 500, all run), copies the
EMA weights at every evaluation (step 0 is the backbone), and afterwards scores each snapshot:

- ground truth (what the product cannot see): LPIPS-Alex and PSNR-Y of the SR images against
  the held-out HR photos;
- no-reference candidates, computed from the camera's LR images ``y`` and the kernel ``k`` the
  run estimated (from its manifest):
  - ``niqe``: NIQE of the evaluation crops (what the loop already measures);
  - ``bp_l1``: back-projection error, mean ``|downsample(SR(y) * k) - y|``: is the output
    consistent with the photo it came from under the estimated camera kernel?
  - ``ival_l1`` / ``ival_lpips``: the internal task on whole images, ``SR(downsample(y * k))``
    against ``y`` (L1 and LPIPS-Alex): how well the model undoes the estimated camera once more;
  - ``neg_detail``: minus the mean absolute Laplacian of the SR images' luma (8-bit levels): lower
    is more detail, higher is a smoother output.

Then it replays selection rules over each trajectory (the NIQE early stop, with and without a
margin on the backbone's NIQE, at the product's 100-step budget and over the whole run; the
minimum of each candidate; the last and the best-by-ground-truth weights) and reports the LPIPS
and NIQE change each rule would give against the backbone, per group and in total. Rules are
compared on the development groups (``dev-noisy``, ``dev-clean`` and the realistic-size
``dev-big-*``), never chosen on the scored ones.

    python benchmarks/weight_selection.py --groups dev-noisy,dev-clean [--seeds 2] [--steps 500]
    python benchmarks/weight_selection.py --groups dev-big-aniso,dev-big-noisy,dev-big-mild --steps 300
    python benchmarks/weight_selection.py --device cuda --groups dev-big-aniso,dev-big-noisy,dev-big-mild \
        --steps 600 --tag gpu-dev-big      # the GPU defaults' trajectory (all layers, the paper's settings)

Results: ``benchmarks/results/weight_selection_<tag>.{json,md}``, rewritten after every run.
``--plot A.json B.json`` draws LPIPS and NIQE against steps of every run of those files into
``weight_selection_trajectories.png`` (matplotlib, the ``plots`` extra).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from dataclasses import replace
from operator import itemgetter
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import adaptation_quality as aq  # noqa: E402  (a sibling benchmark: groups, adaptation, machine name)
from script_cli import (  # noqa: E402
    ScriptError,
    existing_file,
    non_negative_int,
    output_dir,
    positive_int,
    read_json,
    run_script,
)

from adassr.adapt.config import cpu_demo_defaults  # noqa: E402
from adassr.runtime.store import atomic_write_bytes  # noqa: E402

RESULTS = aq.RESULTS
CANDIDATES = ("niqe", "bp_l1", "ival_l1", "ival_lpips", "neg_detail")


# --------------------------------------------------------------------------- scoring a snapshot


class SnapshotScorer:
    """Scores EMA weight snapshots of one group: ground truth and no-reference candidates.

    In tail mode the frozen front of every input (the LR images and their re-degraded versions)
    is computed once, at the first tail-only snapshot; a snapshot then only runs the tail. The
    network runs on ``device`` (the backbone is moved there); LPIPS and every other score are
    computed on the CPU.
    """

    def __init__(self, backbone: torch.nn.Module, lrs: dict[str, np.ndarray], hrs: dict[str, np.ndarray],
                 kernel: np.ndarray, lpips_model: Any, tail_blocks: int,
                 device: torch.device | str = "cpu") -> None:
        from adassr.adapt.degradation import blur_downsample

        self.device = torch.device(device)
        self.model = backbone.to(self.device)
        self.names = sorted(lrs)
        self.lrs, self.hrs, self.kernel, self.lpips = lrs, hrs, kernel, lpips_model
        self.tail_from = len(backbone.body) - tail_blocks
        self.tail_names = {n for n, _ in backbone.tail_parameters(self.tail_from)}
        self.inner = {n: blur_downsample(lrs[n], kernel, aq.SCALE) for n in self.names}
        self.fronts: dict[tuple[str, str], Any] = {}  # filled by the first tail-only snapshot

    def _sr(self, name: str, kind: str, full: bool) -> np.ndarray:
        x = _tensor(self.lrs[name] if kind == "lr" else self.inner[name]).to(self.device)
        with torch.inference_mode():
            if full:
                out = self.model(x)
            else:
                if (name, kind) not in self.fronts:  # the backbone's front: no snapshot changes it
                    self.fronts[(name, kind)] = self.model.run_front(x, self.tail_from)
                feat, h = self.fronts[(name, kind)]
                out = self.model.run_tail(feat, h, self.tail_from)
        return out.clamp(0, 1)[0].permute(1, 2, 0).float().cpu().numpy()

    def __call__(self, weights: dict[str, torch.Tensor]) -> dict[str, float]:
        from adassr.adapt.degradation import blur_downsample
        from adassr.adapt.quality.psnr_ssim import psnr

        full = not set(weights) <= self.tail_names
        own = dict(self.model.named_parameters())
        with torch.no_grad():
            for name, value in weights.items():
                own[name].copy_(value)
        rows: dict[str, list[float]] = {k: [] for k in ("lpips", "psnr_y", "bp_l1", "ival_l1", "ival_lpips",
                                                         "neg_detail")}
        b = aq.SCALE
        for n in self.names:
            sr = self._sr(n, "lr", full)
            rows["lpips"].append(self._lpips(sr, self.hrs[n]))
            rows["psnr_y"].append(float(psnr(sr, self.hrs[n], crop_border=b, channel="y")))
            luma = 255.0 * (0.299 * sr[..., 0] + 0.587 * sr[..., 1] + 0.114 * sr[..., 2])
            rows["neg_detail"].append(-float(np.mean(np.abs(cv2.Laplacian(luma, cv2.CV_32F)))))
            back = blur_downsample(sr, self.kernel, b)
            rows["bp_l1"].append(float(np.mean(np.abs(back - self.lrs[n])[b:-b, b:-b])))
            inner_sr = self._sr(n, "inner", full)
            y = self.lrs[n][: inner_sr.shape[0], : inner_sr.shape[1]]
            rows["ival_l1"].append(float(np.mean(np.abs(inner_sr - y)[b:-b, b:-b])))
            rows["ival_lpips"].append(self._lpips(inner_sr, y))
        return {k: float(np.mean(v)) for k, v in rows.items()}

    def _lpips(self, a: np.ndarray, b: np.ndarray) -> float:
        with torch.inference_mode():
            return float(self.lpips(_tensor(a), _tensor(b)).reshape(-1)[0])


def _tensor(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))[None])


# --------------------------------------------------------------------------- selection rules


def replay_niqe_early_stop(steps: list[int], niqe: list[float], *, min_delta: float, patience: int,
                           margin: float = 0.0) -> int:
    """The step whose weights the product's early stop would keep on this trajectory (0: the backbone).

    ``margin`` is added to the backbone's NIQE: adapted weights then win unless their NIQE is
    worse than the backbone's by more than it.
    """
    from adassr.adapt.early_stop import EarlyStopper

    stopper = EarlyStopper(min_delta=min_delta, patience=patience, baseline_margin=margin)
    for step, value in zip(steps, niqe, strict=True):
        if stopper.observe(step, value).stop:
            break
    return int(stopper.best_step or 0)


PRODUCT_STEPS = cpu_demo_defaults().steps
"""The CPU schedule's step budget (``cpu_demo_defaults().steps``); rules marked with it only see
the snapshots up to that step, as the product would."""
NIQE_TOLERANCES = (0.1, 0.25, 0.5)
"""Handicaps on the backbone's NIQE that the tolerant early-stop rules try (fixed before any run)."""


def select(trajectory: list[dict[str, float]], rule: str, *, min_delta: float, patience: int) -> int:
    """Index into ``trajectory`` of the snapshot ``rule`` keeps.

    Rules ending in ``f", {PRODUCT_STEPS} steps"`` see only the snapshots up to that step (the
    product's CPU schedule); the others see the whole trajectory.
    """
    budget_tag = f", {PRODUCT_STEPS} steps"
    if rule.endswith(budget_tag):
        visible = [t for t in trajectory if int(t["step"]) <= PRODUCT_STEPS]
        if int(visible[-1]["step"]) != PRODUCT_STEPS:
            raise ValueError(f"rule {rule!r} needs a snapshot at step {PRODUCT_STEPS}; this trajectory has "
                             f"steps {[int(t['step']) for t in trajectory]}")
        return select(visible, rule[: -len(budget_tag)], min_delta=min_delta, patience=patience)
    steps = [int(t["step"]) for t in trajectory]
    niqe = [t["niqe"] for t in trajectory]
    if rule == "niqe early stop" or rule.startswith("niqe early stop, backbone +"):
        margin = float(rule.split("+", 1)[1]) if "+" in rule else 0.0
        return steps.index(replay_niqe_early_stop(steps, niqe, min_delta=min_delta, patience=patience,
                                                  margin=margin))
    if rule == "last":
        return len(trajectory) - 1
    if rule == "oracle (min LPIPS vs HR)":
        return int(np.argmin([t["lpips"] for t in trajectory]))
    if rule.startswith("min "):
        return int(np.argmin([t[rule[4:]] for t in trajectory]))
    raise ValueError(f"unknown rule {rule!r}")


RULES = ((f"niqe early stop, {PRODUCT_STEPS} steps", "niqe early stop", f"last, {PRODUCT_STEPS} steps")
         + tuple(f"niqe early stop, backbone +{t:g}, {PRODUCT_STEPS} steps" for t in NIQE_TOLERANCES)
         + ("last", "oracle (min LPIPS vs HR)") + tuple(f"min {c}" for c in CANDIDATES))
"""``niqe early stop, 100 steps`` is the product's CPU default; ``last, 100 steps`` keeps the
step-100 weights whatever NIQE says; ``backbone +t``: the early stop with t added to the
backbone's NIQE, so adapted weights are kept unless their NIQE is worse than the backbone's by
more than t (the best NIQE among them wins, as in the product)."""


def summarise(result: dict[str, Any]) -> dict[str, Any]:
    """Per rule: dLPIPS / dPSNR-Y vs the backbone (the step-0 snapshot) per group (mean over seeds) and in total."""
    config = result["config"]
    out: dict[str, Any] = {}
    for rule in RULES:
        per_group: dict[str, dict[str, float]] = {}
        all_dl: list[float] = []
        all_dn: list[float] = []
        for gname, g in result["groups"].items():
            dl, dp, dn, chosen = [], [], [], []
            for run in g["runs"]:
                traj = run["trajectory"]
                i = select(traj, rule, min_delta=config["stop_min_delta"], patience=config["stop_patience"])
                dl.append(traj[i]["lpips"] - traj[0]["lpips"])
                dp.append(traj[i]["psnr_y"] - traj[0]["psnr_y"])
                dn.append(traj[i]["niqe"] - traj[0]["niqe"])
                chosen.append(int(traj[i]["step"]))
            if dl:
                per_group[gname] = {"dlpips": float(np.mean(dl)), "dpsnr_y": float(np.mean(dp)),
                                    "dniqe": float(np.mean(dn)), "steps": chosen}
                all_dl += dl
                all_dn += dn
        if per_group:
            out[rule] = {"groups": per_group, "mean_dlpips": float(np.mean(all_dl)),
                         "mean_dniqe": float(np.mean(all_dn)),
                         "worst_group_dlpips": max(v["dlpips"] for v in per_group.values())}
    return out


def rank_correlations(result: dict[str, Any]) -> dict[str, float]:
    """Mean over runs of Spearman's rank correlation between each candidate and LPIPS vs HR."""
    out: dict[str, float] = {}
    for c in CANDIDATES:
        values = []
        for g in result["groups"].values():
            for run in g["runs"]:
                a = np.argsort(np.argsort([t[c] for t in run["trajectory"]]))
                b = np.argsort(np.argsort([t["lpips"] for t in run["trajectory"]]))
                if np.std(a) > 0 and np.std(b) > 0:
                    values.append(float(np.corrcoef(a, b)[0, 1]))
        out[c] = float(np.mean(values)) if values else math.nan
    return out


def write_markdown(result: dict[str, Any], path: Path) -> None:
    summary, corr = result.get("summary", {}), result.get("rank_correlation", {})
    groups = list(result["groups"])
    lines = ["# Weight selection: which evaluation's weights to keep (`benchmarks/weight_selection.py`)", "",
             f"Machine: {result['machine']}. Commit {result['commit']}, started {result['started']}. "
             f"Product CPU defaults without early stop or time budget (mu {result['config']['prox_mu']:g}, "
             f"lambda_p {result['config']['lambda_perceptual']:g}), {result['config']['steps']} steps, "
             f"an evaluation every {result['config']['eval_every']}; seeds {result['seeds']}.", "",
             "dLPIPS (LPIPS-Alex vs the HR photos, selected weights minus the backbone; negative is better) "
             "if each rule chose the weights, mean over seeds; the steps chosen per seed in brackets.", "",
             "| rule | " + " | ".join(groups) + " | mean dLPIPS | worst group | mean dNIQE (crops) |",
             "|---|" + "---|" * len(groups) + "---|---|---|"]
    for rule, row in summary.items():
        cells = []
        for gname in groups:
            v = row["groups"].get(gname)
            cells.append("-" if v is None else f"{v['dlpips']:+.4f} ({', '.join(map(str, v['steps']))})")
        lines.append(f"| {rule} | " + " | ".join(cells) + f" | {row['mean_dlpips']:+.4f} | "
                     f"{row['worst_group_dlpips']:+.4f} | {row['mean_dniqe']:+.3f} |")
    if corr:
        lines += ["", "Spearman rank correlation of each candidate with LPIPS vs HR over a run's snapshots "
                  "(mean over runs; +1: the candidate orders the snapshots as the ground truth does):", "",
                  "| " + " | ".join(corr) + " |", "|" + "---|" * len(corr),
                  "| " + " | ".join(f"{v:+.2f}" for v in corr.values()) + " |"]
    lines += ["", "## Trajectories", ""]
    for gname, g in result["groups"].items():
        for run in g["runs"]:
            lines += [f"### {gname}, seed {run['seed']} ({run['wall_s']:.0f} s adaptation, "
                      f"{run['scoring_s']:.0f} s scoring; kernel sigma {run['kernel']['sigma_x']:.2f} / "
                      f"{run['kernel']['sigma_y']:.2f})", "",
                      "| step | LPIPS | PSNR-Y | NIQE crops | bp L1 | ival L1 | ival LPIPS | detail | drift |",
                      "|---|---|---|---|---|---|---|---|---|"]
            for t in run["trajectory"]:
                lines.append(f"| {t['step']} | {t['lpips']:.4f} | {t['psnr_y']:.2f} | {t['niqe']:.3f} | "
                             f"{t['bp_l1'] * 255:.3f} | {t['ival_l1'] * 255:.3f} | {t['ival_lpips']:.4f} | "
                             f"{-t.get('neg_detail', math.nan):.2f} | {t.get('drift', math.nan):.3g} |")
            lines.append("")
    lines.append("bp L1 and ival L1 are in 8-bit levels; detail is the mean absolute Laplacian of the SR luma "
                 "(8-bit levels, higher is more detail).")
    atomic_write_bytes(path, ("\n".join(lines) + "\n").encode())


def read_result(path: Path, keys: tuple[str, ...] = ("groups",)) -> dict[str, Any]:
    """A result file of this script (``weight_selection_*.json``) holding the objects ``keys``; anything else
    is a :class:`ScriptError`."""
    what = "a result file of benchmarks/weight_selection.py (weight_selection_*.json)"
    data = read_json(path, what)
    if not (isinstance(data, dict) and all(isinstance(data.get(key), dict) for key in keys)):
        raise ScriptError(f"{path} is no result of this script: pass {what}")
    return data


def save(result: dict[str, Any], out: Path, stem: str) -> None:
    result["summary"] = summarise(result)
    result["rank_correlation"] = rank_correlations(result)
    aq.write_result(result, out, stem, write_markdown)


def plot_trajectories(paths: list[Path], out: Path) -> None:
    """One column per group of the result files ``paths``: LPIPS against the HR photos (top) and
    NIQE of the evaluation crops (bottom), minus the backbone's, against steps; one line per seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = [(name, g) for path in paths for name, g in read_result(path)["groups"].items() if g.get("runs")]
    fig, axes = plt.subplots(2, len(groups), figsize=(3.4 * len(groups), 5.6), squeeze=False, sharex=True)
    for col, (name, g) in enumerate(groups):
        for run in g["runs"]:
            steps = [t["step"] for t in run["trajectory"]]
            for row, key in enumerate(("lpips", "niqe")):
                base = run["trajectory"][0][key]
                axes[row][col].plot(steps, [t[key] - base for t in run["trajectory"]], marker=".",
                                    label=f"seed {run['seed']}")
        axes[0][col].set_title(name)
        for row in range(2):
            axes[row][col].axhline(0.0, color="gray", linewidth=0.8)
        axes[1][col].set_xlabel("step")
    axes[0][0].set_ylabel("LPIPS vs HR minus backbone")
    axes[1][0].set_ylabel("NIQE (crops) minus backbone")
    axes[0][0].legend(fontsize=7)
    fig.suptitle("Every evaluation's EMA weights, 500 steps without early stop (lower is better)")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)


# --------------------------------------------------------------------------- run


def adapt_with_snapshots(lrs: dict[str, np.ndarray], name: str, config: Any, work: Path
                         ) -> tuple[Any, list[tuple[int, float, dict[str, torch.Tensor]]]]:
    """Adapt ``lrs`` as group ``name``; (outcome, [(step, NIQE of the crops, EMA weights copy)])."""
    snapshots: list[tuple[int, float, dict[str, torch.Tensor]]] = []

    def copy_weights(event: Any) -> None:
        if event.niqe is not None and event.weights is not None:
            snapshots.append((event.step, float(event.niqe),
                              {k: v.detach().to("cpu", torch.float32).clone() for k, v in event.weights.items()}))

    outcome, _ = aq.adapt_group(lrs, name, config, work, on_event=copy_weights)
    return outcome, snapshots


def weight_drift(weights: dict[str, torch.Tensor], start: dict[str, torch.Tensor]) -> float:
    """sum ||Theta - Theta_0||^2 over the trained parameters: what the proximal term multiplies by mu."""
    return float(sum(float((weights[k] - start[k]).pow(2).sum()) for k in start))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--groups", default="dev-noisy,dev-clean", help="comma-separated group names")
    parser.add_argument("--device", default="cpu",
                        help="cpu (the product's CPU defaults) or cuda (its GPU defaults: the paper's settings, "
                             "all layers); the early stop and the CPU time budget are off on both")
    parser.add_argument("--seeds", type=positive_int, default=1)
    parser.add_argument("--first-seed", type=non_negative_int, default=0)
    parser.add_argument("--steps", type=int, default=500,
                        help="training steps (default 500: well past the CPU schedule of 100, to see the drift)")
    parser.add_argument("--prox-mu", type=float, default=None, help="proximal weight mu (default: the product's)")
    parser.add_argument("--lambda-perceptual", type=float, default=None)
    parser.add_argument("--fujifilm", type=Path, default=aq.FUJI)
    parser.add_argument("--tag", default="dev")
    parser.add_argument("--out", type=output_dir, default=RESULTS)
    parser.add_argument("--plot", nargs="+", type=existing_file, metavar="JSON",
                        help="only draw the trajectories of these result files into "
                             "<out>/weight_selection_trajectories.png (needs matplotlib)")
    parser.add_argument("--resummarise", nargs="+", type=existing_file, metavar="JSON",
                        help="only recompute the rule summary of these result files (after a change of the "
                             "rules; the trajectories are kept) and rewrite them with their Markdown")
    args = parser.parse_args(argv)
    if args.resummarise:
        # every file is checked before any is rewritten
        results = [(path, read_result(path, ("groups", "config"))) for path in args.resummarise]
        for path, result in results:
            save(result, path.parent, path.stem)
            print(f"rewrote {path} and {path.with_suffix('.md')}")
        return 0
    if args.plot:
        plot_trajectories(args.plot, args.out / "weight_selection_trajectories.png")
        print(f"wrote {args.out / 'weight_selection_trajectories.png'}")
        return 0

    from adassr.adapt.config import cpu_demo_defaults, gpu_defaults
    from adassr.adapt.precision import resolve_device
    from adassr.adapt.quality.lpips import load_lpips
    from adassr.adapt.weights import load_backbone

    specs = {g.name: g for g in aq.GROUPS + aq.DEV_GROUPS}
    names = [n for n in args.groups.split(",") if n]
    unknown = [n for n in names if n not in specs]
    if unknown:
        parser.error(f"unknown group(s) {unknown}; choose from {list(specs)}")
    if args.steps < PRODUCT_STEPS:
        parser.error(f"--steps must be at least {PRODUCT_STEPS}: the summary replays the CPU schedule's "
                     f"{PRODUCT_STEPS}-step rules on every trajectory")
    from adassr.runtime.errors import ConfigError

    try:
        device = resolve_device(args.device)
    except ConfigError as exc:
        parser.error(str(exc))
    defaults = gpu_defaults() if device.type == "cuda" else cpu_demo_defaults()
    config = replace(defaults, early_stop=False, time_budget=None)
    config = config.with_overrides(steps=args.steps, prox_mu=args.prox_mu, lambda_perceptual=args.lambda_perceptual,
                                   device=device.type)
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    stem = f"weight_selection_{args.tag}"
    result: dict[str, Any] = {"machine": aq._machine(device), "commit": aq._commit(), "seeds": seeds,
                              "started": time.strftime("%Y-%m-%d %H:%M:%S"), "config": config.to_dict(),
                              "groups": {}}
    lpips_model = load_lpips("alex")
    cache: dict[tuple[str, int], np.ndarray] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            hrs, lrs = aq.build_group(specs[name], args.fujifilm, cache)
            group: dict[str, Any] = {"degradation": specs[name].describe(), "runs": []}
            result["groups"][name] = group
            for seed in seeds:
                start = time.perf_counter()
                outcome, snapshots = adapt_with_snapshots(lrs, f"{name}-s{seed}", replace(config, seed=seed), Path(tmp))
                wall = time.perf_counter() - start
                manifest = json.loads((outcome.store_dir / "manifest.json").read_text())
                kernel = np.asarray(manifest["kernel"]["kernel"], dtype=np.float64)
                start = time.perf_counter()
                scorer = SnapshotScorer(load_backbone(device="cpu").model.eval(), lrs, hrs, kernel, lpips_model,
                                        config.tail_blocks, device=device)
                start_weights = snapshots[0][2]
                trajectory = [{"step": step, "niqe": niqe, "drift": weight_drift(weights, start_weights),
                               **scorer(weights)} for step, niqe, weights in snapshots]
                group["runs"].append({"seed": seed, "wall_s": round(wall, 1), "steps": outcome.steps,
                                      "scoring_s": round(time.perf_counter() - start, 1),
                                      "kernel": {k: manifest["kernel"][k] for k in ("sigma_x", "sigma_y",
                                                                                    "theta_deg", "confidence")},
                                      "trajectory": trajectory})
                save(result, args.out, stem)
                best = min(trajectory, key=itemgetter("lpips"))
                print(f"[{name} seed {seed}] {outcome.steps} steps in {wall:.0f} s; LPIPS backbone "
                      f"{trajectory[0]['lpips']:.4f}, best {best['lpips']:.4f} at step {best['step']}", flush=True)
    save(result, args.out, stem)
    print((args.out / f"{stem}.md").read_text())
    return 0


if __name__ == "__main__":
    run_script(main)
