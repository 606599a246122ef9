"""Training recipes compared quickly, in process, on a data folder the ingest and augment stages wrote
(docs/experiments.md, "The network: what was tried").

    PYTHONPATH=src python docs/experiments/recipe.py --data data --tag NAME KEY=VALUE ...

KEY=VALUE overrides params.yaml (`model.work_size=64`, `train.rescale=[0.5,1.0,2.0]`, YAML values). The recipe
trains on DATA/augmented/training with DATA/dataset/validation for validation, as the train stage does but without
MLflow, then scores the network alone (painter.paint_net) on DATA/dataset/validation and on evaluate's generated
sets at `--n` samples each (plus native_64/256/512), and prints one JSON line: training wall time, images/s, and
PSNR mean / min per set, with the worst set's. `--out` keeps the weights. The table in docs/experiments.md was made
with it; the decisions it led to were then run through the pipeline (`dvc exp run`) and the seed study.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import yaml

from polycolor.config.params import parse_config
from polycolor.data.ayna import load_split
from polycolor.evaluation import metrics as M
from polycolor.evaluation.sets import generated_sets
from polycolor.nn.modelio import LoadedModel
from polycolor.painting.painter import paint_net
from polycolor.training.train import prepare_data
from polycolor.training.trainer import Trainer, set_torch_globals, steps_per_epoch


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--data", default="data", help="folder with dataset/ and augmented/ as the stages write them")
    ap.add_argument("--tag", default="recipe")
    ap.add_argument("--n", type=int, default=32, help="samples per generated set")
    ap.add_argument("--out", help="save the trained weights (state_dict) here")
    ap.add_argument("overrides", nargs="*", help="KEY=VALUE params overrides")
    args = ap.parse_args(argv)
    data = yaml.safe_load(Path(args.params).read_text())
    for item in args.overrides:
        key, value = item.split("=", 1)
        section, name = key.split(".")
        data[section][name] = yaml.safe_load(value)
    cfg = parse_config(data)
    set_torch_globals(cfg.train)
    root = Path(args.data)
    train, val, vocab, size = prepare_data(cfg, root / "augmented" / "training", root / "dataset" / "validation")
    trainer = Trainer(cfg.model, cfg.loss, cfg.train, vocab=vocab, image_size=size, data_id=args.tag,
                      steps_per_epoch=steps_per_epoch(len(train), cfg.train.batch_size))
    t0 = time.perf_counter()
    result = trainer.fit(train, val)
    wall = time.perf_counter() - t0
    if args.out:
        torch.save(result.model.state_dict(), args.out)
    loaded = LoadedModel(result.model.eval(), cfg.model, vocab, size, {})
    n = args.n
    e = replace(cfg.evaluate, robust_samples=n, ood_samples=n, unseen_colour_samples=n // 2)
    sets = {"val": load_split(root / "dataset" / "validation", None), **generated_sets(replace(cfg, evaluate=e), size)}
    out: dict = {"tag": args.tag, "overrides": args.overrides, "train_wall_s": round(wall, 1),
                 "images_per_s": round(result.images_per_s, 1), "epochs": len(result.history)}
    worst = [np.inf, np.inf]
    for name, s in sets.items():
        with torch.no_grad():
            painted = paint_net(loaded, s.inputs, list(s.colours))
        psnr = np.array([M.psnr(t, p) for t, p in zip(s.targets, painted)])
        out[name] = [round(float(psnr.mean()), 1), round(float(psnr.min()), 1)]
        worst = [min(worst[0], psnr.mean()), min(worst[1], psnr.min())]
    out["worst"] = [round(float(w), 1) for w in worst]
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
