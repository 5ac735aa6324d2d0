"""Formatting helpers of the text report: numbers, shapes, row ranges, tables, linear terms."""

from __future__ import annotations


def _num(x: float) -> str:
    return f"{x:.6g}"


def _shape(shape) -> str:
    shape = tuple(shape)
    if not shape:
        return "scalar"
    return "x".join(str(s) for s in shape)


def _ranges(rows) -> str:
    rows = sorted(rows)
    if not rows:
        return "-"
    parts, start, prev = [], rows[0], rows[0]
    for r in rows[1:]:
        if r == prev + 1:
            prev = r
            continue
        parts.append(f"{start}" if start == prev else f"{start}-{prev}")
        start = prev = r
    parts.append(f"{start}" if start == prev else f"{start}-{prev}")
    return ", ".join(parts)


def _params(params: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in params.items())


def _table(header: list[str], rows: list[list[str]], indent: str = "  ") -> list[str]:
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    fmt = indent + "  ".join(f"{{:<{w}}}" for w in widths)
    lines = [fmt.format(*header).rstrip(), indent + "  ".join("-" * w for w in widths)]
    lines += [fmt.format(*r).rstrip() for r in rows]
    return lines


def _terms(coefs: list[tuple[float, str]]) -> str:
    """'a - 0.5·b + c' from [(1, 'a'), (-0.5, 'b'), (1, 'c')]."""
    out = ""
    for i, (c, name) in enumerate(coefs):
        mag = abs(c)
        body = name if mag == 1.0 else f"{_num(mag)}·{name}"
        if i == 0:
            out = f"-{body}" if c < 0 else body
        else:
            out += f" - {body}" if c < 0 else f" + {body}"
    return out or "0"


def _vector(values) -> str:
    vals = [_num(float(v)) for v in values]
    return vals[0] if len(vals) == 1 else "[" + ", ".join(vals) + "]"


def _op_line(o: dict) -> str:
    fused = (f" (fused: computed by op {', '.join(map(str, o['absorbed_by']))})"
             if o.get("absorbed_by") else "")
    return f"op {o['index']} {o['kind']} -> {o['dst']}{fused}: {o['text']}   [{o['source']}]"
