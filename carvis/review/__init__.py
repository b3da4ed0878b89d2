"""After the race: map tracks (compute once, keep, re-draw without the model) and the review page.

``track`` writes and reads a track; ``compose`` lays its maps on frames (carvis.overlay) and
re-renders a source; ``frames`` gives any frame fast; ``stats`` the timeline's numbers; ``app``
ties a source and its models' tracks together; ``server`` serves the page.
"""
