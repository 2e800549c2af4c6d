"""models.heads — what a trained model's attention heads learned.

:func:`load_checkpoint` opens our runs, Hugging Face BERT-family, GPT-2 and Llama-style (Llama,
Mistral, Qwen2) directories and nanoGPT ``ckpt.pt`` files as a :class:`Checkpoint`; its methods
give every layer's attention, each head's query/key weights (:class:`HeadWeights`), bilinear form
(:class:`QKForm`; for rotary models at an offset, with its rotation planes,
:class:`RotaryPlanes`), induced token distances and the share of attention a sparse pattern
would keep. :func:`rollout` and
:func:`attention_flow` read a model as a flow network (Abnar & Zuidema 2020; docs/flow.md)
and :func:`fit_pattern` ranks the sparse patterns that would keep what it uses. Files are
untrusted input: hostile or broken ones (pickles built to hang the loader, lying headers or
configs, tensors that are not dense real floats, sizes that cannot fit in memory) are refused
when loaded, naming the file (docs/heads_loading.md, "What the loader refuses").
"""

from flowgraph.models.heads.attention_flow import attention_flow
from flowgraph.models.heads.checkpoint import Checkpoint, load_checkpoint
from flowgraph.models.heads.fit import FitReport, PatternFit, fit_pattern
from flowgraph.models.heads.metrics import QKForm
from flowgraph.models.heads.rollout import mixed_attention, rollout
from flowgraph.models.heads.rotary import Rotary, RotaryPlanes
from flowgraph.models.heads.safe_load import UnsafeCheckpointError
from flowgraph.models.heads.weights import HeadWeights

__all__ = [
    "Checkpoint",
    "FitReport",
    "HeadWeights",
    "PatternFit",
    "QKForm",
    "Rotary",
    "RotaryPlanes",
    "UnsafeCheckpointError",
    "attention_flow",
    "fit_pattern",
    "load_checkpoint",
    "mixed_attention",
    "rollout",
]
