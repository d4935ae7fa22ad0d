"""``python -m vaf.elastic ...`` = ``vaf elastic ...``."""

from vaf.elastic.cli import elastic

elastic(prog_name="vaf elastic")
