"""The Dash dashboard: Patterns, Heads and Embeddings pages over a set of roots.

``create_app(runs, checkpoints, vectors)`` builds the app; ``flowgraph dashboard`` serves it
(:mod:`app.cli_dashboard`). Everything it loads in the browser is served by the app itself.
"""

from flowgraph.app.dashboard.app import create_app

__all__ = ["create_app"]
