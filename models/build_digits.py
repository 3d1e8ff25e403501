"""Train a small CNN on scikit-learn's digits data set and export it to ONNX.

This script builds the reference model that onnxshrink's tests and benchmarks
use.  It writes, next to this file:

* ``digits_cnn.onnx``   -- the trained model (opset 17).  Input ``input``,
  float32 ``[N, 1, 8, 8]`` with a symbolic batch dimension ``N``; output
  ``logits``, float32 ``[N, 10]``.  ``BatchNormalization`` nodes are kept as
  separate (inference-mode) nodes so that later passes have something to fuse.
* ``digits_calib.npz``  -- calibration data: key ``input``, the first 128
  training images, float32 ``[128, 1, 8, 8]``.  (Keys are model input names;
  the first axis indexes samples.)
* ``digits_test.npz``   -- held-out test data: key ``input`` (float32
  ``[N, 1, 8, 8]``) and key ``labels`` (int64 ``[N]``).

The data is ``sklearn.datasets.load_digits`` (bundled with scikit-learn, no
download): 1797 8x8 grayscale images with pixel values 0..16, 10 classes.
Pixels are scaled to [0, 1] by dividing by 16.  The split is
``train_test_split(test_size=0.3, random_state=0, stratify=labels)``.

Training is deterministic: fixed seeds, ``torch.use_deterministic_algorithms``,
CPU only, a fixed number of intra-op threads.  It takes well under a minute on
two CPU cores.

Requirements
------------
PyTorch is needed only to *build* the model.  It belongs to the project's
``bench``/``dev`` extras and is never a runtime dependency of onnxshrink.
Use a separate virtual environment, e.g.::

    python3 -m venv ../benchvenv
    ../benchvenv/bin/pip install -e '.[bench]'
    ../benchvenv/bin/python models/build_digits.py

(The files in this folder were built with torch 2.14.1, onnx 1.23.2,
onnxruntime 1.32.0, scikit-learn 1.9.1, numpy 2.4.6.)

After exporting, the script checks the ONNX file with ``onnx.checker``, prints
its op histogram, runs it with onnxruntime (CPU) on the test set, prints the
test accuracy and compares the ONNX logits with the PyTorch logits.  It exits
non-zero if any check fails.
"""

from __future__ import annotations

import collections
import os
import random
import sys
from pathlib import Path

import numpy as np

SEED = 0
NUM_THREADS = 1  # fixed so float reductions are the same on every machine
EPOCHS = 40
BATCH_SIZE = 64
LR = 2e-3
CALIB_SAMPLES = 128
MIN_TEST_ACCURACY = 0.98
OPSET = 17

HERE = Path(__file__).resolve().parent
ONNX_PATH = HERE / "digits_cnn.onnx"
CALIB_PATH = HERE / "digits_calib.npz"
TEST_PATH = HERE / "digits_test.npz"


def load_data() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.images.astype(np.float32) / np.float32(16.0)).reshape(-1, 1, 8, 8)
    y = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.3, random_state=0, stratify=y)
    return (
        np.ascontiguousarray(x_train, dtype=np.float32),
        np.ascontiguousarray(x_test, dtype=np.float32),
        np.ascontiguousarray(y_train, dtype=np.int64),
        np.ascontiguousarray(y_test, dtype=np.int64),
    )


def build_model(width: int = 16):  # -> torch.nn.Module
    """The digits CNN; ``width`` channels in its first blocks (16: the bundled model; 8: the
    architecture ``prune-channels:ratio=0.5`` leaves, trained from scratch in benchmarks/reconstruct.py)."""
    import torch
    from torch import nn

    def conv_bn(cin: int, cout: int, k: int) -> nn.Sequential:
        return nn.Sequential(
            nn.Conv2d(cin, cout, k, padding=k // 2, bias=False),
            nn.BatchNorm2d(cout),
        )

    class DigitsCNN(nn.Module):
        """Conv/BN/ReLU stem, a residual block, a two-branch Concat block,
        MaxPool, one more conv block, Flatten -> Gemm -> Relu -> Gemm.

        Shapes (batch omitted): 1x8x8 -> 16x8x8 -> 16x8x8 (residual)
        -> 32x8x8 (concat 16+16) -> 32x4x4 (max pool) -> 32x4x4 -> 512 -> 64 -> 10.
        """

        def __init__(self) -> None:
            super().__init__()
            self.stem = conv_bn(1, width, 3)
            # residual block: relu(x + bn(conv(relu(bn(conv(x))))))
            self.res1 = conv_bn(width, width, 3)
            self.res2 = conv_bn(width, width, 3)
            # two parallel branches, concatenated along channels
            self.branch_a = conv_bn(width, width, 1)
            self.branch_b = conv_bn(width, width, 3)
            self.pool = nn.MaxPool2d(2)
            self.conv3 = conv_bn(2 * width, 2 * width, 3)
            self.fc1 = nn.Linear(2 * width * 4 * 4, 4 * width)
            self.fc2 = nn.Linear(4 * width, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = torch.relu(self.stem(x))
            r = torch.relu(self.res1(x))
            r = self.res2(r)
            x = torch.relu(x + r)
            a = torch.relu(self.branch_a(x))
            b = torch.relu(self.branch_b(x))
            x = torch.cat([a, b], dim=1)
            x = self.pool(x)
            x = torch.relu(self.conv3(x))
            x = torch.flatten(x, 1)
            x = torch.relu(self.fc1(x))
            return self.fc2(x)

    return DigitsCNN()


def set_determinism() -> None:
    import torch

    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    random.seed(SEED)
    np.random.seed(SEED)
    torch.manual_seed(SEED)
    torch.set_num_threads(NUM_THREADS)
    try:
        torch.use_deterministic_algorithms(True)
    except Exception as exc:  # pragma: no cover - depends on torch build
        print(f"warning: use_deterministic_algorithms failed: {exc}", file=sys.stderr)


def train(model, x_train, y_train, x_test, y_test) -> float:
    import torch
    from torch import nn

    xt = torch.from_numpy(x_train)
    yt = torch.from_numpy(y_train)
    xv = torch.from_numpy(x_test)
    yv = torch.from_numpy(y_test)

    gen = torch.Generator().manual_seed(SEED)
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=EPOCHS)
    loss_fn = nn.CrossEntropyLoss()
    n = xt.shape[0]
    acc = 0.0
    for epoch in range(EPOCHS):
        model.train()
        perm = torch.randperm(n, generator=gen)
        total = 0.0
        for i in range(0, n, BATCH_SIZE):
            idx = perm[i : i + BATCH_SIZE]
            if idx.numel() < 2:  # BatchNorm needs more than one sample
                continue
            opt.zero_grad()
            loss = loss_fn(model(xt[idx]), yt[idx])
            loss.backward()
            opt.step()
            total += loss.item() * idx.numel()
        sched.step()
        model.eval()
        with torch.no_grad():
            acc = (model(xv).argmax(1) == yv).float().mean().item()
        print(f"epoch {epoch + 1:3d}  loss {total / n:.4f}  test acc {acc:.4f}")
    return acc


def export_onnx(model, example) -> None:
    import torch

    model.eval()
    kwargs = dict(
        input_names=["input"],
        output_names=["logits"],
        opset_version=OPSET,
        dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}},
        # Keep BatchNormalization as separate nodes: in EVAL mode the
        # TorchScript exporter folds BN into the preceding Conv.  PRESERVE
        # exports the module's current mode, which is eval (inference BN).
        training=torch.onnx.TrainingMode.PRESERVE,
        do_constant_folding=False,
    )
    try:
        torch.onnx.export(model, (example,), str(ONNX_PATH), dynamo=False, **kwargs)
    except TypeError:  # older torch without the ``dynamo`` argument
        torch.onnx.export(model, (example,), str(ONNX_PATH), **kwargs)


def check_onnx(expected_logits: np.ndarray, x_test: np.ndarray, y_test: np.ndarray) -> float:
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(ONNX_PATH))
    onnx.checker.check_model(model, full_check=True)
    ok = True

    def fail(msg: str) -> None:
        nonlocal ok
        ok = False
        print(f"CHECK FAILED: {msg}", file=sys.stderr)

    opset = {o.domain: o.version for o in model.opset_import}
    if opset.get("", opset.get("ai.onnx")) != OPSET:
        fail(f"opset is {opset}, expected {OPSET}")
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer):
        fail("model uses external data")

    hist = collections.Counter(n.op_type for n in model.graph.node)
    print("op histogram:")
    for op, count in sorted(hist.items()):
        print(f"  {op:20s} {count}")
    for op in ("Conv", "BatchNormalization", "Relu", "Add", "Concat", "Flatten", "Gemm"):
        if hist[op] == 0:
            fail(f"no {op} node in the exported graph")

    for node in model.graph.node:
        if node.op_type != "BatchNormalization":
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if attrs.get("training_mode", 0) != 0 or len(node.output) != 1:
            fail(f"BatchNormalization {node.name} is in training mode")

    (inp,) = model.graph.input
    (out,) = model.graph.output
    dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    if inp.name != "input" or dims != ["N", 1, 8, 8]:
        fail(f"input is {inp.name} {dims}, expected input ['N', 1, 8, 8]")
    if inp.type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
        fail("input is not float32")
    odims = [d.dim_param or d.dim_value for d in out.type.tensor_type.shape.dim]
    if out.name != "logits" or odims != ["N", 10]:
        fail(f"output is {out.name} {odims}, expected logits ['N', 10]")

    sess = ort.InferenceSession(str(ONNX_PATH), providers=["CPUExecutionProvider"])
    logits = sess.run(["logits"], {"input": x_test})[0]
    acc = float((logits.argmax(1) == y_test).mean())
    diff = float(np.abs(logits - expected_logits).max())
    agree = float((logits.argmax(1) == expected_logits.argmax(1)).mean())
    one = sess.run(["logits"], {"input": x_test[:1]})[0]
    print(
        f"onnxruntime {ort.__version__} CPU test accuracy: {acc:.6f} "
        f"({int((logits.argmax(1) == y_test).sum())}/{len(y_test)})"
    )
    print(f"ONNX vs torch: max |logit diff| {diff:.3e}, argmax agreement {agree:.4f}")
    if diff > 1e-3 or agree != 1.0:
        fail("ONNX and torch outputs disagree")
    if one.shape != (1, 10) or np.abs(one - logits[:1]).max() > 1e-4:
        fail("batch size 1 gives different results")
    if acc < MIN_TEST_ACCURACY:
        fail(f"test accuracy {acc:.4f} < {MIN_TEST_ACCURACY}")
    if not ok:
        sys.exit(1)
    return acc


def main() -> None:
    import torch

    set_determinism()
    x_train, x_test, y_train, y_test = load_data()
    print(f"train {x_train.shape}  test {x_test.shape}")

    model = build_model()
    n_params = sum(p.numel() for p in model.parameters())
    print(f"parameters: {n_params} ({n_params * 4 / 1024:.1f} KiB float32)")
    acc = train(model, x_train, y_train, x_test, y_test)
    print(f"torch test accuracy: {acc:.4f}")

    model.eval()
    with torch.no_grad():
        expected = model(torch.from_numpy(x_test)).numpy()
    export_onnx(model, torch.from_numpy(x_train[:2]))

    np.savez_compressed(CALIB_PATH, input=x_train[:CALIB_SAMPLES])
    np.savez_compressed(TEST_PATH, input=x_test, labels=y_test)

    check_onnx(expected, x_test, y_test)
    for path in (ONNX_PATH, CALIB_PATH, TEST_PATH):
        print(f"wrote {path.name} ({path.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
