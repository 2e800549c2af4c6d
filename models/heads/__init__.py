"""models.heads — what a trained model's attention heads learned.

:func:`load_checkpoint` opens our runs, Hugging Face BERT-family and GPT-2 directories and nanoGPT
``ckpt.pt`` files as a :class:`Checkpoint`; its methods give every layer's attention, each head's
query/key weights (:class:`HeadWeights`), bilinear form (:class:`QKForm`), induced token
distances and the share of attention a sparse pattern would keep. Files are untrusted input:
hostile or broken ones (pickles built to hang the loader, lying headers or configs, tensors
that are not dense real floats, sizes that cannot fit in memory) are refused when loaded, naming
the file (docs/heads_loading.md, "What the loader refuses").
"""

from flowgraph.models.heads.checkpoint import Checkpoint, load_checkpoint
from flowgraph.models.heads.metrics import QKForm
from flowgraph.models.heads.safe_load import UnsafeCheckpointError
from flowgraph.models.heads.weights import HeadWeights

__all__ = ["Checkpoint", "HeadWeights", "QKForm", "UnsafeCheckpointError", "load_checkpoint"]
