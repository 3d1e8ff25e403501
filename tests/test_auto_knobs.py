"""``auto``'s 4-bit block lengths (per-layer settings of their own), its global knobs (calibrator,
4-bit rounding, bias correction) with their one-factor-at-a-time seeds, and the size cap corrected
both ways by measured sizes (real passes and sessions on the bundled digits CNN)."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
from helpers import DIGITS, DIGITS_CALIB, DIGITS_TEST, bare_search

import onnxshrink
from onnxshrink.autotune import allocate
from onnxshrink.autotune.allocate import Point
from onnxshrink.autotune.goal import Goal
from onnxshrink.autotune.items import ItemMeasure
from onnxshrink.autotune.profile import INT4_BLOCKS, Profile, Setting, Unit, int4_block, profile
from onnxshrink.autotune.recipe import Knobs, candidate_specs, to_toml
from onnxshrink.autotune.search import Scope, Search
from onnxshrink.data.readers import open_samples
from onnxshrink.executors import LocalExecutor
from onnxshrink.spec import load_recipe, make_spec

MODEL, CALIB, EVAL = DIGITS, DIGITS_CALIB, DIGITS_TEST


@pytest.fixture(scope="module")
def base():  # type: ignore[no-untyped-def]
    return onnxshrink.shrink(MODEL, [make_spec("simplify", {})], verify=False).model


@pytest.fixture(scope="module")
def blocks(base, tmp_path_factory: pytest.TempPathFactory) -> tuple[Profile, Path]:  # type: ignore[no-untyped-def]
    """The int4 profile of the digits CNN at every block length, and its cache folder."""
    cache = tmp_path_factory.mktemp("blocks")
    found = profile(
        base, open_samples(str(CALIB)), provider="cpu", knobs=("int4",), cache=cache, int4_blocks=INT4_BLOCKS
    )
    return found, cache


def _values(found: Profile) -> dict[str, list[str]]:
    return {u.name: [str(s.value) for s in u.settings] for u in found.units}


def test_each_block_length_is_a_setting_and_longer_blocks_are_smaller(blocks) -> None:  # type: ignore[no-untyped-def]
    found, _ = blocks
    # fc1 (K = 512) takes every length; fc2 (K = 64) only up to 64: a 128 block would pad, not shrink.
    assert _values(found) == {
        "/fc1/Gemm": ["float", "int4", "int4-b64", "int4-b128"],
        "/fc2/Gemm": ["float", "int4", "int4-b64"],
    }
    for unit in found.units:
        sizes = [s.bytes for s in unit.settings]
        assert sizes == sorted(sizes, reverse=True) and len(set(sizes)) == len(sizes)
    fc1 = found.units[0].settings
    assert fc1[1].damage <= fc1[3].damage  # fewer scales: coarser levels


def test_items_equal_the_serial_profile_and_the_default_length_reads_the_cache(base, blocks, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    found, cache = blocks
    measure = ItemMeasure(LocalExecutor(1))
    by_items = profile(
        base,
        open_samples(str(CALIB)),
        provider="cpu",
        knobs=("int4",),
        cache=tmp_path,
        measure=measure,
        int4_blocks=INT4_BLOCKS,
    )
    assert _values(by_items) == _values(found)
    for ours, theirs in zip(by_items.units, found.units, strict=True):
        assert [s.bytes for s in ours.settings] == [s.bytes for s in theirs.settings]
    # A study with the default block length only reads the profile of every length from the cache.
    default = profile(base, open_samples(str(CALIB)), provider="cpu", knobs=("int4",), cache=cache)
    assert default.cached == ["precision"]
    assert _values(default) == {"/fc1/Gemm": ["float", "int4"], "/fc2/Gemm": ["float", "int4"]}


def test_candidate_specs_carry_block_lengths_rounding_and_bias_correction(blocks, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    found, _ = blocks
    conv = Unit("precision", "/conv3/conv3.0/Conv", [Setting("float", 0, 0, 0.0), Setting("int8", -1, 0, 0.0)])
    units = [*found.units, conv]
    choice = (3, 2, 1)  # fc1 at block 128, fc2 at block 64, conv3 int8
    knobs = Knobs(calibrate="mse", rounding="nearest", bias_correction="off")
    specs = candidate_specs(units, choice, knobs)
    assert [s.to_json() for s in specs[1:]] == [
        {"name": "quantize", "options": {**_int4("/fc2/Gemm"), "block-size": 64, "rounding": "nearest"}},
        {"name": "quantize", "options": {**_int4("/fc1/Gemm"), "block-size": 128, "rounding": "nearest"}},
        {
            "name": "quantize",
            "options": {
                "exclude": ["/fc1/Gemm", "/fc2/Gemm"],
                "calibrate": "mse",
                "bias-correction": "off",
                "rounding": "nearest",
            },
        },
    ]
    path = tmp_path / "r.toml"
    path.write_text(to_toml(specs))
    assert load_recipe(path) == specs
    # The pass defaults name no option, but int8 rounds to nearest: auto's trials skip the GPTQ
    # capture that the pass's rounding=auto runs for MatMul/Gemm weights.
    plain = candidate_specs(units, (1, 1, 1), Knobs())
    assert [s.to_json()["options"] for s in plain[1:]] == [
        _int4("/fc1/Gemm", "/fc2/Gemm"),
        {"exclude": ["/fc1/Gemm", "/fc2/Gemm"], "calibrate": "minmax", "rounding": "nearest"},
    ]
    # Built with the real passes: each Gemm's blocked 4-bit weight has its block length.
    built = onnxshrink.shrink(MODEL, specs, calibration=str(CALIB), verify=False)
    stats = {name: text for p in built.report["passes"] for name, text in p["stats"].get("nodes", {}).items()}
    assert stats["/fc1/Gemm"] == "s4 blocks of 128 along K" and stats["/fc2/Gemm"] == "s4 blocks of 64 along K"
    saved = built.save(tmp_path / "m.onnx")
    lengths = [
        attribute.i
        for node in onnx.load(saved.model).graph.node
        for attribute in node.attribute
        if node.op_type in ("DequantizeLinear", "MatMulNBits") and attribute.name == "block_size"
    ]
    assert sorted(lengths) == [64, 128]
    assert int4_block("int4-b128") == 128 and int4_block("int4") == 32


def _int4(*layers: str) -> dict[str, object]:
    return {"mode": "weight-only", "weights": "s4", "include": list(layers)}


def test_seeds_change_one_knob_at_a_time_then_combine_the_winners() -> None:
    scope = Scope(channels=False, int8=True, int4=True)
    seeds = scope.seeds()
    base = {"calibrate": "minmax", "bias_correction": "fast", "rounding": "auto"}
    assert seeds[0] == base
    changed = [{k: v for k, v in s.items() if base[k] != v} for s in seeds[1:]]
    assert changed == [
        {"calibrate": "percentile"},
        {"calibrate": "entropy"},
        {"calibrate": "mse"},
        {"bias_correction": "off"},
        {"rounding": "nearest"},
    ]
    values = [10.5, 10.6, 10.9, 10.2, 10.8, 10.3]  # mse and nearest beat the defaults; off does not
    drawn = [{**s, "percentile": 99.9} if s["calibrate"] == "percentile" else s for s in seeds]  # as TPE draws it
    told = list(zip(drawn, values, strict=True))
    assert scope.combined(told) == {**base, "calibrate": "mse", "rounding": "nearest"}
    # A single winner is already built: nothing to combine.
    assert scope.combined([(base, 10.5), (seeds[3], 10.2), (seeds[4], 10.6)]) is None
    # Knobs that change nothing are not searched: no int8 layer, no calibrator.
    assert Scope(channels=True, int8=False, int4=False).seeds() == [{"reconstruct": True}]


def test_scope_reads_the_chosen_settings(blocks) -> None:  # type: ignore[no-untyped-def]
    found, _ = blocks
    assert Scope.of(found, [Point((2, 0), 0, 0, 0.0)]) == Scope(channels=False, int8=False, int4=True)
    assert Scope.of(found, [Point((0, 0), 0, 0, 0.0)]) == Scope(channels=False, int8=False, int4=False)


def _search(tmp_path: Path, goal: Goal) -> Search:
    return bare_search(tmp_path, goal, Profile(1000, 1000, [], 0.0, []))


def test_a_size_target_met_past_the_budget_moves_the_size_cap_out(tmp_path: Path) -> None:
    search = _search(tmp_path, Goal(max_size=250, min_agreement=0.99))
    caps = dict(search.caps)
    assert caps == {"bytes": 250}
    point = Point((), 240, 1000, 0.1)
    # 200 bytes measured against 240 predicted: the cap moves out to what 250 measured bytes predict
    assert search._loosen(caps, point, {"size": 200, "misses": {"min_agreement": "0.98"}})
    assert caps["bytes"] == pytest.approx(240 * 250 / 200)
    # within the budget, past the size target, or measured larger than predicted: the cap stays
    before = dict(caps)
    assert not search._loosen(caps, point, {"size": 200, "misses": {}})
    assert not search._loosen(caps, point, {"size": 260, "misses": {"max_size": "over", "min_agreement": "0.98"}})
    assert not search._loosen(caps, point, {"size": 245, "misses": {"min_agreement": "0.98"}})
    assert caps == before


def test_the_front_holds_the_least_damaging_point_at_the_target() -> None:
    # One unit holds most of the bytes (as magika's Conv does): the even sweep of caps steps over
    # the 288-byte allocation, which only a knapsack at the target's own cap finds.
    big = Unit("precision", "big", [Setting("float", 0, 0, 0.0), Setting("int8", -1000, 0, 0.001)])
    steps = ((32, 10, 1e-4), (64, 12, 1e-3), (128, 14, 1e-2))
    small = [Setting("float", 0, 0, 0.0)] + [Setting(f"int4-b{b}", -d, 0, x) for b, d, x in steps]
    found = Profile(1300, 0, [big, Unit("precision", "small", small)], 0.0, [])
    first = allocate.front(found, {"bytes": 289}, "bytes")[0]
    assert (first.size, first.choice) == (288, (1, 2))
    swept = [p for p in allocate.front(found, {}, "bytes") if p.size <= 289]
    assert [p.size for p in swept] == [286]  # what the sweep alone would have offered


def test_a_study_at_a_target_tries_each_knob_value_alone_first(tmp_path: Path) -> None:
    result = onnxshrink.auto(
        MODEL,
        calibration=str(CALIB),
        evaluation=str(EVAL),
        max_size="60KB",
        min_agreement=1.0,  # out of reach: the search tries every seed
        search="int8,int4",
        study=tmp_path / "study",
        max_trials=8,
    )
    values = [
        str(v) for v in [t for t in result.trials if t["phase"] == "target"][-1]["settings"]["precision"].values()
    ]
    scope = Scope(channels=False, int8="int8" in values, int4=any(v.startswith("int4") for v in values))
    defaults = Knobs().to_json()
    tried = [
        {k: v for k, v in t["knobs"].items() if v != defaults[k] and k != "percentile"}
        for t in result.trials
        if t["phase"] == "knobs"
    ]
    expected = [{k: v for k, v in seed.items() if v != defaults[k]} for seed in scope.seeds()[1:]]
    # The defaults were built at the target already; then every other value alone, in order (which
    # of them beat the defaults, combined next, depends on the measured agreements: unit-tested above).
    assert len(expected) >= 4 and tried[: len(expected)] == expected
