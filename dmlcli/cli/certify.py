"""``dml certify``: randomized-smoothing certified accuracy (Cohen et al. 2019; A.9, Fig. 14-16)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from dmlcli import api
from dmlcli.cli.common import (
    ArtifactsOpt,
    DataDirOpt,
    DeviceOpt,
    ForceOpt,
    PartSizeOpt,
    RunArg,
    SeedOpt,
    ShardOpt,
    cached_note,
    defaults,
    new_files,
    reporter,
    results_of,
    shard_note,
    summary,
)
from dmlcli.eval.certify import max_certifiable_radius
from dmlcli.results import ABSTAIN, REPORT_RADII, certified_accuracy

D = defaults(api.certify)


def command(
    run: RunArg,
    sigma: Annotated[float, typer.Option(help="Std of the Gaussian pixel noise.")] = D["sigma"],
    n0: Annotated[int, typer.Option("--n0", help="Draws for the class guess.")] = D["n0"],
    n: Annotated[int, typer.Option("--n", help="Draws for the lower bound.")] = D["n"],
    alpha: Annotated[float, typer.Option(help="Failure probability.")] = D["alpha"],
    n_samples: Annotated[
        int, typer.Option("--n-samples", help="Evaluation samples (a seeded subset).")
    ] = D["n_samples"],
    decision: Annotated[
        str, typer.Option(help="Base classifier: vote, sum, meta-vote, mean-softmax, member:K.")
    ] = D["decision"],
    head: Annotated[
        str | None, typer.Option(help="Swap the DML head for certification: dml, rdml, augdml.")
    ] = D["head"],
    head_sigma: Annotated[float | None, typer.Option(help="Noise std of the swapped head.")] = D[
        "head_sigma"
    ],
    head_samples: Annotated[
        int | None, typer.Option(help="Monte-Carlo draws T of the swapped head.")
    ] = D["head_samples"],
    predict_n: Annotated[
        int, typer.Option(help="Draws for PREDICT (binomial test; columns smoothed*).")
    ] = D["predict_n"],
    batch_size: Annotated[int, typer.Option(help="Noise draws per forward pass.")] = D[
        "batch_size"
    ],
    data_dir: DataDirOpt = D["data_dir"],
    part_size: PartSizeOpt = D["part_size"],
    shard: ShardOpt = D["shard"],
    seed: SeedOpt = D["seed"],
    device: DeviceOpt = D["device"],
    force: ForceOpt = D["force"],
    artifacts: ArtifactsOpt = D["artifacts"],
) -> None:
    """CERTIFY and PREDICT the smoothed ensemble; certified accuracy at radii 0..1.

    Every '--part-size' samples are kept as a part file: after Ctrl-C or a kill the same
    command computes only the missing ones; '--shard i/n' computes the i-th block only and
    'dml merge' writes the result.
    """
    options = dict(locals())
    with reporter() as progress:
        df = api.certify(**options, progress=progress)
    if shard_note(df, artifacts):
        return
    print_summary(df, decision, sigma, n, alpha)
    cached_note(df, artifacts)


def print_summary(df: Any, decision: str, sigma: float, n: int, alpha: float) -> None:
    r, rows = next(results_of(df))
    acc = certified_accuracy(rows, REPORT_RADII)
    abstain = int((rows["predict"] == ABSTAIN).sum())
    title = (
        f"{r['run']}: certified accuracy (%), {decision}, {r['meta']['setting']['head']} head, "
        f"sigma={sigma:g}, n={n}; abstain "
        f"{abstain}/{len(rows)}, PREDICT acc {100.0 * rows['smoothed_correct'].mean():.1f}%, "
        f"{rows['seconds'].mean():.2f} s/sample; no radius above "
        f"{max_certifiable_radius(sigma, n, alpha):.2f} is certifiable with n={n}"
    )
    table = [(f"{x:g}", 100.0 * a) for x, a in zip(acc["radius"], acc["accuracy"], strict=True)]
    summary(title, ["radius", "certified accuracy"], table, new_files(df))
