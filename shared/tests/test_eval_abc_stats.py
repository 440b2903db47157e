"""musiccore.eval.abc_stats with an injected fake validator and with the real musiccore.abc.validate."""

from dataclasses import dataclass, field

import pytest

from musiccore.eval.abc_stats import abc_validity_stats, normalize_reason


@dataclass
class FakeResult:
    ok: bool
    errors: list = field(default_factory=list)


def fake_validate(tune: str) -> FakeResult:
    """Valid iff the tune has a K: line; bar-length complaints for each 'BAD<n>' token; crashes on 'CRASH'."""
    if "CRASH" in tune:
        raise RuntimeError("parser blew up")
    errors = []
    if "K:" not in tune:
        errors.append("no K: field")
    errors += [f"bar {tok[3:]}: too long" for tok in tune.split() if tok.startswith("BAD")]
    return FakeResult(ok=not errors, errors=errors)


def test_counts_and_top_reasons_with_fake_validator():
    tunes = [
        "X:1\nK:C\nCDEF|",  # valid
        "X:2\nK:G\nGABc|",  # valid
        "X:3\nCDEF|",  # no K:
        "X:4\nK:D\nBAD3 BAD12",  # two bar errors, counted once for this tune
        "X:5\nK:D\nBAD7",
        "X:6\nBAD1",  # no K: and a bar error
        "X:7\nK:C\nCRASH",
    ]
    st = abc_validity_stats(tunes, validator=fake_validate, top_k=5)
    assert (st.n_total, st.n_valid, st.n_invalid) == (7, 2, 5)
    assert st.valid_rate == pytest.approx(2 / 7)
    assert st.invalid_indices == [2, 3, 4, 5, 6]
    assert st.n_validator_crashes == 1
    assert st.top_errors == [
        ("bar N: too long", 3),
        ("no K: field", 2),
        ("validator raised RuntimeError: parser blew up", 1),
    ]
    assert st.top_errors[0][0] in st.summary() and "2/7 valid" in st.summary()
    assert st.to_dict()["n_invalid"] == 5
    assert abc_validity_stats(tunes, validator=fake_validate, top_k=1).top_errors == [("bar N: too long", 3)]


def test_reason_normalisation_and_edge_cases():
    assert normalize_reason("bar 12: 5/8 in   M:6/8 near 'abc'") == "bar N: N/N in M:N/N near '…'"

    class Err:
        message = "line 4: bad   note"

    assert normalize_reason(Err()) == "line N: bad note"
    # ok=False without messages still counts, under a placeholder reason.
    st = abc_validity_stats(["x"], validator=lambda t: FakeResult(False, []))
    assert st.top_errors == [("(no error message)", 1)]
    # Extra keyword arguments go to the validator.
    seen = {}

    def v(tune, **kw):
        seen.update(kw)
        return FakeResult(True)

    assert abc_validity_stats(iter(["a", "b"]), validator=v, strict=True).n_valid == 2 and seen == {"strict": True}
    with pytest.raises(ValueError, match="no tunes"):
        abc_validity_stats([], validator=fake_validate)


def test_with_the_real_validator():
    abc = pytest.importorskip("musiccore.abc")
    if not hasattr(abc, "validate"):
        pytest.skip("musiccore.abc.validate not written yet")
    good = "X:1\nT:Scale\nM:4/4\nL:1/4\nK:C\nCDEF|GABc|\n"
    no_key = "X:2\nT:No key\nM:4/4\nL:1/4\nCDEF|\n"
    long_bar = "X:3\nT:Long bar\nM:4/4\nL:1/4\nK:C\nCDEF|GABcd|CDEF|\n"
    st = abc_validity_stats([good, no_key, long_bar, ""], use_music21=False)
    assert st.n_total == 4 and st.n_valid == 1 and st.invalid_indices == [1, 2, 3]
    reasons = " | ".join(r for r, _ in st.top_errors)
    assert "K:" in reasons and "empty" in reasons
    assert st.n_validator_crashes == 0
