"""The published numbers of Davila et al. (2024), tables 3-12, as data.

Tables 3-10 give, per dataset, the test value of two metrics as "mean (standard
error)" over three seeds, in percent, for 8 strategies x 3 architectures. Each
row below is one strategy, written as in the paper: for ResNet-50 | DenseNet-121
| VGG-19, "mean1 se1 mean2 se2" of the table's two metrics in its column order.
Table 3 prints one standard error without its closing parenthesis ("87.99 (0.3");
it is 0.3 here. Tables 11 and 12 are given as printed.

  paper_value("chexpert", "resnet50", "lp_ft", "map")  # -> (73.35, 0.6)
"""

from __future__ import annotations

import functools

ARCHS = ("resnet50", "densenet121", "vgg19")
STRATEGIES = ("ft", "lp", "g_lf", "g_fl", "lp_ft", "l1_sp", "l2_sp", "auto_rgn")

# dataset -> (table number, (metric 1, metric 2), {strategy: row}).
_TABLES: dict[str, tuple[int, tuple[str, str], dict[str, str]]] = {
    "chexpert": (  # Table 3
        3, ("map", "auroc"), {
            "ft": "71.98 0.7 87.72 0.0 | 72.17 0.7 87.10 0.4 | 72.41 0.3 87.00 0.0",
            "lp": "60.61 0.2 79.93 0.0 | 59.27 0.2 81.35 0.1 | 64.36 0.5 82.49 0.4",
            "g_lf": "69.96 1.2 86.04 0.4 | 68.84 0.4 85.72 0.4 | 67.00 0.6 83.78 0.3",
            "g_fl": "70.35 0.5 86.00 0.2 | 72.96 0.3 87.07 0.1 | 65.48 0.6 82.63 0.2",
            "lp_ft": "73.35 0.6 87.51 0.2 | 72.59 0.5 87.10 0.1 | 70.70 0.8 86.51 0.4",
            "l1_sp": "73.12 0.4 87.85 0.2 | 71.98 0.1 87.78 0.1 | 71.86 0.4 86.77 0.2",
            "l2_sp": "72.50 0.5 87.73 0.2 | 71.61 0.7 86.54 0.3 | 72.37 0.4 86.98 0.0",
            "auto_rgn": "72.59 0.2 87.99 0.3 | 72.64 0.5 87.61 0.1 | 72.72 0.3 87.06 0.1",
        }),
    "mura_shoulder": (  # Table 4
        4, ("accuracy", "kappa"), {
            "ft": "75.33 1.6 50.64 3.3 | 75.14 1.0 50.22 2.0 | 73.60 0.1 47.15 0.3",
            "lp": "72.44 0.5 44.94 1.1 | 72.06 1.1 43.81 2.4 | 69.94 0.6 39.93 1.2",
            "g_lf": "74.37 0.3 48.66 0.7 | 75.14 0.3 50.32 0.7 | 73.79 1.0 47.53 2.0",
            "g_fl": "74.37 1.8 48.69 3.6 | 73.02 2.1 46.16 4.3 | 69.94 1.5 39.82 3.1",
            "lp_ft": "76.48 0.8 52.91 1.7 | 74.18 0.5 48.37 1.1 | 73.21 1.0 46.44 2.0",
            "l1_sp": "74.17 1.0 48.25 2.0 | 74.94 1.1 49.80 2.3 | 76.49 1.1 52.90 2.3",
            "l2_sp": "73.79 0.7 47.41 1.6 | 75.14 1.8 50.26 3.7 | 73.41 0.0 46.78 0.0",
            "auto_rgn": "75.72 0.6 51.47 1.2 | 76.49 0.5 53.05 1.0 | 77.07 0.3 54.09 0.7",
        }),
    "mura_wrist": (  # Table 5
        5, ("accuracy", "kappa"), {
            "ft": "79.54 0.4 57.98 0.9 | 80.03 1.0 59.05 2.3 | 80.83 0.8 60.52 1.6",
            "lp": "75.52 1.4 50.00 2.8 | 78.42 0.4 55.67 0.9 | 75.84 0.4 50.45 0.8",
            "g_lf": "81.80 0.5 62.63 1.2 | 80.35 0.1 59.72 0.2 | 79.22 0.2 57.19 0.5",
            "g_fl": "79.55 0.7 58.01 1.4 | 80.03 0.8 59.33 1.8 | 76.81 0.2 51.94 0.4",
            "lp_ft": "80.67 1.0 60.28 1.8 | 82.12 0.2 63.34 0.4 | 78.58 0.9 55.78 2.0",
            "l1_sp": "80.35 0.4 59.64 0.9 | 80.67 0.9 60.29 1.9 | 82.61 0.8 64.33 1.6",
            "l2_sp": "82.12 1.1 63.40 2.3 | 81.16 0.5 61.25 1.0 | 81.48 0.6 62.03 1.4",
            "auto_rgn": "81.32 0.4 61.66 0.8 | 82.44 0.8 64.12 1.7 | 80.67 0.7 60.51 1.4",
        }),
    "mura_humerus": (  # Table 6
        6, ("accuracy", "kappa"), {
            "ft": "85.10 0.6 70.20 1.3 | 84.59 1.2 69.19 2.5 | 82.83 1.1 65.65 2.2",
            "lp": "79.29 1.6 58.58 3.3 | 73.23 2.1 46.46 4.3 | 82.07 2.8 64.14 5.6",
            "g_lf": "84.59 0.9 69.19 1.8 | 84.09 0.4 68.18 0.8 | 83.83 0.5 67.67 1.0",
            "g_fl": "80.81 1.0 61.62 2.0 | 83.58 1.9 67.17 3.9 | 85.10 1.7 70.20 3.5",
            "lp_ft": "85.10 0.2 70.20 0.5 | 85.86 0.6 71.71 1.3 | 82.83 0.2 65.65 0.5",
            "l1_sp": "84.09 1.1 68.18 2.3 | 84.59 1.2 69.19 2.5 | 82.57 0.7 65.15 1.5",
            "l2_sp": "83.33 0.4 66.66 0.8 | 84.59 0.2 69.19 0.5 | 82.83 1.1 65.65 2.2",
            "auto_rgn": "74.74 1.9 49.49 3.9 | 79.03 1.2 58.08 2.5 | 74.49 6.3 48.99 12.7",
        }),
    "brain_tumor_mri": (  # Table 7
        7, ("accuracy", "f1"), {
            "ft": "95.90 0.6 95.17 0.7 | 96.70 0.5 96.15 0.5 | 97.29 0.0 96.96 0.1",
            "lp": "90.32 0.4 89.20 0.2 | 91.58 0.2 91.48 0.1 | 94.37 0.2 93.29 0.6",
            "g_lf": "95.96 0.6 95.89 0.8 | 96.78 0.2 96.37 0.1 | 96.95 0.3 96.22 0.3",
            "g_fl": "92.90 0.4 91.81 0.5 | 96.98 0.3 96.98 0.1 | 96.29 0.9 95.47 1.3",
            "lp_ft": "96.21 0.2 95.91 0.4 | 96.95 0.1 96.56 0.1 | 96.45 0.1 95.55 0.1",
            "l1_sp": "95.70 0.3 95.07 0.2 | 97.11 0.0 96.52 0.1 | 96.41 0.4 96.09 0.5",
            "l2_sp": "95.85 0.5 95.25 0.7 | 96.64 0.3 96.12 0.1 | 94.87 0.5 93.71 0.7",
            "auto_rgn": "96.10 0.2 95.48 0.3 | 95.59 1.0 94.97 1.3 | 94.46 0.5 93.12 0.7",
        }),
    "bach": (  # Table 8
        8, ("accuracy", "kappa"), {
            "ft": "70.00 1.4 60.00 1.9 | 67.50 2.5 56.66 3.3 | 69.16 2.2 58.88 2.9",
            "lp": "62.50 3.8 50.00 5.0 | 70.00 2.5 59.99 3.3 | 69.16 0.8 58.89 1.1",
            "g_lf": "70.83 0.8 61.11 1.1 | 74.16 4.4 65.55 5.8 | 70.83 4.1 61.11 5.5",
            "g_fl": "65.00 1.4 53.33 1.9 | 70.83 0.8 61.11 1.1 | 66.66 0.8 55.55 1.1",
            "lp_ft": "69.16 1.6 58.89 2.2 | 71.66 3.3 62.22 4.4 | 69.16 0.8 58.89 1.1",
            "l1_sp": "68.33 1.6 57.77 2.2 | 67.50 1.4 56.66 1.9 | 67.50 3.8 56.66 5.0",
            "l2_sp": "69.16 0.8 58.89 1.1 | 68.33 2.2 57.77 2.9 | 68.33 1.6 57.77 2.2",
            "auto_rgn": "63.33 3.0 51.11 4.0 | 75.00 0.0 66.67 0.0 | 52.50 0.0 36.67 0.0",
        }),
    "isic2020": (  # Table 9
        9, ("auroc", "accuracy"), {
            "ft": "73.54 3.6 97.98 0.1 | 71.27 2.9 97.56 0.1 | 83.24 1.5 96.63 0.6",
            "lp": "85.42 0.2 85.61 0.7 | 86.12 0.0 86.47 0.7 | 70.23 0.2 97.79 0.0",
            "g_lf": "71.28 1.6 97.40 0.1 | 74.76 2.2 97.52 0.1 | 75.61 1.8 97.37 0.1",
            "g_fl": "85.00 0.3 92.60 0.5 | 77.68 0.9 96.58 0.2 | 73.85 0.1 96.82 0.4",
            "lp_ft": "82.03 0.6 97.40 0.3 | 70.98 2.3 97.71 0.0 | 78.27 0.5 97.36 0.2",
            "l1_sp": "71.11 1.8 97.59 0.2 | 74.51 0.8 97.34 0.2 | 85.65 1.5 96.62 0.9",
            "l2_sp": "68.31 0.4 97.62 0.0 | 73.03 0.4 97.98 0.0 | 83.90 2.1 96.73 0.4",
            "auto_rgn": "84.32 1.4 97.28 0.2 | 83.52 2.0 97.42 0.1 | 78.40 6.5 76.15 2.2",
        }),
    "cholect50": (  # Table 10
        10, ("map", "auroc"), {
            "ft": "83.57 0.1 94.62 0.1 | 79.96 0.2 93.66 0.1 | 75.58 0.4 93.32 0.0",
            "lp": "50.21 0.3 84.59 0.0 | 49.74 0.1 84.49 0.1 | 52.47 0.2 86.39 0.2",
            "g_lf": "79.57 0.4 92.49 0.6 | 77.60 0.4 93.91 0.4 | 77.47 1.4 93.46 0.1",
            "g_fl": "74.09 1.6 91.58 0.6 | 78.13 0.4 92.69 0.3 | 73.09 2.8 92.57 0.2",
            "lp_ft": "84.50 0.8 94.70 0.2 | 82.63 0.3 94.21 0.2 | 78.42 0.6 93.91 0.1",
            "l1_sp": "84.91 1.1 94.79 0.4 | 79.28 0.5 93.47 0.3 | 72.32 3.3 92.76 0.5",
            "l2_sp": "82.28 0.8 94.13 0.4 | 81.21 0.6 93.48 0.3 | 74.98 0.6 93.02 0.0",
            "auto_rgn": "78.97 1.1 93.43 0.3 | 78.90 0.3 93.36 0.0 | 56.80 13.6 83.63 8.9",
        }),
}

# Table 11: dataset -> (architecture, strategy, improvement of the main metric over FT
# on that architecture, percent). The pair is the best main-metric score of the
# dataset's table over all architectures (the underlined cell).
TABLE11: dict[str, tuple[str, str, float]] = {
    "chexpert": ("resnet50", "lp_ft", 1.9),
    "mura_shoulder": ("vgg19", "auto_rgn", 4.7),
    "mura_wrist": ("vgg19", "l1_sp", 2.2),
    "mura_humerus": ("densenet121", "lp_ft", 1.5),
    "brain_tumor_mri": ("vgg19", "ft", 0.0),
    "bach": ("densenet121", "auto_rgn", 11.1),
    "isic2020": ("densenet121", "lp", 20.8),
    "cholect50": ("resnet50", "l1_sp", 1.6),
}

# Table 12: strategy -> (improvements over FT (> 0.1 %) on ResNet-50, DenseNet-121,
# VGG-19 out of 8 datasets each, total out of 24, effectiveness percent).
TABLE12: dict[str, tuple[int, int, int, int, float]] = {
    "lp": (0, 1, 1, 2, 8.3),
    "g_lf": (3, 3, 5, 11, 45.8),
    "g_fl": (0, 3, 2, 5, 20.8),
    "lp_ft": (5, 7, 2, 14, 58.3),
    "l1_sp": (3, 2, 2, 7, 29.2),
    "l2_sp": (2, 4, 1, 7, 29.2),
    "auto_rgn": (4, 4, 2, 10, 41.7),
}
# Table 12's last row: improved cases per architecture over all strategies.
TABLE12_TOTALS: tuple[int, int, int] = (17, 24, 15)

Cell = tuple[float, float]  # (mean, standard error), percent


def datasets() -> tuple[str, ...]:
  """The paper's datasets in table order (tables 3-10)."""
  return tuple(_TABLES)


def table_number(dataset: str) -> int:
  return _entry(dataset)[0]


def metrics(dataset: str) -> tuple[str, str]:
  """The table's two metrics in its column order."""
  return _entry(dataset)[1]


def _entry(dataset: str):
  if dataset not in _TABLES:
    raise KeyError(f"The paper has no table for {dataset!r}; it has {', '.join(_TABLES)}.")
  return _TABLES[dataset]


@functools.cache
def results() -> dict[str, dict[str, dict[str, dict[str, Cell]]]]:
  """dataset -> arch -> strategy -> metric -> (mean, se), percent."""
  out: dict[str, dict[str, dict[str, dict[str, Cell]]]] = {}
  for dataset, (_, names, rows) in _TABLES.items():
    per_arch: dict[str, dict[str, dict[str, Cell]]] = {a: {} for a in ARCHS}
    for strategy, row in rows.items():
      groups = row.split("|")
      if len(groups) != len(ARCHS):
        raise ValueError(f"{dataset}/{strategy}: expected {len(ARCHS)} groups: {row!r}")
      for arch, group in zip(ARCHS, groups):
        m1, s1, m2, s2 = (float(x) for x in group.split())
        per_arch[arch][strategy] = {names[0]: (m1, s1), names[1]: (m2, s2)}
    out[dataset] = per_arch
  return out


def paper_value(dataset: str, arch: str, strategy: str, metric: str) -> Cell | None:
  """The paper's (mean, se) in percent, or None where the paper has no such cell."""
  return results().get(dataset, {}).get(arch, {}).get(strategy, {}).get(metric)
