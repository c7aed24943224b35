"""FLEX-MoE core: the method as a plain library (never imports flwr).

Modules: ``fitness`` (client-expert fitness table Q), ``assignment`` (balanced
expert assignment and baselines), ``aggregation`` (usage-weighted expert
averaging), ``metrics``, ``model``, ``data``, ``train``, ``config`` and
``results``. Import the module you need; this package imports nothing heavy.
"""

__version__ = "0.1.0"
