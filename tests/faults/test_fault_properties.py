"""Property tests on the two readers of untrusted numbers: the box decoder (any finite head output) and
the accuracy-log reader (any bytes at all)."""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from abtf_ssd.config import DEMO_CONFIG, get_config
from abtf_ssd.loadgen.accuracy import AccuracyLogError, read_accuracy_log
from abtf_ssd.model.boxes import MAX_OUTPUT, SCORE_THRESHOLD, decode_batch, decode_reference_loop

DEMO = get_config(DEMO_CONFIG)
A = DEMO.num_anchors
C = DEMO.num_classes
OG_H, OG_W = DEMO.og_image_size
FLOAT32_MAX = float(np.finfo(np.float32).max)
LOC_LIMIT = 400.0
"""|box regression| at which ``exp(0.2 * d)`` times an anchor size still fits in float32 (overflow
starts near 443): trained heads output single digits; beyond the limit the reference gives inf too."""
REFERENCE_LOC_LIMIT = 100.0
"""Above about 230, a box's area is finite but twice it is not, so its IoU with itself is 0 and the
reference's NMS loop (``decode_reference_loop``, like upstream's) never removes it: it never ends."""


@st.composite
def head_outputs(draw, loc_limit: float = LOC_LIMIT) -> tuple[np.ndarray, np.ndarray]:
    """(loc (1, 4, A), conf (1, C, A)) float32: random bulk at a drawn scale plus drawn extreme spikes,
    flat runs (exact ties) and single dominant classes."""
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    logit_scale = draw(st.sampled_from([0.0, 1e-3, 1.0, 4.0, 30.0, 1e4, 1e30, FLOAT32_MAX]))
    conf = (rng.standard_normal((1, C, A)) * min(logit_scale, 1e30)).astype(np.float32)
    if logit_scale == FLOAT32_MAX:
        conf = np.sign(conf).astype(np.float32) * np.float32(FLOAT32_MAX)
    spikes = draw(
        st.lists(
            st.tuples(
                st.integers(0, C - 1),
                st.integers(0, A - 1),
                st.floats(allow_nan=False, allow_infinity=False, width=32),
            ),
            max_size=20,
        )
    )
    for c, a, value in spikes:
        conf[0, c, a] = value
    if draw(st.booleans()):  # one class wins everywhere by a drawn margin: up to A candidates
        conf[0, draw(st.integers(1, C - 1))] += np.float32(draw(st.floats(0, 50)))
    loc_scale = draw(st.sampled_from([0.0, 0.1, 1.0, 10.0, loc_limit]))
    loc = np.clip(rng.standard_normal((1, 4, A)) * loc_scale, -loc_limit, loc_limit).astype(np.float32)
    return loc, conf


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # overflow to inf/NaN inside is expected
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(head_outputs())
def test_decoder_output_is_always_well_formed(outputs):
    loc, conf = outputs
    assert np.isfinite(conf).all() and np.isfinite(loc).all()
    (detections,) = decode_batch(loc, conf, DEMO)
    assert detections.dtype == np.float32 and detections.ndim == 2 and detections.shape[1] == 6
    assert len(detections) <= MAX_OUTPUT
    scores, labels, boxes = detections[:, 5], detections[:, 4], detections[:, :4]
    assert (scores > np.float32(SCORE_THRESHOLD)).all() and (scores <= 1).all()
    assert np.isin(labels, np.arange(1, C)).all()
    assert np.isfinite(boxes).all()
    assert (np.diff(scores) >= 0).all(), "rows come out ascending by score"
    assert (boxes[:, 2] >= boxes[:, 0]).all() and (boxes[:, 3] >= boxes[:, 1]).all()


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(head_outputs(loc_limit=REFERENCE_LOC_LIMIT))
def test_fast_decoder_equals_the_reference_loop(outputs):
    loc, conf = outputs
    (fast,) = decode_batch(loc, conf, DEMO)
    (slow,) = decode_reference_loop(loc, conf, DEMO)
    np.testing.assert_array_equal(fast, slow)


def test_decoded_boxes_are_not_clamped_to_the_frame():
    """As in the reference, boxes leave the frame when the regressions push them out: nothing clamps
    them to [0, og size] (COCO evaluation takes them as they are)."""
    loc = np.zeros((1, 4, A), np.float32)
    loc[0, 2:] = 10.0  # every box exp(2) = 7.4 times its default size
    conf = np.full((1, C, A), -10.0, np.float32)
    conf[0, 4] = 10.0
    (detections,) = decode_batch(loc, conf, DEMO)
    (reference,) = decode_reference_loop(loc, conf, DEMO)
    np.testing.assert_array_equal(detections, reference)
    boxes = detections[:, :4]
    assert (boxes[:, :2] < 0).any() and ((boxes[:, 2] > OG_W) | (boxes[:, 3] > OG_H)).any()


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_fast_decoder_ends_where_the_reference_loop_would_not():
    """Five boxes whose area is finite but twice it overflows float32: their IoU (with each other and
    with themselves) is 0, so none suppresses another; each is taken once and the decoder ends."""
    from abtf_ssd.model.boxes import default_boxes

    side = np.float32(1.5e19)  # relative units: area 2.25e38 < float32 max < twice the area
    anchors = default_boxes(DEMO)[:5]
    loc = np.zeros((1, 4, A), np.float32)
    loc[0, 2, :5] = 5 * np.log(side / anchors[:, 2])
    loc[0, 3, :5] = 5 * np.log(side / anchors[:, 3])
    conf = np.zeros((1, C, A), np.float32)
    conf[0, 0] = 20.0  # background everywhere but at the five anchors
    conf[0, 3, :5] = 40.0
    (detections,) = decode_batch(loc, conf, DEMO)
    assert len(detections) == 5 and (detections[:, 4] == 3).all() and np.isfinite(detections).all()


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_regressions_beyond_float32_range_give_infinite_boxes_like_the_reference():
    """Documented limit of :data:`LOC_LIMIT`: exp overflows, in the reference decoder too."""
    loc = np.zeros((1, 4, A), np.float32)
    loc[0, 2] = 1000.0
    conf = np.full((1, C, A), -10.0, np.float32)
    conf[0, 1, 0] = 10.0
    (detections,) = decode_batch(loc, conf, DEMO)
    (reference,) = decode_reference_loop(loc, conf, DEMO)
    np.testing.assert_array_equal(detections, reference)
    assert np.isinf(detections[:, :4]).any()


# --------------------------------------------------------------------------------------------
# The accuracy log


def _hex_rows(rows: int) -> str:
    return np.arange(rows * 6, dtype=np.float32).tobytes().hex()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
entries = st.fixed_dictionaries(
    {
        "qsl_idx": st.one_of(st.integers(-3, 50), st.floats(), st.text(max_size=4), st.none(), st.booleans()),
        "data": st.one_of(
            st.integers(0, 3).map(_hex_rows),
            st.binary(max_size=60).map(bytes.hex),
            st.text(alphabet="0123456789abcdefABCDEFxyz ", max_size=60),
            json_values,
        ),
    },
    optional={"seq_id": st.integers(0, 10), "extra": json_values},
)
log_documents = st.one_of(
    st.lists(entries, max_size=6).map(json.dumps),
    json_values.map(json.dumps),
)
log_bytes = st.one_of(
    st.binary(max_size=300),
    log_documents.map(str.encode),
    log_documents.map(lambda text: text.encode("utf-16")),
    log_documents.map(lambda text: text[: len(text) // 2].encode()),  # cut short, as a killed run leaves it
)


def _check_reader(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "mlperf_log_accuracy.json"
        path.write_bytes(data)
        try:
            detections = read_accuracy_log(path, sample_count=20)
        except AccuracyLogError as error:
            assert str(path) in str(error), f"the error does not name the file: {error}"
            return
    for index, rows in detections.items():
        assert isinstance(index, int) and 0 <= index < 20
        assert rows.dtype == np.float32 and rows.ndim == 2 and rows.shape[1] == 6


@settings(max_examples=300, deadline=None)
@given(log_bytes)
@example(b"")
@example(b"[]")
@example(b'\xef\xbb\xbf[{"qsl_idx": 1, "data": ""}]')
@example(b'[{"qsl_idx": 1, "data": "0"}]')
@example(b'[{"qsl_idx": 1e400, "data": ""}]')
@example(b'[{"qsl_idx": NaN, "data": ""}]')
def test_accuracy_reader_parses_or_raises_its_own_error(data):
    _check_reader(data)


@pytest.mark.parametrize(
    "data",
    [b"[" * 100_000, b'[{"qsl_idx": ' + b"1" * 5000 + b', "data": ""}]'],
    ids=["deeply-nested", "huge-integer"],
)
def test_accuracy_reader_on_pathological_json(data):
    _check_reader(data)


def test_property_generator_covers_valid_logs():
    """The control: a well-formed log goes through the same check and yields its detections."""
    log = json.dumps([{"qsl_idx": 3, "data": _hex_rows(2)}, {"qsl_idx": 3, "data": _hex_rows(1)}]).encode()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "mlperf_log_accuracy.json"
        path.write_bytes(log)
        detections = read_accuracy_log(path, sample_count=20)
    assert list(detections) == [3] and detections[3].shape == (2, 6)
    assert math.isclose(float(detections[3][1, 5]), 11.0)
    _check_reader(log)
