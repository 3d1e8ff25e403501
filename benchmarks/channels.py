"""Structured channel removal (``prune-channels``, ``reconstruct``): issue 5's comparison.

Four sections, each a markdown table (medians, same-run ratios):

1. ``resnet50``: torchvision ResNet-50, random weights (seed 0), every BatchNorm's running stats
   and affine re-drawn (var U[0.5, 1.5], mean U[-0.1, 0.1], gamma U[0.5, 1.5], beta U[-0.1, 0.1]),
   opset 17, dynamic batch. Pipeline ``simplify`` then ``prune-channels:ratio=R`` (R = 0.25, 0.5).
   The baseline is the dense model after ``simplify`` (BatchNorm folded, as onnxruntime would do
   it anyway). The **ceiling** is the same per-layer widths built directly in torch: the pruned
   model's Conv weight shapes are read by node name (stem, each bottleneck's two inner widths,
   each stage's residual width), a width-parameterised ResNet-50 is built with them
   (``export.py resnet-widths``), exported with the same recipe and run through
   ``simplify``. Columns: MACs ratio (``inspect_model``, batch 1), onnxruntime CPU latency at batch 1
   and 8, speedup vs dense and vs the ceiling, top-1 agreement and logit cosine vs dense on 32 random
   images (low by construction: random weights carry no redundancy to remove). The architecture
   check copies the pruned model's Conv/Gemm weights into the ceiling model by node name and runs
   both: identical shapes everywhere and max |diff| at float rounding prove they are the same
   network (and have the same MACs).
2. ``digits``: models/digits_cnn.onnx (calibration models/digits_calib.npz, labelled test set
   models/digits_test.npz): accuracy after ``simplify`` + ``prune-channels`` at R = 0.25 / 0.5 / 0.75,
   ``round-to`` 8 (the default) and 1, criterion ``l2`` and ``activation``, with and without
   ``reconstruct`` (the input model as teacher, calibration data).
3. ``ocr-cls``: rapidocr-onnxruntime's PP-OCR text-direction classifier (fetched with
   tests/helpers/real_models.py into ``$ONNXSHRINK_TEST_CACHE``). Inputs are Pillow-rendered text lines, half
   rotated by 180 degrees, the rotation being the label (``samples.text_lines``): calibration
   seed 1, test seed 2 (400 lines). ``simplify`` → ``prune-channels`` (R = 0.25, 0.5)
   with and without ``reconstruct``: accuracy, agreement, cosine, latency at batch 1 and 8.
4. ``bert-base``: transformers ``BertModel(BertConfig())``, random weights, dynamic batch and
   sequence, opset 17. ``simplify`` → ``prune-channels`` (R = 0.25, 0.5): the groups it prunes (FFN
   neurons, attention heads) and the ones it refuses with the plan's reasons; latency and output
   cosine vs dense at batch 1 and 8, sequence 128 (random ids in [0, 30522), mask ones, token types
   zeros); with ``--bert-reconstruct`` also ``reconstruct`` of the FFN down-projections on
   ``--bert-calib`` (16) random calibration sequences.

Each model section ends with the reasons of the groups left alone (refused or skipped), counted by kind
(names replaced by …).

Latency (``harness.session_latency``): onnxruntime CPU sessions (``--threads`` intra-op threads,
default 1 because the 2-core benchmark machine is shared and spinning worker threads make
multi-threaded timings bimodal there; ``--threads 0`` is onnxruntime's default; all graph
optimizations) held open for every model of a comparison; each round times ``--runs`` runs of each
model in turn (interleaved, the order rotated by one model per round), one median per model per
round; a speedup is the median over rounds of the same round's ratio.

Exports come from ``export.py`` (cached); the shrunk models are written to ``<cache>/channels``
(about 2 GB). About 12 minutes on a shared 2-core machine, plus 1 minute of exports the first time
(``--bert-reconstruct`` adds about 4)::

    python benchmarks/channels.py [--quick] [--sections resnet50,digits,ocr-cls,bert-base]
        [--rounds N] [--runs N] [--threads N] [--json OUT]
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import export
import harness
import numpy as np
import onnx_ir as ir
import samples
from harness import fmt, median_ms, speedup
from numerics import cosine, top1_agreement

import onnxshrink
from onnxshrink.inspect.summary import inspect_model
from onnxshrink.runtime import create_session

RESNET_RATIOS = (0.25, 0.5)
DIGITS_RATIOS = (0.25, 0.5, 0.75)
# prune-channels option sets tried on digits (its groups have 16-64 channels, so the defaults
# round-to=8 and min-channels=8 change what a ratio removes); the last one removes exactly `ratio`.
DIGITS_OPTIONS = ("", "round-to=1", "round-to=1,min-channels=1")
OCR_RATIOS = (0.125, 0.25, 0.5)
BERT_RATIOS = (0.25, 0.5)
BATCHES = (1, 8)
BERT_SEQ = 128
BERT_VOCAB = 30522
BERT_HEAD_DIM = 64
RESNET_STAGES = (3, 4, 6, 3)


# ------------------------------------------------------------------------------------------------
# helpers


def _stats(result: onnxshrink.ShrinkResult, name: str) -> dict[str, Any]:
    return harness.pass_record(result.report, name).get("stats", {})


def _kept_share(stats: dict[str, Any]) -> tuple[int, int]:
    """Channels (before, after) over the pruned groups."""
    groups = stats.get("channels", {}).values()
    return sum(g["before"] for g in groups), sum(g["after"] for g in groups)


def _print_refused(model: str, stats: dict[str, Any]) -> None:
    # prune-channels reports refused groups in ``skipped`` with the ones it chose not to prune
    # (older reports kept ``refused`` apart): every one of them is a group left as it was.
    left_alone: dict[str, str] = {**stats.get("refused", {}), **stats.get("skipped", {})}
    print(f"\n{model}: {stats.get('groups', 0)} channel groups, {len(left_alone)} left alone (refused or skipped)")
    kinds = Counter(re.sub(r"'[^']*'", "'…'", reason) for reason in left_alone.values())
    for reason, count in kinds.most_common():
        example = next(f"{g}: {r}" for g, r in left_alone.items() if re.sub(r"'[^']*'", "'…'", r) == reason)
        print(f"- {count} × {reason}  (e.g. {example})")


def _macs(model: ir.Model, shapes: Mapping[str, tuple[int, ...]]) -> int:
    """MACs at ``shapes`` from ``inspect_model``, with the stored intermediate shapes set aside.

    Some exporters (Paddle: PP-OCR) store value shapes with a literal -1 batch, which onnx shape
    inference keeps over the sizes given for the inputs, so ``inspect_model`` would multiply by -1.
    """
    stored = [(value, value.shape) for node in model.graph for value in node.outputs]
    for value, _ in stored:
        value.shape = None
    try:
        return int(inspect_model(model, shapes)["macs"])
    finally:
        for value, shape in stored:
            value.shape = shape


def _bert_macs(model: ir.Model, seq: int) -> int:
    """BERT MACs per sequence: weight MatMul/Gemm (``seq`` tokens × K × N) plus QKᵀ and attention·V.

    ``inspect_model`` leaves every BERT MatMul unknown (its shape inference does not get through
    the exported graph), so this counts from the weights. Attention scores and attention·V cost
    ``seq² · hidden`` each per layer, unchanged unless heads are removed (they are not: see the
    refusals).
    """
    weights = layers = hidden = 0
    for node in model.graph:
        if node.op_type not in ("MatMul", "Gemm") or node.inputs[1] is None:
            continue
        tensor = node.inputs[1].const_value
        if tensor is not None:
            weights += int(np.prod(tensor.shape.numpy()))
        if node.name and node.name.endswith("attention/self/query/MatMul") and tensor is not None:
            layers += 1
            hidden = int(tensor.shape.numpy()[-1])
    return seq * weights + (2 * layers * seq * seq * hidden if layers else 0)


def _bert_widths(model: ir.Model) -> str:
    """Layer 0's attention heads (query width / 64) and FFN width, e.g. ``heads 6/12, FFN 1536/3072``."""
    found = {}
    for node in model.graph:
        tensor = node.inputs[1].const_value if len(node.inputs) > 1 and node.inputs[1] is not None else None
        for key in ("layer.0/attention/self/query/MatMul", "layer.0/intermediate/dense/MatMul"):
            if tensor is not None and (node.name or "").endswith(key):
                found[key] = int(tensor.shape.numpy()[-1])
    heads = found.get("layer.0/attention/self/query/MatMul", 0) // BERT_HEAD_DIM
    return f"heads {heads}/12, FFN {found.get('layer.0/intermediate/dense/MatMul', 0)}/3072"


def _latency(
    paths: dict[str, Path], feed: dict[str, np.ndarray], rounds: int, runs: int, threads: int | None
) -> dict[str, list[float]]:
    """Per round and model, the median ms of ``runs`` runs; models interleaved within each round."""
    return harness.session_latency(paths, feed, rounds=rounds, runs_per_round=runs, warmup=2, threads=threads)


def _outputs(path: Path, feed: dict[str, np.ndarray], batch: int) -> list[np.ndarray]:
    session = create_session(str(path), "cpu")[0]
    count = len(next(iter(feed.values())))
    parts = [session.run(None, {k: v[i : i + batch] for k, v in feed.items()}) for i in range(0, count, batch)]
    return [np.concatenate(chunks) for chunks in zip(*parts, strict=True)]


# ------------------------------------------------------------------------------------------------
# 1. resnet50 and its torch-built ceiling


def _resnet_widths(model: ir.Model) -> dict[str, Any]:
    """Stem, per-block inner and per-stage residual widths from the Conv weight shapes, by node name."""
    out_channels: dict[str, int] = {}
    for node in model.graph:
        weight = node.inputs[1] if node.op_type == "Conv" else None
        if weight is not None and weight.const_value is not None:
            out_channels[node.name or ""] = int(weight.const_value.shape.numpy()[0])
    stages = []
    for s, blocks in enumerate(RESNET_STAGES, start=1):
        prefix = f"/layer{s}/layer{s}."
        stages.append(
            {
                "out": out_channels[f"{prefix}0/downsample/downsample.0/Conv"],
                "blocks": [
                    [out_channels[f"{prefix}{b}/conv1/Conv"], out_channels[f"{prefix}{b}/conv2/Conv"]]
                    for b in range(blocks)
                ],
            }
        )
    return {"stem": out_channels["/conv1/Conv"], "stages": stages}


def _architecture_check(pruned: Path, ceiling: Path, feed: dict[str, np.ndarray], tmp: Path) -> tuple[int, int, float]:
    """Copies the pruned Conv/Gemm weights into the ceiling model by node name and runs both.

    Returns (layers copied, shape mismatches, max |output diff| relative to max |output|).
    """
    source = ir.load(str(pruned))
    target = ir.load(str(ceiling))
    weights = {n.name: n for n in source.graph if n.op_type in ("Conv", "Gemm")}
    copied = mismatched = 0
    for node in target.graph:
        twin = weights.get(node.name)
        if twin is None or node.op_type not in ("Conv", "Gemm"):
            continue
        for index in (1, 2):
            mine = node.inputs[index] if index < len(node.inputs) else None
            theirs = twin.inputs[index] if index < len(twin.inputs) else None
            if mine is None or theirs is None or mine.const_value is None or theirs.const_value is None:
                mismatched += int((mine is None) != (theirs is None))
                continue
            array = theirs.const_value.numpy()
            if tuple(mine.const_value.shape) != array.shape:
                mismatched += 1
                continue
            mine.const_value = ir.Tensor(array.copy(), name=mine.name)
        copied += 1
    copy = tmp / "ceiling_with_pruned_weights.onnx"
    ir.save(target, str(copy))
    a = _outputs(pruned, feed, 8)[0]
    b = _outputs(copy, feed, 8)[0]
    copy.unlink()
    return copied, mismatched, float(np.abs(a - b).max() / max(float(np.abs(a).max()), 1e-30))


def bench_resnet(args: argparse.Namespace) -> dict[str, Any]:
    """ResNet-50 pruned at each ratio against the dense model and the torch-built ceiling.

    Returns:
        ``dense_macs`` and a row per ratio: the pass stats, MACs against the ceiling's, latency at
        batch 1 and 8 against the dense model and the ceiling, top-1 agreement, cosine and the
        architecture check (pruned weights copied into the ceiling by node name).
    """
    folder = args.cache / "channels"
    folder.mkdir(parents=True, exist_ok=True)
    source = export.exported("resnet50", args)
    dense = folder / "resnet50_simplified.onnx"
    result = onnxshrink.shrink(source, ["simplify"], verify=False)
    result.save(dense)
    shapes = {"input": (1, 3, 224, 224)}
    dense_macs = _macs(result.model, shapes)
    rng = np.random.default_rng(0)
    images = {"input": rng.standard_normal((32, 3, 224, 224), dtype=np.float32)}
    reference = _outputs(dense, images, 8)[0]
    rows: list[dict[str, Any]] = []
    for ratio in RESNET_RATIOS:
        started = time.perf_counter()
        pruned_result = onnxshrink.shrink(source, ["simplify", f"prune-channels:ratio={ratio}"], verify=False)
        seconds = time.perf_counter() - started
        stats = _stats(pruned_result, "prune-channels")
        pruned = folder / f"resnet50_pruned_{ratio}.onnx"
        pruned_result.save(pruned)
        widths = _resnet_widths(pruned_result.model)
        raw_ceiling = export.exported("resnet-widths", args, widths=widths)
        ceiling = folder / f"resnet50_ceiling_{ratio}_simplified.onnx"
        ceiling_result = onnxshrink.shrink(raw_ceiling, ["simplify"], verify=False)
        ceiling_result.save(ceiling)
        copied, mismatched, rel_diff = _architecture_check(pruned, ceiling, images, folder)
        outputs = _outputs(pruned, images, 8)[0]
        row: dict[str, Any] = {
            "ratio": ratio,
            "seconds": seconds,
            "stats": stats,
            "widths": widths,
            "macs": _macs(pruned_result.model, shapes),
            "ceiling_macs": _macs(ceiling_result.model, shapes),
            "nodes": (len(list(pruned_result.model.graph)), len(list(ceiling_result.model.graph))),
            "copied": copied,
            "mismatched": mismatched,
            "rel_diff": rel_diff,
            "top1": top1_agreement(reference, outputs),
            "cosine": cosine(reference, outputs),
            "paths": {"dense": dense, "pruned": pruned, "ceiling": ceiling},
        }
        rows.append(row)
    for batch in BATCHES:
        feed = {"input": images["input"][:batch]}
        paths = {"dense": dense}
        for row in rows:
            paths[f"pruned {row['ratio']}"] = row["paths"]["pruned"]
            paths[f"ceiling {row['ratio']}"] = row["paths"]["ceiling"]
        times = _latency(paths, feed, args.rounds, args.runs, args.threads)
        for row in rows:
            label = f"{row['ratio']}"
            row[f"b{batch}"] = {
                "dense_ms": median_ms(times, "dense"),
                "pruned_ms": median_ms(times, f"pruned {label}"),
                "ceiling_ms": median_ms(times, f"ceiling {label}"),
                "speedup": speedup(times, "dense", f"pruned {label}"),
                "ceiling_speedup": speedup(times, "dense", f"ceiling {label}"),
                "vs_ceiling": speedup(times, f"ceiling {label}", f"pruned {label}"),
            }
    headers = (
        "ratio", "channels kept", "MACs vs dense", "ceiling MACs = pruned", "b1 dense ms", "b1 pruned ms",
        "b1 speedup", "b1 ceiling speedup", "b1 pruned/ceiling", "b8 dense ms", "b8 pruned ms", "b8 speedup",
        "b8 ceiling speedup", "b8 pruned/ceiling", "top-1 agree", "cosine", "prune s",
    )  # fmt: skip
    table = []
    for row in rows:
        before, after = _kept_share(row["stats"])
        b1, b8 = row["b1"], row["b8"]
        table.append(
            (
                row["ratio"], f"{after}/{before}", f"{row['macs'] / dense_macs:.3f}",
                "yes" if row["macs"] == row["ceiling_macs"] else "no", f"{b1['dense_ms']:.1f}",
                f"{b1['pruned_ms']:.1f}", f"{b1['speedup']:.2f}x", f"{b1['ceiling_speedup']:.2f}x",
                f"{b1['vs_ceiling']:.3f}", f"{b8['dense_ms']:.1f}", f"{b8['pruned_ms']:.1f}", f"{b8['speedup']:.2f}x",
                f"{b8['ceiling_speedup']:.2f}x", f"{b8['vs_ceiling']:.3f}", f"{row['top1']:.3f}",
                f"{row['cosine']:.4f}", f"{row['seconds']:.1f}",
            )
        )  # fmt: skip
    title = (
        "resnet50 (torchvision, random weights, BN re-drawn; "
        f"dense after simplify: {dense_macs / 1e9:.2f} GMACs at batch 1)"
    )
    print("\n" + harness.markdown_table(headers, table, title=title))
    print("\nArchitecture check (pruned Conv/Gemm weights copied into the torch-built ceiling by node name):")
    for row in rows:
        widths = row["widths"]
        stages = ", ".join(
            f"{stage['out']}:" + "/".join(f"{w1}-{w2}" for w1, w2 in stage["blocks"]) for stage in widths["stages"]
        )
        print(
            f"- ratio {row['ratio']}: {row['copied']} layers copied, {row['mismatched']} shape mismatches, "
            f"max|diff|/max|out| = {row['rel_diff']:.1e}; MACs {row['macs']:,} vs ceiling {row['ceiling_macs']:,}; "
            f"nodes {row['nodes'][0]} vs {row['nodes'][1]}; "
            f"widths stem {widths['stem']}, stages (residual: inner per block) {stages}"
        )
    _print_refused("resnet50", rows[-1]["stats"])
    return {"dense_macs": dense_macs, "rows": rows}


# ------------------------------------------------------------------------------------------------
# 2. the digits CNN


def bench_digits(args: argparse.Namespace) -> dict[str, Any]:
    """Digits accuracy with and without ``reconstruct`` over ratios, options and criteria.

    ``--quick`` keeps the ``l2`` criterion only.
    """
    model = harness.ROOT / "models" / "digits_cnn.onnx"
    calib = str(harness.ROOT / "models" / "digits_calib.npz")
    test = str(harness.ROOT / "models" / "digits_test.npz")
    dense = onnxshrink.shrink(model, ["simplify"], inputs=test)
    reference = dense.report["verification"]["accuracy_reference"]
    count = dense.report["verification"]["samples"]
    criteria = ("l2",) if args.quick else ("l1", "l2", "activation")
    rows = []
    last_stats: dict[str, Any] = {}
    for ratio in DIGITS_RATIOS:
        for extra in DIGITS_OPTIONS:
            for criterion in criteria:
                prune = f"prune-channels:ratio={ratio},criterion={criterion}" + (f",{extra}" if extra else "")
                cells = []
                for passes in (["simplify", prune], ["simplify", prune, "reconstruct"]):
                    result = onnxshrink.shrink(model, passes, calibration=calib, inputs=test)
                    verification = result.report["verification"]
                    cells.append((verification["accuracy_candidate"], verification["outputs"][0]["cosine"]))
                    last_stats = _stats(result, "prune-channels")
                before, after = _kept_share(last_stats)
                rows.append(
                    (
                        ratio, extra or "defaults (round-to=8, min-channels=8)", criterion, f"{after}/{before}",
                        f"{cells[0][0]:.4f}", f"{cells[1][0]:.4f}", f"{(reference - cells[1][0]) * 100:+.2f} pt",
                        f"{cells[0][1]:.4f}", f"{cells[1][1]:.4f}",
                    )
                )  # fmt: skip
    headers = (
        "ratio", "options", "criterion", "channels kept", "accuracy", "+ reconstruct",
        "drop vs dense (with reconstruct)", "cosine", "+ reconstruct",
    )  # fmt: skip
    title = f"digits CNN (dense accuracy {reference:.4f} on {count} test digits, 128 calibration digits)"
    print("\n" + harness.markdown_table(headers, rows, title=title))
    _print_refused("digits", last_stats)
    return {"reference_accuracy": reference, "rows": rows}


# ------------------------------------------------------------------------------------------------
# 3. PP-OCR's text-direction classifier


def bench_ocr(args: argparse.Namespace) -> dict[str, Any]:
    """The PP-OCR direction classifier pruned at each ratio, with and without ``reconstruct``.

    Returns:
        ``dense_macs``, a row per setting (accuracy, top-1 agreement and cosine against the dense
        model, MACs, channels kept) and ``latency``: dense and pruned models by batch size.
    """
    count = 32 if args.quick else 128
    model, calib, test = samples.ocr_cls(count)
    folder = args.cache / "channels"
    folder.mkdir(parents=True, exist_ok=True)
    dense_result = onnxshrink.shrink(model, ["simplify"], inputs=test)
    dense = folder / "ocr_cls_simplified.onnx"
    dense_result.save(dense)
    reference = dense_result.report["verification"]["accuracy_reference"]
    shapes = {"x": (1, 3, 48, 192)}
    dense_macs = _macs(dense_result.model, shapes)
    rows = []
    last_stats: dict[str, Any] = {}
    for ratio in OCR_RATIOS:
        for reconstruct in (False, True):
            passes = ["simplify", f"prune-channels:ratio={ratio}", *(["reconstruct"] if reconstruct else [])]
            result = onnxshrink.shrink(model, passes, calibration=calib, inputs=test)
            last_stats = _stats(result, "prune-channels")
            path = folder / f"ocr_cls_{ratio}{'_rec' if reconstruct else ''}.onnx"
            result.save(path)
            verification = result.report["verification"]
            rows.append(
                {
                    "label": f"{ratio}{' + reconstruct' if reconstruct else ''}",
                    "path": path,
                    "accuracy": verification["accuracy_candidate"],
                    "agreement": verification["outputs"][0]["top1_agreement"],
                    "cosine": verification["outputs"][0]["cosine"],
                    "macs": _macs(result.model, shapes),
                    "kept": _kept_share(last_stats),
                }
            )
    latency: dict[int, dict[str, list[float]]] = {}
    for batch in BATCHES:
        paths = {"dense": dense, **{r["label"]: r["path"] for r in rows if "reconstruct" not in r["label"]}}
        latency[batch] = _latency(paths, {"x": test["x"][:batch]}, args.rounds, args.runs * 4, args.threads)
    table = []
    for row in rows:
        label = row["label"].split(" ")[0]
        speeds = [fmt(speedup(latency[b], "dense", label), ".2f") + "x" for b in BATCHES]
        before, after = row["kept"]
        table.append(
            (
                row["label"], f"{after}/{before}", f"{row['macs'] / dense_macs:.3f}", f"{row['accuracy']:.4f}",
                f"{row['agreement']:.4f}", f"{row['cosine']:.4f}", *speeds,
            )
        )  # fmt: skip
    headers = (
        "setting",
        "channels kept",
        "MACs vs dense",
        "accuracy",
        "top-1 agreement",
        "cosine",
        "b1 speedup",
        "b8 speedup",
    )
    title = (
        f"ocr-cls (rapidocr PP-OCR direction classifier; {count} calibration lines, 400 test lines; "
        f"dense accuracy {reference:.4f}, {dense_macs / 1e6:.1f} MMACs)"
    )
    print("\n" + harness.markdown_table(headers, table, title=title))
    print(
        "\ndense latency: "
        + ", ".join(f"batch {b} {median_ms(latency[b], 'dense'):.2f} ms" for b in BATCHES)
        + " (reconstruct changes weights only: same latency as its pruned row)"
    )
    _print_refused("ocr-cls", last_stats)
    return {"dense_macs": dense_macs, "rows": rows, "latency": latency}


# ------------------------------------------------------------------------------------------------
# 4. BERT-base


def bench_bert(args: argparse.Namespace) -> dict[str, Any]:
    """BERT-base (keep-zeros export) pruned at each ratio: groups pruned and left alone, latency, cosine.

    ``--bert-reconstruct`` adds the last ratio with the FFN down-projections refitted.
    """
    folder = args.cache / "channels"
    folder.mkdir(parents=True, exist_ok=True)
    source = export.exported("bert-base", args, keep_zeros=True)
    dense = folder / "bert-base_simplified.onnx"
    dense_result = onnxshrink.shrink(source, ["simplify"], verify=False)
    dense_result.save(dense)
    dense_macs = _bert_macs(dense_result.model, BERT_SEQ)
    feed = samples.bert_tokens(8, BERT_SEQ, vocab=BERT_VOCAB, seed=0)
    reference = _outputs(dense, feed, 8)
    settings: list[tuple[str, list[str]]] = [(f"{r}", [f"prune-channels:ratio={r}"]) for r in BERT_RATIOS]
    if args.bert_reconstruct:
        last = BERT_RATIOS[-1]
        # Only the FFN down-projections read removed channels; refitting every layer would stream the
        # calibration data through both models once per depth stage (73 on BERT-base: too slow here).
        ffn_out = "/inner/encoder/layer.?/output/dense/MatMul,/inner/encoder/layer.??/output/dense/MatMul"
        refit = f"reconstruct:include={ffn_out}"
        settings.append((f"{last} + reconstruct", [f"prune-channels:ratio={last}", refit]))
    calibration = samples.bert_tokens(args.bert_calib, BERT_SEQ, vocab=BERT_VOCAB, seed=1)
    rows = []
    last_stats: dict[str, Any] = {}
    for label, passes in settings:
        started = time.perf_counter()
        result = onnxshrink.shrink(source, ["simplify", *passes], calibration=calibration, verify=False)
        seconds = time.perf_counter() - started
        last_stats = _stats(result, "prune-channels")
        path = folder / f"bert-base_{label.replace(' + ', '_')}.onnx"
        result.save(path)
        outputs = _outputs(path, feed, 8)
        kinds = Counter(
            "FFN" if "intermediate" in name else "attention" if "attention" in name else "other"
            for name in last_stats.get("channels", {})
        )
        rows.append(
            {
                "label": label,
                "path": path,
                "seconds": seconds,
                "macs": _bert_macs(result.model, BERT_SEQ),
                "kept": _kept_share(last_stats),
                "kinds": dict(kinds),
                "widths": _bert_widths(result.model),
                "cosine": [cosine(r, o) for r, o in zip(reference, outputs, strict=True)],
            }
        )
    latency = {}
    for batch in BATCHES:
        paths = {"dense": dense, **{r["label"]: r["path"] for r in rows if "reconstruct" not in r["label"]}}
        rounds = args.rounds if batch == 1 else 3  # a multiple of the models: each takes each position
        batch_feed = {k: v[:batch] for k, v in feed.items()}
        latency[batch] = _latency(paths, batch_feed, rounds, max(2, args.runs // 2), args.threads)
    table = []
    for row in rows:
        label = row["label"].split(" ")[0]
        before, after = row["kept"]
        table.append(
            (
                row["label"], ", ".join(f"{n} {k}" for k, n in row["kinds"].items()) or "none", row["widths"],
                f"{after}/{before}", f"{row['macs'] / dense_macs:.3f}", f"{median_ms(latency[1], label):.1f}",
                f"{speedup(latency[1], 'dense', label):.2f}x", f"{median_ms(latency[8], label):.1f}",
                f"{speedup(latency[8], 'dense', label):.2f}x", f"{row['cosine'][0]:.4f}", f"{row['cosine'][1]:.4f}",
                f"{row['seconds']:.1f}",
            )
        )  # fmt: skip
    headers = (
        "ratio", "groups pruned", "layer 0 widths", "channels kept", "MACs vs dense", "b1 ms", "b1 speedup", "b8 ms",
        "b8 speedup", "cosine last_hidden_state", "cosine pooler_output", "shrink s",
    )  # fmt: skip
    title = f"bert-base (random weights, seq {BERT_SEQ}; dense after simplify {dense_macs / 1e9:.2f} GMACs at batch 1)"
    print("\n" + harness.markdown_table(headers, table, title=title))
    dense_b1, dense_b8 = median_ms(latency[1], "dense"), median_ms(latency[8], "dense")
    print(f"\ndense latency: batch 1 {dense_b1:.1f} ms, batch 8 {dense_b8:.1f} ms")
    _print_refused("bert-base", last_stats)
    return {"dense_macs": dense_macs, "rows": rows, "latency": latency}


SECTIONS = {"resnet50": bench_resnet, "digits": bench_digits, "ocr-cls": bench_ocr, "bert-base": bench_bert}


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the chosen sections and prints their tables; ``--json`` writes the raw numbers."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    export.add_arguments(parser)
    parser.add_argument("--sections", default=",".join(SECTIONS))
    parser.add_argument("--quick", action="store_true", help="fewer rounds/runs, l2 only on digits, 32 OCR calib lines")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved latency rounds (default 5; quick 3)")
    parser.add_argument("--runs", type=int, default=None, help="runs per model per round (default 5; quick 3)")
    parser.add_argument(
        "--threads", type=int, default=1, help="onnxruntime intra-op threads for latency (0: its default)"
    )
    parser.add_argument("--bert-reconstruct", action="store_true", help="also refit BERT's FFN down-projections (slow)")
    parser.add_argument("--bert-calib", type=int, default=16, help="calibration sequences for BERT reconstruct")
    parser.add_argument("--json", metavar="OUT", help="write the raw numbers to this JSON file")
    args = parser.parse_args(argv)
    args.rounds = args.rounds or (3 if args.quick else 5)
    args.runs = args.runs or (3 if args.quick else 5)
    args.threads = args.threads or None
    sections = args.sections.split(",")
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown sections {unknown}; valid: {', '.join(SECTIONS)}")
    settings = f"latency: {args.rounds} rounds x {args.runs} runs, {args.threads or 'default'} intra-op threads"
    environment = harness.print_environment(("Pillow",), settings)
    results = {}
    for name in sections:
        started = time.perf_counter()
        results[name] = SECTIONS[name](args)
        print(f"\n({name}: {time.perf_counter() - started:.0f} s)")
    if args.json:
        harness.write_json(args.json, {**environment, "sections": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
