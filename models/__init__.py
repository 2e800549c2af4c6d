"""models — torch modules and training: attention variants, a small GPT, tasks, checkpoints and
head metrics; EntityMemory, PartiallyFrozenEmbedding and word2vec.

Layer: imports ``gpu`` and ``flowgraph`` (never ``app``). The training checkpoint format lives in
``models.checkpoint``; ``models.load_checkpoint`` is the head-metrics loader (any checkpoint kind).
"""

from flowgraph.models.attention import DotProductAttention, MetricAttention, QuadraticAttention
from flowgraph.models.checkpoint import CheckpointError
from flowgraph.models.embedding import PartiallyFrozenEmbedding, remap
from flowgraph.models.entity_memory import (
    DEFAULT_BLOCK_SIZE,
    EntityMemory,
    entity_attention,
    find_mentions,
)
from flowgraph.models.gpt import GPT, GPTConfig
from flowgraph.models.heads import Checkpoint, load_checkpoint
from flowgraph.models.tasks import TASKS, CharTask, SortTask, make_task
from flowgraph.models.train import TrainConfig, load_model, train

__all__ = [
    "DEFAULT_BLOCK_SIZE",
    "GPT",
    "TASKS",
    "CharTask",
    "Checkpoint",
    "CheckpointError",
    "DotProductAttention",
    "EntityMemory",
    "GPTConfig",
    "MetricAttention",
    "PartiallyFrozenEmbedding",
    "QuadraticAttention",
    "SortTask",
    "TrainConfig",
    "entity_attention",
    "find_mentions",
    "load_checkpoint",
    "load_model",
    "make_task",
    "remap",
    "train",
]
