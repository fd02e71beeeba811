"""T5's relative-position buckets on whatever device MindSpore targets here (CPU with cpu_kernels, or Ascend).

T5 puts each token pair in a bucket by truncating log(d / 8) / log(16) * 8 for distances d >= 8. That
is an exact integer at d = 16, 32 and 64, so a log that is off by one ulp in the wrong direction moves
the pair into the bucket below and gives it another position bias. MindSpore CPU's raw fp32 Log gave
1.9999995 at d = 16: the 512-token T5 output (FLUX.1-dev's length) differed from torch's by 12% until
cpu_kernels routed fp32 log through float64. On Ascend this runs against Ascend's own Log kernel.
"""

from __future__ import annotations

import numpy as np
import torch


def test_t5_relative_position_buckets_match_transformers():
    """Every distance of a 512-token sequence lands in transformers' bucket, both T5 attention kinds."""
    import mindspore as ms
    from mindone.transformers.models.t5.modeling_t5 import T5Attention as MsT5Attention
    from transformers.models.t5.modeling_t5 import T5Attention

    from mindspore_impl.train import select_device

    select_device(None)
    distances = np.arange(-511, 512, dtype=np.int64)[None, :]
    for bidirectional in (True, False):
        expected = T5Attention._relative_position_bucket(torch.tensor(distances), bidirectional, 32, 128).numpy()
        got = MsT5Attention._relative_position_bucket(ms.Tensor(distances), bidirectional, 32, 128).asnumpy()
        np.testing.assert_array_equal(got, expected)
