"""Infrastructure every stage shares: the params schema, storage (local and S3), the per-utterance
result cache, sharded outs, checkpoint bundles and Hugging Face model loading. Imports nothing
from the other subpackages (only the frontends' registry, a leaf library).
"""
