"""gpu — masked sparse and metric attention as CuPy RawKernels, with torch autograd bridges and
the torch reference implementation every kernel is tested against.

Layer: imports ``flowgraph`` only (never ``models`` or ``app``); CuPy is imported lazily so that
everything runs on a machine without CUDA through the torch reference path.
"""
