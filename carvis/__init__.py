"""carvis: what is the car's network looking at, live."""

import logging as _logging

__version__ = "0.1.0"

# Library code logs to "carvis"; the program that embeds carvis decides what it sees.
_logging.getLogger("carvis").addHandler(_logging.NullHandler())
