"""FLEX-MoE core: the method as a plain library (never imports flwr).

The method: ``fitness`` (client-expert fitness table Q), ``assignment`` (the balanced
assignment and the baselines; ``transport`` its fast exact solver, ``balancing`` and
``redundancy`` the balancing rules and the min-holders program), ``aggregation`` and
``robust_aggregation`` / ``centered_clip`` (expert and extractor averaging, defences),
``remedies`` (options for experts with few holders), ``model``, ``train``, ``metrics``.
What both apps need: ``config`` (settings, checked before round 1), ``data``, ``protocol``
(the wire keys), ``replies`` (reply validation), ``seeds``, ``checks``, ``results`` /
``files`` / ``plots`` / ``tracking`` (what a run writes), ``watchdog``; ``export`` writes a
device's ONNX model. Import the module you need; this package imports nothing heavy.
"""

__version__ = "0.1.0"
