"""onnxshrink ``quantize`` against ``onnxruntime.quantization.quantize_static`` (issue 6's comparison).

Models:

- ``digits``: the bundled CNN (models/), calibration ``models/digits_calib.npz`` (128 samples),
  accuracy on ``models/digits_test.npz`` (540 labelled samples);
- ``resnet18``, ``resnet50``: torchvision with random weights and BatchNorm statistics re-drawn
  (``export.py``, cached); calibration: 100 seeded N(0, 1) images (cached in
  ``<cache>/quantize``); evaluation: 64 other seeded images (top-1 agreement and cosine against
  fp32);
- ``bert-base``: transformers ``BertModel(BertConfig())``, random weights, dynamic batch and
  sequence; calibration and evaluation 32 sequences each of 128 tokens (ids in [0, 1000), full
  mask); cosine of both outputs; calibrators minmax and percentile, ORT best-rr (its default
  gives cosine 0.738, issue 6).
  Also dynamic (onnxshrink ``mode=dynamic``, ORT ``quantize_dynamic``), static with the
  attention MatMuls quantized too (``activation-matmuls=true``), and 4-bit weights at block 32
  (``INT4_ROWS``): onnxshrink ``weights=s4`` with GPTQ rounding (the default with calibration
  data) and ``rounding=nearest``, with the embedding tables and MatMul/Gemm only, against
  onnxruntime's ``MatMulNBitsQuantizer`` (default symmetric, RTN, HQQ, GPTQ on the same sequences).
- ``ocr-cls`` (rapidocr's PP-OCR text-direction classifier) and ``magika`` (Google's file-type
  model), from tests/helpers/real_models.py (``$ONNXSHRINK_TEST_CACHE``) with the inputs of
  ``samples.py`` (as in ``prune.py``): 128 calibration samples; evaluation on 400 rendered text lines
  (accuracy on the rotation label) and 384 real files (top-1 agreement with fp32).
- ``ocr-rec`` (rapidocr's PP-OCRv4 recognizer, ``samples.ocr_rec``): 128 calibration lines, 100
  upright test lines 48x320 of random readable words; each output decoded greedily (CTC) with the
  model's own dictionary (its ``character`` metadata): exact lines and character similarity
  against the rendered text (spaces ignored), top-1 agreement per time step with fp32. Quantizers:
  onnxshrink default, all-int8 and all-int8-percentile, ORT default and best-rr, NNCF, AIMET (``ONLY_TOOLS``).

Every model is first run through ``simplify`` (BatchNorm folded); that fp32 model is the
reference and the input of every quantizer. Quantizers, each in a fresh process
(``harness.run_child``: wall time and peak RSS):

- ``onnxshrink``: ``quantize`` with its defaults (ort-cpu, u8 activations, s8 per-channel
  weights, reduce-range auto) and each calibrator;
- ``ort-default``: ``quantize_static`` defaults (QDQ, s8 activations, s8 per-tensor weights, MinMax);
- ``ort-best``: u8 activations / s8 per-channel weights; ``ort-best-rr``: the same plus
  ``reduce_range=True`` (its advice for x86 without VNNI);
- ``ort-dynamic`` (bert-base): ``quantize_dynamic`` defaults.
- ``aimet`` (not bert-base): AIMET-onnx (benchmark venv) with its default quantsim config
  (asymmetric 8-bit activations exported as u8, s8 weights): cross-layer equalization, min-max
  encodings over the same samples one by one, exported as QDQ (``to_onnx_qdq``, int32 biases);
  ``aimet-adaround`` (digits only) adds AdaRound, ``AIMET_ADAROUND_ITERATIONS`` steps per layer.

ORT's calibrators read the same samples through a ``CalibrationDataReader`` in batches of 10.
Latency (``harness.session_latency``): ORT CPU, default threads, batch 1 and 32, the fp32 model
and every quantized model run interleaved (rotating round-robin), median; the ratio to fp32 is
the median of same-round ratios. Kernels: ORT's optimized model (extended level), op counts.

Side by side (issue 14): ``onnxshrink-default`` (no option: CPU-dependent kernel choices, slow
layers float, ``bias-correction=fast``), ``onnxshrink-bc-off`` / ``-bc-measured``,
``onnxshrink-all-int8`` (``keep-slow-float=false``), ``-all-int8-bc-off`` and ``-all-int8-percentile``
(with ``calibrate=percentile``), ``onnxshrink-gptq``
(``rounding=gptq``: GPTQ rounding of the int8 weights; its ``rounding_seconds`` in the JSON) and
``onnxshrink-all-int8-gptq``,
``ort-default`` and ``nncf`` (``nncf.quantize`` on the ONNX model, defaults: its fast bias
correction included; NNCF lives in the benchmark environment only), all fed the same
calibration samples one by one (NNCF) or in batches of 10 (onnxruntime). The float-exact methods
(``METHOD_ROWS``): BERT-base with ``smooth=off`` and ``smooth=0.5`` beside the default
``smooth=auto``, and ``nncf-transformer`` (``model_type=TRANSFORMER``: NNCF's SmoothQuant); the
CNNs with ``equalize=true`` (also with every layer int8) and ``smooth=off``.

Run: ``python benchmarks/quantize.py [--models digits,resnet18,resnet50,bert-base,ocr-cls,magika,ocr-rec]
[--batches 1,8] [--json OUT]``. resnet50 and the real models run a subset of the quantizers (``TOOLS``;
``--tools`` picks past it).
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import export
import harness
import numpy as np
import samples
from numerics import cosine, top1_agreement

CALIBRATORS = ("minmax", "percentile", "entropy", "mse", "auto")
# The side-by-side rows (issue 14): onnxshrink's default and methods, onnxruntime's default, NNCF.
SIDE_BY_SIDE = {
    "onnxshrink-default": "",  # slow layers float, bias-correction=fast
    "onnxshrink-bc-off": "bias-correction=off",
    "onnxshrink-bc-measured": "bias-correction=measured",
    "onnxshrink-all-int8": "keep-slow-float=false",
    "onnxshrink-all-int8-bc-off": "keep-slow-float=false,bias-correction=off",
    "onnxshrink-cpu-avx2": "cpu=avx2",  # the AVX2 decision path (7-bit weights) on any machine
    "onnxshrink-gptq": "rounding=gptq",  # GPTQ rounding of the int8 weights (opt-in)
    "onnxshrink-all-int8-gptq": "keep-slow-float=false,rounding=gptq",
    # every layer int8 and percentile ranges: PP-OCR rec's elementwise chains all int8 (rule 7b)
    "onnxshrink-all-int8-percentile": "keep-slow-float=false,calibrate=percentile",
}
# The float-exact rewrites before rounding (issue 14 item 2), per kind of model: SmoothQuant-style
# migration (the default smooth=auto against off and a fixed strength) for the transformer,
# cross-layer equalization (off by default) for the CNNs.
METHOD_ROWS = {
    "transformer": {"onnxshrink-smooth-off": "smooth=off", "onnxshrink-smooth-0.5": "smooth=0.5"},
    "cnn": {
        "onnxshrink-equalize": "equalize=true",
        "onnxshrink-all-int8-equalize": "keep-slow-float=false,equalize=true",
        "onnxshrink-smooth-off": "smooth=off",
    },
}
# NNCF variants: its defaults, and for BERT model_type=TRANSFORMER (its SmoothQuant, alpha 0.95 on MatMuls).
NNCF_ROWS = {"nncf": "", "nncf-transformer": "transformer"}
# AIMET-onnx (CLE + AdaRound), benchmark venv only: steps per layer (see _aimet_quantize).
AIMET_ADAROUND_ITERATIONS = 200
AIMET_ROWS = {"aimet": "", "aimet-adaround": "adaround"}  # CLE; CLE + AdaRound (digits only: its cost)
ORT_CONFIGS = ("ort-default", "ort-best", "ort-best-rr")
# 4-bit weights (issue 14 item 5), BERT-base: onnxshrink's s4 (embedding tables included, and MatMul/Gemm
# only as onnxruntime quantizes) against onnxruntime's MatMulNBitsQuantizer algorithms, block 32.
INT4_BLOCK = 32
_S4 = f"mode=weight-only,weights=s4,block-size={INT4_BLOCK}"
INT4_ROWS = {
    "onnxshrink-s4": ("onnxshrink", _S4),  # rounding=auto: gptq, as calibration data is given
    "onnxshrink-s4-nearest": ("onnxshrink", f"{_S4},rounding=nearest"),
    "onnxshrink-s4-matmul": ("onnxshrink", f"{_S4},include=MatMul,Gemm"),
    "onnxshrink-s4-matmul-nearest": ("onnxshrink", f"{_S4},include=MatMul,Gemm,rounding=nearest"),
    "ort-4bit-default": ("ort-4bit", "default"),
    "ort-4bit-rtn": ("ort-4bit", "rtn"),
    "ort-4bit-hqq": ("ort-4bit", "hqq"),
    "ort-4bit-gptq": ("ort-4bit", "gptq"),
}
INT4_TIMEOUT = 2400.0
BERT_SEQ, BERT_CALIB = 128, 32  # 2-core machine: ~1 s per fp32 sequence
# Third-party models (tests/helpers/real_models.py) with the inputs of benchmarks/prune.py.
REAL_MODELS = {"ocr-cls": samples.ocr_cls, "magika": samples.magika, "ocr-rec": samples.ocr_rec}
REAL_CALIB = 128  # the 128 calibration lines NNCF's figure in issue 14 was measured with
# Quantizers per model where running all of them costs too much on 2 cores (default: all).
_CLASSIFIER_TOOLS = (
    "onnxshrink-minmax",
    "onnxshrink-percentile",
    "onnxshrink-auto",
    "ort-default",
    "ort-best",
    "ort-best-rr",
)
TOOLS = {
    "resnet50": ("onnxshrink-minmax", "onnxshrink-percentile", "ort-best", "ort-best-rr"),
    "ocr-cls": _CLASSIFIER_TOOLS,
    "magika": _CLASSIFIER_TOOLS,
}
# Models that run exactly these quantizers (the recognizer takes about 0.1 s a line on 2 cores).
ONLY_TOOLS = {
    "ocr-rec": (
        "onnxshrink-default", "onnxshrink-all-int8", "onnxshrink-all-int8-percentile", "onnxshrink-gptq",
        "ort-default", "ort-best-rr", "nncf", "aimet",
    )
}  # fmt: skip
# Latency rounds relative to --rounds-b1/--rounds-b32, for a stable median in bounded time.
ROUNDS = {"digits": 10.0, "ocr-cls": 5.0, "magika": 2.0, "resnet50": 0.5, "bert-base": 0.5, "ocr-rec": 0.5}
INT_KERNELS = (
    "QLinearConv", "QLinearAdd", "QLinearMatMul", "MatMulIntegerToFloat", "QGemm", "QLinearConcat",
    "DynamicQuantizeMatMul", "MatMulNBits", "QLinearGlobalAveragePool", "GatherBlockQuantized",
)  # fmt: skip
FLOAT_KERNELS = ("Conv", "FusedConv", "Add", "MatMul", "Gemm", "FusedGemm", "Concat")


# ------------------------------------------------------------------------------------------------
# children


def _child_quantize(tool: str, fp32: str, out: str, calib: str, option: str) -> None:
    started = time.perf_counter()
    if tool == "onnxshrink":
        import onnxshrink

        result = onnxshrink.shrink(fp32, [f"quantize:{option}"], calibration=calib, verify=False)
        result.save(out)
        record = result.report["passes"][0]
        stats = record["stats"]
        keys = ("quantized_nodes", "nonfinite", "samples")
        info = {k: stats[k] for k in keys if k in stats}
        # What stays float is the pass's ``skipped`` now (older reports: ``left_float``).
        info["left_float"] = stats.get("left_float", stats.get("skipped", {}))
        info["calibration_seconds"] = harness.pass_timing(record, "calibration", "calibration_seconds")
        info["rounding_seconds"] = (record.get("timings") or {}).get("rounding")  # stats["rounding"]: the record
    elif tool == "nncf":
        import nncf
        import onnx

        data = np.load(calib)
        arrays = {key: data[key] for key in data.files}
        count = len(next(iter(arrays.values())))
        items = [{key: value[i : i + 1] for key, value in arrays.items()} for i in range(count)]
        kwargs = {"model_type": nncf.ModelType.TRANSFORMER} if option == "transformer" else {}
        quantized = nncf.quantize(onnx.load(fp32), nncf.Dataset(items), subset_size=count, **kwargs)
        onnx.save(quantized, out)
        info = {"nncf": nncf.__version__, "nncf_options": option or "defaults"}
    elif tool == "ort-4bit":
        info = _ort_4bit(fp32, out, calib, option)
    elif tool == "aimet":
        info = _aimet_quantize(fp32, out, calib, adaround=option == "adaround")
    elif tool == "ort-dynamic":
        from onnxruntime.quantization import quantize_dynamic

        quantize_dynamic(fp32, out)
        info = {}
    else:
        from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

        data = np.load(calib)
        arrays = {key: data[key] for key in data.files}
        kwargs: dict[str, Any] = {"quant_format": QuantFormat.QDQ}
        if tool in ("ort-best", "ort-best-rr"):
            kwargs.update(activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True)
        if tool == "ort-best-rr":
            kwargs["reduce_range"] = True
        quantize_static(fp32, out, harness.ort_calibration_reader(arrays), **kwargs)
        info = {}
    info["in_process_s"] = time.perf_counter() - started
    harness.emit_result(info)


def _ort_4bit(fp32: str, out: str, calib: str, algorithm: str) -> dict[str, Any]:
    """Runs onnxruntime's ``MatMulNBitsQuantizer`` (MatMuls only, its default scope) at ``INT4_BLOCK``.

    ``default``, ``rtn`` and ``gptq`` write symmetric 4-bit blocks (``is_symmetric=True``); ``hqq``
    offers only asymmetric ones (float zero points). GPTQ reads the calibration samples in
    batches of 10 (its own column block of 128 and damping 0.01 are its defaults).
    """
    import onnx
    from onnxruntime.quantization import matmul_nbits_quantizer as nbits

    configs: dict[str, Any] = {
        "default": lambda: nbits.DefaultWeightOnlyQuantConfig(block_size=INT4_BLOCK, is_symmetric=True),
        "rtn": nbits.RTNWeightOnlyQuantConfig,
        "hqq": lambda: nbits.HQQWeightOnlyQuantConfig(block_size=INT4_BLOCK),
        "gptq": lambda: nbits.GPTQWeightOnlyQuantConfig(
            calibration_data_reader=harness.ort_calibration_reader(dict(np.load(calib)))
        ),
    }
    quantizer = nbits.MatMulNBitsQuantizer(
        onnx.load(fp32), block_size=INT4_BLOCK, is_symmetric=algorithm != "hqq", algo_config=configs[algorithm]()
    )
    quantizer.process()
    quantizer.model.save_model_to_file(out, use_external_data_format=False)
    return {"ort_algorithm": algorithm, "symmetric": algorithm != "hqq"}


def _aimet_quantize(fp32: str, out: str, calib: str, adaround: bool) -> dict[str, Any]:
    """AIMET-onnx with its default quantsim config: cross-layer equalization, AdaRound if asked, min-max encodings.

    AdaRound takes ``AIMET_ADAROUND_ITERATIONS`` steps per layer (AIMET recommends 10,000 for
    8-bit weights; 1,000 on digits' 10 layers took over 10 minutes on the loaded 2-core machine);
    the model is exported as QDQ with int8 weights and int32 biases.
    """
    import aimet_onnx
    import onnx
    from aimet_onnx.adaround.adaround_weight import Adaround
    from aimet_onnx.cross_layer_equalization import equalize_model
    from aimet_onnx.quantsim import QuantizationSimModel

    data = np.load(calib)
    count = len(data[data.files[0]])
    items = [{key: data[key][i : i + 1] for key in data.files} for i in range(count)]
    model = onnx.load(fp32)
    equalize_model(model)
    sim = QuantizationSimModel(model, param_type="int8", activation_type="int8")  # exported as u8
    if adaround:
        Adaround.apply_adaround(sim, items, num_iterations=AIMET_ADAROUND_ITERATIONS)
    sim.compute_encodings(items)
    onnx.save(sim.to_onnx_qdq(export_int32_bias=True, prequantize_constants=True), out)
    return {"aimet": aimet_onnx.__version__, "adaround_iterations": AIMET_ADAROUND_ITERATIONS if adaround else 0}


def _run_child(args: list[str], timeout: float = 600.0) -> dict[str, Any]:
    run = harness.run_child([sys.executable, __file__, "--child", *args], timeout=timeout)
    if not run.ok:
        return {"ok": False, "error": run.failure}
    return {"ok": True, "wall_s": run.wall_s, "rss_mb": run.peak_rss_mb, **(run.result or {})}


# ------------------------------------------------------------------------------------------------
# models and data


def _prepare(model: str, args: argparse.Namespace, work: Path) -> tuple[Path, Path, dict[str, np.ndarray], Any]:
    """(fp32 simplified model, calibration npz, evaluation feed, labels or None)."""
    if model == "digits":
        source, _, test = samples.digits()
        feed, labels = {"input": test["input"]}, test["labels"]
        return _simplified(source, model, work), harness.ROOT / "models" / "digits_calib.npz", feed, labels
    if model in REAL_MODELS:
        source, calib_feed, test = REAL_MODELS[model](REAL_CALIB)
        calib = work / f"{model}_calib.npz"
        np.savez(calib, **calib_feed)
        labels = test.pop("labels", None)
        return _simplified(source, model, work), calib, test, labels
    source = export.exported(model, args)
    cache = args.cache / "quantize"
    cache.mkdir(parents=True, exist_ok=True)
    calib = cache / f"{model}_calib.npz"
    if model == "bert-base":
        if not calib.exists():
            np.savez(calib, **samples.bert_tokens(BERT_CALIB, BERT_SEQ, vocab=1000, seed=0))  # type: ignore[arg-type]
        feed = samples.bert_tokens(32, BERT_SEQ, vocab=1000, seed=1)
    else:
        if not calib.exists():
            np.savez(calib, input=np.random.default_rng(0).standard_normal((100, 3, 224, 224)).astype(np.float32))
        feed = {"input": np.random.default_rng(1).standard_normal((64, 3, 224, 224)).astype(np.float32)}
    return _simplified(source, model, work), calib, feed, None


def _simplified(source: Path, model: str, work: Path) -> Path:
    import onnxshrink

    fp32 = work / f"{model}_fp32.onnx"
    onnxshrink.shrink(str(source), ["simplify"], verify=False).save(str(fp32))
    return fp32


def _session(path: Path) -> Any:
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _kernels(path: Path, work: Path) -> dict[str, int]:
    import onnx
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(work / "optimized.onnx")
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    counts = collections.Counter(n.op_type for n in onnx.load(str(work / "optimized.onnx")).graph.node)
    return {op: counts[op] for op in (*INT_KERNELS, *FLOAT_KERNELS) if counts[op]}


def _quality(reference: list[np.ndarray], candidate: list[np.ndarray], labels: Any) -> dict[str, float]:
    """Cosine (worst output, each flattened), and top-1 agreement / accuracy on a classifier output."""
    out: dict[str, float] = {"cosine": min(cosine(r, c) for r, c in zip(reference, candidate, strict=True))}
    first, cand = reference[0], candidate[0]
    if first.ndim == 2:
        out["top1_agreement"] = top1_agreement(first, cand)
    if labels is not None:
        out["accuracy"] = float(np.mean(cand.argmax(-1) == labels))
    return out


Scorer = Callable[[list[np.ndarray], list[np.ndarray]], dict[str, float]]


def _scorer(model: str, fp32: Path, labels: Any) -> Scorer:
    """How a model's outputs are scored: :func:`_quality`, or for ``ocr-rec`` :func:`_text_quality`."""
    if model == "ocr-rec":
        classes = samples.ocr_dictionary(fp32)
        return lambda reference, candidate: _text_quality(reference, candidate, labels, classes)
    return lambda reference, candidate: _quality(reference, candidate, labels)


def _text_quality(
    reference: list[np.ndarray], candidate: list[np.ndarray], texts: np.ndarray, classes: list[str]
) -> dict[str, float]:
    """The recognizer's scores: cosine, top-1 agreement per time step, exact lines and character similarity.

    Lines are decoded greedily with the model's own dictionary; spaces are ignored (the gap
    between two rendered random words is not always a space to the reader). Character
    similarity is ``1 - edit distance / longer length``, averaged over lines.
    """
    out = {"cosine": cosine(reference[0], candidate[0]), "top1_agreement": top1_agreement(reference[0], candidate[0])}
    read = [line.replace(" ", "") for line in samples.ctc_decode(candidate[0], classes)]
    truth = [str(text).replace(" ", "") for text in texts]
    out["accuracy"] = float(np.mean([a == b for a, b in zip(read, truth, strict=True)]))
    out["char_similarity"] = float(np.mean([_similarity(a, b) for a, b in zip(read, truth, strict=True)]))
    return out


def _similarity(a: str, b: str) -> float:
    """``1 - Levenshtein distance / max(len)`` (1.0 for two empty strings)."""
    previous = list(range(len(b) + 1))
    for i, char in enumerate(a, 1):
        current = [i]
        for j, other in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (char != other)))
        previous = current
    return 1.0 - previous[-1] / max(len(a), len(b), 1)


def _latency(paths: dict[str, Path], feed: dict[str, np.ndarray], batch: int, rounds: int) -> dict[str, list[float]]:
    """Milliseconds per run of each model at ``batch`` (the feed repeated when it has fewer samples)."""
    sample = {
        k: v[:batch] if len(v) >= batch else np.concatenate([v] * (batch // len(v) + 1))[:batch]
        for k, v in feed.items()
    }
    return harness.session_latency(paths, sample, rounds=rounds)


def bench_model(model: str, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Quantizes one simplified model with every quantizer that applies and measures each.

    Args:
        model: A model id (``digits``, ``resnet18``, ``bert-base``, ...).
        args: The command line (calibrators, tools, latency rounds, cache).
        work: Folder for the simplified model and the quantized outputs.

    Returns:
        A row per quantizer (``fp32`` first): quality, latency, time, peak RSS, size and kernels;
        a quantizer that failed has ``ok`` False and its ``error``.
    """
    fp32, calib, feed, labels = _prepare(model, args, work)
    reference = _session(fp32).run(None, feed)
    score = _scorer(model, fp32, labels)
    rows: dict[str, dict[str, Any]] = {"fp32": {"size_mb": fp32.stat().st_size / 1e6, "kernels": _kernels(fp32, work)}}
    rows["fp32"].update(score(reference, reference))
    methods = METHOD_ROWS["transformer" if model == "bert-base" else "cnn"]
    tools = [(label, "onnxshrink", option) for label, option in {**SIDE_BY_SIDE, **methods}.items()]
    tools += [(f"onnxshrink-{c}", "onnxshrink", f"calibrate={c}") for c in args.calibrators]
    tools += [(name, name, "") for name in ORT_CONFIGS]
    tools += [(label, "nncf", option) for label, option in NNCF_ROWS.items() if option != "transformer"]
    tools += [(label, "aimet", option) for label, option in AIMET_ROWS.items() if model == "digits" or not option]
    if model in TOOLS and not args.tools:
        anchors = ("nncf", "aimet")
        tools = [t for t in tools if t[0] in TOOLS[model] or t[0] in SIDE_BY_SIDE or t[0] in methods or t[0] in anchors]
    if model == "bert-base":
        keep = ("onnxshrink-default", "onnxshrink-percentile", "ort-best-rr", "nncf", *methods)  # no AIMET: hours
        tools = [t for t in tools if t[0] in keep]
        tools += [("nncf-transformer", "nncf", "transformer")]
        tools += [
            ("onnxshrink-dynamic", "onnxshrink", "mode=dynamic"),
            ("onnxshrink-minmax-attention", "onnxshrink", "calibrate=minmax,activation-matmuls=true"),
            ("ort-dynamic", "ort-dynamic", ""),
        ]
        tools += [(label, tool, option) for label, (tool, option) in INT4_ROWS.items()]
    if model in ONLY_TOOLS and not args.tools:
        tools = [t for t in tools if t[0] in ONLY_TOOLS[model]]
    if args.tools:
        tools = [t for t in tools if t[0] in args.tools.split(",")]
    paths = {"fp32": fp32}
    for label, tool, option in tools:
        out = work / f"{model}_{label}.onnx"
        # onnxruntime's GPTQ runs the model once per MatMul input (48 on BERT-base), HQQ runs torch;
        # int8 GPTQ factors a [K, K] matrix per layer (resnet: K up to 4608).
        timeout = INT4_TIMEOUT if tool == "ort-4bit" or "rounding=gptq" in option else 600.0
        run = _run_child(["quantize", tool, str(fp32), str(out), str(calib), option], timeout)
        rows[label] = run
        if not run["ok"]:
            print(f"  {label}: FAILED {run['error']}", flush=True)
            continue
        try:
            run["kernels"] = _kernels(out, work)
        except Exception as error:  # onnxruntime's quantizer can write a model ORT refuses
            rows[label] = {"ok": False, "error": "ORT refuses the output: " + str(error).splitlines()[0][-160:]}
            print(f"  {label}: FAILED {rows[label]['error']}", flush=True)
            continue
        paths[label] = out
        run["size_mb"] = out.stat().st_size / 1e6
        run.update(score(reference, _session(out).run(None, feed)))
        print(f"  {label}: {json.dumps({k: v for k, v in run.items() if k != 'left_float'})}", flush=True)
    scale = ROUNDS.get(model, 1.0)
    small, large = args.batches
    for batch, rounds in ((small, int(args.rounds_b1 * scale)), (large, max(3, int(args.rounds_b32 * scale)))):
        times = _latency(paths, feed, batch, rounds)
        for label in paths:
            rows[label][f"ms_b{batch}"] = harness.median_ms(times, label)
            rows[label][f"speedup_b{batch}"] = harness.speedup(times, "fp32", label)
    for row in rows.values():
        row["batches"] = [small, large]
    return rows


def print_table(model: str, rows: dict[str, dict[str, Any]]) -> None:
    """Prints one model's table: a row per quantizer, failures with their reason."""
    small, large = rows["fp32"].get("batches", [1, 32])
    headers = (
        "quantizer", "cosine", "top-1 agr.", "accuracy", f"ms b{small} (x fp32)", f"ms b{large} (x fp32)", "quant s",
        "peak RSS MB", "MB", "int kernels / float",
    )  # fmt: skip
    table: list[tuple[Any, ...]] = []
    for label, row in rows.items():
        if not row.get("ok", True):
            table.append((label, f"failed: {row['error']}", *[""] * 8))
            continue
        ints = sum(v for k, v in row["kernels"].items() if k in INT_KERNELS)
        floats = sum(v for k, v in row["kernels"].items() if k in FLOAT_KERNELS)
        table.append(
            (
                label, f"{row['cosine']:.5f}", harness.fmt(row.get("top1_agreement")),
                harness.fmt(row.get("accuracy"), ".4f"),
                f"{row[f'ms_b{small}']:.1f} ({row[f'speedup_b{small}']:.2f}x)",
                f"{row[f'ms_b{large}']:.0f} ({row[f'speedup_b{large}']:.2f}x)", f"{row.get('wall_s', 0):.1f}",
                f"{row.get('rss_mb', 0):.0f}", f"{row['size_mb']:.2f}", f"{ints} / {floats}",
            )
        )  # fmt: skip
    print("\n" + harness.markdown_table(headers, table, title=model), flush=True)


def print_text_table(model: str, rows: dict[str, dict[str, Any]]) -> None:
    """The recognizer's text scores (exact lines, character similarity), a row per quantizer that ran."""
    headers = ("quantizer", "exact lines", "char similarity", "top-1 agr. per step")
    table = [
        (label, harness.fmt(row["accuracy"], ".2f"), harness.fmt(row["char_similarity"], ".4f"),
         harness.fmt(row["top1_agreement"], ".4f"))
        for label, row in rows.items()
        if row.get("ok", True)
    ]  # fmt: skip
    print("\n" + harness.markdown_table(headers, table, title=f"{model}: text read"), flush=True)


def main(argv: list[str] | None = None) -> int:
    """Runs the quantization comparison, or one quantizer when started as ``--child quantize``."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:2] == ["--child", "quantize"]:
        _child_quantize(*argv[2:7])
        return 0
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    export.add_arguments(parser)
    parser.add_argument("--models", default="digits,resnet18")
    parser.add_argument("--calibrators", default=",".join(CALIBRATORS))
    parser.add_argument("--rounds-b1", type=int, default=20)
    parser.add_argument("--rounds-b32", type=int, default=5)
    parser.add_argument(
        "--batches", default="1,32", help="the two latency batch sizes (BERT's goal is at batch 8: --batches 1,8)"
    )
    parser.add_argument(
        "--tools", help="comma-separated quantizer labels to run, past the model's subset (default: the model's subset)"
    )
    parser.add_argument("--json", metavar="OUT")
    args = parser.parse_args(argv)
    args.calibrators = [c for c in args.calibrators.split(",") if c]
    args.batches = [int(b) for b in args.batches.split(",")][:2]
    settings = (
        f"latency rounds b{args.batches[0]} {args.rounds_b1}, b{args.batches[1]} {args.rounds_b32} (scaled per model)"
    )
    environment = harness.print_environment(extra_dists=("nncf", "aimet-onnx"), settings=settings)
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="onnxshrink-bench-quantize-") as tmp:
        for model in args.models.split(","):
            print(f"{model}:", flush=True)
            results[model] = bench_model(model, args, Path(tmp))
            print_table(model, results[model])
            if model == "ocr-rec":
                print_text_table(model, results[model])
    if args.json:
        harness.write_json(args.json, {**environment, "models": results})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
