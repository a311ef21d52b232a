"""Every config field: default, allowed values, whether a resume may change it, and its meaning,
read from their one declaration (pra_jax/config_schema.py).

  python -m pra_jax.tools.config_fields              # the listing
  python -m pra_jax.tools.config_fields --markdown   # the README's table
"""

from absl import app, flags

from pra_jax import config_schema

_MARKDOWN = flags.DEFINE_bool("markdown", False, "Print the README's markdown table instead.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  print(config_schema.markdown_table() if _MARKDOWN.value else config_schema.listing())


if __name__ == "__main__":
  app.run(main)
