"""Procedural cartoon faces whose class lives in the expression, not in a fixed pixel.

`draw_face` renders one face from an identity (face shape, skin, eye spacing, hair, ...), an
expression (eyes, brows, mouth, wrinkles, blended toward neutral by a random intensity) and a
pose (shift, scale, rotation, yaw squash). synth5 builds its five domains on top of it.
"""

from __future__ import annotations

from dataclasses import dataclass

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


def sample_identity(rng: np.random.Generator, *, round_faces: bool = False, glasses_p: float = 0.0,
                    beard_p: float = 0.0) -> Identity:
    tone = rng.uniform(0.25, 1.0)
    skin = tuple(int(c) for c in np.clip(np.array([235, 190, 160]) * tone + rng.normal(0, 8, 3) + 20, 30, 255))
    hair = tuple(int(c) for c in np.clip(rng.choice([[30, 20, 10], [90, 60, 30], [200, 170, 90], [60, 60, 60], [150, 60, 30]])
                                          + rng.normal(0, 10, 3), 0, 255))
    return Identity(
        face_w=rng.uniform(0.86, 1.0) if round_faces else rng.uniform(0.66, 0.82),
        skin=skin, hair=hair, hair_style=int(rng.integers(0, 3)),
        eye_dx=rng.uniform(0.30, 0.40), eye_y=rng.uniform(-0.22, -0.12), eye_size=rng.uniform(0.10, 0.13),
        brow_thick=rng.uniform(0.05, 0.08), mouth_y=rng.uniform(0.38, 0.50), mouth_w=rng.uniform(0.26, 0.34),
        glasses=bool(rng.random() < glasses_p), beard=bool(rng.random() < beard_p),
    )


def expression_params(rng: np.random.Generator, name: str, intensity: float, jitter: float) -> dict[str, float | str]:
    """The class's geometry blended toward neutral by `intensity`, plus per-parameter noise."""
    target, neutral = EXPRESSIONS[name], EXPRESSIONS["neutral"]
    params: dict[str, float | str] = {"wrinkle": target["wrinkle"] if intensity > 0.6 else "none"}
    scales = dict(eye_open=0.15, brow_raise=0.02, brow_tilt=0.03, mouth_curve=0.03, mouth_open=0.02, mouth_width=0.08)
    for key in NUMERIC_KEYS:
        value = float(neutral[key]) + intensity * (float(target[key]) - float(neutral[key]))
        params[key] = value + rng.normal(0.0, jitter * scales[key])
    params["asym"] = 0.5 if name == "disgust" else 0.0
    return params


def draw_face(canvas: int, identity: Identity, expr: dict[str, float | str], background: Image.Image,
              pose: dict[str, float], line: tuple[int, int, int] = (40, 25, 20)) -> Image.Image:
    """Render one face onto `background` (an RGB image of side `canvas`)."""
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
        d.chord([cx - fw, cy - unit, cx + fw, cy + unit * 0.1], 190, 350, fill=identity.hair)
    if identity.beard:
        d.chord([cx - fw * 0.95, cy - unit * 0.2, cx + fw * 0.95, cy + unit * 1.0], 20, 160, fill=identity.hair)

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
            d.arc([*pt(-0.3, y - 0.04), *pt(0.3, y + 0.04)], 200, 340, fill=line, width=width)

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
        d.line([left, pt(0, my + curve * 0.2), right], fill=line, width=max(1, int(width * 1.5)), joint="curve")

    layer = layer.rotate(pose["angle"], resample=Image.BILINEAR, center=(cx, cy))
    out = background.convert("RGBA")
    out.alpha_composite(layer)
    return out.convert("RGB")
