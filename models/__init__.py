"""models — torch modules and training: attention variants, a small GPT, tasks, checkpoints and
head metrics; EntityMemory, PartiallyFrozenEmbedding and word2vec.

Layer: imports ``gpu`` and ``flowgraph`` (never ``app``).
"""

from models.embedding import PartiallyFrozenEmbedding, remap
from models.entity_memory import (
    DEFAULT_BLOCK_SIZE,
    EntityMemory,
    entity_attention,
    find_mentions,
)

__all__ = [
    "DEFAULT_BLOCK_SIZE",
    "EntityMemory",
    "PartiallyFrozenEmbedding",
    "entity_attention",
    "find_mentions",
    "remap",
]
