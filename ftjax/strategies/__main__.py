"""python -m ftjax.strategies: every strategy, what trains and its options (Markdown)."""

from ftjax.strategies.registry import markdown_table, option_docs

def cli() -> None:
  """The console script's entry point (pyproject.toml); also `python -m`."""
  print(markdown_table())
  print("Options:\n")
  for name, doc in option_docs().items():
    print(f"- `{name}`: {doc}")


if __name__ == "__main__":
  cli()
