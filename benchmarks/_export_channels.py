"""Exports for ``benchmarks/channels.py``; runs in the torch environment (``/tmp/benchvenv``).

Usage::

    python _export_channels.py resnet50 OUT.onnx
    python _export_channels.py resnet-widths OUT.onnx WIDTHS.json
    python _export_channels.py bert-base OUT.onnx

Every export: torch's TorchScript exporter (``dynamo=False``), opset 17, ``do_constant_folding=False``,
eval mode, seed 0, random weights, dynamic batch (and sequence for BERT). Every BatchNorm's running
statistics and affine are re-drawn (var U[0.5, 1.5], mean U[-0.1, 0.1], gamma U[0.5, 1.5], beta
U[-0.1, 0.1]) so BatchNorm is not an identity.

``resnet-widths`` builds a ResNet-50 (torchvision v1.5 layout: stride on the 3x3 conv, a 1x1
projection on each stage's first block) whose every width comes from ``WIDTHS.json``::

    {"stem": 64, "stages": [{"out": 256, "blocks": [[64, 64], [64, 64], [64, 64]]}, ...]}

``stem`` is the 7x7 conv's output, ``out`` a stage's residual width (its blocks' last 1x1 convs
and its projection), ``blocks`` each bottleneck's two inner widths (1x1 and 3x3 outputs). This is
the "ceiling": the architecture a pruned ONNX model has, built directly in torch.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

SEED = 0
STRIDES = (1, 2, 2, 2)


def _redraw_bn(net: Any) -> None:
    import torch

    with torch.no_grad():
        for layer in net.modules():
            if isinstance(layer, torch.nn.modules.batchnorm._BatchNorm):
                layer.running_var.uniform_(0.5, 1.5)
                layer.running_mean.uniform_(-0.1, 0.1)
                if layer.weight is not None:
                    layer.weight.uniform_(0.5, 1.5)
                    layer.bias.uniform_(-0.1, 0.1)


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
            for stage, stride in zip(widths["stages"], STRIDES, strict=True):
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


def main() -> None:
    import warnings

    warnings.filterwarnings("ignore")
    import torch

    kind, out = sys.argv[1], sys.argv[2]
    torch.manual_seed(SEED)
    if kind == "resnet50":
        import torchvision

        net = torchvision.models.resnet50(weights=None)
    elif kind == "resnet-widths":
        with open(sys.argv[3]) as handle:
            net = _widths_resnet(json.load(handle))
    elif kind == "bert-base":
        from transformers import BertConfig, BertModel

        net = BertModel(BertConfig())
    else:
        raise SystemExit(f"unknown export {kind!r}; valid: resnet50, resnet-widths, bert-base")
    net.eval()
    _redraw_bn(net)
    tmp = out + ".tmp"
    if kind == "bert-base":

        class Wrapped(torch.nn.Module):
            def __init__(self, inner: Any) -> None:
                super().__init__()
                self.inner = inner

            def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
                result = self.inner(
                    input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids, return_dict=False
                )
                return result[0], result[1]

        names = ["input_ids", "attention_mask", "token_type_ids"]
        dynamic = {n: {0: "N", 1: "S"} for n in names}
        dynamic.update({"last_hidden_state": {0: "N", 1: "S"}, "pooler_output": {0: "N"}})
        args: tuple[Any, ...] = (
            torch.randint(0, 1000, (2, 16)),
            torch.ones(2, 16, dtype=torch.int64),
            torch.zeros(2, 16, dtype=torch.int64),
        )
        torch.onnx.export(
            Wrapped(net).eval(),
            args,
            tmp,
            dynamo=False,
            opset_version=17,
            do_constant_folding=False,
            input_names=names,
            output_names=["last_hidden_state", "pooler_output"],
            dynamic_axes=dynamic,
        )
    else:
        torch.onnx.export(
            net,
            (torch.randn(2, 3, 224, 224),),
            tmp,
            dynamo=False,
            opset_version=17,
            do_constant_folding=False,
            input_names=["input"],
            output_names=["output"],
            dynamic_axes={"input": {0: "N"}, "output": {0: "N"}},
        )
    os.replace(tmp, out)


if __name__ == "__main__":
    main()
