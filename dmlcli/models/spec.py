"""Model specs: a user's own PyTorch ensemble, described by a small TOML file, as a :class:`Run`.

A spec names the dataset, a *builder* (user code: ``members.py:build`` relative to the spec,
or ``package.module:function``) and optionally weights::

    name = "my-ensemble"          # results are stored under this run name
    dataset = "cifar10"           # test data, classes and input shape (registry name)
    builder = "members.py:build"  # returns K member modules, or one module -> [K, B, C]
    weights = "ensemble.pth"      # or ["m0.pth", "m1.pth", ...]; .safetensors or .pth/.pt/.tar
    members = 3                   # optional check
    decision = "vote"             # optional: the decision dml attack scores by default
    output = 0                    # optional: index or key of the logits in a tuple/dict output
    [builder_args]                # optional keyword arguments of the builder

Members take pixels in [0, 1] (normalization inside them) and return logits ``[B, C]``.
Weights are read with ``torch.load(weights_only=True)`` or safetensors, never unpickled; their
keys are matched to the members by the usual layouts (one file with per-member prefixes such
as ``model_0.`` or ``members.0.``, or one file per member; ``module.`` segments of
DataParallel are dropped, and up to two wrapper segments on either side, e.g. DVERGE's
``model.``/``normalizer.`` or a ``Sequential``'s ``1.``). The run's identity (its
``checkpoint``) is the SHA-256 of the spec text, the builder file and every weights file, so a
changed weight makes earlier results stale exactly as retraining does.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import math
import re
import sys
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomllib
import torch
from torch import nn

from dmlcli.data import dataset_info
from dmlcli.errors import DmlError, DmlWarning
from dmlcli.models.backbones import Normalize
from dmlcli.models.config import EnsembleConfig
from dmlcli.models.io import Run

SPEC_SUFFIX = ".toml"
KEYS = {"name", "dataset", "builder", "weights", "members", "decision", "output", "data_dir",
        "builder_args", "description"}  # fmt: skip
#: torch.save files: .pth, .pt, .pth.tar, .bin, .ckpt, and TRS's numbered .pth.tar.0, ...
PTH_NAME = re.compile(r"\.(pth|pt|tar|bin|ckpt)(\.\d+)?$")
#: Keys under which training scripts nest a state dict (TRS, timm, Lightning, ...).
STATE_KEYS = ("state_dict", "model_state_dict", "model", "net")
MAX_WRAPPERS = 2  # wrapper segments (``model.``, ``1.``) dropped on either side of a key


@dataclass(frozen=True)
class ModelSpec:
    """A parsed spec file (paths resolved against the spec's folder)."""

    path: Path
    name: str
    dataset: str
    builder: str
    weights: tuple[Path, ...] = ()
    members: int | None = None
    decision: str = "vote"
    output: int | str | None = None
    data_dir: Path | None = None
    builder_args: dict[str, Any] = field(default_factory=dict)

    @property
    def builder_file(self) -> Path | None:
        module = self.builder.rsplit(":", 1)[0]
        return self.path.parent / module if module.endswith(".py") else None


def is_spec(ref: str | Path) -> bool:
    """Whether ``ref`` names a spec file (``.toml``) rather than a run."""
    return str(ref).endswith(SPEC_SUFFIX)


def read_spec(path: str | Path) -> ModelSpec:
    """Parse and check the spec at ``path`` (one :class:`DmlError` line per problem)."""
    path = Path(path)
    if not path.is_file():
        raise DmlError(f"model spec {path} does not exist")
    try:
        raw = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise DmlError(f"model spec {path}: not valid TOML ({exc})") from None
    unknown = sorted(set(raw) - KEYS)
    if unknown:
        raise DmlError(
            f"model spec {path}: unknown key {unknown[0]!r}; keys: {', '.join(sorted(KEYS))}"
        )
    for key in ("name", "dataset", "builder"):
        if not isinstance(raw.get(key), str) or not raw[key]:
            raise DmlError(f"model spec {path}: {key!r} (a string) is required")
    dataset_info(raw["dataset"])  # unknown dataset: one line naming the choices
    if ":" not in raw["builder"]:
        raise DmlError(
            f"model spec {path}: builder must be 'file.py:function' or 'package.module:function'; "
            f"got {raw['builder']!r}"
        )
    weights = raw.get("weights", [])
    weights = [weights] if isinstance(weights, str) else weights
    if not isinstance(weights, list) or not all(isinstance(w, str) for w in weights):
        raise DmlError(f"model spec {path}: weights must be a file name or a list of them")
    members = raw.get("members")
    if members is not None and (not isinstance(members, int) or members < 1):
        raise DmlError(f"model spec {path}: members must be a whole number >= 1; got {members!r}")
    output = raw.get("output")
    if output is not None and not isinstance(output, int | str):
        raise DmlError(f"model spec {path}: output must be an index or a key; got {output!r}")
    args = raw.get("builder_args", {})
    if not isinstance(args, dict):
        raise DmlError(f"model spec {path}: [builder_args] must be a table")
    spec = ModelSpec(
        path=path.resolve(),
        name=raw["name"],
        dataset=raw["dataset"],
        builder=raw["builder"],
        weights=tuple((path.parent / w).resolve() for w in weights),
        members=members,
        decision=str(raw.get("decision", "vote")),
        output=output,
        data_dir=(path.parent / raw["data_dir"]).resolve() if raw.get("data_dir") else None,
        builder_args=args,
    )
    for w in spec.weights:
        if not w.is_file():
            raise DmlError(f"model spec {path}: weights file {w} does not exist")
    if spec.builder_file is not None and not spec.builder_file.is_file():
        raise DmlError(f"model spec {path}: builder file {spec.builder_file} does not exist")
    return spec


def spec_digest(spec: ModelSpec) -> str:
    """SHA-256 over the spec text, the builder file (when it is one) and every weights file:
    the ``checkpoint`` identity of the spec's results."""
    h = hashlib.sha256()
    files = [spec.path, *([spec.builder_file] if spec.builder_file else []), *spec.weights]
    for f in files:
        h.update(f.name.encode() + b"\0")
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def config_of(record: Mapping[str, Any]) -> EnsembleConfig:
    """An :class:`EnsembleConfig` describing a recorded spec run for listings and the report
    (head ``user``, backbone the builder); it cannot build the model (the spec does)."""
    info = dataset_info(str(record["dataset"]))
    return EnsembleConfig(
        dataset=info.name,
        backbone=f"user ({record.get('builder', '?')})",
        in_channels=info.channels,
        image_size=info.image_size,
        num_classes=info.num_classes,
        mean=info.mean,
        std=info.std,
        members=int(record.get("members", 0)),
        head="user",
        training={},
    )


# -- builder ------------------------------------------------------------------------------------
def load_builder(spec: ModelSpec) -> Callable[..., Any]:
    """The builder function the spec names. Importing it runs the user's code (that is what a
    builder is): only name spec files you trust."""
    module_ref, func = spec.builder.rsplit(":", 1)
    try:
        if spec.builder_file is not None:
            name = f"dml_spec_{hashlib.sha1(str(spec.builder_file).encode()).hexdigest()[:12]}"
            loader = importlib.util.spec_from_file_location(name, spec.builder_file)
            assert loader is not None and loader.loader is not None
            module = importlib.util.module_from_spec(loader)
            sys.modules[name] = module
            loader.loader.exec_module(module)
        else:
            module = importlib.import_module(module_ref)
    except Exception as exc:  # user code: any error is theirs, reported in one line
        raise DmlError(
            f"cannot import builder {spec.builder!r}: {type(exc).__name__}: {exc}"
        ) from None
    fn = getattr(module, func, None)
    if not callable(fn):
        raise DmlError(f"builder {spec.builder!r}: {module_ref} has no function {func!r}")
    return fn


def build_members(spec: ModelSpec) -> list[nn.Module] | nn.Module:
    """Call the builder: a list of member modules, or one module returning ``[K, B, C]``."""
    fn = load_builder(spec)
    try:
        built = fn(**spec.builder_args)
    except Exception as exc:
        raise DmlError(f"builder {spec.builder!r} raised {type(exc).__name__}: {exc}") from None
    if isinstance(built, nn.Module) and not isinstance(built, nn.ModuleList):
        return built
    if (
        isinstance(built, list | tuple | nn.ModuleList)
        and built
        and all(isinstance(m, nn.Module) for m in built)
    ):
        return list(built)
    raise DmlError(
        f"builder {spec.builder!r} must return a list of nn.Module members or one nn.Module; "
        f"got {type(built).__name__}"
    )


# -- weights ------------------------------------------------------------------------------------
def read_state(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a weights file as one flat ``{key: tensor}``: safetensors, or a
    ``.pth``-style file through ``torch.load(weights_only=True)`` (never unpickling code).
    Nested dicts are joined with ``.`` (DVERGE's ``{"model_0": state_dict, ...}``), a state
    dict under ``state_dict``-like keys is unwrapped (TRS's ``{"epoch", "state_dict", ...}``),
    and ``module.`` segments (DataParallel) are dropped."""
    name = path.name.lower()
    if name.endswith(".safetensors"):
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            obj: Any = load_file(str(path))
        except (SafetensorError, OSError) as exc:
            raise DmlError(f"{path}: not a readable safetensors file ({exc})") from None
    elif PTH_NAME.search(name):
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # UnpicklingError, RuntimeError, EOFError, zipfile errors ...
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise DmlError(
                f"{path}: cannot be read with torch.load(weights_only=True) ({first[:160]}); "
                "dml never unpickles code: save the model's state_dict() (tensors only) or "
                "convert it to .safetensors"
            ) from None
    else:
        raise DmlError(f"{path}: unknown weights format; use .safetensors or .pth/.pt/.pth.tar")
    if isinstance(obj, Mapping):
        for key in STATE_KEYS:
            if isinstance(obj.get(key), Mapping) and _has_tensors(obj[key]):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping):
        raise DmlError(f"{path}: holds a {type(obj).__name__}, not a state dict of tensors")
    flat: dict[str, torch.Tensor] = {}
    _flatten(obj, "", flat)
    if not flat:
        raise DmlError(f"{path}: holds no tensors")
    return {_drop_module(k): v for k, v in flat.items()}


def _has_tensors(obj: Mapping) -> bool:
    return any(isinstance(v, torch.Tensor) or (isinstance(v, Mapping) and _has_tensors(v))
               for v in obj.values())  # fmt: skip


def _flatten(obj: Mapping, prefix: str, out: dict[str, torch.Tensor]) -> None:
    for key, value in obj.items():
        if isinstance(value, torch.Tensor):
            out[prefix + str(key)] = value
        elif isinstance(value, Mapping) and _has_tensors(value):
            _flatten(value, f"{prefix}{key}.", out)


def _drop_module(key: str) -> str:
    return ".".join(s for s in key.split(".") if s != "module")


_MEMBER_PATTERNS = (
    re.compile(r"^[A-Za-z_]*?_?(\d+)\.(.+)$"),  # model_0.x, model0.x, 0.x
    re.compile(r"^[A-Za-z_]+\.(\d+)\.(.+)$"),  # members.0.x, models.0.x
)


def split_members(state: dict[str, torch.Tensor], k: int, where: Path) -> list[dict]:
    """One file holding ``k`` members -> ``k`` state dicts, by the first per-member prefix
    layout that covers every key with indices ``0..k-1`` (or ``1..k``)."""
    for pattern in _MEMBER_PATTERNS:
        groups: dict[int, dict[str, torch.Tensor]] = {}
        for key, value in state.items():
            m = pattern.match(key)
            if not m:
                break
            groups.setdefault(int(m.group(1)), {})[m.group(2)] = value
        else:
            ids = sorted(groups)
            if ids in (list(range(k)), list(range(1, k + 1))):
                return [groups[i] for i in ids]
    heads = sorted({key.split(".")[0] for key in state})[:4]
    raise DmlError(
        f"{where}: cannot split it into {k} members: its keys start with "
        f"{', '.join(repr(h + '.') for h in heads)} (expected per-member prefixes such as "
        "'model_0.' or 'members.0.', or one weights file per member)"
    )


def load_member(module: nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    """Load ``state`` into ``module``. Keys match exactly, or after dropping the same number
    (up to :data:`MAX_WRAPPERS`) of leading wrapper segments on each side: DVERGE's
    ``model.conv1.weight`` / ``normalizer.mean`` and a ``Sequential``'s ``1.conv1.weight`` /
    ``0.mean`` both become ``conv1.weight`` / ``mean`` (the drop that matches the most keys
    wins). The normalization constants of a :class:`Normalize` may be absent (the builder's
    are kept). A mismatch names the first missing, unexpected or misshapen key."""
    expected = module.state_dict()
    optional = {
        f"{n}.{b}" if n else b
        for n, sub in module.named_modules()
        if isinstance(sub, Normalize)
        for b, _ in sub.named_buffers(recurse=False)
    }
    pairs = _best_pairing(list(expected), list(state))
    missing = [e for e in expected if e not in pairs and e not in optional]
    if missing:
        raise DmlError(f"{what}: missing key {missing[0]!r} ({len(missing)} missing)")
    unexpected = sorted(set(state) - set(pairs.values()))
    if unexpected:
        raise DmlError(f"{what}: unexpected key {unexpected[0]!r} ({len(unexpected)} unexpected)")
    mapped = {e: state[g] for e, g in pairs.items()}
    for e in optional & mapped.keys():  # per-channel constants: [C] or [C, 1, 1] alike
        if mapped[e].numel() == expected[e].numel():
            mapped[e] = mapped[e].reshape(expected[e].shape)
    for e, t in mapped.items():
        if t.shape != expected[e].shape:
            raise DmlError(
                f"{what}: {e} has shape {tuple(t.shape)}, the model needs "
                f"{tuple(expected[e].shape)}"
            )
    module.load_state_dict(mapped, strict=False)


def _tails(keys: list[str], drop: int) -> dict[str, str] | None:
    """``{key without its first drop segments: key}``, None when that is ambiguous."""
    out: dict[str, str] = {}
    for k in keys:
        segs = k.split(".")
        if len(segs) <= drop:
            continue
        tail = ".".join(segs[drop:])
        if tail in out:
            return None
        out[tail] = k
    return out


def _best_pairing(expected: list[str], given: list[str]) -> dict[str, str]:
    """``{expected key: given key}`` under the segment drop that pairs the most keys."""
    best: dict[str, str] = {}
    for i in range(MAX_WRAPPERS + 1):
        for j in range(MAX_WRAPPERS + 1):
            te, tg = _tails(expected, i), _tails(given, j)
            if te is None or tg is None:
                continue
            pairs = {te[t]: tg[t] for t in te.keys() & tg.keys()}
            if len(pairs) > len(best):
                best = pairs
    return best


# -- the ensemble -------------------------------------------------------------------------------
class SpecEnsemble(nn.Module):
    """A user's members (or one module) as dml's model: pixels ``[B, C, H, W]`` in [0, 1] ->
    member logits ``[K, B, classes]``; ``output`` picks the logits from a tuple/dict output."""

    randomized = False

    def __init__(
        self, built: list[nn.Module] | nn.Module, num_classes: int, output: int | str | None
    ) -> None:
        super().__init__()
        self.stacked = isinstance(built, nn.Module)
        self.members = nn.ModuleList([built] if self.stacked else built)
        self.output = output
        self.num_classes = num_classes
        self.num_members = 0 if self.stacked else len(self.members)

    @property
    def trainable_sets(self) -> list[list[int]]:
        """No DML head: no ``I_k`` (the meta-vote is then the plain vote)."""
        return [[] for _ in range(self.num_members)]

    def _pick(self, out: Any, who: str) -> torch.Tensor:
        if isinstance(out, torch.Tensor) and self.output is None:
            return out
        if self.output is None:
            raise DmlError(
                f"{who} returns a {type(out).__name__}, not a tensor of logits; set output = "
                "<index> (or <key> for a dict) in the spec"
            )
        try:
            picked = out[self.output]
        except (KeyError, IndexError, TypeError):
            raise DmlError(
                f"{who}: output {self.output!r} is not in its {type(out).__name__}"
            ) from None
        if not isinstance(picked, torch.Tensor):
            raise DmlError(
                f"{who}: output {self.output!r} is a {type(picked).__name__}, not logits"
            )
        return picked

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stacked:
            return self._pick(self.members[0](x), "the model")
        return torch.stack(
            [self._pick(m(x), f"member {k + 1}") for k, m in enumerate(self.members)]
        )

    def member(self, k: int) -> nn.Module:
        """Member ``k`` (1-based) alone: pixels -> logits ``[B, classes]``."""
        return _Member(self, k)


class _Member(nn.Module):
    def __init__(self, ensemble: SpecEnsemble, k: int) -> None:
        super().__init__()
        self.ensemble, self.k = ensemble, k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e = self.ensemble
        if e.stacked:
            return e(x)[self.k - 1]
        return e._pick(e.members[self.k - 1](x), f"member {self.k}")


def probe(model: SpecEnsemble, spec: ModelSpec) -> tuple[int, list[str]]:
    """Run the model on a small random input of the dataset's shape: (its number of members,
    warnings: softmax outputs); a failure, a wrong type or shape, or inf/nan outputs is one
    :class:`DmlError` line."""
    info = dataset_info(spec.dataset)
    shape = (2, info.channels, info.image_size, info.image_size)
    x = torch.rand(*shape, generator=torch.Generator().manual_seed(0))
    try:
        with torch.no_grad():
            out = model(x)
    except DmlError:
        raise
    except Exception as exc:
        raise DmlError(
            f"{spec.path}: the model fails on a {list(shape)} input in [0, 1]: "
            f"{type(exc).__name__}: {exc}"
        ) from None
    k = spec.members
    if out.dim() != 3 or out.shape[1] != 2 or out.shape[2] != info.num_classes:
        want = f"[{k or 'K'}, B, {info.num_classes}]"
        if model.stacked:
            got = f"the model returns shape {list(out.shape)}; it must return logits {want}"
        else:
            got = (
                f"the members return shape {list(out.shape[1:])}; each must return "
                f"[B, {info.num_classes}]"
            )
        raise DmlError(f"{spec.path}: {got} ({spec.dataset} has {info.num_classes} classes)")
    if k is not None and out.shape[0] != k:
        raise DmlError(
            f"{spec.path}: the spec says members = {k}; the builder gives {out.shape[0]}"
        )
    if not math.isfinite(float(out.abs().max())):
        raise DmlError(f"{spec.path}: the model returns inf or nan on a random input")
    found = []
    sums = out.sum(-1)
    if bool((out >= 0).all()) and torch.allclose(sums, torch.ones_like(sums), atol=1e-4):
        found.append(
            f"{spec.name}: the members return probabilities (each row sums to 1), not logits: "
            "attacks on softmax outputs can see vanishing gradients (gradient masking, as "
            "AutoAttack warns); return the logits before the softmax"
        )
        warnings.warn(found[-1], DmlWarning, stacklevel=2)
    return int(out.shape[0]), found


def load_spec_run(spec: ModelSpec | str | Path, device: str | torch.device = "cpu") -> Run:
    """The run a spec (parsed, or its file) describes: built, weights loaded and checked, on
    ``device``."""
    spec = spec if isinstance(spec, ModelSpec) else read_spec(spec)
    built = build_members(spec)
    if spec.weights:
        if isinstance(built, nn.Module) or len(spec.weights) == 1:
            state = read_state(spec.weights[0])
            targets = [built] if isinstance(built, nn.Module) else built
            if isinstance(built, nn.Module) or len(built) == 1:
                states = [state]
            else:
                states = split_members(state, len(built), spec.weights[0])
        else:
            if len(spec.weights) != len(built):
                raise DmlError(
                    f"{spec.path}: {len(spec.weights)} weights files for {len(built)} members"
                )
            targets, states = built, [read_state(w) for w in spec.weights]
        for k, (module, state) in enumerate(zip(targets, states, strict=True), start=1):
            what = spec.weights[min(k - 1, len(spec.weights) - 1)].name
            load_member(module, state, f"{what}, member {k}" if len(targets) > 1 else what)
    info = dataset_info(spec.dataset)
    model = SpecEnsemble(built, info.num_classes, spec.output).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    model.num_members, found = probe(model, spec)
    meta = {
        "spec": str(spec.path),
        "builder": spec.builder,
        "decision": spec.decision,
        "warnings": found,
        **({"data_dir": str(spec.data_dir)} if spec.data_dir else {}),
    }
    return Run(spec.name, model.to(device), spec_digest(spec), spec.dataset, meta, spec.path)
