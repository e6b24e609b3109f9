"""Template baseline: Poisson glitches with fitted templates plus fitted noise.

This is the simple method the paper argues against, after TOAST's
``InjectCosmicRays`` operator (direct hits as a Poisson process of templates
``C1 + C2 exp(-t/tau)``, wafer hits as common-mode noise), fitted on the
Monte Carlo truth.  Two populations:

Direct hits (one detector each)
    Poisson in time at the truth rate per detector; each is the template

    .. math::

        \\gamma(t) = A\\, \\frac{e^{-s/\\tau} - e^{-s/r}}{N(\\tau, r)},
        \\qquad s = t - t_0 - \\delta \\ge 0,

    with ``A`` (peak height) and ``tau`` drawn *independently* from their
    fitted distributions (the template method's known weakness: no
    amplitude-decay correlation, no pile-up, no nonlinearity); the rise
    ``r`` and the delay ``delta`` (the readout's anti-alias filter) are one
    fitted value each for the population (``r = 0`` gives TOAST's
    ``C2 exp(-t/tau)``; ``N`` normalises the peak to 1; ``C1 = 0``: the
    fitted TOD has its baseline at 0).
Wafer hits (every detector of the wafer, identically)
    Poisson in time at the truth rate per wafer; energies ``E`` drawn from
    the truth's deposited energies (``/events`` ``energy_kev``), each seen
    through one fixed linear response

    .. math::

        h(s) = \\sum_j a_j\\, e^{-s/\\tau_j}, \\qquad s = t - t_0 - \\delta_w \\ge 0,

    so a wafer hit adds ``E h(s)``.  They pile up into the common-mode
    'confusion noise' plus the occasional visible glitch, as in the Monte
    Carlo's linear wafer path.  (TOAST draws correlated white noise for wafer
    hits; an event-level linear model is closer to the physics and still a
    template method.)
Noise
    The noise model of :func:`crab.physics.noise.fit_noise_params` fitted on the TOD
    with the wafer model's prediction subtracted and the direct hits masked.

Fitting (:func:`crab.models.template.fitting.fit_template`)
    1. Common mode: per sample, the mean of the detectors not inside a direct
       hit (interpolated where all are).
    2. Wafer response (:func:`crab.models.template.fitting.fit_wafer_response`): the common mode is
       regressed on the truth's wafer events, each an impulse of weight
       ``energy_kev`` at its (sub-sample) time, through ``h``.  The
       ``a_j`` are linear least squares for given ``(tau_1, tau_2, delta_w)``
       (``tau_3 = tau_2 / 2``), which are found by Nelder-Mead on the
       residual (variable projection); both sides are high-passed (30 s
       running mean removed) so the 1/f drifts do not bias the gain.  This
       measures the gain on *all* wafer events at once, pile-up included,
       instead of measuring each event's amplitude on top of its neighbours.
    3. Direct hits (:func:`crab.models.template.fitting.fit_glitches`) on each detector minus the wafer
       prediction: for every truth event, ``A`` and ``tau`` by linear least
       squares on a log grid of ``tau`` (refined by a parabola) above a local
       baseline (median of the 16 samples before); ``r`` and ``delta`` are
       scanned on a grid and the pair with the smallest mean fractional
       residual over all events is kept.
    4. Noise on ``TOD - wafer prediction`` with the direct hits masked (until
       their template falls below 0.3 noise RMS) and the gaps refilled with
       noise, so the confusion noise is not counted twice.
Generation (:class:`crab.models.template.source.TemplateSource`, used through :class:`crab.generation.TodGenerator`)
    Time is cut into blocks of ``tile_samples``.  The direct events of block
    ``b`` of detector key ``d`` come from ``rng.generator(seed,
    "template_events", d, b)`` (Poisson number, uniform continuous times,
    ``A`` and ``tau`` by inverse-CDF sampling of the fitted quantiles); the
    wafer events of block ``b`` from the key ``(WAFER_KEY, b)``, shared by
    every detector.  A block also renders the events of the previous blocks
    whose tails reach into it (until below 1e-7 of their height).  Direct
    glitches are evaluated exactly, event by event over their (short)
    support; the wafer signal is one impulse train per ``tau_j`` through the
    recursive filter ``y[n] = x[n] + exp(-1/(tau_j fs)) y[n-1]`` (sub-sample
    timing in the impulse weights), computed once per block for all
    detectors.  The noise is ``NoiseGenerator(noise_params, fs, seed,
    "template_noise")`` keyed on the detector.  Everything is keyed on (seed,
    detector, block), so the output does not depend on chunking, order or
    process layout.

Template models are saved as JSON (:func:`crab.models.template.model.save_template`,
:func:`crab.models.template.model.load_template`).

Modules: :mod:`~crab.models.glitch_layer.shapes` (glitch shapes and their rendering),
:mod:`~crab.models.glitch_layer.population` (a glitch population),
:mod:`~crab.models.template.fitting` (the fit), :mod:`~crab.models.template.model`
(the stored model), :mod:`~crab.models.template.source` (its tiles).
"""

from crab.models.template.fitting import fit_template, fit_template_file
from crab.models.template.model import TEMPLATE_FILE, TemplateModel, load_template, save_template
from crab.models.glitch_layer.population import GlitchPopulation
from crab.models.template.source import TemplateSource

__all__ = ["TEMPLATE_FILE", "GlitchPopulation", "TemplateModel", "TemplateSource", "fit_template", "fit_template_file", "load_template", "save_template"]
