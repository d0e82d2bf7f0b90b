"""Re-initialise the weights of a model with a named scheme, and report what changed.

Functional core of [`WeightInit`][lightning_tricks.WeightInit] (the pair ``WeightInit`` <->
[`init_weights`][lightning_tricks.functional.init_weights]).

Layers with a weight matrix or kernel (``Linear``, ``Conv*``, ``Embedding``,
``MultiheadAttention`` input projections) get the scheme; normalisation layers get
weight 1 and bias 0; biases get 0. Modules are selected by type and by the one naming
rule (names, globs, class names, classes; see `lightning_tricks.functional._modules`),
so that one can, for example, initialise only a new head on top of pretrained weights.

[`init_weights`][lightning_tricks.functional.init_weights] is a sequence of small steps: select the modules, plan the tensors
of the layers (the scheme, biases), of the normalisation layers and of the last
BatchNorm of residual blocks, then write each planned tensor unless it is skipped
(named in ``skip``, pretrained or frozen). How each scheme draws is one table,
``_SCHEME_TABLE``, keyed by the names of the [`Scheme`][lightning_tricks.functional.finetune.weight_init.Scheme] ``Literal``. Every scheme
draws into a fresh contiguous tensor that is then copied into the parameter, so the
numbers depend on the shape and the generator only: a model in the channels-last
memory format gets the same weights as a contiguous one.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal, NamedTuple, get_args

import torch
from torch import nn

from lightning_tricks.functional._checks import (
    check_bool,
    check_choice,
    check_module,
    check_number,
    check_str_sequence,
)
from lightning_tricks.functional._modules import ModuleSpec, resolve_modules, resolve_parameters
from lightning_tricks.functional.finetune.weights_io import PRETRAINED_ATTR

__all__ = [
    "DEFAULT_TYPES",
    "MODES",
    "NONLINEARITIES",
    "SCHEMES",
    "InitReport",
    "InitScheme",
    "Mode",
    "Nonlinearity",
    "Scheme",
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
"""The names of the initialisation schemes."""
SCHEMES: tuple[str, ...] = get_args(Scheme)
Mode = Literal["fan_in", "fan_out"]
"""The kaiming fan: ``"fan_in"`` preserves the forward variance, ``"fan_out"`` the backward."""
MODES: tuple[str, ...] = get_args(Mode)
Nonlinearity = Literal[
    "linear",
    "conv1d",
    "conv2d",
    "conv3d",
    "conv_transpose1d",
    "conv_transpose2d",
    "conv_transpose3d",
    "sigmoid",
    "tanh",
    "relu",
    "leaky_relu",
    "selu",
]
"""The nonlinearities of ``torch.nn.init.calculate_gain``."""
NONLINEARITIES: tuple[str, ...] = get_args(Nonlinearity)
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
_NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)
_BN = nn.modules.batchnorm._BatchNorm


@dataclass
class InitReport:
    """What [`init_weights`][lightning_tricks.functional.init_weights] did: tensor name -> how it was initialised.

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


@dataclass(frozen=True)
class InitScheme:
    """A weight scheme with its parameters, validated on construction.

    Args:
        scheme: one of [`SCHEMES`][lightning_tricks.functional.finetune.weight_init.Scheme].
        mode: kaiming fan, one of [`MODES`][lightning_tricks.functional.finetune.weight_init.Mode].
        nonlinearity: kaiming gain, one of [`NONLINEARITIES`][lightning_tricks.functional.finetune.weight_init.Nonlinearity].
        negative_slope: leaky-ReLU slope for the kaiming gain, >= 0.
        gain: scale of xavier and orthogonal, > 0.
        std: standard deviation of ``normal`` and ``trunc_normal``, > 0.
        bound: half-width of ``uniform``, > 0.

    Raises:
        TypeError: a parameter of the wrong type.
        ValueError: a parameter out of range or not among the allowed values.

    Example:
        >>> s = InitScheme("kaiming_normal", mode="fan_out")
        >>> s.description
        'kaiming_normal(fan_out, relu)'
        >>> w = torch.empty(4, 3).t()  # not contiguous: drawn as a fresh tensor, then copied
        >>> s.draw_(w, torch.Generator().manual_seed(0)).shape
        torch.Size([3, 4])
    """

    scheme: Scheme = "kaiming_normal"
    mode: Mode = "fan_in"
    nonlinearity: Nonlinearity = "relu"
    negative_slope: float = 0.0
    gain: float = 1.0
    std: float = 0.02
    bound: float = 0.05

    def __post_init__(self) -> None:
        check_choice("scheme", self.scheme, SCHEMES)
        check_choice("mode", self.mode, MODES)
        check_choice("nonlinearity", self.nonlinearity, NONLINEARITIES)
        slope = check_number("negative_slope", self.negative_slope, minimum=0.0)
        object.__setattr__(self, "negative_slope", slope)
        for name in ("gain", "std", "bound"):
            value = check_number(name, getattr(self, name), minimum=0.0, exclusive_minimum=True)
            object.__setattr__(self, name, value)

    @property
    def description(self) -> str:
        """How the report names this scheme, e.g. ``"normal(std=0.02)"``."""
        return _SCHEME_TABLE[self.scheme].describe(self)

    def draw_(self, tensor: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Fill ``tensor`` in place; the numbers depend on its shape and ``generator`` only.

        The scheme draws into a fresh contiguous tensor (on the generator's device), which
        is then copied into ``tensor``: its memory format (channels-last, a transposed
        view) and its device do not change what it receives.
        """
        device = generator.device if generator is not None else tensor.device
        fresh = torch.empty(tensor.shape, dtype=tensor.dtype, device=device)
        with torch.no_grad():
            _SCHEME_TABLE[self.scheme].draw(fresh, self, generator)
            return tensor.copy_(fresh)


class _Rule(NamedTuple):
    """How one scheme draws a (contiguous) tensor, and how the report names it."""

    draw: Callable[[torch.Tensor, InitScheme, torch.Generator | None], object]
    describe: Callable[[InitScheme], str]


def _with_std(s: InitScheme) -> str:
    return f"{s.scheme}(std={s.std})"


def _with_gain(s: InitScheme) -> str:
    return f"{s.scheme}(gain={s.gain})"


def _with_fan(s: InitScheme) -> str:
    return f"{s.scheme}({s.mode}, {s.nonlinearity})"


# The one table of schemes: name (from the ``Scheme`` Literal) -> how it draws.
_SCHEME_TABLE: dict[str, _Rule] = {
    "normal": _Rule(lambda t, s, g: nn.init.normal_(t, 0.0, s.std, generator=g), _with_std),
    "uniform": _Rule(
        lambda t, s, g: nn.init.uniform_(t, -s.bound, s.bound, generator=g),
        lambda s: f"uniform(bound={s.bound})",
    ),
    "xavier_normal": _Rule(lambda t, s, g: nn.init.xavier_normal_(t, s.gain, generator=g), _with_gain),
    "xavier_uniform": _Rule(lambda t, s, g: nn.init.xavier_uniform_(t, s.gain, generator=g), _with_gain),
    "kaiming_normal": _Rule(
        lambda t, s, g: nn.init.kaiming_normal_(t, s.negative_slope, s.mode, s.nonlinearity, generator=g),
        _with_fan,
    ),
    "kaiming_uniform": _Rule(
        lambda t, s, g: nn.init.kaiming_uniform_(t, s.negative_slope, s.mode, s.nonlinearity, generator=g),
        _with_fan,
    ),
    "orthogonal": _Rule(lambda t, s, g: nn.init.orthogonal_(t, s.gain, generator=g), _with_gain),
    "trunc_normal": _Rule(
        lambda t, s, g: nn.init.trunc_normal_(t, 0.0, s.std, -2 * s.std, 2 * s.std, generator=g), _with_std
    ),
}


def pretrained_keys(module: nn.Module) -> set[str]:
    """Names (relative to ``module``) of the tensors that [`load_weights`][lightning_tricks.functional.load_weights] filled.

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


# ----------------------------------------------------------------------------- steps


def _type_names(module: nn.Module) -> set[str]:
    return {c.__name__ for c in type(module).__mro__}


def _layer_types(module: nn.Module, types: Sequence[str] | None) -> frozenset[str]:
    """The class names of the layers that get the scheme (matched against the class and its bases)."""
    names = DEFAULT_TYPES if types is None else check_str_sequence("types", types)
    known = set().union(*(_type_names(m) for m in module.modules()))
    unknown = [t for t in names if t not in known and not hasattr(nn, t)]
    if unknown:
        raise ValueError(
            f"`types` names unknown layer classes {unknown}; allowed: classes of the model or of "
            f"torch.nn, e.g. {', '.join(DEFAULT_TYPES[:4])}"
        )
    return frozenset(names)


def _below(names: Sequence[str], roots: Sequence[str]) -> set[str]:
    """The names among ``names`` that are one of ``roots`` or lie inside one."""
    return {n for n in names if any(n == r or n.startswith(f"{r}.") for r in roots)}


def _select(module: nn.Module, include: ModuleSpec | None, exclude: ModuleSpec) -> dict[str, nn.Module]:
    """Step 1: the modules to initialise, in model order.

    What ``include`` selects and everything inside it (``None``: the whole model), minus
    what ``exclude`` selects and everything inside that.
    """
    every = dict(module.named_modules())
    names = list(every)
    chosen = (
        set(names) if include is None else _below(names, list(resolve_modules(module, include, "include")))
    )
    dropped = _below(names, list(resolve_modules(module, exclude, "exclude", allow_empty=True)))
    return {n: m for n, m in every.items() if n in chosen and n not in dropped}


def _prefix(name: str) -> str:
    return f"{name}." if name else ""


class _Step(NamedTuple):
    """One planned tensor: its name, the tensor, how the report names the change, how to fill it."""

    name: str
    tensor: torch.Tensor
    how: str
    fill: Callable[[torch.Tensor], object]


def _draw_weight(
    tensor: torch.Tensor, *, scheme: InitScheme, generator: torch.Generator | None, padding_idx: int | None
) -> None:
    scheme.draw_(tensor, generator)
    if padding_idx is not None:
        tensor[padding_idx].zero_()  # keep the padding row at zero, as nn.Embedding does


def _layer_steps(
    selected: dict[str, nn.Module],
    layer_types: frozenset[str],
    scheme: InitScheme,
    zero_bias: bool,
    generator: torch.Generator | None,
) -> Iterator[_Step]:
    """Step 2: weight matrices and kernels of the layers get the scheme, their biases zeros."""
    for name, m in selected.items():
        if not _type_names(m) & layer_types:
            continue
        pad = m.padding_idx if isinstance(m, nn.Embedding) else None
        fill = functools.partial(_draw_weight, scheme=scheme, generator=generator, padding_idx=pad)
        for pn, p in m.named_parameters(recurse=False):
            if pn.endswith("weight") and p.dim() >= 2:
                yield _Step(_prefix(name) + pn, p, scheme.description, fill)
            elif pn.endswith("bias") and zero_bias:
                yield _Step(_prefix(name) + pn, p, "zeros", nn.init.zeros_)


def _norm_steps(selected: dict[str, nn.Module], layer_types: frozenset[str]) -> Iterator[_Step]:
    """Step 3: normalisation layers (not among the scheme's layer types) to weight 1, bias 0."""
    for name, m in selected.items():
        if not isinstance(m, _NORMS) or _type_names(m) & layer_types:
            continue
        own = dict(m.named_parameters(recurse=False))
        if own.get("weight") is not None:
            yield _Step(_prefix(name) + "weight", own["weight"], "ones", nn.init.ones_)
        if own.get("bias") is not None:
            yield _Step(_prefix(name) + "bias", own["bias"], "zeros", nn.init.zeros_)


def _residual_blocks(selected: dict[str, nn.Module]) -> Iterator[tuple[str, nn.Module]]:
    for name, m in selected.items():
        if callable(getattr(m, "zero_init_last", None)) or type(m).__name__.endswith(("Block", "Bottleneck")):
            yield name, m


def _last_batchnorm(block: nn.Module) -> tuple[str, torch.Tensor] | None:
    last = None
    for sub_name, sub in block.named_modules():
        if isinstance(sub, _BN) and sub.weight is not None:
            last = (sub_name, sub.weight)
    return last


@dataclass
class _Writer:
    """Step 4: write each planned tensor unless it is skipped (``skip``, pretrained, frozen)."""

    skip: set[str]
    include_frozen: bool
    report: InitReport = field(default_factory=InitReport)
    frozen: set[str] = field(default_factory=set)

    def write(self, step: _Step) -> None:
        if step.name in self.skip:
            return
        if not self.include_frozen and not step.tensor.requires_grad:
            self.frozen.add(step.name)
            return
        with torch.no_grad():
            step.fill(step.tensor)
        self.report.initialized[step.name] = step.how

    def call_zero_init_last(self, name: str, block: nn.Module) -> None:
        """A block's own timm-style ``zero_init_last()``, unless some of its parameters are frozen."""
        fixed = [_prefix(name) + n for n, p in block.named_parameters() if not p.requires_grad]
        if fixed and not self.include_frozen:
            self.frozen.update(fixed)
            return
        zero_init_last: Callable[[], object] = getattr(block, "zero_init_last")  # noqa: B009
        with torch.no_grad():
            zero_init_last()

    def finish(self, module: nn.Module) -> InitReport:
        done = set(self.report.initialized)
        self.report.skipped = sorted({n for n, _ in module.named_parameters()} - done)
        self.report.frozen = sorted(self.frozen - done)
        return self.report


def _zero_init_last_bn_plan(selected: dict[str, nn.Module]) -> list[tuple[str, nn.Module, _Step | None]]:
    """Step 5, planned before anything is written: per selected residual block, either its
    ``zero_init_last()`` (no step) or the step that zeroes its last BatchNorm weight.

    Raises:
        ValueError: no residual block with a BatchNorm among the selected modules.
    """
    plan: list[tuple[str, nn.Module, _Step | None]] = []
    for name, block in _residual_blocks(selected):
        if callable(getattr(block, "zero_init_last", None)):
            plan.append((name, block, None))
            continue
        last = _last_batchnorm(block)
        if last is not None:
            sub_name, weight = last
            step = _Step(
                _prefix(name) + f"{sub_name}.weight",
                weight,
                "zeros (last BatchNorm of block)",
                nn.init.zeros_,
            )
            plan.append((name, block, step))
    if not plan:
        raise ValueError(
            "`zero_init_last_bn=True` but the selected modules contain no residual block with a "
            "BatchNorm (a module with a zero_init_last() method, or whose class name ends in "
            "'Block' or 'Bottleneck')"
        )
    return plan


def _zero_init_last_bn(plan: list[tuple[str, nn.Module, _Step | None]], writer: _Writer) -> None:
    """Step 5: the last BatchNorm weight of every selected residual block to 0."""
    for name, block, step in plan:
        if step is None:
            writer.call_zero_init_last(name, block)
        else:
            writer.write(step)


def _skipped(module: nn.Module, skip: ModuleSpec, skip_pretrained: bool) -> set[str]:
    """The parameter names never touched: ``skip`` (by the naming rule) and, optionally, pretrained keys."""
    out = set(resolve_parameters(module, skip, "skip", allow_empty=True))
    if check_bool("skip_pretrained", skip_pretrained):
        out |= pretrained_keys(module)
    return out


def init_weights(
    module: nn.Module,
    scheme: Scheme = "kaiming_normal",
    *,
    include: ModuleSpec | None = None,
    exclude: ModuleSpec = (),
    types: Sequence[str] | None = None,
    mode: Mode = "fan_in",
    nonlinearity: Nonlinearity = "relu",
    negative_slope: float = 0.0,
    gain: float = 1.0,
    std: float = 0.02,
    bound: float = 0.05,
    init_norm: bool = True,
    zero_bias: bool = True,
    zero_init_last_bn: bool = False,
    skip: ModuleSpec = (),
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
    The weights drawn depend only on the shapes and the generator, not on the memory
    format of the parameters (channels-last models get the same weights).

    Args:
        module: the model (or part of it) to initialise.
        scheme: one of [`SCHEMES`][lightning_tricks.functional.finetune.weight_init.Scheme].
        include: the submodules to initialise, with everything inside them, by the naming
            rule: qualified names, segment globs (``"head"``, ``"blocks.*"``,
            ``"**.attn"``), class names (``"Conv2d"``) or classes; a lone string is one
            name; ``None`` for the whole model.
        exclude: submodules to leave alone, by the same rule (takes precedence over ``include``).
        types: class names of the layers that get ``scheme`` (matched against the
            class and its bases); default [`DEFAULT_TYPES`][lightning_tricks.functional.finetune.weight_init.DEFAULT_TYPES].
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
        skip: parameters never touched, by the naming rule for parameters (exact names
            such as the keys a pretrained load filled, ``"**.bias"``, or a submodule's
            name for all of its parameters).
        skip_pretrained: also skip every tensor that [`load_weights`][lightning_tricks.functional.load_weights] filled in
            ``module`` or any of its submodules.
        include_frozen: also initialise parameters that do not require gradients. By
            default they are left alone (a frozen backbone loaded with
            ``from_pretrained`` keeps its weights) and listed in ``report.frozen``.
        generator: random generator; pass one seeded identically on every rank.

    Returns:
        An [`InitReport`][lightning_tricks.functional.InitReport].

    Raises:
        TypeError: bad argument types.
        ValueError: bad values, unknown ``types``, ``include``/``exclude``/``skip`` entries
            that select nothing (the message suggests near names), or
            ``zero_init_last_bn`` without any residual block with a BatchNorm.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 2))
        >>> report = init_weights(net, "xavier_uniform", include="2", generator=torch.Generator().manual_seed(0))
        >>> sorted(report.initialized)
        ['2.bias', '2.weight']
        >>> print(report)
        initialised 2 tensors (1 x xavier_uniform(gain=1.0), 1 x zeros); left 4 unchanged
        >>> sorted(init_weights(net, "normal", include="Linear", exclude="0").initialized)
        ['2.bias', '2.weight']
    """
    module = check_module("module", module)
    drawn = InitScheme(scheme, mode, nonlinearity, negative_slope, gain, std, bound)
    for name, flag in (
        ("init_norm", init_norm),
        ("zero_bias", zero_bias),
        ("zero_init_last_bn", zero_init_last_bn),
    ):
        check_bool(name, flag)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"`generator` must be a torch.Generator or None; got {type(generator).__name__}")
    layer_types = _layer_types(module, types)
    selected = _select(module, include, exclude)
    writer = _Writer(
        skip=_skipped(module, skip, skip_pretrained),
        include_frozen=check_bool("include_frozen", include_frozen),
    )
    # everything that can refuse is checked before the first tensor is written
    zero_plan = _zero_init_last_bn_plan(selected) if zero_init_last_bn else []
    for step in _layer_steps(selected, layer_types, drawn, zero_bias, generator):
        writer.write(step)
    if init_norm:
        for step in _norm_steps(selected, layer_types):
            writer.write(step)
    if zero_init_last_bn:
        _zero_init_last_bn(zero_plan, writer)
    return writer.finish(module)


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
        prefix = _prefix(mname)
        params = [prefix + n for n, _ in m.named_parameters()]
        if not params or any(p in covered for p in params) or not all(p in chosen for p in params):
            continue
        out.append(mname or "(all)")
        covered.update(params)
    out += [n for n in names if n not in covered]
    return out
