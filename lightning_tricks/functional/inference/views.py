"""Test-time augmentation views: flips, rotations, rescales and crops, composable.

A view maps a batch ``(B, C, H, W)`` to ``n * B`` augmented images, stacked view-major
(``n`` is 1 for flips, rotations, shifts and rescales, 5 or 10 for crops). For dense outputs
(segmentation masks of the input's spatial size) a view can be *inverted*: the inverse
maps the model's output on the augmented images back to the original geometry.

Views are written as strings (for YAML / the CLI) or built as objects::

    "identity", "hflip", "vflip", "rot90", "rot180", "rot270",
    "hshift:2", "vshift:-1", "scale:0.9", "five_crop:6", "ten_crop:6x5", "hflip+rot90"

``a+b`` applies ``a`` first, then ``b``; its inverse undoes ``b`` first, then ``a``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from lightning_tricks.functional._checks import check_str, check_tensor, describe

__all__ = ["View", "parse_view", "parse_views"]

VIEW_NAMES = (
    "identity",
    "hflip",
    "vflip",
    "rot90",
    "rot180",
    "rot270",
    "hshift",
    "vshift",
    "scale",
    "five_crop",
    "ten_crop",
)


class View:
    """One test-time view (or a composition of several).

    A view of your own subclasses ``View`` and implements `apply` (and
    `invert` if dense outputs can be mapped back through it).

    Args:
        name: the canonical string of this view, e.g. ``"rot90"`` or ``"scale:0.9"``.

    Raises:
        TypeError: ``name`` is not a non-empty string.

    Example:
        >>> import torch
        >>> v = parse_view("hflip+rot90")
        >>> x = torch.arange(4.0).reshape(1, 1, 2, 2)
        >>> torch.equal(v.invert(v.apply(x), x.shape[-2:]), x)
        True
        >>> parse_view("five_crop:1").apply(x).shape
        torch.Size([5, 1, 1, 1])
    """

    #: number of augmented images made from each input image
    n: int = 1
    #: whether [`invert`][lightning_tricks.functional.View.invert] exists (dense outputs can be merged)
    invertible: bool = True

    def __init__(self, name: str) -> None:
        self.name = check_str("name", name)

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """Augment ``x`` of shape ``(B, C, H, W)`` into ``(n * B, C, H', W')``, view-major."""
        raise NotImplementedError(_no_apply(self))

    def invert(self, y: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        """Map dense outputs ``(n * B, K, H', W')`` back to the geometry of the input (``size`` = H, W)."""
        raise ValueError(
            f"view {self.name!r} is not invertible, so it cannot be used with dense outputs "
            "(outputs with the input's spatial size, e.g. segmentation masks); invertible views: "
            "identity, hflip, vflip, rot90, rot180, rot270, scale:<f> and compositions of them"
        )

    def __repr__(self) -> str:
        return f"View({self.name!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, View) and other.name == self.name

    def __hash__(self) -> int:
        return hash(self.name)


def _images(x: object, view: View) -> torch.Tensor:
    """``x`` checked to be images ``(B, C, H, W)`` (what `View.apply` takes)."""
    x = check_tensor("x", x)
    if x.ndim != 4:
        raise ValueError(f"`x` must be images (B, C, H, W) for view {view.name!r}; got {describe(x)}")
    return x


def _maps(y: object, size: object, view: View) -> tuple[torch.Tensor, tuple[int, int]]:
    """``y`` checked to be dense outputs ``(N, ..., h, w)`` and ``size`` an ``(H, W)`` pair of ints >= 1."""
    y = check_tensor("y", y)
    if y.ndim < 3:
        raise ValueError(
            f"`y` must be dense outputs (N, ..., h, w) for view {view.name!r}; got {describe(y)}"
        )
    if (
        not isinstance(size, Sequence | torch.Size)
        or isinstance(size, str | bytes)
        or len(size) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in size)
    ):
        raise ValueError(
            f"`size` must be the input's spatial size (H, W), two ints >= 1; got {describe(size)}"
        )
    return y, (int(size[0]), int(size[1]))


def _no_apply(view: View) -> str:
    return (
        f"view {view.name!r} of type {type(view).__name__} does not implement `apply(x)`: a View subclass "
        f"must define apply(x) -> (n * B, C, H', W') (and invert(y, size) if it is invertible)"
    )


class _Identity(View):
    def apply(self, x):
        return _images(x, self)

    def invert(self, y, size):
        return _maps(y, size, self)[0]


class _Flip(View):
    def __init__(self, name: str, dim: int) -> None:
        super().__init__(name)
        self.dim = dim

    def apply(self, x):
        return _images(x, self).flip(self.dim)

    def invert(self, y, size):
        return _maps(y, size, self)[0].flip(self.dim)


class _Rot(View):
    def __init__(self, k: int) -> None:
        super().__init__(f"rot{90 * k}")
        self.k = k

    def apply(self, x):
        return torch.rot90(_images(x, self), self.k, dims=(-2, -1))

    def invert(self, y, size):
        return torch.rot90(_maps(y, size, self)[0], -self.k, dims=(-2, -1))


class _Shift(View):
    """Shift the image by ``pixels`` along its width (``hshift``, positive: right) or height
    (``vshift``, positive: down), filling the uncovered border with zeros: the usual
    random-translation training augmentation (pad, then crop back to size), at one offset."""

    invertible = False  # the pixels shifted out are gone

    def __init__(self, name: str, dim: int, pixels: int) -> None:
        super().__init__(f"{name}:{pixels}")
        self.dim, self.pixels = dim, pixels

    def apply(self, x):
        n, size = self.pixels, x.shape[self.dim]
        if abs(n) >= size:
            raise ValueError(
                f"view {self.name!r}: a shift of {abs(n)} pixels leaves nothing of a size-{size} side"
            )
        fill = x.new_zeros(x.shape).narrow(self.dim, 0, abs(n))
        if n > 0:
            return torch.cat([fill, x.narrow(self.dim, 0, size - n)], dim=self.dim)
        return torch.cat([x.narrow(self.dim, -n, size + n), fill], dim=self.dim)


class _Scale(View):
    """Bilinear rescale by ``factor``; the inverse resizes dense outputs back (bilinear)."""

    def __init__(self, factor: float) -> None:
        super().__init__(f"scale:{factor:g}")
        self.factor = factor

    def apply(self, x):
        x = _images(x, self)
        if not x.is_floating_point():
            raise TypeError(
                f"`x` must be floating-point images for view {self.name!r} (it interpolates); got {describe(x)}"
            )
        h, w = x.shape[-2:]
        size = (max(1, round(h * self.factor)), max(1, round(w * self.factor)))
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)

    def invert(self, y, size):
        y, size = _maps(y, size, self)
        if y.ndim != 4 or not y.is_floating_point():
            raise ValueError(
                f"`y` must be floating-point dense outputs (N, K, h, w) for view {self.name!r} (it interpolates); "
                f"got {describe(y)}"
            )
        return F.interpolate(y, size=size, mode="bilinear", align_corners=False)


class _Crops(View):
    """Four corner crops and the centre crop (torchvision order), plus their h-flips for ten."""

    invertible = False

    def __init__(self, size: tuple[int, int], ten: bool) -> None:
        h, w = size
        super().__init__(f"{'ten' if ten else 'five'}_crop:{h}x{w}")
        self.size, self.ten = size, ten
        self.n = 10 if ten else 5

    def apply(self, x):
        x = _images(x, self)
        h, w = self.size
        H, W = x.shape[-2:]
        if h > H or w > W:
            raise ValueError(
                f"`x` of spatial size {H}x{W} is smaller than the crop size {h}x{w} of view {self.name!r}"
            )
        top, left = (H - h) // 2, (W - w) // 2
        crops = [
            x[..., :h, :w],
            x[..., :h, W - w :],
            x[..., H - h :, :w],
            x[..., H - h :, W - w :],
            x[..., top : top + h, left : left + w],
        ]
        if self.ten:
            crops += [c.flip(-1) for c in crops]
        return torch.cat(crops, dim=0)


class _Compose(View):
    def __init__(self, parts: Sequence[View]) -> None:
        super().__init__("+".join(p.name for p in parts))
        self.parts = tuple(parts)
        self.n = 1
        for p in parts:
            self.n *= p.n
        self.invertible = all(p.invertible for p in parts)

    def apply(self, x):
        for p in self.parts:
            x = p.apply(x)
        return x

    def invert(self, y, size):
        y, size = _maps(y, size, self)
        if not self.invertible:
            bad = next(p for p in self.parts if not p.invertible)
            bad.invert(y, size)  # raises the explanatory error
        # Sizes seen by each part, so that rescales undo to the right intermediate size.
        sizes = [tuple(size)]
        probe = torch.empty(1, 1, *size, device="meta")
        for p in self.parts[:-1]:
            probe = p.apply(probe)
            sizes.append(tuple(probe.shape[-2:]))
        for p, s in zip(reversed(self.parts), reversed(sizes)):
            y = p.invert(y, s)
        return y


def _parse_size(text: str, where: str) -> tuple[int, int]:
    parts = text.lower().split("x")
    try:
        vals = [int(p) for p in parts]
    except ValueError:
        vals = []
    if len(vals) not in (1, 2) or any(v < 1 for v in vals):
        raise ValueError(f"{where}: crop size must be '<int>' or '<h>x<w>' with ints >= 1; got {text!r}")
    return (vals[0], vals[-1])


def _parse_one(part: str, where: str) -> View:
    name, _, arg = part.strip().partition(":")
    name = name.strip().lower()
    if name in ("identity", "hflip", "vflip", "rot90", "rot180", "rot270") and arg:
        raise ValueError(f"{where}: {name!r} takes no argument; got {arg!r}")
    if name == "identity":
        return _Identity("identity")
    if name == "hflip":
        return _Flip("hflip", -1)
    if name == "vflip":
        return _Flip("vflip", -2)
    if name in ("rot90", "rot180", "rot270"):
        return _Rot(int(name[3:]) // 90)
    if name in ("hshift", "vshift"):
        try:
            pixels = int(arg)
        except ValueError:
            pixels = 0
        if pixels == 0:
            raise ValueError(
                f"{where}: '{name}:<pixels>' needs a non-zero whole number of pixels "
                f"(positive: {'right' if name == 'hshift' else 'down'}, negative: "
                f"{'left' if name == 'hshift' else 'up'}); got {arg!r}"
            )
        return _Shift(name, -1 if name == "hshift" else -2, pixels)
    if name == "scale":
        try:
            factor = float(arg)
        except ValueError:
            factor = float("nan")
        if not factor > 0 or factor == float("inf"):
            raise ValueError(f"{where}: 'scale:<factor>' needs a finite factor > 0; got {arg!r}")
        return _Scale(factor)
    if name in ("five_crop", "ten_crop"):
        if not arg:
            raise ValueError(f"{where}: {name!r} needs a crop size, e.g. '{name}:6' or '{name}:6x5'")
        return _Crops(_parse_size(arg, where), ten=name == "ten_crop")
    raise ValueError(f"{where} names an unknown view {name!r}; allowed: {', '.join(VIEW_NAMES)}")


def parse_view(spec: str | View) -> View:
    """Build a [`View`][lightning_tricks.functional.View] from its string form (``View`` objects pass through).

    Args:
        spec: e.g. ``"hflip"``, ``"rot270"``, ``"hshift:2"`` (2 pixels right, zero fill),
            ``"vshift:-1"`` (1 pixel up), ``"scale:1.25"``, ``"ten_crop:6"``,
            ``"five_crop:6x5"`` or a composition such as ``"vflip+rot90"`` or
            ``"hshift:1+vshift:1"``.

    Returns:
        The view.

    Raises:
        ValueError: for an unknown name or a bad argument.
        TypeError: if ``spec`` is neither a string nor a [`View`][lightning_tricks.functional.View] (or a ``View``
            subclass that does not implement ``apply``).

    Example:
        >>> parse_view("hflip+scale:0.5").name
        'hflip+scale:0.5'
        >>> parse_view("ten_crop:6").n
        10
    """
    return _parse_view(spec, "spec")


def _parse_view(spec: object, arg: str) -> View:
    if isinstance(spec, View):
        if type(spec).apply is View.apply:
            raise TypeError(f"`{arg}` {spec!r}: {_no_apply(spec)}")
        if not isinstance(spec.n, int) or isinstance(spec.n, bool) or spec.n < 1:
            raise TypeError(
                f"`{arg}` {spec!r}: its `n` (images per input image) must be an int >= 1; got {spec.n!r}"
            )
        return spec
    if not isinstance(spec, str) or not spec.strip():
        raise TypeError(f"`{arg}` must be a non-empty string or a View; got {describe(spec)}")
    parts = [_parse_one(p, f"`{arg}`={spec!r}") for p in spec.split("+")]
    parts = [p for p in parts if not isinstance(p, _Identity)] or parts[:1]
    return parts[0] if len(parts) == 1 else _Compose(parts)


def parse_views(views: str | View | Sequence[str | View]) -> list[View]:
    """Parse one view or a sequence of views; duplicates are an error.

    Args:
        views: a view or a non-empty sequence of views (strings or [`View`][lightning_tricks.functional.View]).

    Returns:
        The views, in order.

    Raises:
        ValueError: if the sequence is empty, has duplicates or an invalid entry.
        TypeError: for entries of the wrong type.

    Example:
        >>> ", ".join(v.name for v in parse_views(["identity", "hflip", "rot90+vflip"]))
        'identity, hflip, rot90+vflip'
    """
    if isinstance(views, str | View):
        views = [views]
    if not isinstance(views, Sequence) or isinstance(views, bytes):
        raise TypeError(f"`views` must be a view or a sequence of views; got {views!r}")
    if len(views) == 0:
        raise ValueError(f"`views` must name at least one view; got {views!r}")
    out = [_parse_view(v, f"views[{i}]") for i, v in enumerate(views)]
    names = [v.name for v in out]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"`views` repeats {', '.join(dup)}; got {list(names)}")
    return out
