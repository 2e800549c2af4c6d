"""app — the ``flowgraph`` command line and (later) the Dash dashboard. The top layer: it may
import ``models``, ``gpu`` and ``flowgraph``; nothing imports it."""
