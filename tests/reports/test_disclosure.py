"""Disclosure control: each test tries one way of learning about fewer than `threshold`
people, and checks that the published figures do not allow it."""

from __future__ import annotations

import pandas as pd
import pytest

from reports.disclosure import (
    ALL,
    SUPPRESSED,
    DisclosureError,
    protect,
    restrict_to,
    subset_allowed,
    too_small,
)

FIGURES = ["people", "completed"]


def homes_table(rows, wave="baseline"):
    """A wave's table of (home, people, completed) rows plus its All row."""
    frame = pd.DataFrame(rows, columns=["home", "people", "completed"]).assign(wave=wave)
    total = {"wave": wave, "home": ALL, **frame[FIGURES].sum().to_dict()}
    return pd.concat([frame, pd.DataFrame([total])], ignore_index=True)


def protected(table, threshold=5, **options):
    return protect(table, "people", FIGURES, ["wave"], threshold, total_col="home", **options)


def recoverable(table):
    """What All minus the homes shown gives away, per wave: (people, completed)."""
    out = {}
    for wave, rows in table.groupby("wave"):
        total = rows[rows["home"] == ALL].iloc[0]
        shown = rows[(rows["home"] != ALL) & (rows["people"] != SUPPRESSED)]
        out[wave] = (
            total["people"] - shown["people"].sum(),
            total["completed"] - shown["completed"].sum(),
        )
    return out


def test_subtracting_the_shown_homes_from_all_never_gives_fewer_than_threshold_people():
    table = homes_table([("Ash", 12, 9), ("Birch", 7, 3), ("Cedar", 6, 2), ("Dene", 2, 2)])
    result = protected(table)
    hidden = set(result.loc[result["people"] == SUPPRESSED, "home"])
    # Dene (2) alone would be All - Ash - Birch - Cedar; Cedar (next smallest) joins it.
    assert hidden == {"Dene", "Cedar"}
    assert recoverable(result) == {"baseline": (8, 4)}  # two homes, 8 people together


def test_suppression_continues_until_the_hidden_rows_hold_threshold_people():
    table = homes_table([("Ash", 20, 9), ("Birch", 1, 1), ("Cedar", 1, 0), ("Dene", 1, 1)])
    result = protected(table)
    hidden = set(result.loc[result["people"] == SUPPRESSED, "home"])
    assert hidden == {"Birch", "Cedar", "Dene", "Ash"}  # 3 people, then Ash is needed
    assert result.iloc[-1]["people"] == 23  # the total of 23 people is still shown


def test_nothing_more_is_hidden_when_the_small_homes_already_hold_threshold_people():
    table = homes_table([("Ash", 12, 9), ("Birch", 3, 1), ("Cedar", 2, 2)])
    result = protected(table)
    assert list(result["people"]) == [12, SUPPRESSED, SUPPRESSED, 17]
    assert recoverable(result) == {"baseline": (5, 3)}


def test_the_total_is_assumed_known_even_when_the_table_does_not_show_it():
    # Another table (or the weekly email) may publish the wave's total.
    table = homes_table([("Ash", 12, 9), ("Birch", 7, 3), ("Dene", 2, 2)]).iloc[:-1]
    result = protected(table)
    assert list(result["people"]) == [12, SUPPRESSED, SUPPRESSED]


def test_each_parent_group_is_protected_on_its_own():
    table = pd.concat(
        [
            homes_table([("Ash", 12, 9), ("Birch", 7, 3), ("Dene", 2, 2)], wave="baseline"),
            homes_table([("Ash", 12, 9), ("Birch", 7, 3), ("Dene", 5, 2)], wave="end"),
        ],
        ignore_index=True,
    )
    result = protected(table)
    end = result[result["wave"] == "end"]
    assert SUPPRESSED not in set(end["people"])  # 5 people in Dene at the end: shown
    # baseline: Dene and Birch together (9 people); end: nothing hidden, nothing to recover
    assert recoverable(result) == {"baseline": (9, 5), "end": (0, 0)}


def test_exactly_threshold_people_is_shown_and_zero_is_shown():
    table = homes_table([("Ash", 5, 0), ("Birch", 0, 0)])
    result = protected(table)
    assert list(result["people"]) == [5, 0, 5]
    assert list(result["completed"]) == [0, 0, 0]


def test_shared_people_are_counted_once_when_members_are_given():
    table = pd.DataFrame(
        {
            "wave": "baseline",
            "instrument": ["self_report", "appraisal_self", "morale"],
            "people": [3, 3, 10],
            "completed": [3, 3, 8],
            "members": [frozenset({1, 2, 3}), frozenset({1, 2, 3}), frozenset(range(10, 20))],
        }
    )
    args = ("people", FIGURES, ["wave"], 5)
    by_sum = protect(table, *args)
    by_union = protect(table, *args, members_col="members")
    assert list(by_sum["people"]) == [SUPPRESSED, SUPPRESSED, 10]  # 3 + 3 looks safe...
    assert list(by_union["people"]) == [SUPPRESSED] * 3  # ...but it is the same 3 people


def home_role_table(rows):
    """(home, role, people) rows of one wave; completed is set to people."""
    frame = pd.DataFrame(rows, columns=["home", "role", "people"])
    return frame.assign(wave="baseline", completed=frame["people"])


def hidden_cells(result):
    hidden = result[result["people"] == SUPPRESSED]
    return set(zip(hidden["home"], hidden["role"], strict=True))


def test_a_crossed_table_is_protected_along_each_of_its_columns():
    table = home_role_table(
        [
            ("Ash", "carer", 8),
            ("Ash", "nurse", 2),
            ("Ash", "senior", 6),
            ("Birch", "carer", 10),
            ("Birch", "nurse", 6),
            ("Birch", "senior", 7),
        ]
    )
    args = ("people", FIGURES, ["wave", "home"], 5)
    only_roles = protect(table, *args, total_col="role")
    crossed = protect(table, *args, total_col="role", crossed=["home"])
    # Protected within each home only, the nurses' total (8) minus Birch's 6 is Ash's 2.
    assert hidden_cells(only_roles) == {("Ash", "nurse"), ("Ash", "senior")}
    assert hidden_cells(crossed) == {
        ("Ash", "nurse"),
        ("Ash", "senior"),
        ("Birch", "nurse"),  # so the nurses' total gives 8 people, in two homes
        ("Birch", "senior"),  # a lone hidden senior row would equal the seniors' total
    }


def test_a_suppressed_total_cannot_be_rebuilt_by_adding_the_rows_under_it():
    table = home_role_table(
        [
            ("Ash", "carer", 2),
            ("Ash", "nurse", 1),
            ("Ash", ALL, 3),
            ("Birch", "carer", 6),
            ("Birch", "nurse", 6),
            ("Birch", ALL, 12),
            ("Cedar", "carer", 10),
            ("Cedar", "nurse", 10),
            ("Cedar", ALL, 20),
        ]
    )
    result = protect(
        table, "people", FIGURES, ["wave", "home"], 5, total_col="role", crossed=["home"]
    )
    # Ash (3 people) needs Birch's total hidden too, against the wave's total; Birch's
    # carers and nurses then cannot both be shown, or they would add up to it.
    assert ("Birch", ALL) in hidden_cells(result)
    assert {("Birch", "carer"), ("Birch", "nurse")} <= hidden_cells(result)
    assert not {cell for cell in hidden_cells(result) if cell[0] == "Cedar"}


def test_group_labels_and_other_columns_are_never_replaced():
    result = protected(homes_table([("Ash", 12, 9), ("Dene", 2, 2)]))
    assert list(result["home"]) == ["Ash", "Dene", ALL]
    assert set(result["wave"]) == {"baseline"}


@pytest.mark.parametrize(
    ("n_subset", "n_total", "allowed"),
    [
        (0, 20, True),  # an empty filter shows nobody
        (20, 20, True),  # the whole population: nothing is left out
        (5, 20, True),
        (15, 20, True),
        (4, 20, False),  # a group of 4
        (19, 20, False),  # everyone but one: unfiltered minus filtered is one person
        (16, 20, False),
        (3, 3, False),
    ],
)
def test_a_filtered_report_needs_the_subset_and_the_rest_to_be_large_enough(
    n_subset, n_total, allowed
):
    assert subset_allowed(n_subset, n_total, 5) is allowed


def staff(n_people, **columns):
    return pd.DataFrame({"person_id": range(n_people), **columns})


def test_filtering_to_a_group_of_four_is_refused_without_saying_how_many():
    frame = staff(20, home=["Dene"] * 4 + ["Ash"] * 16)
    with pytest.raises(DisclosureError) as refused:
        restrict_to(frame, frame["home"] == "Dene", 5, "home = 'Dene'")
    message = str(refused.value)
    assert "home = 'Dene'" in message and "fewer than 5 people" in message
    assert "4" not in message  # the refusal must not itself disclose the group's size


def test_filtering_to_everyone_but_one_person_is_refused():
    frame = staff(20)
    with pytest.raises(DisclosureError, match="leave out fewer than 5 people"):
        restrict_to(frame, frame["person_id"] != 7, 5, "everyone but person 7")


def test_a_person_on_both_sides_of_a_filter_counts_on_both():
    # Ten people answer by SMS; one of them also has an email invitation. Filtering to SMS
    # leaves out one person's invitations, which the difference would describe.
    frame = pd.DataFrame({"person_id": [*range(10), 0], "channel": ["sms"] * 10 + ["email"]})
    with pytest.raises(DisclosureError):
        restrict_to(frame, frame["channel"] == "sms", 5, "channel = 'sms'")


def test_an_allowed_filter_returns_the_subset():
    frame = staff(20, home=["Birch"] * 5 + ["Ash"] * 15)
    kept = restrict_to(frame, frame["home"] == "Birch", 5, "home = 'Birch'")
    assert list(kept["person_id"]) == [0, 1, 2, 3, 4]


def test_too_small_is_strictly_between_zero_and_the_threshold():
    assert [too_small(n, 5) for n in (0, 1, 4, 5, 6)] == [False, True, True, False, False]


def test_a_lone_small_row_stands_alone_when_its_line_total_is_published_nowhere():
    # Instruments of one wave: their total is shown in no output, so hiding the three
    # managers' self-reports cannot be undone by subtraction and needs no partner.
    table = pd.DataFrame(
        [("staff_morale", 20, 16), ("manager_self_report", 3, 2), ("appraisal_360", 23, 19)],
        columns=["home", "people", "completed"],
    ).assign(wave="baseline")
    alone = protected(table, totals_known=False)
    assert list(alone["people"]) == [20, SUPPRESSED, 23]
    # The same table whose total is known somewhere: the next smallest row must go too.
    assert list(protected(table)["people"]) == [SUPPRESSED, SUPPRESSED, 23]


def test_a_shown_total_is_known_whatever_the_caller_says():
    table = homes_table([("Ash", 12, 9), ("Birch", 7, 3), ("Dene", 2, 2)])
    result = protected(table, totals_known=False)
    assert recoverable(result) == {"baseline": (9, 5)}  # Dene is not alone under All
