"""Models the inspect tests share."""

from __future__ import annotations

import onnx_ir as ir
import pytest
from helpers import parse_model, random_arrays, run_pass


@pytest.fixture
def int4_gather_matmul() -> ir.Model:
    """An embedding Gather and a MatMul after ``quantize`` in 4-bit blocks (GatherBlockQuantized, MatMulNBits)."""
    text = """<ir_version: 10, opset_import: ["" : 21]>
    g (int64[N, 4] ids) => (float[N, 4, 8] y) <float[32, 64] table, float[64, 8] w> {
        e = Gather(table, ids)
        y = MatMul(e, w)
    }"""
    proto = parse_model(text, initializers=random_arrays({"table": (32, 64), "w": (64, 8)}))
    return run_pass(proto, "quantize:mode=weight-only,weights=s4,block-size=16").ir_model
