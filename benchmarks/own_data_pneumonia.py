"""Real chest X-rays through the `folder` builder: ftjax beside plain PyTorch.

  python -m benchmarks.own_data_pneumonia --npz ../shared/data/pneumoniamnist_subset.npz \
      --epochs 5 --json /tmp/pneumonia.json

The PneumoniaMNIST subset (28x28 grayscale, normal / pneumonia) is exported to
`train/`, `val/`, `test/` class folders of PNGs, prepared with
`python -m ftjax.data prepare --dataset folder --name pneumonia_subset`, and FT
and LP-FT are trained from random init (no ImageNet weights) with ftjax's
`train_and_evaluate`. The same protocol in plain PyTorch/torchvision reads the
same PNGs: shorter side resized to --resize (antialiased bilinear, as ftjax
prepares), centre crop, ImageNet normalisation, Adam at --lr, the best epoch
by validation loss tested once; LP-FT trains the head alone for --lp_epochs,
then everything (Adam's state of a parameter starts when it first trains).
Printed: test AUROC / accuracy and seconds per epoch of each.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import subprocess
import sys
import tempfile
import time

import numpy as np
from PIL import Image

CLASSES = ("normal", "pneumonia")
SPLITS = {"train": "train", "val": "validation", "test": "test"}
ROOT = pathlib.Path(__file__).resolve().parents[1]


def export_folders(npz: pathlib.Path, root: pathlib.Path) -> dict[str, int]:
  """`root/<split>/<class>/<i>.png` from the .npz; the number of images per split."""
  counts = {}
  with np.load(npz, allow_pickle=False) as data:
    for split in SPLITS:
      images, labels = data[f"{split}_images"], data[f"{split}_labels"].reshape(-1)
      for i, (image, label) in enumerate(zip(images, labels)):
        path = root / split / CLASSES[int(label)] / f"{split}{i:05d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(path)
      counts[split] = len(images)
  return counts


def ftjax_runs(args, data_dir: pathlib.Path, work: pathlib.Path) -> dict[str, dict]:
  from configs import base  # pylint: disable=import-outside-toplevel
  from ftjax.engine import training  # pylint: disable=import-outside-toplevel
  out = {}
  for strategy in args.strategies:
    config = base.get_config(f"pneumonia_subset,{strategy},{args.arch}")
    config.update(dict(data_dir=str(data_dir), init="random", resize=args.resize,
                       crop=args.crop, batch_size=args.batch, eval_batch_size=256,
                       num_epochs=args.epochs, patience=args.epochs + 1, lr=args.lr,
                       progress=False))
    config.strategy_options.lp_epochs = args.lp_epochs
    start = time.perf_counter()
    results = training.train_and_evaluate(config, work / strategy)
    lines = [json.loads(l) for l in (work / strategy / "metrics.jsonl").read_text().splitlines()]
    out[strategy] = {"test_auroc": results["test"]["auroc"],
                     "test_accuracy": results["test"]["accuracy"],
                     "best_epoch": results["best_epoch"],
                     "seconds_per_epoch": float(np.median([l["epoch_seconds"] for l in lines])),
                     "total_seconds": time.perf_counter() - start}
  return out


def torch_runs(args, root: pathlib.Path) -> dict[str, dict]:
  import sklearn.metrics  # pylint: disable=import-outside-toplevel
  import torch  # pylint: disable=import-outside-toplevel
  import torchvision  # pylint: disable=import-outside-toplevel
  from ftjax.data import preprocess  # pylint: disable=import-outside-toplevel

  torch.manual_seed(0)
  mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
  std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)

  def load(split):
    paths = sorted((root / split).rglob("*.png"))
    x = np.stack([preprocess.center_crop(preprocess.resize_shorter(Image.open(p), args.resize),
                                         args.crop) for p in paths])
    y = np.array([CLASSES.index(p.parent.name) for p in paths])
    x = torch.from_numpy(x).permute(0, 3, 1, 2).float().div(255).sub(mean).div(std)
    return x, torch.from_numpy(y)

  data = {split: load(split) for split in SPLITS}
  loss_fn = torch.nn.CrossEntropyLoss()

  def predict(model, x):
    model.eval()
    with torch.no_grad():
      return torch.cat([model(x[i:i + 256]) for i in range(0, len(x), 256)])

  out = {}
  for strategy in args.strategies:
    model = getattr(torchvision.models, args.arch)(num_classes=2)
    head = model.fc if hasattr(model, "fc") else model.classifier
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    x, y = data["train"]
    best, best_state, seconds = None, None, []
    generator = torch.Generator().manual_seed(0)
    for epoch in range(args.epochs):
      head_only = strategy == "lp_ft" and epoch < args.lp_epochs
      for name, p in model.named_parameters():
        p.requires_grad = not head_only or any(p is q for q in head.parameters())
      start = time.perf_counter()
      model.train()
      order = torch.randperm(len(x), generator=generator)
      for i in range(0, len(x) - args.batch + 1, args.batch):
        idx = order[i:i + args.batch]
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x[idx]), y[idx]).backward()
        opt.step()
      seconds.append(time.perf_counter() - start)
      val_loss = float(loss_fn(predict(model, data["val"][0]), data["val"][1]))
      if best is None or val_loss < best:
        best = val_loss
        best_state = {k: v.clone() for k, v in model.state_dict().items()}
    model.load_state_dict(best_state)
    scores = torch.softmax(predict(model, data["test"][0]), 1)[:, 1].numpy()
    labels = data["test"][1].numpy()
    out[strategy] = {"test_auroc": float(sklearn.metrics.roc_auc_score(labels, scores)),
                     "test_accuracy": float(np.mean((scores > 0.5) == labels)),
                     "seconds_per_epoch": float(np.median(seconds))}
  return out


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--npz", type=pathlib.Path, required=True)
  parser.add_argument("--arch", default="resnet18")
  parser.add_argument("--strategies", nargs="+", default=["ft", "lp_ft"])
  parser.add_argument("--epochs", type=int, default=5)
  parser.add_argument("--lp_epochs", type=int, default=1)
  parser.add_argument("--lr", type=float, default=1e-3)
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--resize", type=int, default=32)
  parser.add_argument("--crop", type=int, default=28)
  parser.add_argument("--json", default=None)
  args = parser.parse_args(argv)
  with tempfile.TemporaryDirectory() as tmp:
    tmp = pathlib.Path(tmp)
    counts = export_folders(args.npz, tmp / "images")
    # The subset holds 3 images that are in both its train and val splits (as MedMNIST
    # ships them); allowed, so that both sides train on the same images.
    subprocess.run([sys.executable, "-m", "ftjax.data", "prepare", "--dataset", "folder",
                    "--name", "pneumonia_subset", "--manual_dir", str(tmp / "images"),
                    "--data_dir", str(tmp / "data"), "--resize", str(args.resize),
                    "--option", "allow_duplicates=true"],
                   check=True, cwd=ROOT)
    record = {"images": counts, "args": {k: v for k, v in vars(args).items() if k != "npz"},
              "ftjax": ftjax_runs(args, tmp / "data", tmp / "runs"),
              "torch": torch_runs(args, tmp / "images")}
  print(json.dumps(record, indent=2))
  if args.json:
    pathlib.Path(args.json).write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
  main()
