"""flowgraph — sparse attention patterns, their information-flow graphs and the checks on them.

>>> import flowgraph as fg
>>> r = fg.check(fg.fixed(64, stride=8))
>>> r.full_information, r.witness
(False, (0, 0))

Only numpy, scipy and networkx are imported here; figures live in :mod:`flowgraph.plot`
(plotly), imported on first use.
"""

from flowgraph.check import Report, check
from flowgraph.flex import from_block_mask, from_mask_mod
from flowgraph.flow import Flow
from flowgraph.graph import flow_graph
from flowgraph.grid import grid, grid_ltr, grid_order, grid_rtl
from flowgraph.keys import KeySpans
from flowgraph.library import (
    LIBRARY,
    bigbird,
    block_causal,
    dilated_window,
    document,
    longformer,
    moba,
    nsa,
    prefix_lm,
    sinks_window,
    sliding_window,
)
from flowgraph.pattern import Pattern
from flowgraph.patterns import (
    dense,
    fixed,
    fixed_heads,
    from_block_layout,
    from_masks,
    local,
    ltr,
    rtl,
    star,
    strided,
)
from flowgraph.reach import reachability
from flowgraph.rule import StepRule
from flowgraph.stack import stack

__all__ = [
    "LIBRARY",
    "Flow",
    "KeySpans",
    "Pattern",
    "Report",
    "StepRule",
    "bigbird",
    "block_causal",
    "check",
    "dense",
    "dilated_window",
    "document",
    "fixed",
    "fixed_heads",
    "flow_graph",
    "from_block_layout",
    "from_block_mask",
    "from_mask_mod",
    "from_masks",
    "grid",
    "grid_ltr",
    "grid_order",
    "grid_rtl",
    "local",
    "longformer",
    "ltr",
    "moba",
    "nsa",
    "prefix_lm",
    "reachability",
    "rtl",
    "sinks_window",
    "sliding_window",
    "stack",
    "star",
    "strided",
]

__version__ = "0.1.0"
