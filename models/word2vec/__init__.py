"""word2vec: skip-gram with negative sampling (Mikolov et al. 2013) trained on the CPU with a
compiled loop or on CUDA with torch batches, and the resulting :class:`WordVectors`."""

from flowgraph.models.word2vec.train import train_word2vec
from flowgraph.models.word2vec.vectors import WordNotInVocabularyError, WordVectors

__all__ = ["WordNotInVocabularyError", "WordVectors", "train_word2vec"]
