"""Re-initialise the weights of a model with a named scheme, and report what changed.

Layers with a weight matrix or kernel (``Linear``, ``Conv*``, ``Embedding``,
``MultiheadAttention`` input projections) get the scheme; normalisation layers get
weight 1 and bias 0; biases get 0. Modules are selected by type and by name glob, so
that one can, for example, initialise only a new head on top of pretrained weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

import torch
from torch import nn

from lightning_tricks.functional._checks import (
    check_bool,
    check_choice,
    check_number,
    check_str,
    check_str_sequence,
)
from lightning_tricks.functional._modules import glob_match
from lightning_tricks.functional.finetune.weights_io import PRETRAINED_ATTR

__all__ = [
    "DEFAULT_TYPES",
    "SCHEMES",
    "InitReport",
    "check_init_options",
    "frozen_roots",
    "init_weights",
    "pretrained_keys",
]

Scheme = Literal[
    "normal",
    "uniform",
    "xavier_normal",
    "xavier_uniform",
    "kaiming_normal",
    "kaiming_uniform",
    "orthogonal",
    "trunc_normal",
]
SCHEMES: tuple[str, ...] = get_args(Scheme)
DEFAULT_TYPES: tuple[str, ...] = (
    "Linear",
    "Bilinear",
    "Conv1d",
    "Conv2d",
    "Conv3d",
    "ConvTranspose1d",
    "ConvTranspose2d",
    "ConvTranspose3d",
    "Embedding",
    "MultiheadAttention",
)
NONLINEARITIES = ("linear", "conv1d", "conv2d", "conv3d", "sigmoid", "tanh", "relu", "leaky_relu", "selu")
_NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)
_BN = nn.modules.batchnorm._BatchNorm


@dataclass
class InitReport:
    """What :func:`init_weights` did: tensor name -> how it was initialised.

    Attributes:
        initialized: parameter name -> description, e.g. ``"kaiming_normal(fan_in, relu)"``,
            ``"ones"``, ``"zeros"``, ``"zeros (last BatchNorm of block)"``.
        skipped: parameters left as they were (not selected, excluded, pretrained or frozen).
        frozen: the skipped parameters that were left alone because they do not require
            gradients (``include_frozen=False``).

    Example:
        >>> print(InitReport({"fc.weight": "ones", "fc.bias": "zeros"}, ["emb.weight"]))
        initialised 2 tensors (1 x ones, 1 x zeros); left 1 unchanged
        >>> print(InitReport({"fc.weight": "ones"}, ["emb.weight"], frozen=["emb.weight"]))
        initialised 1 tensors (1 x ones); left 1 unchanged (1 frozen)
    """

    initialized: dict[str, str] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    frozen: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        counts: dict[str, int] = {}
        for how in self.initialized.values():
            counts[how] = counts.get(how, 0) + 1
        parts = ", ".join(f"{n} x {how}" for how, n in sorted(counts.items()))
        frozen = f" ({len(self.frozen)} frozen)" if self.frozen else ""
        return f"initialised {len(self.initialized)} tensors ({parts}); left {len(self.skipped)} unchanged{frozen}"


def _type_names(module: nn.Module) -> set[str]:
    return {c.__name__ for c in type(module).__mro__}


def _matches(name: str, patterns: Sequence[str]) -> bool:
    # a pattern also covers everything below what it names ("head" covers "head.fc")
    return any(glob_match(name, p) or glob_match(name, p + ".**") for p in patterns)


def _residual_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    out = []
    for name, m in model.named_modules():
        cls = type(m).__name__
        if callable(getattr(m, "zero_init_last", None)) or cls.endswith(("Block", "Bottleneck")):
            out.append((name, m))
    return out


def pretrained_keys(module: nn.Module) -> set[str]:
    """Names (relative to ``module``) of the tensors that :func:`load_weights` filled.

    Example:
        >>> from torch import nn
        >>> pretrained_keys(nn.Linear(2, 2))
        set()
    """
    out: set[str] = set()
    for name, m in module.named_modules():
        keys = getattr(m, PRETRAINED_ATTR, None)
        if keys:
            out |= {f"{name}.{k}" if name else k for k in keys}
    return out


def check_init_options(
    *,
    scheme: Any,
    include: Any,
    exclude: Any,
    types: Any,
    mode: Any,
    nonlinearity: Any,
    negative_slope: Any,
    gain: Any,
    std: Any,
    bound: Any,
    init_norm: Any,
    zero_bias: Any,
    zero_init_last_bn: Any,
) -> dict[str, Any]:
    """Validate the options of :func:`init_weights`; return them normalised.

    Raises:
        TypeError: an option of the wrong type (the message names it).
        ValueError: an option out of range or not among the allowed values.

    Example:
        >>> check_init_options(scheme="normal", include="head", exclude=(), types=None, mode="fan_in",
        ...     nonlinearity="relu", negative_slope=0, gain=1, std=0.02, bound=0.05, init_norm=True,
        ...     zero_bias=True, zero_init_last_bn=False)["include"]
        ('head',)
    """
    check_choice("scheme", scheme, SCHEMES)
    check_choice("mode", mode, ("fan_in", "fan_out"))
    check_str("nonlinearity", nonlinearity)
    check_choice("nonlinearity", nonlinearity, NONLINEARITIES)
    return {
        "scheme": scheme,
        "include": None if include is None else check_str_sequence("include", include),
        "exclude": check_str_sequence("exclude", exclude, allow_empty=True),
        "types": None if types is None else check_str_sequence("types", types),
        "mode": mode,
        "nonlinearity": nonlinearity,
        "negative_slope": check_number("negative_slope", negative_slope, minimum=0.0),
        "gain": check_number("gain", gain, minimum=0.0, exclusive_minimum=True),
        "std": check_number("std", std, minimum=0.0, exclusive_minimum=True),
        "bound": check_number("bound", bound, minimum=0.0, exclusive_minimum=True),
        "init_norm": check_bool("init_norm", init_norm),
        "zero_bias": check_bool("zero_bias", zero_bias),
        "zero_init_last_bn": check_bool("zero_init_last_bn", zero_init_last_bn),
    }


def init_weights(
    module: nn.Module,
    scheme: Scheme = "kaiming_normal",
    *,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] = (),
    types: Sequence[str] | None = None,
    mode: Literal["fan_in", "fan_out"] = "fan_in",
    nonlinearity: str = "relu",
    negative_slope: float = 0.0,
    gain: float = 1.0,
    std: float = 0.02,
    bound: float = 0.05,
    init_norm: bool = True,
    zero_bias: bool = True,
    zero_init_last_bn: bool = False,
    skip: Sequence[str] = (),
    skip_pretrained: bool = True,
    include_frozen: bool = False,
    generator: torch.Generator | None = None,
) -> InitReport:
    """Initialise ``module``'s weights in place and return a report of what was touched.

    Schemes (for the weights of the selected ``types``):
    ``normal`` N(0, std²); ``uniform`` U(-bound, bound); ``trunc_normal`` N(0, std²)
    truncated at ±2·std; ``xavier_normal``/``xavier_uniform`` with ``gain``;
    ``kaiming_normal``/``kaiming_uniform`` with ``mode``, ``nonlinearity`` and
    ``negative_slope`` (std = gain / sqrt(fan)); ``orthogonal`` with ``gain``.

    Args:
        module: the model (or part of it) to initialise.
        scheme: one of :data:`SCHEMES`.
        include: module-name globs to initialise (``"head"`` also covers ``head.*``);
            ``None`` for every module.
        exclude: module-name globs to leave alone (takes precedence over ``include``).
        types: class names of the layers that get ``scheme`` (matched against the
            class and its bases); default :data:`DEFAULT_TYPES`.
        mode: kaiming fan: ``"fan_in"`` (forward) or ``"fan_out"`` (backward).
        nonlinearity: kaiming gain, as in ``torch.nn.init.calculate_gain``.
        negative_slope: leaky-ReLU slope for the kaiming gain.
        gain: scale of xavier and orthogonal.
        std: standard deviation of ``normal`` and ``trunc_normal``.
        bound: half-width of ``uniform``.
        init_norm: set normalisation layers to weight 1, bias 0.
        zero_bias: set biases of the selected layers to 0.
        zero_init_last_bn: set the weight of the last BatchNorm inside every residual
            block (a module with a timm-style ``zero_init_last()`` method, which is
            called instead, or whose class name ends in ``Block``/``Bottleneck``) to 0,
            so that each block starts as the identity.
        skip: parameter names never touched, e.g. the keys a pretrained load filled
            (``load_weights(...).loaded``).
        skip_pretrained: also skip every tensor that :func:`load_weights` filled in
            ``module`` or any of its submodules.
        include_frozen: also initialise parameters that do not require gradients. By
            default they are left alone (a frozen backbone loaded with
            ``from_pretrained`` keeps its weights) and listed in ``report.frozen``.
        generator: random generator; pass one seeded identically on every rank.

    Returns:
        An :class:`InitReport`.

    Raises:
        TypeError: bad argument types.
        ValueError: bad values, unknown ``types``, globs or ``skip`` names that match
            nothing, or ``zero_init_last_bn`` without any residual block with a BatchNorm.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 2))
        >>> report = init_weights(net, "xavier_uniform", include=["2"], generator=torch.Generator().manual_seed(0))
        >>> sorted(report.initialized)
        ['2.bias', '2.weight']
        >>> print(report)
        initialised 2 tensors (1 x xavier_uniform(gain=1.0), 1 x zeros); left 4 unchanged
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"`module` must be a torch.nn.Module; got {type(module).__name__}")
    opts = check_init_options(
        scheme=scheme,
        include=include,
        exclude=exclude,
        types=types,
        mode=mode,
        nonlinearity=nonlinearity,
        negative_slope=negative_slope,
        gain=gain,
        std=std,
        bound=bound,
        init_norm=init_norm,
        zero_bias=zero_bias,
        zero_init_last_bn=zero_init_last_bn,
    )
    include, exclude = opts["include"], opts["exclude"]
    types = DEFAULT_TYPES if opts["types"] is None else opts["types"]
    negative_slope, gain, std, bound = opts["negative_slope"], opts["gain"], opts["std"], opts["bound"]
    skip_set = set(check_str_sequence("skip", skip, allow_empty=True))
    check_bool("skip_pretrained", skip_pretrained)
    check_bool("include_frozen", include_frozen)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"`generator` must be a torch.Generator or None; got {type(generator).__name__}")

    names = [n for n, _ in module.named_modules() if n]
    known_types = set().union(*(_type_names(m) for m in module.modules()))
    unknown = [t for t in types if t not in known_types and not hasattr(nn, t)]
    if unknown:
        raise ValueError(
            f"`types` names unknown layer classes {unknown}; e.g. {', '.join(DEFAULT_TYPES[:4])}"
        )
    for arg, patterns in (("include", include or ()), ("exclude", exclude)):
        for p in patterns:
            if not any(_matches(n, [p]) for n in names):
                raise ValueError(
                    f"`{arg}` pattern {p!r} matches no submodule; available: {', '.join(names[:12])}"
                )
    param_names = {n for n, _ in module.named_parameters()}
    missing = sorted(skip_set - param_names)
    if missing:
        raise ValueError(f"`skip` names unknown parameters {missing[:5]}")
    if skip_pretrained:
        skip_set |= pretrained_keys(module)

    def how_weight() -> str:
        if scheme.startswith("kaiming"):
            return f"{scheme}({mode}, {nonlinearity})"
        if scheme in ("normal", "trunc_normal"):
            return f"{scheme}(std={std})"
        if scheme == "uniform":
            return f"uniform(bound={bound})"
        return f"{scheme}(gain={gain})"

    def apply(t: torch.Tensor) -> None:
        if generator is not None and t.device != generator.device:
            # Draw on the generator's device, then copy: same numbers on every device.
            tmp = torch.empty(t.shape, dtype=t.dtype, device=generator.device)
            apply_on(tmp)
            t.copy_(tmp)
        else:
            apply_on(t)

    def apply_on(t: torch.Tensor) -> None:
        g = generator
        if scheme == "normal":
            nn.init.normal_(t, 0.0, std, generator=g)
        elif scheme == "uniform":
            nn.init.uniform_(t, -bound, bound, generator=g)
        elif scheme == "trunc_normal":
            nn.init.trunc_normal_(t, 0.0, std, -2 * std, 2 * std, generator=g)
        elif scheme == "xavier_normal":
            nn.init.xavier_normal_(t, gain, generator=g)
        elif scheme == "xavier_uniform":
            nn.init.xavier_uniform_(t, gain, generator=g)
        elif scheme == "kaiming_normal":
            nn.init.kaiming_normal_(t, negative_slope, mode, nonlinearity, generator=g)
        elif scheme == "kaiming_uniform":
            nn.init.kaiming_uniform_(t, negative_slope, mode, nonlinearity, generator=g)
        else:
            nn.init.orthogonal_(t, gain, generator=g)

    report = InitReport()

    def selected(name: str) -> bool:
        return (include is None or _matches(name, include)) and not _matches(name, exclude)

    frozen: set[str] = set()

    def do(pname: str, t: torch.Tensor, how: str, fn) -> None:
        if pname in skip_set:
            return
        if not include_frozen and not t.requires_grad:
            frozen.add(pname)
            return
        with torch.no_grad():
            fn(t)
        report.initialized[pname] = how

    for name, m in module.named_modules():
        if not selected(name):
            continue
        prefix = f"{name}." if name else ""
        own = dict(m.named_parameters(recurse=False))
        if _type_names(m) & set(types):
            for pn, p in own.items():
                if pn.endswith("weight") and p.dim() >= 2:
                    do(prefix + pn, p, how_weight(), apply)
                elif pn.endswith("bias") and zero_bias:
                    do(prefix + pn, p, "zeros", nn.init.zeros_)
            pad = getattr(m, "padding_idx", None)
            if isinstance(m, nn.Embedding) and pad is not None and prefix + "weight" in report.initialized:
                with torch.no_grad():
                    m.weight[pad].zero_()  # keep the padding row at zero, as nn.Embedding does
        elif init_norm and isinstance(m, _NORMS):
            if own.get("weight") is not None:
                do(prefix + "weight", own["weight"], "ones", nn.init.ones_)
            if own.get("bias") is not None:
                do(prefix + "bias", own["bias"], "zeros", nn.init.zeros_)

    if zero_init_last_bn:
        done = 0
        for name, block in _residual_blocks(module):
            if not selected(name):
                continue
            if callable(getattr(block, "zero_init_last", None)):
                done += 1
                fixed = [n for n, p in block.named_parameters() if not p.requires_grad]
                if fixed and not include_frozen:
                    frozen.update(f"{name}.{n}" if name else n for n in fixed)
                    continue
                with torch.no_grad():
                    block.zero_init_last()
                continue
            last = None
            for sub_name, sub in block.named_modules():
                if isinstance(sub, _BN) and sub.weight is not None:
                    last = sub_name
            if last is not None:
                pname = f"{name}.{last}.weight" if name else f"{last}.weight"
                do(pname, block.get_submodule(last).weight, "zeros (last BatchNorm of block)", nn.init.zeros_)
                done += 1
        if not done:
            raise ValueError(
                "`zero_init_last_bn=True` but the selected modules contain no residual block with a "
                "BatchNorm (a module with a zero_init_last() method, or whose class name ends in "
                "'Block' or 'Bottleneck')"
            )
    report.skipped = sorted(param_names - set(report.initialized))
    report.frozen = sorted(frozen - set(report.initialized))
    return report


def frozen_roots(module: nn.Module, names: Sequence[str]) -> list[str]:
    """The shallowest submodules all of whose parameters are among ``names``, covering them.

    Summarises a long list of (frozen) parameter names for a log line.

    Example:
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2)), nn.Linear(2, 1))
        >>> frozen_roots(net, ["0.0.weight", "0.0.bias", "0.1.weight", "0.1.bias", "1.bias"])
        ['0', '1.bias']
    """
    chosen = set(names)
    out: list[str] = []
    covered: set[str] = set()
    for mname, m in module.named_modules():
        prefix = f"{mname}." if mname else ""
        params = [prefix + n for n, _ in m.named_parameters()]
        if not params or any(p in covered for p in params) or not all(p in chosen for p in params):
            continue
        out.append(mname or "(all)")
        covered.update(params)
    out += [n for n in names if n not in covered]
    return out
