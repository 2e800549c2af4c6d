"""models — torch modules and training: attention variants, a small GPT, tasks, checkpoints and
head metrics; EntityMemory, PartiallyFrozenEmbedding and word2vec.

Layer: imports ``gpu`` and ``flowgraph`` (never ``app``).
"""
