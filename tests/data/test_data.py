"""Calibration, verification and evaluation data: sources, checks against the model, labels, batching.

Real npz files, folders and reader modules on disk; feeds run through real onnxruntime sessions.
"""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import numpy as np
import pytest
from helpers import assert_outputs_close, parse_ir_model, parse_model, run

from onnxshrink.data.model_inputs import generate_inputs, parse_shapes
from onnxshrink.data.readers import open_samples
from onnxshrink.data.samples import VERIFY_SAMPLES, Feed, Samples, verification_feed
from onnxshrink.errors import UsageError

_TEXT = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[N, 4] x) => (float[N, 3] y) <float[4, 3] w = {1,0,0, 0,1,0, 0,0,1, 1,1,1}> {
    h = MatMul(x, w)
    y = Relu(h)
}
"""
_W = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 1]], np.float32)


def _x(samples: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((samples, 4)).astype(np.float32)


def _expected(x: np.ndarray) -> np.ndarray:
    return np.maximum(x @ _W, 0)


def _reader_module(folder: Path, monkeypatch: pytest.MonkeyPatch, name: str = "calib_reader") -> str:
    """Writes a module holding a reader class, a reader instance without rewind(), and a constant."""
    (folder / f"{name}.py").write_text(
        textwrap.dedent(
            """
            import numpy as np

            class Reader:
                def __init__(self):
                    self.batches = iter([{"x": np.full((2, 4), float(i), np.float32)} for i in range(3)])

                def get_next(self):
                    return next(self.batches, None)

            ONCE = Reader()
            NOT_A_READER = 3
            """
        )
    )
    monkeypatch.syspath_prepend(str(folder))
    return name


def test_npz_file_feeds_the_model(tmp_path: Path) -> None:
    path = tmp_path / "calib.npz"
    x = _x(10)
    np.savez(path, x=x, labels=np.arange(10))
    samples = open_samples(path)
    assert samples.description == f"npz {path}" and samples.role == "calibration"
    (batch,) = list(samples.batches())
    assert set(batch) == {"x", "labels"}
    feed = samples.feed_for(parse_ir_model(_TEXT), 4)
    assert feed.description == f"calibration npz {path} (first 4 samples)"
    assert set(feed.arrays) == {"x"} and feed.samples == 4
    np.testing.assert_array_equal(feed.labels, np.arange(4))
    assert_outputs_close([_expected(x[:4])], run(parse_model(_TEXT), feed.arrays))


def test_folder_is_read_file_by_file_and_take_concatenates(tmp_path: Path) -> None:
    folder = tmp_path / "calib"
    folder.mkdir()
    parts = [_x(5, seed) for seed in range(2)]
    for index, part in enumerate(parts):
        np.savez(folder / f"part{index}.npz", x=part)
    (folder / "notes.txt").write_text("not data")
    samples = open_samples(folder)
    assert samples.description == f"2 npz files in {folder}"
    assert [len(b["x"]) for b in samples.batches()] == [5, 5]
    taken = samples.take(7)["x"]
    np.testing.assert_array_equal(taken, np.concatenate(parts)[:7])
    assert_outputs_close([_expected(taken)], run(parse_model(_TEXT), {"x": taken}))


def test_empty_folder_and_missing_path_are_usage_errors(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"calibration folder .* holds no \.npz files"):
        open_samples(tmp_path)
    with pytest.raises(UsageError, match=r"calibration data not found: .*missing\.npz \(expected an \.npz"):
        open_samples(tmp_path / "missing.npz")


def test_reader_class_is_read_afresh_each_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    module = _reader_module(tmp_path, monkeypatch)
    samples = open_samples(f"{module}:Reader")
    assert samples.description == f"{module}:Reader"
    for _ in range(2):  # a class gives a fresh reader per pass over the data
        assert [float(b["x"][0, 0]) for b in samples.batches()] == [0.0, 1.0, 2.0]
    feed = samples.feed_for(parse_ir_model(_TEXT), 5)
    assert feed.samples == 5 and feed.labels is None
    assert_outputs_close([_expected(feed.arrays["x"])], run(parse_model(_TEXT), feed.arrays))


def test_reader_instance_without_rewind_is_read_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    module = _reader_module(tmp_path, monkeypatch, "once_reader")
    samples = open_samples(f"{module}:ONCE")
    assert len(list(samples.batches())) == 3
    with pytest.raises(UsageError, match="can be read only once; name a class or factory"):
        list(samples.batches())


def test_reader_instance_with_rewind_is_read_again() -> None:
    class Rewinding:
        def __init__(self) -> None:
            self.left = 2

        def get_next(self) -> dict[str, np.ndarray] | None:
            if not self.left:
                return None
            self.left -= 1
            return {"x": _x(3)}

        def rewind(self) -> None:
            self.left = 2

    samples = open_samples(Rewinding())
    assert samples.description == "reader Rewinding"
    assert len(list(samples.batches())) == len(list(samples.batches())) == 2


@pytest.mark.parametrize(
    ("attribute", "needle"),
    [
        ("nowhere_module:Reader", "cannot import calibration reader 'nowhere_module:Reader'"),
        ("{module}:Missing", "cannot import calibration reader"),
        ("{module}:NOT_A_READER", "is neither a CalibrationDataReader nor a callable returning one"),
    ],
)
def test_bad_reader_names_are_usage_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, attribute: str, needle: str
) -> None:
    module = _reader_module(tmp_path, monkeypatch, "bad_reader")
    with pytest.raises(UsageError, match=needle):
        open_samples(attribute.format(module=module))


def test_arrays_in_memory_name_their_role() -> None:
    assert open_samples({"x": _x(2)}).description == "in-memory arrays"
    given = open_samples({"x": _x(2)}, role="inputs")
    assert given.description == "given arrays" and given.noun == "inputs"
    same = open_samples(given)
    assert same is given


def test_inputs_file_is_read_when_used(tmp_path: Path) -> None:
    missing = open_samples(tmp_path / "missing.npz", role="inputs")  # opening reads nothing
    with pytest.raises(UsageError, match=r"^inputs file not found: .*missing\.npz$"):
        missing.feed_for(parse_ir_model(_TEXT))
    broken = tmp_path / "broken.npz"
    broken.write_bytes(b"not an npz")
    with pytest.raises(UsageError, match=r"cannot read inputs file .*broken\.npz"):
        open_samples(broken, role="inputs").feed_for(parse_ir_model(_TEXT))


def test_inputs_keep_every_sample_and_split_labels(tmp_path: Path) -> None:
    path = tmp_path / "test.npz"
    x = _x(40)
    np.savez(path, x=x, labels=np.arange(40) % 3, extra=np.zeros(7))
    feed = open_samples(path, role="inputs").feed_for(parse_ir_model(_TEXT))
    assert feed.description == f"npz {path}" and feed.samples == 40
    assert set(feed.arrays) == {"x"}  # labels split off, keys the model does not take dropped
    np.testing.assert_array_equal(feed.labels, np.arange(40) % 3)
    assert_outputs_close([_expected(x)], run(parse_model(_TEXT), feed.arrays))


def test_an_input_named_labels_is_fed_not_split() -> None:
    text = '<ir_version: 8, opset_import: ["" : 17]> g (float[N] labels) => (float[N] y) { y = Relu(labels) }'
    values = np.array([-1.0, 2.0], np.float32)
    feed = open_samples({"labels": values}).feed_for(parse_ir_model(text), 2)
    assert feed.labels is None
    assert_outputs_close([np.maximum(values, 0)], run(parse_model(text), feed.arrays))


def test_data_that_lacks_a_model_input_is_a_usage_error(tmp_path: Path) -> None:
    path = tmp_path / "wrong.npz"
    np.savez(path, z=_x(4))
    samples = open_samples(path)
    with pytest.raises(UsageError, match=r"calibration data npz .*wrong\.npz lacks input\(s\) \['x'\]; it has \['z'\]"):
        samples.feed_for(parse_ir_model(_TEXT), 2)
    with pytest.raises(UsageError, match=r"^pass 'prune': calibration data npz .* has no input 'x' \(it has \['z'\]\)"):
        list(samples.feeds(["x"], consumer="pass 'prune'"))
    given = open_samples({"z": _x(2)}, role="inputs")
    with pytest.raises(UsageError, match=r"^inputs given arrays lacks input\(s\) \['x'\]"):
        given.feed_for(parse_ir_model(_TEXT))


def test_no_samples_is_a_usage_error() -> None:
    empty = Samples(lambda: iter([]), "an empty reader")
    with pytest.raises(UsageError, match="calibration data an empty reader holds no samples"):
        empty.take(4)


def test_feeds_batch_within_each_source_batch_and_stop_at_the_sample_count(tmp_path: Path) -> None:
    folder = tmp_path / "calib"
    folder.mkdir()
    parts = [_x(5, seed) for seed in range(3)]
    for index, part in enumerate(parts):
        np.savez(folder / f"part{index}.npz", x=part, labels=np.zeros(5))
    feeds = list(open_samples(folder).feeds(["x"], consumer="test", samples=8, batch_size=3))
    assert [len(f["x"]) for f in feeds] == [3, 2, 3]
    assert all(set(f) == {"x"} for f in feeds)
    np.testing.assert_array_equal(np.concatenate([f["x"] for f in feeds]), np.concatenate(parts)[:8])
    for feed in feeds:
        assert_outputs_close([_expected(feed["x"])], run(parse_model(_TEXT), feed))
    everything = list(open_samples(folder).feeds(["x"], consumer="test", batch_size=4))
    assert [len(f["x"]) for f in everything] == [4, 1, 4, 1, 4, 1]


@pytest.mark.parametrize(
    ("dims", "samples", "expected"),
    [
        ("N, 4", 100, 64),  # dynamic first axis: runs of up to 64
        ("N, 4", 64, None),
        ("4, 4", 12, 4),  # fixed first axis dividing the sample count
        ("4, 4", 10, None),
        ("4, 4", 4, None),
    ],
)
def test_run_size_splits_only_when_the_model_is_batched(dims: str, samples: int, expected: int | None) -> None:
    text = f'<ir_version: 8, opset_import: ["" : 17]> g (float[{dims}] x) => (float[{dims}] y) {{ y = Relu(x) }}'
    feed = Feed({"x": _x(samples)}, None, "test")
    assert feed.run_size(parse_ir_model(text)) == expected


def test_run_size_needs_one_shared_sample_count() -> None:
    text = '<ir_version: 8, opset_import: ["" : 17]> g (float[N] a, float[N] b) => (float[N] y) { y = Add(a, b) }'
    uneven = Feed({"a": np.zeros(100, np.float32), "b": np.zeros(99, np.float32)}, None, "test")
    assert uneven.run_size(parse_ir_model(text)) is None and uneven.samples == 1


def test_verification_feed_prefers_inputs_then_calibration_then_generated(tmp_path: Path) -> None:
    model = parse_ir_model(_TEXT)
    inputs = open_samples({"x": _x(3)}, role="inputs")
    calibration = open_samples({"x": _x(50)})
    assert verification_feed(model, inputs, calibration, {}).samples == 3
    from_calibration = verification_feed(model, None, calibration, {})
    assert from_calibration.samples == VERIFY_SAMPLES
    assert from_calibration.description == f"calibration in-memory arrays (first {VERIFY_SAMPLES} samples)"
    generated = verification_feed(model, None, None, parse_shapes(["x=6x4"]))
    assert generated.description == "generated" and generated.arrays["x"].shape == (6, 4)
    assert_outputs_close([_expected(generated.arrays["x"])], run(parse_model(_TEXT), generated.arrays))


def test_generated_inputs_have_the_right_types_and_a_size_cap() -> None:
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[N, 3] x, int64[2] ids, bool[1] flag) => (float[N, 3] y, int64[2] z, bool[1] f) {
        y = Relu(x)
        z = Identity(ids)
        f = Not(flag)
    }
    """
    feed = generate_inputs(parse_ir_model(text), batch=5)
    assert feed["x"].dtype == np.float32 and feed["x"].shape == (5, 3)
    assert feed["ids"].dtype == np.int64 and set(np.unique(feed["ids"])) <= {0, 1, 2, 3}
    assert feed["flag"].dtype == np.bool_
    outputs = run(parse_model(text), feed)
    np.testing.assert_array_equal(outputs[2], ~feed["flag"])
    with pytest.raises(UsageError, match="past the cap"):
        generate_inputs(parse_ir_model(text), {"x": (1 << 25, 3)})
    with pytest.raises(UsageError, match="contradicts the model's fixed size 2"):
        generate_inputs(parse_ir_model(text), {"ids": (3,)})


# Issue 13: data fitted to the model before any work; sample rates that a model can take.

_SPEECH = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[1, N] audio, int64 sr) => (float[1, N] y) {
    rate = Cast<to = 1>(sr)
    big = Constant<value_float = 8000.0>()
    ok = GreaterOrEqual(rate, big)
    one = Constant<value_float = 1.0>()
    zero = Constant<value_float = 0.0>()
    scale = Where(ok, one, zero)
    y = Mul(audio, scale)
}
"""


def test_generated_sample_rate_is_one_a_speech_model_takes() -> None:
    feed = generate_inputs(parse_ir_model(_SPEECH), {"audio": (1, 512)})
    assert feed["sr"].dtype == np.int64 and feed["sr"].shape == () and int(feed["sr"]) == 16000
    (y,) = run(parse_model(_SPEECH), feed)
    np.testing.assert_array_equal(y, feed["audio"])  # the model's "valid rate" branch ran


@pytest.mark.parametrize(
    ("text", "expected"),
    [("x:1,3,224,224", ("x", (1, 3, 224, 224))), ("x:0:2x5", ("x:0", (2, 5))), ("x:0=2,5", ("x:0", (2, 5)))],
)
def test_shapes_accept_name_colon_dims(text: str, expected: tuple[str, tuple[int, ...]]) -> None:
    assert parse_shapes([text]) == dict([expected])


def test_npy_feeds_the_only_input_and_float64_is_cast_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "x.npy"
    np.save(path, _x(5).astype(np.float64))
    samples = open_samples(path).fitted_to(parse_ir_model(_TEXT))
    assert samples.description == f"npy {path}"
    with caplog.at_level("WARNING"):
        batches = [next(iter(samples.batches())) for _ in range(2)]
    assert [b["x"].dtype for b in batches] == [np.float32, np.float32]
    assert [r.getMessage() for r in caplog.records] == [
        f"calibration data npy {path}: input 'x' is float64; cast to float32, the type the model takes"
    ]
    feed = samples.feed_for(parse_ir_model(_TEXT))
    assert_outputs_close([_expected(feed.arrays["x"])], run(parse_model(_TEXT), feed.arrays))


@pytest.mark.parametrize(
    ("array", "needle"),
    [
        (np.zeros((2, 5), np.float32), "input 'x' has size 5 on axis 1, but the model fixes it to 4 [N, 4]"),
        (np.zeros((2, 4, 1), np.float32), "has shape (2, 4, 1) (rank 3), but the model's input has rank 2 [N, 4]"),
        (np.zeros((2, 4), np.int64), "input 'x' is int64, but the model wants float32; only float64 is cast"),
    ],
)
def test_data_that_does_not_fit_is_refused_at_the_first_batch(array: np.ndarray, needle: str) -> None:
    samples = open_samples({"x": array}).fitted_to(parse_ir_model(_TEXT))
    with pytest.raises(UsageError, match=re.escape(needle)):
        samples.check_first_batch()
    with pytest.raises(UsageError, match=re.escape(needle)):
        open_samples({"x": array}, role="inputs").feed_for(parse_ir_model(_TEXT))


def test_a_model_with_a_fixed_first_axis_gets_batches_of_exactly_that_size() -> None:
    fixed = parse_ir_model(_TEXT.replace("float[N, 4] x", "float[2, 4] x").replace("float[N, 3] y", "float[2, 3] y"))
    samples = open_samples({"x": _x(6)}).fitted_to(fixed)
    assert samples.fixed_batch == 2
    sizes = [len(feed["x"]) for feed in samples.feeds(["x"], consumer="pass 'test'", batch_size=8)]
    assert sizes == [2, 2, 2]
    # A fifth sample would make a batch the model cannot take.
    assert [len(f["x"]) for f in samples.feeds(["x"], consumer="pass 'test'", samples=5)] == [2, 2]
    with pytest.raises(UsageError, match="has size 7 on axis 0, but the model fixes it to 2"):
        open_samples({"x": _x(7)}).fitted_to(fixed).check_first_batch()
    dynamic = open_samples({"x": _x(7)}).fitted_to(parse_ir_model(_TEXT))
    assert dynamic.fixed_batch is None
    assert [len(f["x"]) for f in dynamic.feeds(["x"], consumer="pass 'test'", batch_size=4)] == [4, 3]


def test_batches_with_a_scalar_or_differently_batched_input_run_whole(tmp_path: Path) -> None:
    """silero-vad's calls: input [N, 512], state [2, N, 128], scalar sr: such a batch is one run."""
    folder = tmp_path / "calls"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for index in range(3):
        state = rng.standard_normal((2, 3, 8)).astype(np.float32)
        np.savez(folder / f"{index}.npz", x=_x(3, index), state=state, sr=np.array(16000))
    samples = open_samples(folder)
    feeds = list(samples.feeds(["x", "state", "sr"], consumer="test", batch_size=2))
    assert [(f["x"].shape, f["state"].shape, f["sr"].shape) for f in feeds] == [((3, 4), (2, 3, 8), ())] * 3
    assert len(list(samples.feeds(["x", "state", "sr"], consumer="test", samples=2, batch_size=2))) == 2
    first = samples.take(5)
    np.testing.assert_array_equal(first["x"], _x(3, 0))
    assert first["sr"].shape == ()
