"""Framework-free core shared by the MindSpore trainer and the PyTorch reference."""

import os

# MindSpore's generated *_pb2 modules only load under protobuf's pure-Python backend, and a process
# fixes its backend at the first protobuf import. transformers' sentencepiece -> fast tokenizer
# conversion imports protobuf too, so whichever runs first would decide; decide here, before either.
os.environ.setdefault("PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION", "python")
