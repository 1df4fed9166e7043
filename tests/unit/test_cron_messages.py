"""What a bad cron expression is told: the field, the bad part and what the field accepts.

croniter parses; its errors name neither the field nor its range, so ``engine.spec_checks``
reads the fields again to say what is wrong. That reading must never fault what croniter
accepts, which the property at the end holds it to.
"""

from __future__ import annotations

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from engine.core.errors import SpecError
from engine.core.spec import ExternalChecks, parse_spec
from engine.spec_checks import CronError, _cron_fields_problem, cron_iterator, cron_problem
from orchestrator.schedule import Schedule, ScheduleError


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        # one value out of range, in each field of both forms
        ("61 * * * *", "cron '61 * * * *': minute field '61' is out of range 0-59"),
        ("* 24 * * *", "cron '* 24 * * *': hour field '24' is out of range 0-23"),
        ("0 0 0 * *", "cron '0 0 0 * *': day field '0' is out of range 1-31"),
        ("0 0 32 * *", "cron '0 0 32 * *': day field '32' is out of range 1-31"),
        ("0 0 1 13 *", "cron '0 0 1 13 *': month field '13' is out of range 1-12"),
        ("0 0 1 0 *", "cron '0 0 1 0 *': month field '0' is out of range 1-12"),
        ("* * * * 8", "cron '* * * * 8': weekday field '8' is out of range 0-7"),
        ("60 * * * * *", "cron '60 * * * * *': second field '60' is out of range 0-59"),
        ("0 60 * * * *", "cron '0 60 * * * *': minute field '60' is out of range 0-59"),
        ("0 0 24 * * *", "cron '0 0 24 * * *': hour field '24' is out of range 0-23"),
        ("* * * * * 8", "cron '* * * * * 8': weekday field '8' is out of range 0-7"),
        ("00061 * * * *", "cron '00061 * * * *': minute field '00061' is out of range 0-59"),
        ("9" * 5000 + " * * * *", "minute field '" + "9" * 5000 + "' is out of range 0-59"),
        # names
        (
            "* * * JANX *",
            "cron '* * * JANX *': month field 'JANX' is not a number 1-12 or a name jan-dec",
        ),
        (
            "* * * january *",
            "cron '* * * january *': month field 'january' is not a number 1-12 or a name jan-dec",
        ),
        (
            "0 9 * * Mo",
            "cron '0 9 * * Mo': weekday field 'Mo' is not a number 0-7 or a name sun-sat",
        ),
        ("0 x * * *", "cron '0 x * * *': hour field 'x' is not a number 0-23"),
        ("0 0 * jan * *", "cron '0 0 * jan * *': day field 'jan' is not a number 1-31"),
        # ranges, steps and lists name the part that is wrong
        ("1-60 * * * *", "cron '1-60 * * * *': minute field '1-60': '60' is out of range 0-59"),
        ("0 0 0-5 * *", "cron '0 0 0-5 * *': day field '0-5': '0' is out of range 1-31"),
        ("* * * * mon-8", "cron '* * * * mon-8': weekday field 'mon-8': '8' is out of range 0-7"),
        (
            "* * * jan-foo *",
            "cron '* * * jan-foo *': month field 'jan-foo': 'foo' is not a number 1-12 "
            "or a name jan-dec",
        ),
        ("5,61 * * * *", "cron '5,61 * * * *': minute field '5,61': '61' is out of range 0-59"),
        (
            "0 0 1,15,40 * *",
            "cron '0 0 1,15,40 * *': day field '1,15,40': '40' is out of range 1-31",
        ),
        (
            "0-70/5 * * * *",
            "cron '0-70/5 * * * *': minute field '0-70/5': '70' is out of range 0-59",
        ),
        ("0 */25x * * *", "cron '0 */25x * * *': hour field '*/25x' has step '25x': use a whole"),
        ("*/0 * * * *", "cron '*/0 * * * *': minute field '*/0' has step '0': use a whole number"),
        ("5,*/00 * * * *", "minute field '5,*/00': '*/00' has step '00': use a whole number"),
        ("1,,2 * * * *", "cron '1,,2 * * * *': minute field '1,,2' has an empty list item"),
        ("1, * * * *", "cron '1, * * * *': minute field '1,' has an empty list item"),
        ("-5 * * * *", "minute field '-5' is not a value, a range like 1-5 or a step like */5"),
        ("5- * * * *", "minute field '5-' is not a value, a range like 1-5 or a step like */5"),
        ("1-2-3 * * * *", "minute field '1-2-3' is not a value, a range like 1-5 or a step"),
        ("1/2/3 * * * *", "minute field '1/2/3' is not a value, a range like 1-5 or a step"),
        ("*-5 * * * *", "cron '*-5 * * * *': minute field '*-5': '*' is not a number 0-59"),
        # croniter's extensions
        ("? * * * *", "minute field '?' is allowed only as the whole day or weekday field"),
        ("0 0 1,? * *", "day field '1,?': '?' is allowed only as the whole day or weekday field"),
        ("0 0 32W * *", "cron '0 0 32W * *': day field '32W': '32' is out of range 1-31"),
        ("0 0 * * L8", "cron '0 0 * * L8': weekday field 'L8': '8' is out of range 0-7"),
        (
            "0 0 * * 5L",
            "weekday field '5L' is not a number 0-7 or a name sun-sat "
            "(the last one in the month is L5)",
        ),
        (
            "0 0 * * 1#6",
            "cron '0 0 * * 1#6': weekday field '1#6' asks for weekday #6 of the month: use #1 to #5",
        ),
        ("0 0 * * mon#0", "weekday field 'mon#0' asks for weekday #0 of the month: use #1 to #5"),
        ("0 0 * * 9#2", "cron '0 0 * * 9#2': weekday field '9#2': '9' is out of range 0-7"),
        # the first bad field is the one named
        ("70 25 * * *", "cron '70 25 * * *': minute field '70' is out of range 0-59"),
        # spaces as written are kept in the expression shown
        ("61  *  * * *", "cron '61  *  * * *': minute field '61' is out of range 0-59"),
    ],
)
def test_a_bad_field_is_named_with_what_it_accepts(expr: str, message: str) -> None:
    problem = cron_problem(expr)
    assert problem is not None
    assert message in problem
    with pytest.raises(CronError) as err:
        cron_iterator(expr)
    assert str(err.value) == problem
    assert err.value.__cause__ is not None  # croniter's own error, kept as the cause
    with pytest.raises(ScheduleError, match="field"):
        Schedule(expr)


@pytest.mark.parametrize(
    ("expr", "croniter_says"),
    [
        # what the fields alone cannot tell: croniter's words are kept
        ("H * * * *", "Hashed definitions must include hash_id"),
        ("0 0 15W,16 * *", "'W' can only be used with a single day value"),
        ("0 0 * * mon#2,tue", "does not support mixing literal values and nth day of week"),
    ],
)
def test_what_the_fields_do_not_explain_keeps_croniters_words(
    expr: str, croniter_says: str
) -> None:
    problem = cron_problem(expr)
    assert problem is not None
    assert problem.startswith(f"cron {expr!r} is not valid: ")
    assert croniter_says in problem


def test_a_spec_with_a_bad_cron_names_the_field() -> None:
    doc = {
        "id": "nightly",
        "version": "1.0.0",
        "triggers": [{"cron": "0 0 * * 8"}],
        "nodes": [{"id": "a", "lua": "return {}"}],
    }
    with pytest.raises(SpecError) as err:
        parse_spec(doc, checks=ExternalChecks(cron=cron_problem))
    assert err.value.messages() == [
        "triggers[0].cron: cron '0 0 * * 8': weekday field '8' is out of range 0-7"
    ]


# -- the reading never faults what croniter accepts ---------------------------------------------

_VALUES = st.one_of(
    st.integers(0, 65).map(str),
    st.sampled_from(["00", "07", "*", "?", "L", "l", "W", "H", "R", "jan", "DEC", "sun", "Sat"]),
    st.sampled_from(["mon", "foo", "x", "", "15W", "W15", "L5", "5L", "1#2", "mon#5", "1#6"]),
)


@st.composite
def _items(draw: st.DrawFn) -> str:
    item = draw(_VALUES)
    if draw(st.booleans()):
        item += "-" + draw(_VALUES)
    if draw(st.booleans()):
        item += "/" + draw(st.sampled_from(["0", "1", "2", "5", "15", "60", "x", ""]))
    return item


_FIELDS = st.lists(_items(), min_size=1, max_size=3).map(",".join).filter(bool)


@settings(max_examples=1500, deadline=None)
@given(st.lists(_FIELDS, min_size=5, max_size=6))
@example(["*/60", "*", "*", "*", "0-7"])
@example(["59/15", "5-l", "L", "feb/3", "sat-sun"])
@example(["*", "*", "1-L", "*", "mon-wed#2"])
@example(["R", "*", "?", "*", "?"])
@example(["*", "*", "0-0", "5-0", "7-3"])  # croniter: equal is all, falling wraps round
@example(["*", "*", "31-0", "dec-0", "7-7"])
def test_the_fields_are_faulted_only_when_croniter_refuses_them(fields: list[str]) -> None:
    expr = " ".join(fields)
    try:
        cron_iterator(expr)
    except CronError as exc:
        message = str(exc)
        assert message.startswith(f"cron {expr!r}")
        problem = _cron_fields_problem(fields)
        assert message == (
            f"cron {expr!r}: {problem}"
            if problem is not None
            else f"cron {expr!r} is not valid: {exc.__cause__}"
        )
    else:
        assert _cron_fields_problem(fields) is None
