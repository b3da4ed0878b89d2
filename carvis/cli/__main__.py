"""python -m carvis.cli"""

from carvis.cli import entry

entry()
