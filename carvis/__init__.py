"""carvis: what is the car's network looking at, live."""

__version__ = "0.1.0"
