"""The FLEX-MoE research bench, on top of the method (`flexmoe_core`) and the Flower app.

``experiment`` (the main job: methods side by side in Flower's simulation engine), ``launcher``
(a local simulation SuperLink that runs one `flwr run` and stops), ``sweep`` + ``study`` (a
resumable grid of cells from a TOML file), ``attacks`` (the attack x defence table) and
``report`` (statistics, tables, figures and the written reading of the study).

The core and the apps never import this package (tests/test_layering.py keeps it so).
"""
