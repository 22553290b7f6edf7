"""``dml attack``: white-box suites (paper, AutoAttack, adaptive) -> per-sample parquet rows."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from dmlcli import api
from dmlcli.attacks import list_attacks
from dmlcli.cli.common import (
    ArtifactsOpt,
    DataDirOpt,
    DeviceOpt,
    ForceOpt,
    NOpt,
    SeedOpt,
    ShardOpt,
    cached_note,
    console,
    defaults,
    flag,
    new_files,
    reporter,
    results_of,
    shard_note,
    summary,
)
from dmlcli.results import first, format_spread, robust_accuracy
from dmlcli.units import format_eps

D = defaults(api.attack)


def command(
    runs: Annotated[
        list[str],
        typer.Argument(
            help="Runs, groups of seeds (dml train --seeds), run folders or .safetensors files."
        ),
    ],
    suite: Annotated[
        list[str] | None,
        typer.Option(help="paper, autoattack, adaptive or all (repeatable; default paper)."),
    ] = D["suite"],
    attack: Annotated[
        list[str] | None,
        typer.Option(help=f"Run this attack ({', '.join(list_attacks())})."),
    ] = D["attack"],
    eps: Annotated[
        list[str] | None,
        typer.Option(help="L-inf budget(s) in pixels: 8/255, 0.1 (default: the paper's)."),
    ] = D["eps"],
    n: NOpt = D["n"],
    dataset: Annotated[
        str | None, typer.Option(help="Dataset the checkpoints must have been trained on.")
    ] = D["dataset"],
    data_dir: DataDirOpt = D["data_dir"],
    decision: Annotated[
        list[str] | None,
        typer.Option(help="Decision scored: vote (paper), meta-vote, sum, member:k (repeatable)."),
    ] = D["decision"],
    surface: Annotated[
        list[str] | None,
        typer.Option(
            help="Surface(s) of --attack (default sum) and of the adaptive suite (default all)."
        ),
    ] = D["surface"],
    loss: Annotated[str | None, typer.Option(help="--attack loss: ce, cw, dlr or logit.")] = D[
        "loss"
    ],
    steps: Annotated[int | None, typer.Option(help="--attack steps.")] = D["steps"],
    step_size: Annotated[float | None, typer.Option(help="--attack step size.")] = D["step_size"],
    restarts: Annotated[int | None, typer.Option(help="--attack restarts.")] = D["restarts"],
    norm: Annotated[str | None, typer.Option(help="--attack norm: linf or l2.")] = D["norm"],
    targeted: Annotated[bool, flag("--attack targeted at random wrong labels.", "--targeted")] = D[
        "targeted"
    ],
    pgd_restarts: Annotated[int, typer.Option(help="Restarts of PGD-20/40 (paper).")] = D[
        "pgd_restarts"
    ],
    cw_c: Annotated[float, typer.Option(help="CW penalty constant c (paper's gamma).")] = D["cw_c"],
    cw_steps: Annotated[int, typer.Option(help="CW Adam steps (paper: 200).")] = D["cw_steps"],
    cw_lr: Annotated[float, typer.Option(help="CW Adam learning rate.")] = D["cw_lr"],
    cw_kappa: Annotated[float, typer.Option(help="CW confidence kappa.")] = D["cw_kappa"],
    cw_search_steps: Annotated[
        int, typer.Option(help="CW binary-search rounds over c (0: the paper's fixed c).")
    ] = D["cw_search_steps"],
    apgd_steps: Annotated[int, typer.Option(help="APGD iterations (adaptive).")] = D["apgd_steps"],
    apgd_restarts: Annotated[int, typer.Option(help="APGD restarts (adaptive).")] = D[
        "apgd_restarts"
    ],
    eot: Annotated[int, typer.Option(help="EOT draws on randomized heads.")] = D["eot"],
    aa_version: Annotated[
        str, typer.Option(help="AutoAttack version: auto, standard, plus, rand, custom.")
    ] = D["aa_version"],
    aa_attack: Annotated[
        list[str] | None, typer.Option(help="AutoAttack custom attacks (repeatable).")
    ] = D["aa_attack"],
    aa_steps: Annotated[int, typer.Option(help="AutoAttack APGD iterations.")] = D["aa_steps"],
    square_queries: Annotated[int, typer.Option(help="AutoAttack Square queries.")] = D[
        "square_queries"
    ],
    targets: Annotated[
        int, typer.Option(help="Adaptive: wrong classes tried by APGD-T and the agree attacks.")
    ] = D["targets"],
    score_draws: Annotated[
        int, typer.Option(help="Randomized heads: draws each decision is scored on (majority).")
    ] = D["score_draws"],
    queries: Annotated[
        int, typer.Option(help="Adaptive: RayS's queries per sample (hard-label, on the vote).")
    ] = D["queries"],
    independent: Annotated[
        bool,
        flag(
            "Adaptive: run every attack on every sample (default: a cascade, each attack on "
            "the samples still robust).",
            "--independent",
        ),
    ] = D["independent"],
    cascade_order: Annotated[
        list[str] | None,
        typer.Option(help="Adaptive: attack labels to run first in the cascade (repeatable)."),
    ] = D["cascade_order"],
    surrogate: Annotated[
        str | None, typer.Option(help="Adaptive: transfer from this run (e.g. a baseline).")
    ] = D["surrogate"],
    batch_size: Annotated[int, typer.Option(help="Images per attack batch.")] = D["batch_size"],
    shard: ShardOpt = D["shard"],
    seed: SeedOpt = D["seed"],
    device: DeviceOpt = D["device"],
    force: ForceOpt = D["force"],
    artifacts: ArtifactsOpt = D["artifacts"],
) -> None:
    """Attack runs with the paper's protocol, AutoAttack and the adaptive suite.

    One parquet row per (sample, attack setting). Every batch is kept as a part file as soon
    as it is done: after Ctrl-C or a kill, the same command computes only the missing
    batches. '--shard i/n' computes the i-th block of batches only; 'dml merge' then writes
    the results.
    """
    options = dict(locals())
    with reporter() as progress:
        df = api.attack(**options, progress=progress)
    print_summary(df, n, seed, artifacts)
    print_groups(df.attrs.get("groups", []))


def print_groups(groups: list[dict[str, Any]]) -> None:
    """One table per group of seeds: mean ± std of every row, and every seed's number."""
    by_group: dict[str, list[dict[str, Any]]] = {}
    for g in groups:
        by_group.setdefault(g["group"], []).append(g)
    for group, rows in by_group.items():
        runs = list(dict.fromkeys(r for g in rows for r in g["runs"]))
        table = []
        for g in rows:
            eps = "-" if g["eps"] is None else format_eps(float(g["eps"]))
            cells = [f"{g['runs'][r]:.2f}" if r in g["runs"] else "-" for r in runs]
            spread = format_spread(list(g["runs"].values()))
            table.append([g["attack"], g["surface"], g["decision"], eps, spread, *cells])
        seeds = [r[len(group) + 1 :] if r.startswith(group + "-") else r for r in runs]
        columns = ["attack", "surface", "decision", "eps", "mean ± std %", *seeds]
        summary(f"{group}: accuracy over {len(runs)} seeds", columns, table, [])


def print_summary(df: Any, n: int, seed: int, artifacts: Path | None) -> None:
    """One table per run: clean accuracy per decision, every result's robust accuracy, and
    the stored worst case over everything attacked so far."""
    tables: dict[str, list[list[Any]]] = {}
    datasets: dict[str, str] = {}
    for r, rows in results_of(df):
        if not len(rows):
            continue
        table = tables.setdefault(r["run"], [])
        datasets[r["run"]] = str(first(rows, "dataset"))
        decision = str(first(rows, "decision"))
        clean, robust = robust_accuracy(rows)
        e = first(rows, "eps")
        eps = "L2" if e is None else format_eps(float(e))
        if r["kind"] == "worst-case":
            what = f"{int(first(rows, 'attacks'))} results"
            table.append(["worst case", what, decision, eps, robust, "-", r["status"]])
            continue
        if not any(row[0] == "clean" and row[2] == decision for row in table):
            table.insert(0, ["clean", "-", decision, "-", clean, "-", ""])
        surface = first(rows, "surrogate") or str(first(rows, "surface"))
        seconds = f"{rows['seconds'].sum():.1f}"
        label = str(first(rows, "attack"))
        if first(rows, "cascade"):  # cumulative: never this attack's accuracy alone
            label += "*"
        table.append([label, surface, decision, eps, robust, seconds, r["status"]])
        for w in r["warnings"]:
            console.print(f"[yellow]autoattack warning[/yellow] {r['run']} {r['label']}: {w}")
        counts = r["meta"].get("counts")
        if counts:
            console.print(
                f"{r['run']} {r['label']}: AutoAttack skipped {counts['aa_sum_wrong_vote_right']}"
                f" samples whose sum was wrong but whose {decision} was right; "
                f"{counts['rechecked']} samples it left robust were re-attacked by the "
                f"decision-checked APGD, which broke {counts['recheck_broke']}"
            )
    columns = ["attack", "surface", "decision", "eps", "acc %", "s", "status"]
    if any(r["meta"].get("setting", {}).get("cascade") for r, _ in results_of(df)):
        console.print(
            "* cascade: the attack ran only on the samples every earlier stored attack left "
            "robust; its acc % is after it and all before it, not its own (dml attack "
            "--independent runs each alone)"
        )
    for i, (run, rows) in enumerate(tables.items()):
        title = f"{run}: robust accuracy on {n} {datasets[run]} test samples (seed {seed})"
        summary(title, columns, rows, new_files(df) if i == len(tables) - 1 else [])
    if not shard_note(df, artifacts):
        cached_note(df, artifacts)
