"""Command-line flag parsing shared by ftjax's commands."""

import sys

from absl import flags


def parse(argv: list[str]) -> list[str]:
  """absl's flag parser, with an override of a field the config lacks as one error line.

  ml_collections raises a bare KeyError for --config.FIELD=VALUE when FIELD is not in
  the config file (a typo, or a dataset option only another dataset has).
  """
  try:
    return flags.FLAGS(argv)
  except (KeyError, AttributeError):
    for arg in argv[1:]:
      root, *path = arg.lstrip("-").partition("=")[0].split(".")
      if not path or root not in flags.FLAGS:
        continue
      fields = flags.FLAGS[root].parser.parse(_flag_argument(argv, root))
      for depth, name in enumerate(path):
        if not hasattr(fields, "keys") or name not in fields:
          where = ".".join([root, *path[:depth]])
          valid = ", ".join(sorted(fields.keys())) if hasattr(fields, "keys") else "none"
          print(f"error: {arg}: {where} has no field {name!r}; its fields: {valid}.",
                file=sys.stderr)
          sys.exit(2)
        fields = fields[name]
    raise


def _flag_argument(argv: list[str], name: str) -> str | None:
  """The value given to --name on the command line (--name=V or --name V)."""
  for i, arg in enumerate(argv):
    if arg.lstrip("-").startswith(f"{name}="):
      return arg.partition("=")[2]
    if arg.lstrip("-") == name and i + 1 < len(argv):
      return argv[i + 1]
  return None
