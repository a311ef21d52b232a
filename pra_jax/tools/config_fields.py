"""Every config field: default, allowed values, whether a resume may change it, and its meaning,
read from their one declaration (pra_jax/config_schema.py).

  python -m pra_jax.tools.config_fields                      # the listing
  python -m pra_jax.tools.config_fields --markdown           # the README's table
  python -m pra_jax.tools.config_fields --readme=README.md   # rewrites that table in place
"""

import re

from absl import app, flags

from pra_jax import config_schema, files

_MARKDOWN = flags.DEFINE_bool("markdown", False, "Print the README's markdown table instead.")
_README = flags.DEFINE_string(
    "readme", None, "Replace the table between the README's config-field markers with the "
    "current one.")
_BLOCK = re.compile(r"(<!-- config fields: [^\n]*-->\n)(.*?)(\n<!-- end of config fields -->)",
                    re.S)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if _README.value:
    text = open(_README.value).read()
    if not _BLOCK.search(text):
      raise app.UsageError(f"{_README.value} has no '<!-- config fields: ... -->' block")
    new = _BLOCK.sub(lambda m: m.group(1) + config_schema.markdown_table() + m.group(3), text)
    files.write_text(_README.value, new)
    print(f"{_README.value}: the config field table {'was current' if new == text else 'rewritten'}")
    return
  print(config_schema.markdown_table() if _MARKDOWN.value else config_schema.listing())


if __name__ == "__main__":
  app.run(main)
