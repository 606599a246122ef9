"""Training-step throughput of one commit's model, loss and optimizer on one data folder, to compare commits on
one machine in one run (docs/performance.md, "Where 46.5 images/s went").

    git worktree add /tmp/old 972fce0 && git worktree add /tmp/new 3781733
    PYTHONPATH=/tmp/old/src python docs/experiments/throughput.py /tmp/old/src /tmp/old/params.yaml \
        data/dataset/training "972fce0 code"

argv: the commit's src folder (imported first), its params.yaml, an Ayna-layout training split, a label. Trains 2
passes over the first 480 pairs at the commit's train.batch_size, channels_last as its params say, and prints one
JSON line: images/s over the last two thirds of the steps (the first third warms up).
"""
import sys, time, json
src, params, data, label = sys.argv[1:5]
sys.path.insert(0, src)
import numpy as np, torch
try:
    from polycolor.config.params import load_params
except ImportError:  # commits before the config package
    from polycolor.config import load_params
from polycolor.nn.model import ConditionalUNet
from polycolor.nn.losses import Objective
from polycolor.data.ayna import load_split
try:
    from polycolor.nn.colour import encode_colours
except ImportError:  # 972fce0
    from polycolor.nn.inference import encode_colours
torch.manual_seed(0)
cfg = load_params(params)
s = load_split(data, None)
n = 480
x = torch.from_numpy(np.ascontiguousarray(s.inputs[:n])).permute(0, 3, 1, 2).float() / 127.5 - 1
y = torch.from_numpy(np.ascontiguousarray(s.targets[:n])).permute(0, 3, 1, 2).float() / 127.5 - 1
vocab = tuple(sorted(set(c for c in s.colours if not c.startswith("#"))))
idx, rgb = encode_colours(list(s.colours[:n]), vocab, cfg.model.colour_encoding)
fmt = torch.channels_last if getattr(cfg.train, "channels_last", False) else torch.contiguous_format
m = ConditionalUNet(cfg.model, vocab, 128).to(memory_format=fmt); obj = Objective(cfg.loss)
opt = torch.optim.AdamW(m.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
bs = cfg.train.batch_size; times = []
for epoch in range(2):
    for i in range(0, n, bs):
        xb = x[i:i+bs].contiguous(memory_format=fmt); yb = y[i:i+bs].contiguous(memory_format=fmt)
        t = time.perf_counter()
        loss, _ = obj(m(xb, idx[i:i+bs], rgb[i:i+bs]), yb)
        opt.zero_grad(); loss.backward(); opt.step()
        times.append(time.perf_counter() - t)
steady = times[len(times)//3:]
print(json.dumps({"label": label, "images_per_s": round(bs * len(steady) / sum(steady), 1),
                  "first_third_images_per_s": round(bs * (len(times)//3) / sum(times[:len(times)//3]), 1),
                  "threads": torch.get_num_threads(), "torch": torch.__version__}), flush=True)
