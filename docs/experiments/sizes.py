"""Painting at sizes other than the model's: four strategies compared on freshly drawn sets (docs/performance.md).

    PYTHONPATH=src python docs/experiments/sizes.py --model models/model.pt [--n 32]

Each set is the plain training geometry of params.yaml (the Ayna shapes, no gaps) drawn natively at 64, 128, 256 and
512 px with outline widths scaled with the size, plus gappy outlines at each size (gap lengths scaled: 1-3, 1-6,
2-12, 4-24 px). Strategies:
  resize   the old paint: nearest resize to the model size, hard mask, nearest back;
  native   the fully convolutional net run at the input's own size (sizes divisible by 2^(levels-1));
  bilinear painter.paint_net, the `net` painter: min-pool down, mask logits resized back bilinearly, thresholded;
  snap     bilinear, then snap.snap_to_outline against the input (paint with canonical off, snap always);
  paint    painter.paint itself with params.yaml's `paint` section (snap on the input's canonical form).
Prints mean / min PSNR and mean IoU per set and strategy.
"""

from __future__ import annotations

import argparse
import dataclasses

import numpy as np
import torch
import torch.nn.functional as F

from polycolor.config.paint import PaintConfig
from polycolor.config.params import load_params
from polycolor.data.synth import generate
from polycolor.evaluation import metrics as M
from polycolor.evaluation.evaluate import plain_geometry
from polycolor.images import images_to_tensor, tensor_to_images
from polycolor.nn.colour import encode_colours
from polycolor.nn.model import composite
from polycolor.nn.modelio import load_model
from polycolor.painting.painter import paint, paint_net


@torch.no_grad()
def paint_with(loaded, inputs, colours, strategy, cfg: PaintConfig):
    if strategy == "paint":
        return paint(loaded, inputs, list(colours), cfg)
    if strategy == "snap":
        return paint(loaded, inputs, list(colours), dataclasses.replace(cfg, canonical="off", snap="always"))
    if strategy == "bilinear":
        return paint_net(loaded, inputs, list(colours))
    idx, rgb = encode_colours(list(colours), loaded.vocab, loaded.config.colour_encoding)
    n, h, w, _ = inputs.shape
    size = loaded.image_size
    x = images_to_tensor(inputs)
    out = []
    for i in range(n):
        xi, ii, ci = x[i:i + 1], idx[i:i + 1], rgb[i:i + 1]
        if strategy == "resize":
            logits = loaded.model(F.interpolate(xi, size=(size, size), mode="nearest"), ii, ci).mask_logits
            mask = F.interpolate((logits > 0).float(), size=(h, w), mode="nearest")[0, 0].numpy() > 0.5
        elif strategy == "native":
            mask = loaded.model(xi, ii, ci).mask_logits[0, 0].numpy() > 0
        else:
            raise ValueError(f"unknown strategy {strategy!r}")
        img = composite(torch.from_numpy(mask)[None, None].float(), ci)
        out.append(tensor_to_images(img)[0])
    return np.stack(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="models/model.pt")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--n", type=int, default=32)
    args = ap.parse_args()
    cfg = load_params(args.params)
    loaded = load_model(args.model)
    loaded.model.eval()
    base = plain_geometry(cfg.ingest, loaded.image_size)
    sets = {}
    for size in (64, 128, 256, 512):
        f = size / loaded.image_size
        w0, w1 = base.outline_width
        sets[f"plain_{size}"] = dataclasses.replace(base, image_size=size, outline_width=(
            max(1, round(w0 * f)), max(1, round(w1 * f))))
    for size, gaps in ((64, (1, 3)), (128, (1, 6)), (256, (2, 12)), (512, (4, 24))):
        sets[f"gappy_{size}"] = dataclasses.replace(sets[f"plain_{size}"], gap_fraction=1.0, gap_length=gaps)
    print(f"{'set':<11}{'strategy':<10}{'psnr_mean':>10}{'psnr_min':>10}{'iou':>8}")
    for name, geometry in sets.items():
        a = generate(geometry, args.n, np.random.default_rng([cfg.seed, 0x5123]))
        for strategy in ("resize", "native", "bilinear", "snap", "paint"):
            preds = paint_with(loaded, a.inputs, a.colours, strategy, cfg.paint)
            rows = M.score(a.targets, preds, a.colours)
            print(f"{name:<11}{strategy:<10}{rows['psnr'].mean():>10.2f}{rows['psnr'].min():>10.2f}"
                  f"{rows['iou'].mean():>8.4f}", flush=True)


if __name__ == "__main__":
    main()
