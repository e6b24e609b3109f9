"""Glitches with a physical structure, shared by the generative methods.

- :mod:`~crab.models.glitch_layer.shapes`: pulse shapes and their exact rendering on a slice of samples;
- :mod:`~crab.models.glitch_layer.population`: a population of glitches (rate, fitted laws);
- :mod:`~crab.models.glitch_layer.wafer_fit`: fitting the wafer's linear response and couplings;
- :mod:`~crab.models.glitch_layer.wafer`: the wafer layer, drawn once per wafer and seen by its detectors.
"""
