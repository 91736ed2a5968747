"""Historical files as users bring them, read from installed packages (statsmodels, vega_datasets) or written
as their European-spreadsheet variants: dates from 1700 and 1958, "Jan 1 2000", YYYYMMDD integers, semicolons
with decimal commas, latin-1, ragged rows, wrong column names."""

from __future__ import annotations

import os

import pandas as pd
import pytest
import statsmodels.datasets.co2
import statsmodels.datasets.sunspots
from vega_datasets import local_data

from clients.errors import InputError
from flows.miniviz_backfill import BackfillSpec, format_ms, iter_file_results, to_unix_ms
from flows.miniviz_backfill.values import short_repr
from tasks.tables import CsvDialect, iter_table_chunks

CO2 = os.path.join(os.path.dirname(statsmodels.datasets.co2.__file__), "co2.csv")
SUNSPOTS = os.path.join(os.path.dirname(statsmodels.datasets.sunspots.__file__), "sunspots.csv")
STOCKS = local_data.stocks.filepath
DAY = 86_400_000
MS_1958_03_29 = -371_174_400_000


def run(path, **spec):
    """Every event and rejection of one file, and how it was read."""
    read_as: dict[str, str] = {}
    events, rejections = [], []
    for result in iter_file_results(str(path), BackfillSpec(**spec).check(), 500, read_as=read_as):
        events += result.events
        rejections += result.rejections
    return events, rejections, read_as.get(str(path), "")


def codes(values, **kw):
    ms, reasons = to_unix_ms(pd.Series(values), **kw)
    return [r or int(m) for m, r in zip(ms, reasons, strict=True)]


def test_co2_yyyymmdd_integers_from_1958_are_dates_not_epoch_seconds():
    events, rejections, read_as = run(CO2, timestamp_column="date", label_key="mauna-loa")
    assert events[0].timestamp == MS_1958_03_29 and format_ms(events[0].timestamp) == "1958-03-29T00:00:00Z"
    assert events[0].payload == {"co2": 316.1}
    assert format_ms(events[-1].timestamp) == "2001-12-29T00:00:00Z"
    assert len(events) + len(rejections) == 2284
    assert {r.reason for r in rejections} == {"no_metrics"}  # the 59 gaps of the series
    assert read_as == "sep ',' (detected), encoding 'utf-8' (detected), decimal '.' (detected)"


def test_the_yyyymmdd_rule_and_its_way_out():
    assert codes([19580329, "19580329", 19580329.0]) == [MS_1958_03_29] * 3
    assert codes([19580229]) == [19_580_229_000]  # no 29 February in 1958: epoch seconds (1970-08-15)
    assert codes([19580329], epoch_unit="s") == [19_580_329_000]  # a unit given: numbers are epochs
    assert codes([19580329], timezone="America/New_York") == [MS_1958_03_29 + 5 * 3_600_000]


def test_pre_1970_and_pre_2001_dates_are_kept():
    got = codes(["1958-03-29", "1969-12-31T23:59:59Z", "1989-11-09T18:00:00+01:00", -86_400])
    assert got == [MS_1958_03_29, -1000, 626_634_000_000, -DAY]


def test_stocks_textual_months_need_timestamp_format():
    events, rejections, _ = run(
        STOCKS, timestamp_column="date", label_column="symbol", timestamp_format="%b %d %Y"
    )
    assert len(events) == 560 and not rejections
    assert (events[0].label_key, format_ms(events[0].timestamp), events[0].payload) == (
        "MSFT",
        "2000-01-01T00:00:00Z",
        {"price": 39.81},
    )
    events, rejections, _ = run(STOCKS, timestamp_column="date", label_column="symbol")
    assert not events and {r.reason for r in rejections} == {"timestamp_invalid"}
    assert rejections[0].detail.endswith("date='Jan 1 2000'")


def test_sunspots_from_1700_with_a_year_format():
    events, _, _ = run(SUNSPOTS, timestamp_column="YEAR", label_key="sun", timestamp_format="%Y")
    assert format_ms(events[0].timestamp) == "1700-01-01T00:00:00Z" and events[0].payload == {
        "SUNACTIVITY": 5
    }


def european(path, encoding="latin-1"):
    """co2 as a European spreadsheet exports it: semicolons, decimal commas, an accented station name."""
    df = pd.read_csv(CO2).head(20)
    df["station"] = "Mauna Loa, Hawaï"
    text = df.to_csv(index=False, sep=";", decimal=",")
    path.write_bytes(text.encode(encoding))
    return path


def test_semicolons_decimal_commas_and_latin1_are_detected(tmp_path):
    events, rejections, read_as = run(european(tmp_path / "co2.csv"), timestamp_column="date", label_key="x")
    assert read_as == "sep ';' (detected), encoding 'cp1252' (detected), decimal ',' (detected)"
    assert events[0].payload == {"co2": 316.1, "station": "Mauna Loa, Hawaï"}
    assert events[0].timestamp == MS_1958_03_29 and len(events) + len(rejections) == 20


def test_latin1_loads_when_said_and_fails_clearly_when_not_decodable(tmp_path):
    path = european(tmp_path / "co2.csv")
    events, _, read_as = run(path, timestamp_column="date", label_key="x", encoding="latin-1")
    assert events[0].payload["station"] == "Mauna Loa, Hawaï" and "encoding 'latin-1'," in read_as
    with pytest.raises(InputError, match=r"cannot be read as CSV: UnicodeDecodeError.*set encoding"):
        run(path, timestamp_column="date", label_key="x", encoding="utf-8")


def test_a_semicolon_file_read_with_commas_names_its_real_header(tmp_path):
    path = european(tmp_path / "co2.csv", "utf-8")
    with pytest.raises(InputError) as exc:
        run(path, timestamp_column="date", label_key="x", sep=",", decimal=".")
    assert "['date'] not in the file" in str(exc.value) and "date;co2;station" in str(exc.value)


def test_a_misspelled_metric_lists_the_columns_the_file_has():
    with pytest.raises(InputError) as exc:
        run(CO2, timestamp_column="date", label_key="x", metrics=("c02",))
    assert "['c02'] not in" in str(exc.value) and "available: ['date', 'co2']" in str(exc.value)


def test_a_missing_label_column_is_named():
    with pytest.raises(InputError, match=r"\['label_key'\] not in the file.*available: \['date', 'co2'\]"):
        run(CO2, timestamp_column="date")


def test_ragged_rows_are_rejected_with_their_line_number(tmp_path):
    path = tmp_path / "ragged.csv"
    path.write_text("date,co2\n19580329,316.1\n19580405,317.3,extra\n19580412,317.6\n19580419,317.5,a,b\n")
    events, rejections, _ = run(path, timestamp_column="date", label_key="x")
    assert [format_ms(e.timestamp)[:10] for e in events] == ["1958-03-29", "1958-04-12"]
    assert [(r.reason, r.data) for r in rejections] == [("bad_line", {"line": 3}), ("bad_line", {"line": 5})]
    assert "line 3: expected 2 fields, saw 3" in rejections[0].detail
    # the send pass skips them the same way: the same events, numbered alike
    spec = BackfillSpec(timestamp_column="date", label_key="x").check()
    again = [e for r in iter_file_results(str(path), spec, 500, report_bad_lines=False) for e in r.events]
    assert [(e.seq, e.timestamp) for e in again] == [(e.seq, e.timestamp) for e in events]


def test_the_default_dialect_still_fails_a_ragged_file(tmp_path):
    """What the Micrio manifests get: plain RFC 4180, a malformed line fails the file."""
    path = tmp_path / "manifest.csv"
    path.write_text("key\na.jpg\nb.jpg,extra\n")
    with pytest.raises(InputError, match="Expected 1 fields in line 3, saw 2"):
        list(iter_table_chunks(str(path)))
    assert list(iter_table_chunks(str(path), csv_dialect=CsvDialect(bad_lines="skip")))[0].key.tolist() == [
        "a.jpg"
    ]


def test_dead_letter_details_show_plain_values():
    assert short_repr(pd.Series([19580329]).iat[0]) == "19580329"
    assert short_repr(pd.Timestamp("1958-03-29")) == "1958-03-29T00:00:00"
    assert short_repr("Jan 1 2000") == "'Jan 1 2000'"
