"""What the studies draw and tabulate: line panels with error bars, labelled image panels side
by side, and the number formats of their markdown tables (Pillow only, no plotting library)."""

import numpy as np
from PIL import Image, ImageDraw, ImageFont


COLOURS = {  # One colour per input mode, the same in every figure.
    "teacher": (31, 119, 180), "other": (127, 127, 127), "head_sample": (255, 127, 14),
            "exact": (44, 160, 44), "pixel_noise": (214, 39, 40), "recon": (148, 103, 189),
            "pra": (140, 86, 75)}


def label_font(size: int):
  try:
    return ImageFont.load_default(size=size)
  except TypeError:  # Pillow without FreeType: the fixed bitmap font.
    return ImageFont.load_default()


def line_panel(draw, box, series: dict, title: str, font, reference: float | None = None,
               colours: dict | None = None, legend_x: int | None = None):
  """Draws {name: (x, y, err)} as lines with error bars inside box = (left, top, right, bottom).
  `colours` ({name: rgb}) replaces the input-mode colours; `legend_x` lists the legend down the
  right of the panel from that x (for more or longer names than fit above it)."""
  left, top, right, bottom = box
  xs = np.concatenate([s[0] for s in series.values()])
  lows = np.concatenate([s[1] - s[2] for s in series.values()])
  highs = np.concatenate([s[1] + s[2] for s in series.values()])
  if reference is not None:
    lows, highs = np.append(lows, reference), np.append(highs, reference)
  y_lo, y_hi = float(lows.min()), float(highs.max())
  if y_hi - y_lo < 1e-9:
    y_lo, y_hi = y_lo - 0.5, y_hi + 0.5
  margin = 0.05 * (y_hi - y_lo)
  y_lo, y_hi = y_lo - margin, y_hi + margin
  x_lo, x_hi = float(xs.min()), float(max(xs.max(), xs.min() + 1))
  px = lambda x: left + (x - x_lo) / (x_hi - x_lo) * (right - left)
  py = lambda y: bottom - (y - y_lo) / (y_hi - y_lo) * (bottom - top)
  draw.rectangle(box, outline=(0, 0, 0))
  draw.text((left, top - 36), title, fill=(0, 0, 0), font=font)
  for frac in np.linspace(0, 1, 5):
    y = y_lo + frac * (y_hi - y_lo)
    draw.line([(left - 4, py(y)), (left, py(y))], fill=(0, 0, 0))
    draw.text((left - 52, py(y) - 6), f"{y:.3g}", fill=(0, 0, 0), font=font)
  for x in range(int(x_lo), int(x_hi) + 1, max(1, int(x_hi - x_lo) // 8)):
    draw.line([(px(x), bottom), (px(x), bottom + 4)], fill=(0, 0, 0))
    draw.text((px(x) - 4, bottom + 6), str(x), fill=(0, 0, 0), font=font)
  if reference is not None:
    draw.line([(left, py(reference)), (right, py(reference))], fill=(160, 160, 160))
  for i, (name, (x, y, err)) in enumerate(series.items()):
    colour = (colours or {}).get(name) or COLOURS.get(name.split("/")[0], (0, 0, 0))
    points = [(px(a), py(b)) for a, b in zip(x, y)]
    draw.line(points, fill=colour, width=2)
    for (a, b), e in zip(points, err):
      half = e / (y_hi - y_lo) * (bottom - top)
      draw.line([(a, b - half), (a, b + half)], fill=colour)
      draw.ellipse([a - 2, b - 2, a + 2, b + 2], fill=colour)
    if legend_x is not None:
      y_key = top + 16 * i + 8
      draw.line([(legend_x, y_key), (legend_x + 20, y_key)], fill=colour, width=2)
      draw.text((legend_x + 25, y_key - 7), name, fill=(0, 0, 0), font=font)
      continue
    # The legend sits between the title and the panel's right end, clear of the curves.
    x_key = right - 110 * (len(series) - i)
    draw.line([(x_key, top - 11), (x_key + 20, top - 11)], fill=colour, width=2)
    draw.text((x_key + 25, top - 18), name, fill=(0, 0, 0), font=font)


def labelled_panels(panels: list[tuple[str, np.ndarray]], scale: int = 2, per_row: int = 7):
  """Labelled uint8 image grids side by side, wrapped after per_row panels: a PIL image."""
  grids = [Image.fromarray(g[..., 0] if g.shape[-1] == 1 else g).convert("RGB") for _, g in panels]
  grids = [g.resize((g.width * scale, g.height * scale), Image.NEAREST) for g in grids]
  font = label_font(12)
  label_w = max(ImageDraw.Draw(grids[0]).textlength(name, font=font) for name, _ in panels)
  w = max(max(g.width for g in grids), int(label_w) + 2)
  h = max(g.height for g in grids)
  label_h, pad = 18, 8
  cols = min(per_row, len(grids))
  rows = -(-len(grids) // cols)
  canvas = Image.new("RGB", (cols * (w + pad) + pad, rows * (h + label_h + pad) + pad),
                     (255, 255, 255))
  draw = ImageDraw.Draw(canvas)
  for i, ((name, _), grid) in enumerate(zip(panels, grids)):
    r, c = divmod(i, cols)
    x, y = pad + c * (w + pad), pad + r * (h + label_h + pad)
    draw.text((x, y), name, fill=(0, 0, 0), font=font)
    canvas.paste(grid, (x, y + label_h))
  return canvas


def fmt(value, spec):
  return "n/a" if value is None else format(value, spec)


def mean_std(values, spec: str) -> str:
  """'m' for one value, 'm +- s' (sample std) for several; n/a if there is none."""
  values = [v for v in values if v is not None and np.isfinite(v)]
  if not values:
    return "n/a"
  if len(values) == 1:
    return format(values[0], spec)
  return f"{np.mean(values):{spec}} +- {np.std(values, ddof=1):{spec}}"
