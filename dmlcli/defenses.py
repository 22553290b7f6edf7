"""Training objectives: DML (Eq. 3) and the ensemble defenses it competes with.

Every defense maps a batch to the loss terms of its paper; ``total`` is what is minimised and
every other term is logged per epoch in ``history.parquet`` (``train_<term>``). Member
logits are ``[K, B, C]`` (:class:`~dmlcli.models.ensemble.Ensemble`), pixels ``[B, C, H, W]``
in [0, 1], every eps in pixel units.

=========  ======  ==========================================================================
defense    head    objective (paper)
=========  ======  ==========================================================================
baseline   linear  ``sum_k CE_k``
dml        dml     this paper's Eq. 3: ``sum_k CE_k + gamma * ortho + beta * l1``
adp        linear  ``sum_k CE_k - alpha H(mean_k p_k) - beta log(ED)``, ED the determinant of
                   the normalised non-maximal predictions' Gram matrix (Pang et al. 2019,
                   ICML, arXiv:1901.08846)
gal        linear  ``sum_k CE_k + lambda log sum_{a<b} exp(cos(grad_x CE_a, grad_x CE_b))``,
                   double backprop (Kariyappa & Qureshi 2019, arXiv:1901.09981)
trs        linear  ``sum_k CE_k + scale * (coeff * L_sim + lamda * L_smooth)`` on clean and
                   PGD points, PGD eps warmed up (Yang et al. 2021, NeurIPS, arXiv:2104.00671)
dverge     linear  member j learns, with the source label, the images whose features at a
                   random layer of member i (i != j) were distilled toward another image's
                   (Yang et al. 2020, NeurIPS, arXiv:2009.14720)
mmc        mmc     ``1/2 ||z - mu_y||^2``, fixed Max-Mahalanobis centers ``mu`` (Pang et al.
                   2020, ICLR); one model (K = 1) or an ensemble
=========  ======  ==========================================================================

Defaults are those of each paper's public code for CIFAR-10 (stated per defense in
:data:`DEFENSES`); every one can be changed with ``--defense-arg name=value``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from dmlcli.errors import DmlError
from dmlcli.models.dml import DML_HEADS
from dmlcli.models.ensemble import Ensemble


@dataclass(frozen=True)
class TrainingBatch:
    """What a defense's loss terms may read for one training batch: its hyperparameters
    ``args``, the :class:`~dmlcli.models.ensemble.Ensemble` and ``model`` (what runs the forward
    pass: the ensemble or its DistributedDataParallel wrapper), pixels ``x`` ``[B, C, H, W]``,
    labels ``y`` ``[B]``, ``progress`` (the fraction of training done), the training generator
    ``gen`` and ``layers`` (one backbone layer per member, for a defense that asks for them)."""

    args: Mapping[str, float]
    ensemble: Ensemble
    model: Any
    x: torch.Tensor
    y: torch.Tensor
    progress: float
    gen: torch.Generator
    layers: list[str]


#: A defense's loss terms on one batch: the terms (``total`` is minimised, the others are logged)
#: and the member logits ``[K, B, C]`` on ``x`` (for the batch accuracy).
LossTerms = Callable[[TrainingBatch], tuple[dict[str, torch.Tensor], torch.Tensor]]


@dataclass(frozen=True)
class Defense:
    """A training objective: the head it trains, its paper, its loss terms and its
    hyperparameters. One entry of :data:`DEFENSES` (at the end of this module, below the
    objectives it names) is all a new defense adds besides its objective."""

    name: str
    head: str
    paper: str
    terms: LossTerms
    defaults: dict[str, float] = field(default_factory=dict)
    #: Whether ``terms`` reads ``TrainingBatch.layers`` (drawn by the trainer each epoch).
    layers: bool = False


_COUNT_ARGS = {"pgd_steps", "steps"}


def list_defenses() -> list[str]:
    """Names accepted by ``dml train --defense``."""
    return list(DEFENSES)


def get_defense(name: str) -> Defense:
    """The defense ``name`` (a :class:`DmlError` names the choices)."""
    if name not in DEFENSES:
        raise DmlError(f"unknown --defense {name!r}; choose one of {', '.join(DEFENSES)}")
    return DEFENSES[name]


def resolve_defense_args(name: str, given: Mapping[str, Any] | None = None) -> dict[str, float]:
    """The defense's hyperparameters: its defaults updated with ``given`` (validated)."""
    defense = get_defense(name)
    out = dict(defense.defaults)
    for key, value in (given or {}).items():
        if key not in out:
            known = ", ".join(out) or "none"
            raise DmlError(f"--defense-arg {key!r}: {name} takes {known}")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise DmlError(f"--defense-arg {key}={value!r}: not a number") from None
        if not number >= 0 or number == float("inf"):
            raise DmlError(f"--defense-arg {key}={value}: must be a finite number >= 0")
        if key in _COUNT_ARGS and (number < 1 or number != int(number)):
            raise DmlError(f"--defense-arg {key}={value}: must be a whole number >= 1")
        out[key] = number
    return out


def resolve_defense(defense: str | None, baseline: bool, head: str) -> tuple[str, str]:
    """(defense, head) from ``--defense``, ``--baseline`` and ``--head``: a defense's own head,
    ``dml`` with any DML head; a conflict is one :class:`DmlError`."""
    if defense is None:
        if baseline or head == "linear":
            return "baseline", "linear"
        return ("mmc" if head == "mmc" else "dml"), head
    d = get_defense(defense)
    if baseline and defense != "baseline":
        raise DmlError(f"--baseline is --defense baseline; it excludes --defense {defense}")
    if d.name == "dml":
        if head not in DML_HEADS:
            raise DmlError(f"--defense dml trains a DML head; --head {head} is not one")
        return "dml", head
    if head not in ("dml", d.head):
        raise DmlError(f"--defense {defense} trains a {d.head} head; drop --head {head}")
    return d.name, d.head


def parse_defense_args(items: list[str] | None) -> dict[str, str]:
    """``["alpha=2", "beta=0.5"]`` -> ``{"alpha": "2", "beta": "0.5"}``."""
    out: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise DmlError(f"--defense-arg {item!r}: write name=value, e.g. alpha=2")
        out[key.strip()] = value.strip()
    return out


# -- shared pieces ------------------------------------------------------------------------
def member_ce(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``sum_k CE(F_k(x), y)`` (each CE a batch mean) for logits ``[K, B, C]``, labels ``[B]``."""
    k, b, c = logits.shape
    return F.cross_entropy(logits.reshape(k * b, c), y.repeat(k), reduction="mean") * k


def input_gradients(
    logits: torch.Tensor, y: torch.Tensor, x: torch.Tensor, create_graph: bool = True
) -> torch.Tensor:
    """``grad_x CE(F_k(x), y)`` of every member (the CE a batch mean, as in GAL's and TRS's
    code), ``[K, B, D]``; ``x`` must require grad and ``logits`` ``[K, B, C]`` come from it."""
    grads = []
    for k in range(logits.shape[0]):
        loss = F.cross_entropy(logits[k], y)
        (g,) = torch.autograd.grad(loss, x, create_graph=create_graph, retain_graph=True)
        grads.append(g.flatten(1))
    return torch.stack(grads)


def pairwise_cosines(grads: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of every member pair ``a < b`` per sample: ``[P, B]`` for
    ``grads`` ``[K, B, D]``."""
    k = grads.shape[0]
    a, b = torch.triu_indices(k, k, offset=1)
    return F.cosine_similarity(grads[a], grads[b], dim=-1, eps=1e-12)


# -- the objectives -----------------------------------------------------------------------
def dml_terms(logits: torch.Tensor, y: torch.Tensor, ensemble: Ensemble) -> dict[str, torch.Tensor]:
    """The terms of this paper's Eq. 3 for member logits ``[K, B, C]`` and labels ``[B]``.

    ``ce = sum_k CE_k``; ``ortho = sum_{k != t} ||M_k M_t||_F``; ``l1 = sum_k ||M_{I_k}||_1``;
    ``total = ce + gamma * ortho + beta * l1``. A head without M (linear, MMC) has only ``ce``.
    """
    ce = member_ce(logits, y)
    zero = logits.new_zeros(())
    head = ensemble.head
    if not hasattr(head, "m_matrix"):
        return {"total": ce, "ce": ce, "ortho": zero, "l1": zero}
    m = head.m_matrix()  # [K, D, D]
    prods = torch.einsum("kij,tjl->ktil", m, m).flatten(2).norm(dim=-1)  # [K, K]
    ortho = prods.sum() - prods.diagonal().sum()
    l1 = head.trainable_m().abs().sum()
    cfg = ensemble.config
    total = ce + cfg.gamma * ortho + cfg.beta * l1
    return {"total": total, "ce": ce, "ortho": ortho, "l1": l1}


def adp_terms(
    logits: torch.Tensor, y: torch.Tensor, alpha: float, beta: float, det_offset: float = 1e-6
) -> dict[str, torch.Tensor]:
    """The ADP loss (Pang et al. 2019, "Improving adversarial robustness via promoting ensemble
    diversity") for member logits ``[K, B, C]``, labels ``[B]``.

    ``entropy = H(mean_k softmax(F_k))``; the non-maximal predictions (each member's softmax
    without the true class, ``[K, B, C-1]``) are L2-normalised, and ``log_det = log det(M^T M
    + det_offset I)`` of their ``[K, K]`` Gram matrix per sample (the log of the ensemble
    diversity ED). ``total = sum_k CE_k - alpha * entropy - beta * log_det`` (batch means).
    """
    k, b, c = logits.shape
    ce = member_ce(logits, y)
    probs = logits.softmax(-1)
    mean = probs.mean(0)
    entropy = -(mean * torch.log(mean + 1e-20)).sum(-1).mean()
    keep = ~F.one_hot(y, c).bool()  # [B, C]
    non_max = probs[:, keep].view(k, b, c - 1).transpose(0, 1)  # [B, K, C-1]
    non_max = non_max / non_max.norm(dim=-1, keepdim=True).clamp_min(1e-20)
    gram = non_max @ non_max.transpose(1, 2)
    eye = torch.eye(k, device=logits.device, dtype=logits.dtype)
    log_det = torch.logdet(gram + det_offset * eye).mean()
    total = ce - alpha * entropy - beta * log_det
    return {"total": total, "ce": ce, "entropy": entropy, "log_det": log_det}


def gal_terms(
    model: Any, x: torch.Tensor, y: torch.Tensor, lam: float
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """The GAL loss (Kariyappa & Qureshi 2019, "Improving adversarial robustness of ensembles
    with diversity training"): ``sum_k CE_k + lambda * mean_b log sum_{a<b}
    exp(cos(g_a, g_b))`` with ``g_k = grad_x CE_k`` taken with ``create_graph`` (double
    backprop). Returns the terms and the member logits ``[K, B, C]``."""
    x = x.detach().requires_grad_(True)
    logits = model(x)
    ce = member_ce(logits, y)
    cos = pairwise_cosines(input_gradients(logits, y, x))  # [P, B]
    gal = torch.logsumexp(cos, dim=0).mean()
    total = ce + lam * gal
    return {"total": total, "ce": ce, "gal": gal, "cosine": cos.mean()}, logits


def _smoothness(model: Any, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """TRS's ``L_smooth`` exactly as its public code computes it, with the graph kept; ``x``
    must require grad.

    ``g_k = grad_x CE(F_k(x), y)`` of the *batch-mean* CE (``nn.CrossEntropyLoss()``), so
    sample b's row is its own CE gradient divided by B; then ``(1/K) sum_k 2 * mean_b
    ||g_{k,b}||_2^2``. This mirrors AI-secure/Transferability-Reduced-Smooth-Ensemble,
    ``train/Empirical/trainer.py`` (``TRS_Trainer``: ``loss = criterion(outputs, targets);
    grad = autograd.grad(loss, adv_x, create_graph=True)[0].flatten(start_dim=1);
    smooth_loss += Magnitude(grad)`` per member, then ``smooth_loss /= 3``, the member
    count of that code) and ``utils/Empirical/utils_ensemble.py`` (``Magnitude(g1) =
    (torch.sum(g1**2, 1)).mean() * 2``): the squared L2 norm, not the norm.
    """
    g = input_gradients(model(x), y, x)  # [K, B, D]
    return 2.0 * g.pow(2).sum(-1).mean(-1).mean(0)


def trs_pgd(
    model: Any, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int, gen: torch.Generator
) -> torch.Tensor:
    """TRS's PGD points: from a uniform random start in the eps-ball, ``steps`` signed steps
    of size eps/3 that *increase* :func:`_smoothness` (the same quantity as the loss: in
    TRS's ``trainer.py``, ``PGD`` sums ``Magnitude(grad)`` over the members and divides by 3,
    each ``grad`` that of the batch-mean CE on the PGD half-batch).

    One difference, kept on purpose: that ``PGD`` never clears ``adv.grad`` inside its loop,
    so its step t moves along the sign of the gradients of steps 1..t *summed*; here each step
    uses its own gradient (ordinary PGD). With TRS's 6 steps the two can differ."""
    noise = torch.rand(x.shape, generator=gen).to(x.device) * 2 - 1
    adv = (x + eps * noise).clamp(0, 1)
    for _ in range(steps):
        adv = adv.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(_smoothness(model, adv, y), adv)
        adv = torch.min(torch.max(adv + eps / 3 * g.sign(), x - eps), x + eps).clamp(0, 1)
    return adv.detach()


def trs_terms(
    model: Any,
    x: torch.Tensor,
    y: torch.Tensor,
    args: Mapping[str, float],
    progress: float,
    gen: torch.Generator,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """The TRS loss (Yang et al. 2021, "TRS: transferability reduced ensemble via promoting
    gradient diversity and model smoothness"): ``sum_k CE_k + scale * (coeff * L_sim + lamda *
    L_smooth)``. ``L_sim`` is the mean over member pairs of ``|cos(g_a, g_b)|`` (batch mean)
    on clean points; ``L_smooth`` (:func:`_smoothness`) the members' mean of twice the batch
    mean of the squared gradient norm, on a batch whose first half is
    clean and second half TRS's PGD points at ``eps_t``, warmed up linearly from ``init_eps``
    to ``eps`` over training (``progress`` in [0, 1], the fraction of epochs done)."""
    x = x.detach().requires_grad_(True)
    logits = model(x)
    ce = member_ce(logits, y)
    sim = pairwise_cosines(input_gradients(logits, y, x)).abs().mean()
    eps = args["init_eps"] + (args["eps"] - args["init_eps"]) * progress
    half = x.shape[0] // 2
    adv = trs_pgd(model, x[half:].detach(), y[half:], eps, int(args["pgd_steps"]), gen)
    mixed = torch.cat([x[:half].detach(), adv]).requires_grad_(True)
    smooth = _smoothness(model, mixed, y)
    total = ce + args["scale"] * (args["coeff"] * sim + args["lamda"] * smooth)
    terms = {"total": total, "ce": ce, "sim": sim, "smooth": smooth, "eps": ce.new_tensor(eps)}
    return terms, logits


def distill(
    ensemble: Ensemble,
    k: int,
    layer: str,
    source: torch.Tensor,
    target: torch.Tensor,
    eps: float,
    step: float,
    steps: int,
) -> torch.Tensor:
    """DVERGE's feature distillation (Yang et al. 2020, "DVERGE: diversifying vulnerabilities
    for enhanced robust generation of ensembles"): ``x'`` within ``eps`` (L-inf)
    of ``source`` minimising ``||f_k^l(x') - f_k^l(target)||^2`` (member k's features at
    ``layer``), by signed steps of momentum-accumulated, L1-normalised gradients from
    ``source`` (no random start), as in DVERGE's code. ``source``, ``target``: ``[B, C, H,
    W]``; returns ``x'`` of the same shape."""
    with torch.no_grad():
        goal = ensemble.member_features_at(target, k, layer)
    adv, momentum = source.detach().clone(), torch.zeros_like(source)
    for _ in range(steps):
        adv.requires_grad_(True)
        loss = F.mse_loss(ensemble.member_features_at(adv, k, layer), goal)
        (g,) = torch.autograd.grad(loss, adv)
        momentum = momentum + g / g.flatten(1).abs().sum(1).clamp_min(1e-12).view(-1, 1, 1, 1)
        adv = adv.detach() - step * momentum.sign()
        adv = torch.min(torch.max(adv, source - eps), source + eps).clamp(0, 1)
    return adv.detach()


def dverge_terms(
    ensemble: Ensemble,
    model: Any,
    x: torch.Tensor,
    y: torch.Tensor,
    args: Mapping[str, float],
    layers: list[str],
    gen: torch.Generator,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """DVERGE's round-robin step (Yang et al. 2020, its "vanilla" objective): for every
    member i an image ``x'_i`` distilled from source ``x`` toward target ``x_t`` (the batch
    in a random order) at ``layers[i]``; member j minimises ``sum_{i != j} CE(F_j(x'_i),
    y)`` (plus ``clean * CE(F_j(x), y)``), each CE a batch mean. The sum over the K - 1
    other members, not their mean, as in DVERGE's code (zjysteven/DVERGE,
    ``train/train_dverge.py``, ``DVERGE_Trainer.train``: ``for j, distilled_data in
    enumerate(distilled_data_list): if i == j: continue; loss += self.criterion(outputs,
    sl)``): a member's gradient is the sum of its K - 1 pairs'. ``distill_ce`` is the sum of
    the members' losses. One summed loss: each member's loss reaches only its own
    parameters, and the optimiser is elementwise, so this is one optimiser per member.
    """
    k = ensemble.num_members
    target = x[torch.randperm(x.shape[0], generator=gen).to(x.device)]
    was_training = ensemble.training
    ensemble.eval()  # distillation reads the features, it does not train BatchNorm statistics
    distilled = [
        distill(ensemble, i, layers[i], x, target, args["eps"], args["step"], int(args["steps"]))
        for i in range(k)
    ]
    ensemble.train(was_training)
    b = x.shape[0]
    logits = model(torch.cat(distilled))  # [K (scored member), K * B (source member), C]
    logits = logits.view(k, k, b, -1)
    off = ~torch.eye(k, dtype=torch.bool, device=x.device)
    scored = logits[off]  # [K * (K-1), B, C]
    # every (scored j, source i != j) pair's batch-mean CE, summed: k * (k - 1) of them
    distill_ce = F.cross_entropy(scored.flatten(0, 1), y.repeat(k * (k - 1))) * (k * (k - 1))
    if args["clean"] > 0:
        clean_logits = model(x)
        ce = member_ce(clean_logits, y)
    else:
        with torch.no_grad():
            clean_logits = model(x)
            ce = member_ce(clean_logits, y)
    total = distill_ce + args["clean"] * ce
    return {"total": total, "distill_ce": distill_ce, "ce": ce}, clean_logits


def mmc_terms(logits: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    """The MMC loss (Pang et al. 2020, "Rethinking softmax cross-entropy loss for adversarial
    robustness"): ``sum_k mean_b 1/2 ||z_k - mu_y||^2``, i.e. minus
    the true class's logit of the MMC head; ``ce`` (logged) is the CE of those logits."""
    k = logits.shape[0]
    true = logits.gather(-1, y.view(1, -1, 1).expand(k, -1, 1)).squeeze(-1)  # [K, B]
    mmc = -true.mean(-1).sum()
    with torch.no_grad():
        ce = member_ce(logits, y)
    return {"total": mmc, "mmc": mmc, "ce": ce}


def defense_terms(
    defense: str,
    args: Mapping[str, float],
    ensemble: Ensemble,
    model: Any,
    x: torch.Tensor,
    y: torch.Tensor,
    progress: float,
    gen: torch.Generator,
    layers: list[str] | None = None,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """The loss terms of ``defense`` on batch ``x`` ``[B, C, H, W]``, ``y`` ``[B]`` and the
    member logits ``[K, B, C]`` on ``x`` (for the batch accuracy). ``model`` is what runs the
    forward pass (the ensemble, or its DistributedDataParallel wrapper); ``progress`` the
    fraction of training done (TRS's eps warm-up); ``layers`` one backbone layer per member
    (DVERGE). The defense's :class:`Defense` entry says which terms."""
    batch = TrainingBatch(args, ensemble, model, x, y, progress, gen, layers or [])
    return get_defense(defense).terms(batch)


# -- each objective on a TrainingBatch (the registry's one signature) ----------------------
def _eq3(b: TrainingBatch) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Eq. 3 (its ``ce`` alone on a head without M: the baseline)."""
    logits = b.model(b.x)
    return dml_terms(logits, b.y, b.ensemble), logits


def _adp(b: TrainingBatch) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    logits = b.model(b.x)
    args = b.args
    return adp_terms(logits, b.y, args["alpha"], args["beta"], args["det_offset"]), logits


def _gal(b: TrainingBatch) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    return gal_terms(b.model, b.x, b.y, b.args["lambda"])


def _trs(b: TrainingBatch) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    return trs_terms(b.model, b.x, b.y, b.args, b.progress, b.gen)


def _dverge(b: TrainingBatch) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    return dverge_terms(b.ensemble, b.model, b.x, b.y, b.args, b.layers, b.gen)


def _mmc(b: TrainingBatch) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    logits = b.model(b.x)
    return mmc_terms(logits, b.y), logits


# -- the registry ---------------------------------------------------------------------------
DEFENSES: dict[str, Defense] = {
    d.name: d
    for d in (
        Defense("baseline", "linear", "cross-entropy only (the paper's baseline)", _eq3),
        Defense("dml", "dml", "this paper, Eq. 3 (gamma, beta: --gamma, --beta)", _eq3),
        Defense(
            "adp",
            "linear",
            "Pang et al. 2019, Improving adversarial robustness via promoting ensemble "
            "diversity (ADP_{2,0.5})",
            _adp,
            {"alpha": 2.0, "beta": 0.5, "det_offset": 1e-6},
        ),
        Defense(
            "gal",
            "linear",
            "Kariyappa & Qureshi 2019, Improving adversarial robustness of ensembles with "
            "diversity training (GAL)",
            _gal,
            {"lambda": 0.5},
        ),
        Defense(
            "trs",
            "linear",
            "Yang et al. 2021, TRS: transferability reduced ensemble via promoting gradient "
            "diversity and model smoothness",
            _trs,
            {
                "coeff": 2.0,
                "lamda": 2.0,
                "scale": 5.0,
                "eps": 0.03,
                "init_eps": 0.01,
                "pgd_steps": 6,
            },
        ),
        Defense(
            "dverge",
            "linear",
            "Yang et al. 2020, DVERGE: diversifying vulnerabilities for enhanced robust "
            "generation of ensembles",
            _dverge,
            {"eps": 0.07, "step": 0.007, "steps": 10, "clean": 0.0},
            layers=True,
        ),
        Defense(
            "mmc",
            "mmc",
            "Pang et al. 2020, Rethinking softmax cross-entropy loss for adversarial "
            "robustness (MMC-10)",
            _mmc,
        ),
    )
}
