"""load_labelled_file and load_series_csv on awkward files: quoted line breaks, stray commas,
padded labels, blank lines, reversed headers, bad dates, infinite values."""
from __future__ import annotations

import numpy as np
import pytest

from rnnkit.data import load_labelled_file, load_series_csv, load_sms_spam


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


# ---- labelled CSV ------------------------------------------------------------------------
def test_csv_quoted_fields_keep_their_line_breaks(tmp_path):
    path = write(tmp_path / "q.csv", 'text,label\n"hello, world",pos\n"multi\nline",neg\nlast,pos\n')
    assert load_labelled_file(path) == (["hello, world", "multi\nline", "last"], ["pos", "neg", "pos"])
    path.write_bytes(b'text,label\r\n"a, b",pos\r\n"c\r\nd",neg\r\n\r\n')  # CRLF, as read_text normalises it
    assert load_labelled_file(path) == (["a, b", "c\nd"], ["pos", "neg"])


def test_csv_row_with_more_fields_than_the_header_is_an_error(tmp_path):
    path = write(tmp_path / "u.csv", "text,label\nfine,neg\nhello, world,pos\n")
    with pytest.raises(ValueError, match="'.*u.csv' row 3 has 3 fields; expected 2 "
                                         "\\(quote a text that holds a comma\\)"):
        load_labelled_file(path)
    # the row number is the line a record starts on, after a multi-line text too
    write(path, 'text,label\n"two\nlines",neg\nhello, world,pos\n')
    with pytest.raises(ValueError, match="row 4 has 3 fields"):
        load_labelled_file(path)
    write(path, "text,label\nonly text\n")
    with pytest.raises(ValueError, match="row 2 has too few fields"):
        load_labelled_file(path)


def test_csv_duplicate_text_or_label_column_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="has 2 columns 'label' in \\['text', 'label', 'label'\\]; expected one"):
        load_labelled_file(write(tmp_path / "d.csv", "text,label,label\na,pos,neg\n"))
    with pytest.raises(ValueError, match="has 2 columns 'text'"):
        load_labelled_file(write(tmp_path / "d.csv", "text,text,label\na,b,pos\n"))
    # other columns are ignored, repeated or not
    assert load_labelled_file(write(tmp_path / "d.csv", "id,text,label,id\n1,a,pos,2\n")) == (["a"], ["pos"])


def test_labels_are_stripped_texts_are_not(tmp_path):
    csv_path = write(tmp_path / "l.csv", 'text,label\na, pos\nb,pos \n" c ",pos\n')
    assert load_labelled_file(csv_path) == (["a", "b", " c "], ["pos", "pos", "pos"])
    tsv_path = write(tmp_path / "l.txt", "pos \ta\n pos\tb \nneg\t c\n")
    assert load_labelled_file(tsv_path) == (["a", "b ", " c"], ["pos", "pos", "neg"])
    with pytest.raises(ValueError, match="row 2 has an empty label"):
        load_labelled_file(write(tmp_path / "e.csv", "text,label\na,  \n"))
    with pytest.raises(ValueError, match="line 1 of .* is not 'label<TAB>text'"):
        load_labelled_file(write(tmp_path / "e.txt", "  \ta\n"))
    assert load_sms_spam(write(tmp_path / "s.txt", "ham \thi\nspam\tbuy\n"))[1] == ["ham", "spam"]


def test_whitespace_only_lines_are_skipped_by_both_readers(tmp_path):
    assert load_labelled_file(write(tmp_path / "w.csv", "text,label\na,pos\n   \n\t\nb,neg\n  \n")) == \
        (["a", "b"], ["pos", "neg"])
    assert load_labelled_file(write(tmp_path / "w.csv", "\n  \ntext,label\na,pos\n")) == (["a"], ["pos"])
    assert load_labelled_file(write(tmp_path / "w.txt", "pos\ta\n   \n\nneg\tb\n")) == (["a", "b"], ["pos", "neg"])


def test_tsv_header_in_either_order(tmp_path):
    assert load_labelled_file(write(tmp_path / "h.txt", "label\ttext\npos\ta\tb\n")) == (["a\tb"], ["pos"])
    # text<TAB>label: a header too, and the lines are read in that order (the label after the last tab)
    assert load_labelled_file(write(tmp_path / "h.txt", "text\tlabel\na\tpos\nb\tc \tneg\n\n")) == \
        (["a", "b\tc "], ["pos", "neg"])
    assert load_labelled_file(write(tmp_path / "h.txt", "\ntext\tlabel\na\tpos\n")) == (["a"], ["pos"])
    with pytest.raises(ValueError, match="line 2 of .* is not 'text<TAB>label'"):
        load_labelled_file(write(tmp_path / "h.txt", "text\tlabel\nno tab\n"))


# ---- series CSV --------------------------------------------------------------------------
def test_series_csv_of_blank_lines_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="has columns \\[\\] and 0 rows; expected an index column"):
        load_series_csv(write(tmp_path / "b.csv", "\n\n  \n"))


def test_series_csv_skips_blank_lines_and_names_file_lines(tmp_path):
    path = write(tmp_path / "s.csv", "year,a\n1990,1\n\n   \n1991,2\n")
    index, values = load_series_csv(path)
    assert index.tolist() == [1990, 1991] and values.tolist() == [1.0, 2.0]
    write(path, 'year,"a\nb"\n1990,1\n1991,2\n')  # a quoted line break stays in its cell
    assert load_series_csv(path, column="a\nb")[1].tolist() == [1.0, 2.0]
    write(path, "year,a\n1990,1\n\n1991,x\n")
    with pytest.raises(ValueError, match="row 4, column 'a' of .* is 'x'"):
        load_series_csv(path)


def test_series_csv_bad_date_names_file_and_row(tmp_path):
    path = write(tmp_path / "d.csv", "date,v\n2020-02-28,1\n2020-02-30,2\n")
    with pytest.raises(ValueError, match="row 3, column 'date' of '.*d.csv' is '2020-02-30'; "
                                         "expected a valid yyyy-mm-dd date"):
        load_series_csv(path)


@pytest.mark.parametrize("cell", ["inf", "-inf", "1e400", "Infinity"])
def test_series_csv_refuses_infinite_values(tmp_path, cell):
    path = write(tmp_path / "i.csv", f"year,a,b\n1990,1,2\n1991,3,{cell}\n")
    with pytest.raises(ValueError, match=f"row 3, column 'b' of '.*i.csv' is '{cell}'; expected a finite number"):
        load_series_csv(path)
    assert load_series_csv(path, column="a")[1].tolist() == [1.0, 3.0]  # only the columns read are checked


def test_series_csv_nan_is_still_missing(tmp_path):
    path = write(tmp_path / "n.csv", "year,a\n1990,1\n1991,nan\n1992,NA\n1993,4\n")
    assert np.isnan(load_series_csv(path)[1]).sum() == 2
    assert load_series_csv(path, missing="interpolate")[1].tolist() == [1.0, 2.0, 3.0, 4.0]


def test_series_csv_quoted_cells(tmp_path):
    path = write(tmp_path / "q.csv", '"year","a, b"\r\n"1990",1\r\n"1991","2"\r\n')
    index, values = load_series_csv(path, column="a, b")
    assert index.tolist() == [1990, 1991] and values.tolist() == [1.0, 2.0]
    write(path, 'year,"a\nb"\n1990,1\n1991,2\n')  # a quoted line break stays in its cell
    assert load_series_csv(path, column="a\nb")[1].tolist() == [1.0, 2.0]
