"""After the race: map tracks (compute once, keep, re-draw without the model) and the review page.

``track`` writes and reads a track; ``replay`` gives its rows as maps for the one composer
(carvis.composer), in order or at random; ``frames`` gives any frame fast; ``stats`` the timeline's numbers; ``app``
ties a source and its models' tracks together; ``server`` serves the page.
"""
