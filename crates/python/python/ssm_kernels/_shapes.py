"""Shape checks shared by the NumPy and the torch paths.

Every check raises ``ValueError`` naming the argument and the expected shape
(``argument `B`: expected shape (b=2, G=1, N=16, L=64), got (2, 16, 65)``), before
anything is launched, so a wrong call never reaches a kernel.
"""


def fmt(names, sizes):
    return "(" + ", ".join(f"{n}={s}" for n, s in zip(names, sizes)) + ")"


def expect(name, t, names, sizes):
    """`t` must have exactly the shape `sizes` (dimension names `names`)."""
    if t is None:
        return
    shape = tuple(int(s) for s in t.shape)
    if shape != tuple(sizes):
        raise ValueError(
            f"argument `{name}`: expected shape {fmt(names, sizes)}, got {shape}"
        )


def expect_ndim(name, t, allowed):
    """`t` must have one of the ranks in `allowed` (a dict rank -> layout text)."""
    if t.ndim not in allowed:
        layouts = " or ".join(allowed.values())
        raise ValueError(
            f"argument `{name}`: expected shape {layouts}, got {tuple(t.shape)}"
        )


def positive(name, value):
    if value <= 0:
        raise ValueError(f"argument `{name}`: must be positive, got {value}")


def divides(name, groups, what, count):
    if groups <= 0 or count % groups != 0:
        raise ValueError(
            f"argument `{name}`: {groups} groups do not divide {what} = {count}"
        )
