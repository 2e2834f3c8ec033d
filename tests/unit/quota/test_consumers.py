"""The ledger's consumer id as a type: every form round-trips, nothing else parses."""

from __future__ import annotations

import pytest

from shangzhuang.quota.consumers import Consumer


@pytest.mark.parametrize(
    "text",
    ["lab:ada/@1764500000123", "lab:ada/big@1", "app:olga/app-diary@1500", "job:42",
     "job:42@1764500000"],
)  # fmt: skip
def test_each_form_round_trips(text):
    assert str(Consumer.parse(text)) == text


def test_built_and_parsed_alike():
    lab = Consumer.session("lab", "ada", "", 1764500000.1234)
    assert str(lab) == "lab:ada/@1764500000123"
    assert Consumer.parse(str(lab)) == lab
    assert (lab.user, lab.server, lab.started) == ("ada", "", 1764500000.123)
    app = Consumer.parse("app:olga/app-diary@1500")
    assert (app.source, app.user, app.server) == ("app", "olga", "app-diary")
    assert Consumer.parse("job:42@1764500000") == Consumer.job("42", 1764500000)
    assert Consumer.parse("job:42").job_id == "42"


@pytest.mark.parametrize(
    "text", ["", "lab:ada", "lab:ada/@", "job:", "job:x", "gpu:ada/@1", "job:1; rm -rf /"]
)
def test_anything_else_is_refused(text):
    with pytest.raises(ValueError, match="not a consumer id"):
        Consumer.parse(text)


def test_a_session_is_lab_or_app():
    with pytest.raises(ValueError, match="lab or app"):
        Consumer.session("job", "ada", "", 1.0)
