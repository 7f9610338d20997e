"""The sentence encoder moved to :mod:`broker.encoder` (nodes embed with it too).

Re-exported here so that the gateway's imports read as before.
"""

from broker.encoder import DIM, MODEL_NAME, PACKAGE, EncoderError, SentenceEncoder, model_dir

__all__ = ["DIM", "MODEL_NAME", "PACKAGE", "EncoderError", "SentenceEncoder", "model_dir"]
