"""The benchmarks' models: torchvision / transformers exports and the two models over 2 GiB.

Every export uses torch's TorchScript exporter (``dynamo=False``), opset 17,
``do_constant_folding=False`` (BatchNormalization nodes stay), eval mode and seed 0, with random
weights:

- every BatchNorm's running statistics and affine are re-drawn (var U[0.5, 1.5], mean U[-0.1, 0.1],
  gamma U[0.5, 1.5], beta U[-0.1, 0.1]), so BatchNorm is not an identity;
- every all-zero float parameter is re-drawn from N(0, 0.02) (``keep_zeros=True`` leaves them:
  the exporter then shares equal zero biases behind Identity nodes, so the node count differs);
- the batch is dynamic (and BERT's sequence), unless ``static_batch=True`` (batch 1).

Models: the torchvision classifiers (``resnet18``, ``resnet50``, ``mobilenet_v3_small``,
``efficientnet_b0``, ``vit_b_16``: input ``input`` float32 [N, 3, 224, 224]), ``bert-base``
(transformers ``BertModel(BertConfig())``: ``input_ids`` / ``attention_mask`` / ``token_type_ids``
int64 [N, S]; outputs ``last_hidden_state``, ``pooler_output``) and ``resnet-widths``, a ResNet-50
(v1.5 layout) whose every width comes from a JSON spec::

    {"stem": 64, "stages": [{"out": 256, "blocks": [[64, 64], [64, 64], [64, 64]]}, ...]}

(``out`` is a stage's residual width, ``blocks`` each bottleneck's 1x1 and 3x3 output widths).
The large models need no torch: ``large-transpose`` (2.42 GB, nine ``Relu(MatMul(h, Transpose(W_i)))``
layers of 4096x16384 float32, each ``W_i`` stored transposed) and ``large-identity`` (2.4 GB, nine
``MatMul(h, Identity(W_i))`` layers, layer 5 holding layer 1's bytes).

Exports run in the torch environment (``--torch-python``, default
``$ONNXSHRINK_BENCH_TORCH_PYTHON`` or this interpreter) in a child process and are cached in
``<cache>/exports`` (``--cache``, default ``$ONNXSHRINK_BENCH_CACHE`` or
``~/.cache/onnxshrink-bench``), with a ``.json`` beside each export saying how it was made.
As a script: ``python benchmarks/export.py MODEL OUT [--keep-zeros] [--static-batch] [--widths JSON]``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

SEED = 0
TRACE_BATCH, TRACE_SEQ = 2, 16  # the traced example's sizes; the exported dims are dynamic
TORCHVISION = ("resnet18", "resnet50", "mobilenet_v3_small", "efficientnet_b0", "vit_b_16")
NETWORKS = (*TORCHVISION, "bert-base", "resnet-widths")
LARGE = ("large-transpose", "large-identity")
LARGE_ROWS, LARGE_COLS, LARGE_LAYERS = 4096, 16384, 9
RESNET_STRIDES = (1, 2, 2, 2)
BERT_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
BERT_OUTPUTS = ("last_hidden_state", "pooler_output")


# ------------------------------------------------------------------------------------------------
# the parent side: cached paths


def default_cache() -> Path:
    """The benchmark cache: ``$ONNXSHRINK_BENCH_CACHE``, else ``~/.cache/onnxshrink-bench``."""
    return Path(os.environ.get("ONNXSHRINK_BENCH_CACHE", Path.home() / ".cache" / "onnxshrink-bench"))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``--cache`` and ``--torch-python``, shared by every benchmark that exports."""
    parser.add_argument(
        "--cache",
        type=Path,
        default=default_cache(),
        help="exports and outputs (default $ONNXSHRINK_BENCH_CACHE or ~/.cache/onnxshrink-bench)",
    )
    parser.add_argument(
        "--torch-python",
        default=os.environ.get("ONNXSHRINK_BENCH_TORCH_PYTHON", sys.executable),
        help="python with torch, torchvision and transformers, for the exports "
        "(default $ONNXSHRINK_BENCH_TORCH_PYTHON or this interpreter)",
    )


def exported(
    name: str,
    args: argparse.Namespace,
    *,
    keep_zeros: bool = False,
    static_batch: bool = False,
    widths: dict[str, Any] | None = None,
) -> Path:
    """The cached export of ``name`` (made once in the torch environment); see the module docstring."""
    from harness import run_child

    suffix = (".keep-zeros" if keep_zeros else "") + (".static" if static_batch else "")
    if widths is not None:
        digest = hashlib.sha1(json.dumps(widths, sort_keys=True).encode()).hexdigest()[:12]
        suffix += f".{digest}"
    path = args.cache / "exports" / f"{name}{suffix}.onnx"
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    command = [args.torch_python, str(Path(__file__).resolve()), name, str(path)]
    command += ["--keep-zeros"] * keep_zeros + ["--static-batch"] * static_batch
    if widths is not None:
        spec = path.with_suffix(".widths.json")
        spec.write_text(json.dumps(widths))
        command += ["--widths", str(spec)]
    started = time.perf_counter()
    run = run_child(command, timeout=1800)
    if not run.ok:
        raise RuntimeError(f"exporting {name} with {args.torch_python} failed: {run.failure}\n{run.tail}")
    print(f"(exported {path.name} in {time.perf_counter() - started:.0f} s)", file=sys.stderr, flush=True)
    return path


def built_large(name: str, args: argparse.Namespace) -> Path:
    """The cached large model ``name`` (one of :data:`LARGE`), in a folder of its own."""
    from harness import run_child

    path = args.cache / "exports" / name / f"{name}.onnx"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        print(f"... building {name} (about 2.4 GB, once)", file=sys.stderr, flush=True)
        run = run_child([sys.executable, str(Path(__file__).resolve()), name, str(path)], timeout=1800)
        if not run.ok:
            raise RuntimeError(f"building {name} failed: {run.failure}\n{run.tail}")
    return path


def export_info(path: Path) -> dict[str, Any]:
    """How an export was made (the ``.json`` written beside it), or ``{}``."""
    meta = Path(str(path) + ".json")
    return json.loads(meta.read_text()) if meta.exists() else {}


# ------------------------------------------------------------------------------------------------
# the child side: torch


def _redraw(net: Any, keep_zeros: bool) -> tuple[int, int]:
    """Re-draws BatchNorm statistics and affine, then all-zero float parameters; returns the counts."""
    import torch

    batchnorms = zeros = 0
    with torch.no_grad():
        for layer in net.modules():
            if isinstance(layer, torch.nn.modules.batchnorm._BatchNorm):
                layer.running_var.uniform_(0.5, 1.5)
                layer.running_mean.uniform_(-0.1, 0.1)
                if layer.weight is not None:
                    layer.weight.uniform_(0.5, 1.5)
                    layer.bias.uniform_(-0.1, 0.1)
                batchnorms += 1
        for param in [] if keep_zeros else net.parameters():
            if param.is_floating_point() and not bool(param.any()):
                param.normal_(0.0, 0.02)
                zeros += 1
    return batchnorms, zeros


def _widths_resnet(widths: dict[str, Any]) -> Any:
    import torch
    from torch import nn

    class Bottleneck(nn.Module):
        def __init__(self, cin: int, w1: int, w2: int, cout: int, stride: int, project: bool) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(cin, w1, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(w1)
            self.conv2 = nn.Conv2d(w1, w2, 3, stride=stride, padding=1, bias=False)
            self.bn2 = nn.BatchNorm2d(w2)
            self.conv3 = nn.Conv2d(w2, cout, 1, bias=False)
            self.bn3 = nn.BatchNorm2d(cout)
            self.relu = nn.ReLU(inplace=True)
            self.downsample = (
                nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))
                if project
                else None
            )

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            identity = x if self.downsample is None else self.downsample(x)
            out = self.relu(self.bn1(self.conv1(x)))
            out = self.relu(self.bn2(self.conv2(out)))
            return self.relu(self.bn3(self.conv3(out)) + identity)

    class WidthResNet50(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            stem = int(widths["stem"])
            self.conv1 = nn.Conv2d(3, stem, 7, stride=2, padding=3, bias=False)
            self.bn1 = nn.BatchNorm2d(stem)
            self.relu = nn.ReLU(inplace=True)
            self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
            cin = stem
            stages = []
            for stage, stride in zip(widths["stages"], RESNET_STRIDES, strict=True):
                blocks = []
                for index, (w1, w2) in enumerate(stage["blocks"]):
                    first = index == 0
                    blocks.append(Bottleneck(cin, w1, w2, stage["out"], stride if first else 1, first))
                    cin = stage["out"]
                stages.append(nn.Sequential(*blocks))
            self.layer1, self.layer2, self.layer3, self.layer4 = stages
            self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
            self.fc = nn.Linear(cin, 1000)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
            x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
            return self.fc(torch.flatten(self.avgpool(x), 1))

    return WidthResNet50()


def _bert_module(net: Any) -> Any:
    import torch

    class Wrapped(torch.nn.Module):
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            out = self.inner(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids, return_dict=False
            )
            return out[0], out[1]

    return Wrapped(net).eval()


def export_network(name: str, out: str, *, keep_zeros: bool, static_batch: bool, widths: str | None) -> None:
    """Runs in the torch environment: exports one network and writes ``OUT.json`` beside it."""
    import warnings

    warnings.filterwarnings("ignore")
    import torch

    torch.manual_seed(SEED)
    if name == "bert-base":
        from transformers import BertConfig, BertModel

        net = BertModel(BertConfig())
    elif name == "resnet-widths":
        if widths is None:
            raise SystemExit("resnet-widths needs --widths JSON")
        net = _widths_resnet(json.loads(Path(widths).read_text()))
    else:
        import torchvision

        net = getattr(torchvision.models, name)(weights=None)
    net.eval()
    batchnorms, zeros = _redraw(net, keep_zeros)
    batch = 1 if static_batch else TRACE_BATCH
    if name == "bert-base":
        module: Any = _bert_module(net)
        example: tuple[Any, ...] = (
            torch.randint(0, 1000, (batch, TRACE_SEQ)),
            torch.ones(batch, TRACE_SEQ, dtype=torch.int64),
            torch.zeros(batch, TRACE_SEQ, dtype=torch.int64),
        )
        inputs, outputs = list(BERT_INPUTS), list(BERT_OUTPUTS)
        dynamic: dict[str, dict[int, str]] | None = {n: {0: "N", 1: "S"} for n in (*BERT_INPUTS, BERT_OUTPUTS[0])}
        dynamic[BERT_OUTPUTS[1]] = {0: "N"}
    else:
        module, example = net, (torch.randn(batch, 3, 224, 224),)
        inputs, outputs = ["input"], ["output"]
        dynamic = {"input": {0: "N"}, "output": {0: "N"}}
    if static_batch:
        dynamic = None
    tmp = out + ".tmp"
    torch.onnx.export(
        module,
        example,
        tmp,
        dynamo=False,
        opset_version=17,
        do_constant_folding=False,
        input_names=inputs,
        output_names=outputs,
        dynamic_axes=dynamic,
    )
    os.replace(tmp, out)
    info = {
        "model": name,
        "keep_zeros": keep_zeros,
        "static_batch": static_batch,
        "bn_redrawn": batchnorms,
        "zero_params_redrawn": zeros,
        "torch": torch.__version__,
    }
    Path(out + ".json").write_text(json.dumps(info))


# ------------------------------------------------------------------------------------------------
# the child side: over 2 GiB, numpy and onnx only


def _external_tensor(name: str, shape: tuple[int, ...], location: str, offset: int, length: int) -> Any:
    from onnx import TensorProto

    tensor = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=list(shape))
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    return tensor


def build_large(name: str, out: str) -> None:
    """Writes a large model tensor by tensor (never more than one weight in memory)."""
    import numpy as np
    from onnx import TensorProto, helper

    path = Path(out)
    data_name = path.name + ".data"
    tmp_data = path.parent / (data_name + ".tmp")
    nodes, inits = [], []
    prev, offset = "x", 0
    with open(tmp_data, "wb") as data:
        for i in range(LARGE_LAYERS):
            width_in, width_out = (LARGE_ROWS, LARGE_COLS) if i % 2 == 0 else (LARGE_COLS, LARGE_ROWS)
            if name == "large-transpose":  # W_i stored [out, in], Transposed in the graph
                w = np.random.default_rng(SEED + i).standard_normal((width_out, width_in), dtype=np.float32)
                w *= np.float32(1.0 / math.sqrt(width_in))
                ops = [("Transpose", [f"w{i}"], f"wt{i}", {"perm": [1, 0]}), ("MatMul", [prev, f"wt{i}"], f"mm{i}", {})]
                ops.append(("Relu", [f"mm{i}"], f"h{i}", {}))
            else:  # layer 5 repeats layer 1's weights: cleanup has an initializer to merge
                seed = 1 if i == 5 else i
                w = np.random.default_rng(seed).standard_normal((width_in, width_out), dtype=np.float32) * 0.01
                ops = [("Identity", [f"w{i}"], f"wi{i}", {}), ("MatMul", [prev, f"wi{i}"], f"h{i}", {})]
            raw = w.tobytes()
            data.write(raw)
            inits.append(_external_tensor(f"w{i}", w.shape, data_name, offset, len(raw)))
            offset += len(raw)
            pad = (-offset) % 4096
            data.write(b"\0" * pad)
            offset += pad
            del w, raw
            for op, ins, output, attrs in ops:
                nodes.append(helper.make_node(op, ins, [output], name=f"{op.lower()}{i}", **attrs))
            prev = f"h{i}"
    last = LARGE_COLS if (LARGE_LAYERS - 1) % 2 == 0 else LARGE_ROWS
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", LARGE_ROWS])
    y = helper.make_tensor_value_info(prev, TensorProto.FLOAT, ["N", last])
    graph = helper.make_graph(nodes, name.replace("-", "_"), [x], [y], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    os.replace(tmp_data, path.parent / data_name)
    tmp_model = path.parent / (path.name + ".tmp")
    tmp_model.write_bytes(model.SerializeToString())
    os.replace(tmp_model, path)


def main(argv: list[str] | None = None) -> None:
    """Child entry point: exports one network, or builds one large model, to ``out``."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("model", choices=(*NETWORKS, *LARGE))
    parser.add_argument("out")
    parser.add_argument("--keep-zeros", action="store_true", help="do not re-draw all-zero parameters")
    parser.add_argument("--static-batch", action="store_true", help="batch 1, no dynamic axes")
    parser.add_argument("--widths", help="resnet-widths: the JSON width spec")
    args = parser.parse_args(argv)
    if args.model in LARGE:
        build_large(args.model, args.out)
    else:
        export_network(
            args.model, args.out, keep_zeros=args.keep_zeros, static_batch=args.static_batch, widths=args.widths
        )


if __name__ == "__main__":
    main()
