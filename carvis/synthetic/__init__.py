"""A deterministic synthetic RC-car track, seen from the car's camera, as a video of frames.

``geometry`` holds the centre line, the car's frame and the camera; ``look`` the textures,
lighting and noise; ``track`` the :class:`SyntheticTrack` that films them frame by frame.
"""

from carvis.synthetic.track import SyntheticTrack

__all__ = ["SyntheticTrack"]
