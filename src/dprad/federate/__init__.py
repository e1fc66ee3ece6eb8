"""Federated DP training across hospitals that cannot pool their reports (``dprad federate``).

Each hospital is a site (:mod:`.site`): patient-level DP-SGD on its own reports, its own ledger over the
rounds it took part in. The server (:mod:`.server`) averages heads, optionally with client-level DP,
picks thresholds from the sum of the sites' noisy histograms and aggregates their evaluation counts. The
transport is Flower's deployment engine (:mod:`.flower_app`, :mod:`.launch`) or in-process (:mod:`.local`).
"""
