"""An outside look at gappy painting: polygons drawn by this script, not by the project's generator
(docs/performance.md item 20).

    PYTHONPATH=src python docs/experiments/probe.py --model models/model.pt [--n 24] [--painter net]

Random 3-9-gon polygons (random vertex angles and radii, so convex and concave), outlines drawn with PIL's
`line(joint="curve")` centred on the edges (`--style polygon`: PIL's polygon outline, as the project's generator
draws it), 1-4 px wide at 128 px (scaled with the size); gappy ones have 1-3
perpendicular cuts of 1-6 px (scaled) at uniform places along the perimeter, vertices included. The target is the
polygon filled plus the closed outline, in the colour. Plain outlines do not score 100 dB even for the flood fill:
PIL's polygon fill and its curved line joints disagree on a few pixels at the vertices. Prints mean / min PSNR and
mean IoU of the model (--painter: painted, with params.yaml's `paint` section, or net, the network alone) and of
the flood fill per size.
"""

from __future__ import annotations

import argparse

import numpy as np
from PIL import Image, ImageDraw

from polycolor.colours import resolve_colour
from polycolor.config.paint import PAINTERS
from polycolor.config.params import load_params
from polycolor.evaluation import metrics as M
from polycolor.evaluation.reference import reference_fill
from polycolor.nn.modelio import load_model
from polycolor.painting.painter import painter

COLOURS = ["red", "green", "blue", "yellow", "cyan", "magenta", "orange", "purple"]


def outline(draw: ImageDraw.ImageDraw, pts: list[tuple[float, float]], fill, width: int, style: str) -> None:
    """A closed outline: "line", centred on the edges with curved joints; "polygon", PIL's polygon outline (the
    project generator's way)."""
    if style == "line":
        draw.line(pts + [pts[0]], fill=fill, width=width, joint="curve")
    else:
        draw.polygon(pts, outline=fill, width=width)


def sample(rng: np.random.Generator, size: int, gappy: bool, style: str) -> tuple[np.ndarray, np.ndarray, str]:
    width = max(1, int(rng.integers(1, 5) * size / 128))
    n = int(rng.integers(3, 10))
    centre, radius = rng.uniform(0.35, 0.65, 2) * size, rng.uniform(0.15, 0.35) * size
    angles, radii = np.sort(rng.uniform(0, 2 * np.pi, n)), radius * rng.uniform(0.6, 1.0, n)
    pts = [(float(centre[0] + r * np.cos(t)), float(centre[1] + r * np.sin(t))) for r, t in zip(radii, angles)]
    colour = COLOURS[int(rng.integers(len(COLOURS)))]
    inp = Image.new("RGB", (size, size), "white")
    outline(ImageDraw.Draw(inp), pts, "black", width, style)
    tgt = Image.new("RGB", (size, size), "white")
    ImageDraw.Draw(tgt).polygon(pts, fill=resolve_colour(colour))
    outline(ImageDraw.Draw(tgt), pts, resolve_colour(colour), width, style)
    if gappy:
        ring = np.array(pts + [pts[0]])
        edges = np.diff(ring, axis=0)
        lengths = np.linalg.norm(edges, axis=1)
        starts = np.concatenate([[0.0], np.cumsum(lengths)])
        for _ in range(int(rng.integers(1, 4))):
            at = rng.uniform(0, starts[-1])
            e = min(int(np.searchsorted(starts, at, side="right")) - 1, len(lengths) - 1)
            t = edges[e] / lengths[e]
            p = ring[e] + t * (at - starts[e])
            a, b = t * rng.integers(1, 7) * size / 128 / 2, np.array([-t[1], t[0]]) * (width / 2 + 2)
            ImageDraw.Draw(inp).polygon([tuple(p - a - b), tuple(p + a - b), tuple(p + a + b), tuple(p - a + b)],
                                        fill="white")
    return np.asarray(inp), np.asarray(tgt), colour


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="models/model.pt")
    ap.add_argument("--n", type=int, default=24)
    ap.add_argument("--seed", type=int, default=123)
    ap.add_argument("--style", choices=("line", "polygon"), default="line")
    ap.add_argument("--painter", choices=PAINTERS, default="painted")
    ap.add_argument("--params", default="params.yaml", help="its `paint` section paints (--painter painted)")
    args = ap.parse_args()
    loaded = load_model(args.model)
    paint = painter(args.painter, loaded, load_params(args.params).paint)
    rng = np.random.default_rng(args.seed)
    print(f"{'size':>4} {'set':<7}{'model mean / min':>18}{'iou':>8}{'flood mean / min':>20}")
    for size in (64, 128, 256, 512):
        for gappy in (False, True):
            inputs, targets, colours = zip(*[sample(rng, size, gappy, args.style) for _ in range(args.n)])
            x, t = np.stack(inputs), np.stack(targets)
            model = M.score(t, paint(x, list(colours)), list(colours))
            flood = M.score(t, reference_fill(x, list(colours)), list(colours))
            print(f"{size:>4} {'gappy' if gappy else 'plain':<7}{model['psnr'].mean():>9.2f} / {model['psnr'].min():<6.2f}"
                  f"{model['iou'].mean():>8.4f}{flood['psnr'].mean():>11.2f} / {flood['psnr'].min():<6.2f}", flush=True)


if __name__ == "__main__":
    main()
