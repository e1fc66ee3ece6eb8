"""The ``dprad`` commands, one module per command group; each has ``register(app)``.

A command parses its flags, calls one library function and renders the result (``console``). Options the
train command shares with the config file are generated from the config dataclasses (``options``). Nothing
below this package imports it; :mod:`dprad.cli` builds the app from these modules.
"""
