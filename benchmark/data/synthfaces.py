"""Procedural cartoon faces whose class lives in the expression, not in a fixed pixel.

`face_layer` draws one face from an identity (face shape, skin, eye spacing, hair, ...), an
expression (eyes, brows, mouth, wrinkles, blended toward neutral by a random intensity) and a
pose (shift, scale, yaw squash); `rotate_onto` turns it by the pose's angle onto a background.
synth5 builds its five domains on top of them.

Every number that decides a pixel is computed with + - * / and square roots alone, which IEEE 754
rounds exactly on every CPU, or inside Pillow's own compiled code, which is the same on every CPU
that runs the same wheel. Nothing here calls libm's sin, cos, exp or log (directly or through
Pillow's arcs, chords, rotations and curved joints, or numpy's normal sampler): glibc picks their
implementation by the CPU's features at run time (FMA or not), so their last bits, and then an
occasional pixel, would depend on the machine.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

# Expression geometry in face units (1 = face half-height), canonical order. Each entry:
# eye_open, brow_raise, brow_tilt (inner end up > 0), mouth_curve (smile > 0), mouth_open,
# mouth_width (x identity width), wrinkle kind.
EXPRESSIONS: dict[str, dict[str, float | str]] = {
    "surprise":  dict(eye_open=1.7, brow_raise=0.16, brow_tilt=0.0, mouth_curve=0.0, mouth_open=0.30, mouth_width=0.55, wrinkle="forehead"),
    "fear":      dict(eye_open=1.5, brow_raise=0.09, brow_tilt=0.10, mouth_curve=-0.06, mouth_open=0.16, mouth_width=1.15, wrinkle="forehead"),
    "disgust":   dict(eye_open=0.6, brow_raise=-0.06, brow_tilt=-0.05, mouth_curve=-0.08, mouth_open=0.05, mouth_width=0.85, wrinkle="nose"),
    "happiness": dict(eye_open=0.55, brow_raise=0.02, brow_tilt=0.0, mouth_curve=0.22, mouth_open=0.08, mouth_width=1.25, wrinkle="cheek"),
    "sadness":   dict(eye_open=0.75, brow_raise=0.02, brow_tilt=0.14, mouth_curve=-0.16, mouth_open=0.0, mouth_width=0.9, wrinkle="none"),
    "anger":     dict(eye_open=0.7, brow_raise=-0.09, brow_tilt=-0.16, mouth_curve=-0.04, mouth_open=0.04, mouth_width=0.85, wrinkle="glabella"),
    "neutral":   dict(eye_open=1.0, brow_raise=0.0, brow_tilt=0.0, mouth_curve=0.0, mouth_open=0.0, mouth_width=1.0, wrinkle="none"),
}
NUMERIC_KEYS = ("eye_open", "brow_raise", "brow_tilt", "mouth_curve", "mouth_open", "mouth_width")


@dataclass
class Identity:
    face_w: float  # half-width / half-height
    skin: tuple[int, int, int]
    hair: tuple[int, int, int]
    hair_style: int  # 0 short cap, 1 long sides, 2 bald
    eye_dx: float
    eye_y: float
    eye_size: float
    brow_thick: float
    mouth_y: float
    mouth_w: float
    glasses: bool
    beard: bool
    tone: float = 1.0  # the skin's brightness factor drawn for it (0.25 dark .. 1 light); recorded, not drawn again


SQRT3 = 1.7320508075688772  # sqrt(3), so that gauss() has unit variance


def gauss(rng: np.random.Generator, size: int | tuple[int, ...] | None = None) -> Any:
    """Standard-normal-like draws of mean 0 and variance 1: the centred sum of four uniforms
    (Irwin-Hall), bounded at ±2·sqrt(3). numpy's normal sampler takes libm's exp and log on its
    slow paths (about 1.5% of draws), whose last bits vary with the CPU; these sums do not."""
    u = rng.random(4 if size is None else (4, *np.atleast_1d(size)))
    draws = ((u[0] + u[1]) + (u[2] + u[3]) - 2.0) * SQRT3
    return float(draws) if size is None else draws


def sample_identity(rng: np.random.Generator, *, round_faces: bool = False, glasses_p: float = 0.0,
                    beard_p: float = 0.0) -> Identity:
    tone = rng.uniform(0.25, 1.0)
    skin = tuple(int(c) for c in np.clip(np.array([235, 190, 160]) * tone + 8 * gauss(rng, 3) + 20, 30, 255))
    hair = tuple(int(c) for c in np.clip(rng.choice([[30, 20, 10], [90, 60, 30], [200, 170, 90], [60, 60, 60], [150, 60, 30]])
                                          + 10 * gauss(rng, 3), 0, 255))
    return Identity(
        face_w=rng.uniform(0.86, 1.0) if round_faces else rng.uniform(0.66, 0.82),
        skin=skin, hair=hair, hair_style=int(rng.integers(0, 3)),
        eye_dx=rng.uniform(0.30, 0.40), eye_y=rng.uniform(-0.22, -0.12), eye_size=rng.uniform(0.10, 0.13),
        brow_thick=rng.uniform(0.05, 0.08), mouth_y=rng.uniform(0.38, 0.50), mouth_w=rng.uniform(0.26, 0.34),
        glasses=bool(rng.random() < glasses_p), beard=bool(rng.random() < beard_p), tone=float(tone),
    )


def expression_params(rng: np.random.Generator, name: str, intensity: float, jitter: float) -> dict[str, float | str]:
    """The class's geometry blended toward neutral by `intensity`, plus per-parameter noise."""
    target, neutral = EXPRESSIONS[name], EXPRESSIONS["neutral"]
    params: dict[str, float | str] = {"wrinkle": target["wrinkle"] if intensity > 0.6 else "none"}
    scales = dict(eye_open=0.15, brow_raise=0.02, brow_tilt=0.03, mouth_curve=0.03, mouth_open=0.02, mouth_width=0.08)
    for key in NUMERIC_KEYS:
        value = float(neutral[key]) + intensity * (float(target[key]) - float(neutral[key]))
        params[key] = value + jitter * scales[key] * gauss(rng)
    params["asym"] = 0.5 if name == "disgust" else 0.0
    return params


# tan of half the angle each cap spans either side of its axis (Pillow's chord 190-350 degrees: 80
# either side of the top; 20-160: 70 either side of the bottom), for ellipse_cap's parametrisation.
TAN_40_DEG = 0.8390996311772799
TAN_35_DEG = 0.7002075382097097


def ellipse_cap(box: list[float], tan_half: float, top: bool, points: int = 24) -> list[tuple[float, float]]:
    """Points of an ellipse's arc symmetric about its top (or bottom), from + - * / alone.

    The arc reaches 2·atan(tan_half) either side of the axis: a unit-circle point is
    ((1-t²)/(1+t²), 2t/(1+t²)) for t = tan of half its angle from the axis, t evenly spaced in
    [-tan_half, tan_half]. As a polygon it is Pillow's chord; as a line, its arc (both of which
    call libm's sin and cos).
    """
    x0, y0, x1, y1 = box
    cx, cy, rx, ry = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2, (y1 - y0) / 2
    out = []
    for k in range(points):
        t = tan_half * (2 * k / (points - 1) - 1)
        along, across = (1 - t * t) / (1 + t * t), 2 * t / (1 + t * t)
        out.append((cx + rx * across, cy - ry * along if top else cy + ry * along))
    return out


def quadratic_through(a: tuple[float, float], mid: tuple[float, float], b: tuple[float, float],
                      points: int = 9) -> list[tuple[float, float]]:
    """Points of the parabola from a to b through mid (a smooth mouth line without Pillow's curved
    joint, which calls libm's atan2, sin and cos)."""
    cx, cy = 2 * mid[0] - (a[0] + b[0]) / 2, 2 * mid[1] - (a[1] + b[1]) / 2
    out = []
    for k in range(points):
        u = k / (points - 1)
        p, q, r = (1 - u) * (1 - u), 2 * u * (1 - u), u * u
        out.append((p * a[0] + q * cx + r * b[0], p * a[1] + q * cy + r * b[1]))
    return out


def rotation(angle: float) -> tuple[float, float]:
    """(cos, sin) of about `angle` degrees, from + - * / alone.

    With t = tan(angle/2) from its series to the cubic term, ((1-t²)/(1+t²), 2t/(1+t²)) is a
    rotation by 2·atan(t), within 0.001 degree of `angle` for |angle| <= 15 (a pose draws at most
    15): math.cos and math.sin, as Image.rotate uses them, vary in the last bit with the CPU.
    """
    half = angle * (3.141592653589793 / 360)
    t = half + half * half * half / 3
    return (1 - t * t) / (1 + t * t), 2 * t / (1 + t * t)


def rotate_onto(layer: Image.Image, background: Image.Image, angle: float, center: tuple[float, float]) -> Image.Image:
    """`layer` turned counter-clockwise by `angle` degrees about `center` (bilinear, as
    Image.rotate does) and composited onto `background`."""
    cos, sin = rotation(angle)
    cx, cy = center
    # Image.rotate's inverse affine map (output pixel -> input pixel) with these cos and sin.
    matrix = (cos, -sin, cos * -cx + -sin * -cy + cx, sin, cos, sin * -cx + cos * -cy + cy)
    turned = layer.transform(layer.size, Image.AFFINE, matrix, resample=Image.BILINEAR)
    out = background.convert("RGBA")
    out.alpha_composite(turned)
    return out.convert("RGB")


def face_layer(canvas: int, identity: Identity, expr: dict[str, float | str], pose: dict[str, float],
               line: tuple[int, int, int] = (40, 25, 20)) -> tuple[Image.Image, tuple[float, float]]:
    """One face drawn upright on a transparent RGBA layer of side `canvas`, and its centre."""
    layer = Image.new("RGBA", (canvas, canvas), (0, 0, 0, 0))
    d = ImageDraw.Draw(layer)
    unit = canvas * 0.42 * pose["scale"]  # face half-height in pixels
    cx = canvas / 2 + pose["dx"] * canvas
    cy = canvas / 2 + pose["dy"] * canvas
    yaw = pose["yaw"]  # -1..1: squash and shift the features sideways
    fw = identity.face_w * unit * (1 - 0.25 * abs(yaw))
    feature_shift = yaw * 0.18 * unit
    width = max(1, int(unit * 0.05))

    def pt(x: float, y: float) -> tuple[float, float]:
        """Face units -> pixels, with the yaw squash applied to x."""
        return (cx + feature_shift + x * unit * (1 - 0.25 * abs(yaw)), cy + y * unit)

    # Hair behind, face, hair on top.
    if identity.hair_style == 1:
        d.ellipse([cx - fw * 1.15, cy - unit * 1.1, cx + fw * 1.15, cy + unit * 0.7], fill=identity.hair)
    d.ellipse([cx - fw, cy - unit, cx + fw, cy + unit], fill=identity.skin, outline=line, width=width)
    if identity.hair_style != 2:
        d.polygon(ellipse_cap([cx - fw, cy - unit, cx + fw, cy + unit * 0.1], TAN_40_DEG, top=True), fill=identity.hair)
    if identity.beard:
        d.polygon(ellipse_cap([cx - fw * 0.95, cy - unit * 0.2, cx + fw * 0.95, cy + unit * 1.0], TAN_35_DEG, top=False),
                  fill=identity.hair)

    eye_open = max(0.15, float(expr["eye_open"]))
    brow_raise, brow_tilt = float(expr["brow_raise"]), float(expr["brow_tilt"])
    for side in (-1, 1):
        ex, ey = side * identity.eye_dx, identity.eye_y
        ew, eh = identity.eye_size * 1.3, identity.eye_size * 0.55 * eye_open
        x0, y0 = pt(ex - ew, ey - eh)
        x1, y1 = pt(ex + ew, ey + eh)
        d.ellipse([x0, y0, x1, y1], fill=(250, 250, 250), outline=line, width=width)
        pr = min(ew, eh) * 0.8
        px0, py0 = pt(ex - pr * 0.8, ey - pr)
        px1, py1 = pt(ex + pr * 0.8, ey + pr)
        d.ellipse([px0, py0, px1, py1], fill=(30, 20, 15))
        # Brow: inner end (toward the nose) moves by the tilt.
        by = ey - identity.eye_size * 1.4 - brow_raise
        inner = pt(side * (identity.eye_dx - 0.14), by - brow_tilt)
        outer = pt(side * (identity.eye_dx + 0.16), by + brow_tilt * 0.3)
        d.line([inner, outer], fill=identity.hair if identity.hair_style != 2 else line,
               width=max(1, int(identity.brow_thick * unit)))
        if identity.glasses:
            gx0, gy0 = pt(ex - ew * 1.6, ey - identity.eye_size * 1.2)
            gx1, gy1 = pt(ex + ew * 1.6, ey + identity.eye_size * 1.2)
            d.rectangle([gx0, gy0, gx1, gy1], outline=(20, 20, 20), width=width)
        if expr["wrinkle"] == "cheek":  # crow's feet
            for k in (-1, 0, 1):
                d.line([pt(side * (identity.eye_dx + ew + 0.03), ey + k * 0.04),
                        pt(side * (identity.eye_dx + ew + 0.12), ey + k * 0.08)], fill=line, width=width)
    # Nose.
    d.line([pt(0, -0.05), pt(-0.05, 0.2), pt(0.03, 0.22)], fill=line, width=width)
    if expr["wrinkle"] == "nose":
        for k in (-1, 1):
            d.line([pt(k * 0.06, 0.0), pt(k * 0.14, 0.06)], fill=line, width=width)
            d.line([pt(k * 0.05, 0.06), pt(k * 0.13, 0.12)], fill=line, width=width)
    elif expr["wrinkle"] == "glabella":
        for k in (-0.03, 0.03):
            d.line([pt(k, -0.42), pt(k, -0.30)], fill=line, width=width)
    elif expr["wrinkle"] == "forehead":
        for k in (0, 1, 2):
            y = -0.62 + k * 0.07
            d.line(ellipse_cap([*pt(-0.3, y - 0.04), *pt(0.3, y + 0.04)], TAN_35_DEG, top=True, points=12),
                   fill=line, width=width)

    # Mouth: a curve through three points (corners lifted by the curve), opened by mouth_open.
    mw = identity.mouth_w * max(0.3, float(expr["mouth_width"]))
    my, curve, open_ = identity.mouth_y, float(expr["mouth_curve"]), max(0.0, float(expr["mouth_open"]))
    asym = float(expr.get("asym", 0.0))
    left, right = pt(-mw, my - curve - asym * 0.06), pt(mw, my - curve + asym * 0.06)
    mid_top, mid_bottom = pt(0, my - open_ * 0.3), pt(0, my + open_)
    if open_ > 0.03:
        d.polygon([left, mid_top, right, mid_bottom], fill=(90, 20, 25), outline=line)
        if curve > 0.05 or float(expr["mouth_width"]) > 1.1:  # teeth for smiles and stretched mouths
            d.line([left, mid_top, right], fill=(245, 245, 240), width=max(1, int(open_ * unit * 0.3)))
    else:
        d.line(quadratic_through(left, pt(0, my + curve * 0.2), right), fill=line, width=max(1, int(width * 1.5)))

    return layer, (cx, cy)
