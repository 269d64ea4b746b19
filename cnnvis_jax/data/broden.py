"""Reader for Broden-format concept data sets (broden1_224, broden1_227, exports).

Layout of a Broden directory ``ROOT``::

    ROOT/index.csv      image,split,ih,iw,sh,sw,<one column per category>
    ROOT/category.csv   name,first,last,count,frequency
    ROOT/label.csv      number,name,category,frequency,coverage,syns
    ROOT/c_<cat>.csv    code,number,name,frequency,coverage   (one per category)
    ROOT/images/...     images and label masks, referenced relative to images/

Columns are read by name (their order varies between releases). An index.csv
category cell is ``;``-separated: a bare integer is an image-level label, any
other item is a pixel-level mask PNG (label = R + 256 * G) relative to
``images/``; several PNGs make a multi-layer category (parts). A cell may mix
both kinds: its integers go to ``"scalar"`` and its PNGs to ``"pixel"``. Label
0 means "none": it stays 0 in masks, and an image-level 0 is kept in
``"scalar"`` and listed in :attr:`BrodenSource.zero_scalar_rows` (NetDissect-Lite
scores such a 0 as an ordinary label, which is how 1,987 ADE rows with scene 0
end up counted as a texture; drop the zeros yourself to avoid that).

:class:`BrodenSource` parses every CSV file up front (strictly: a malformed file
fails at construction with the file, 1-based line number, column and a fix) and
decodes images and masks lazily per sample. :func:`validate` reads every
referenced file as well. File paths are checked before anything is opened:
absolute paths and ``..`` are refused at parse time, symbolic links that resolve
outside ``images/`` right before opening (the ``images`` folder itself may be a
link, a common way to share one copy).
"""

from __future__ import annotations

import csv
import dataclasses
import os
import re
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from cnnvis_jax.data.imageio import read_image, read_label_png
from cnnvis_jax.data.paths import Resolver, check_relative, real_dir
from cnnvis_jax.data.types import CATEGORIES, Label, Sample, Vocabulary
from cnnvis_jax.errors import DataError, InputError, did_you_mean

META_COLUMNS = ("image", "split", "ih", "iw", "sh", "sw")
"""index.csv columns that are not categories (all required)."""

_INT = re.compile(r"^-?\d+$")
_CAT_ITEM = re.compile(r"^\s*([^()]+?)\s*(?:\(\s*([^()]*?)\s*\))?\s*$")
_IMAGES = "images/"


# --- small records ------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class BrodenRow:
    """One parsed index.csv row.

    Attributes:
      line: 1-based line number in index.csv.
      image: image path relative to ``images/``.
      split: split name (``train``, ``val``...).
      ih, iw: image height and width.
      sh, sw: segmentation height and width.
      scalar: {category: image-level label numbers} for cells with integers.
      masks: {category: mask PNG paths relative to ``images/``} for cells with PNGs.
    """

    line: int
    image: str
    split: str
    ih: int
    iw: int
    sh: int
    sw: int
    scalar: dict[str, tuple[int, ...]]
    masks: dict[str, tuple[str, ...]]

    def has_data(self, categories: Sequence[str]) -> bool:
        return any(c in self.scalar or c in self.masks for c in categories)


@dataclasses.dataclass(frozen=True)
class CategoryCodes:
    """A c_<category>.csv file: the category's dense codes for global labels.

    Attributes:
      category: the category.
      codes: dense codes, ascending (code 0, "none", is not listed).
      numbers: global label number of each code.
      names: label name of each code.
      frequency: images with the label in this category (0 when not given).
      coverage: pixel coverage in this category, in whole images (0 when not given).
    """

    category: str
    codes: tuple[int, ...]
    numbers: tuple[int, ...]
    names: tuple[str, ...]
    frequency: tuple[float, ...]
    coverage: tuple[float, ...]

    def number_of(self, code: int) -> int:
        """Global label number of a dense code."""
        try:
            return self.numbers[self.codes.index(int(code))]
        except ValueError:
            raise InputError(
                f"code {code} is not in c_{self.category}.csv (codes: "
                f"{self.codes[0] if self.codes else '-'}..{self.codes[-1] if self.codes else '-'})."
            ) from None

    def code_of(self, number: int) -> int:
        """Dense code of a global label number (0 if the label is not in the category)."""
        for code, num in zip(self.codes, self.numbers):
            if num == int(number):
                return code
        return 0

    def lookup(self, num_labels: int | None = None) -> np.ndarray:
        """int32 (num_labels,): dense code per global label number, 0 where absent."""
        size = max([*self.numbers, 0]) + 1 if num_labels is None else int(num_labels)
        out = np.zeros(size, np.int32)
        for code, num in zip(self.codes, self.numbers):
            if num < size:
                out[num] = code
        return out


# --- CSV reading ------------------------------------------------------------------


def _open_csv(path: Path) -> tuple[csv.reader, Any]:
    f = open(path, newline="", encoding="utf-8-sig")  # closed by the caller
    return csv.reader(f), f


def _read_table(
    path: Path, name: str, required: Sequence[str]
) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """Header and (line, fields) rows of a CSV file, checking header and field counts."""
    try:
        reader, f = _open_csv(path)
    except FileNotFoundError:
        raise DataError(f"{name} is missing from {path.parent}; restore it.") from None
    except OSError as e:
        raise DataError(f"{name} cannot be read ({e}).") from e
    rows: list[tuple[int, list[str]]] = []
    with f:
        try:
            header = next(reader, None)
            if header is None:
                raise DataError(f"{name} is empty; it needs a header line {','.join(required)}.")
            header = [h.strip() for h in header]
            dupes = sorted({h for h in header if header.count(h) > 1})
            if dupes:
                raise DataError(
                    f"{name} line 1: column(s) {dupes} appear more than once; keep one of each."
                )
            missing = [c for c in required if c not in header]
            if missing:
                raise DataError(
                    f"{name} line 1: missing column(s) {missing} (header is "
                    f"{','.join(header)}); add them to the header."
                )
            for fields in reader:
                if not fields or (len(fields) == 1 and not fields[0].strip()):
                    continue  # blank line
                if len(fields) != len(header):
                    raise DataError(
                        f"{name} line {reader.line_num}: {len(fields)} fields but the header "
                        f"has {len(header)}; fix the row (a ';' inside a cell is fine, a "
                        "stray ',' is not)."
                    )
                rows.append((reader.line_num, fields))
        except csv.Error as e:
            raise DataError(f"{name} line {reader.line_num}: malformed CSV ({e}).") from e
        except UnicodeDecodeError as e:
            raise DataError(f"{name} is not UTF-8 text ({e}); re-save it as UTF-8.") from e
    return header, rows


def _int_field(value: str, *, where: str, minimum: int | None = None) -> int:
    text = value.strip()
    if not _INT.match(text):
        raise DataError(f"{where}: {value!r} is not an integer; write a whole number.")
    number = int(text)
    if minimum is not None and number < minimum:
        raise DataError(f"{where}: {number} is less than {minimum}; fix the value.")
    return number


def _float_field(value: str, *, where: str) -> float:
    text = value.strip()
    if not text:
        return 0.0
    try:
        number = float(text)
    except ValueError:
        raise DataError(f"{where}: {value!r} is not a number; fix the value.") from None
    if not np.isfinite(number):
        raise DataError(f"{where}: {value!r} is not a finite number; fix the value.")
    return number


@dataclasses.dataclass(frozen=True)
class _LabelRow:
    number: int
    name: str
    counts: dict[str, int]  # category -> count, in label.csv order
    frequency: int
    coverage: float
    line: int


def _read_categories(root: Path) -> list[str]:
    header, rows = _read_table(root / "category.csv", "category.csv", ("name",))
    col = header.index("name")
    names: list[str] = []
    for line, fields in rows:
        name = fields[col].strip()
        where = f"category.csv line {line}, column 'name'"
        if not name:
            raise DataError(f"{where}: empty category name; name the category.")
        if name in names:
            raise DataError(f"{where}: category {name!r} is listed twice; keep one row.")
        if name in META_COLUMNS:
            raise DataError(f"{where}: {name!r} is reserved for an index.csv column; rename it.")
        names.append(name)
    if not names:
        raise DataError("category.csv lists no categories; add one row per category.")
    return names


def _read_labels(root: Path, categories: Sequence[str]) -> dict[int, _LabelRow]:
    header, rows = _read_table(root / "label.csv", "label.csv", ("number", "name", "category"))
    idx = {c: header.index(c) for c in header}
    labels: dict[int, _LabelRow] = {}
    for line, fields in rows:

        def where(col: str, line: int = line) -> str:
            return f"label.csv line {line}, column {col!r}"

        number = _int_field(fields[idx["number"]], where=where("number"), minimum=0)
        if number == 0:
            continue  # an explicit "none" row
        if number in labels:
            raise DataError(
                f"{where('number')}: label {number} is already defined on line "
                f"{labels[number].line}; give each label one row."
            )
        counts: dict[str, int] = {}
        cell = fields[idx["category"]].strip()
        for item in (s for s in cell.split(";") if s.strip()):
            m = _CAT_ITEM.match(item)
            if m is None:
                raise DataError(
                    f"{where('category')}: cannot read {item!r}; write categories as "
                    "'name(count)' separated by ';', e.g. 'material(36);object(3)'."
                )
            cat, count_text = m.group(1), m.group(2)
            if cat not in categories:
                raise DataError(
                    f"{where('category')}: category {cat!r} is not in category.csv; "
                    + did_you_mean(cat, list(categories))
                )
            count = 0
            if count_text:
                count = _int_field(count_text, where=where("category"), minimum=0)
            counts[cat] = counts.get(cat, 0) + count
        if not counts:
            raise DataError(
                f"{where('category')}: label {number} has no category; write e.g. 'object(3)'."
            )
        freq = 0
        if "frequency" in idx:
            freq = int(_float_field(fields[idx["frequency"]], where=where("frequency")))
        cov = 0.0
        if "coverage" in idx:
            cov = _float_field(fields[idx["coverage"]], where=where("coverage"))
        labels[number] = _LabelRow(number, fields[idx["name"]].strip(), counts, freq, cov, line)
    if not labels:
        raise DataError("label.csv defines no labels; add one row per label.")
    return labels


def _read_codes(root: Path, category: str, labels: dict[int, _LabelRow]) -> CategoryCodes:
    name = f"c_{category}.csv"
    path = root / name
    header, rows = _read_table(path, name, ("code", "number"))
    idx = {c: header.index(c) for c in header}
    entries: dict[int, tuple[int, str, float, float]] = {}
    for line, fields in rows:

        def where(col: str, line: int = line) -> str:
            return f"{name} line {line}, column {col!r}"

        code = _int_field(fields[idx["code"]], where=where("code"), minimum=0)
        number = _int_field(fields[idx["number"]], where=where("number"), minimum=0)
        if code == 0 or number == 0:
            if code == number:
                continue  # the "none" row
            raise DataError(
                f"{where('code')}: code {code} and label {number}: 0 must map to 0 "
                "(none); fix the row."
            )
        if code in entries:
            raise DataError(f"{where('code')}: code {code} appears twice; give each one row.")
        if number not in labels:
            raise DataError(
                f"{where('number')}: label {number} is not defined in label.csv "
                f"(labels {min(labels)}..{max(labels)}); add it there or fix the number."
            )
        freq = (
            _float_field(fields[idx["frequency"]], where=where("frequency"))
            if ("frequency" in idx)
            else 0.0
        )
        cov = (
            _float_field(fields[idx["coverage"]], where=where("coverage"))
            if ("coverage" in idx)
            else 0.0
        )
        label_name = fields[idx["name"]].strip() if "name" in idx else labels[number].name
        entries[code] = (number, label_name, freq, cov)
    codes = tuple(sorted(entries))
    return CategoryCodes(
        category=category,
        codes=codes,
        numbers=tuple(entries[c][0] for c in codes),
        names=tuple(entries[c][1] for c in codes),
        frequency=tuple(entries[c][2] for c in codes),
        coverage=tuple(entries[c][3] for c in codes),
    )


def _read_index(
    root: Path, categories: Sequence[str], valid_label: Callable[[int], bool], label_range: str
) -> tuple[list[BrodenRow], tuple[str, ...]]:
    """Parse index.csv fully: meta columns, integer labels (range-checked) and
    mask paths (checked as safe relative paths; nothing is opened)."""
    header, rows = _read_table(root / "index.csv", "index.csv", META_COLUMNS)
    cat_columns = [h for h in header if h not in META_COLUMNS]
    unknown = [c for c in cat_columns if c not in categories]
    if unknown:
        raise DataError(
            f"index.csv line 1: column(s) {unknown} are not categories listed in "
            "category.csv; add them to category.csv (with a c_<name>.csv) or remove "
            "the column(s)."
        )
    missing = [c for c in categories if c not in cat_columns]
    if missing:
        raise DataError(
            f"index.csv line 1: missing column(s) {missing} for categories listed in "
            "category.csv; add the column(s) (cells may be empty) or remove the "
            "categories from category.csv."
        )
    col = {h: i for i, h in enumerate(header)}
    parsed: list[BrodenRow] = []
    splits: dict[str, None] = {}
    for line, fields in rows:
        image = fields[col["image"]].strip()
        check_relative(image, where=_index_where(line, "image"), base=_IMAGES)
        split = fields[col["split"]].strip()
        if not split:
            raise DataError(
                f"{_index_where(line, 'split')}: empty split; write e.g. 'train' or 'val'."
            )
        ih, iw, sh, sw = (_index_size(fields[col[c]], line, c) for c in ("ih", "iw", "sh", "sw"))
        scalar: dict[str, tuple[int, ...]] = {}
        masks: dict[str, tuple[str, ...]] = {}
        for cat in cat_columns:
            cell = fields[col[cat]]
            if not cell:
                continue
            ints: list[int] = []
            pngs: list[str] = []
            for item in cell.split(";"):
                item = item.strip()
                if not item:
                    continue
                if _INT.match(item):
                    number = int(item)
                    if number != 0 and not valid_label(number):
                        raise DataError(
                            f"{_index_where(line, cat)}: label {number} is not defined in "
                            f"label.csv (valid: 0 for none, {label_range}); fix the label "
                            "or add it to label.csv."
                        )
                    ints.append(number)
                else:
                    check_relative(item, where=_index_where(line, cat), base=_IMAGES)
                    pngs.append(item)
            if ints:
                scalar[cat] = tuple(ints)
            if pngs:
                masks[cat] = tuple(pngs)
        splits.setdefault(split)
        parsed.append(BrodenRow(line, image, split, ih, iw, sh, sw, scalar, masks))
    return parsed, tuple(splits)


def _index_where(line: int, column: str) -> str:
    return f"index.csv line {line}, column {column!r}"


def _index_size(value: str, line: int, column: str) -> int:
    if value.isdigit() and value.isascii():
        number = int(value)
        if number >= 1:
            return number
    return _int_field(value, where=_index_where(line, column), minimum=1)


def _ranges(numbers: Sequence[int]) -> str:
    """'1..5, 9, 300' for sorted numbers."""
    parts: list[str] = []
    nums = sorted(numbers)
    start = prev = nums[0]
    for n in [*nums[1:], None]:
        if n is not None and n == prev + 1:
            prev = n
            continue
        parts.append(f"{start}" if start == prev else f"{start}..{prev}")
        if n is not None:
            start = prev = n
    text = ", ".join(parts)
    return text if len(text) < 120 else f"{nums[0]}..{nums[-1]} (with gaps)"


def _uniform(values: set[tuple[int, int]]) -> tuple[int, int] | None:
    return next(iter(values)) if len(values) == 1 else None


# --- the source ---------------------------------------------------------------------


class BrodenSource:
    """Random-access :class:`~cnnvis_jax.data.types.Source` over a Broden directory.

    ``source[i]`` is a :class:`~cnnvis_jax.data.types.Sample`:

    * ``"image"``: uint8 (ih, iw, 3) RGB (grey and RGBA images converted);
    * ``"pixel"``: {category: int32 (L, sh, sw)} global label numbers, 0 = none,
      one layer per PNG in the cell (L > 1 for multi-layer parts); categories
      without masks in the row are absent;
    * ``"scalar"``: {category: tuple of label numbers} for image-level labels
      (0 kept, see :attr:`zero_scalar_rows`);
    * ``"target"``: -1; ``"index"``: ``i``.

    Args:
      root: the Broden directory.
      split: keep only rows of this split (``None``: all rows).
      categories: keep only these categories (``None``: all of category.csv);
        rows with no data in any kept category are left out, as NetDissect does.
      check_files: at construction, check that every referenced file exists and
        stays inside ``images/`` (no decoding; :meth:`validate` decodes).
      on_error: ``"raise"`` (default) or ``"skip"``: what a missing or corrupt
        mask does in ``source[i]``. Skipping drops that mask layer (and the
        category when no layer is left) and records the message in
        :attr:`skipped` (once per file). A bad image always raises.
      primary: how a label's primary category is chosen among the categories it
        belongs to: ``"count"`` (largest count in label.csv's ``cat(count)``
        list) or ``"coverage"`` (largest coverage in the c_<cat>.csv files, the
        rule NetDissect-Lite uses, the default); ties go to the later category of
        category.csv, as in NetDissect-Lite.

    Raises:
      DataError: a missing file (named), a missing header column, a malformed
        row (line and column named), an undefined label, or an unsafe path.
      InputError: an unknown ``split`` or ``categories`` name.
    """

    class_names: tuple[str, ...] = ()

    def __init__(
        self,
        root: str | os.PathLike,
        *,
        split: str | None = None,
        categories: Sequence[str] | None = None,
        check_files: bool = False,
        on_error: str = "raise",
        primary: str = "coverage",
    ):
        if on_error not in ("raise", "skip"):
            raise InputError(f"on_error must be 'raise' or 'skip', got {on_error!r}.")
        if primary not in ("count", "coverage"):
            raise InputError(f"primary must be 'count' or 'coverage', got {primary!r}.")
        self.root = Path(root)
        self.on_error = on_error
        self._skipped: dict[str, None] = {}
        if not self.root.is_dir():
            raise DataError(
                f"Broden directory {os.fspath(root)!r} does not exist or is not a folder; "
                "pass the folder that holds index.csv."
            )
        absent = [
            n for n in ("index.csv", "category.csv", "label.csv") if not (self.root / n).is_file()
        ]
        if absent:
            raise DataError(
                f"{', '.join(absent)} missing from Broden directory {os.fspath(root)!r}; "
                "a Broden directory needs index.csv, category.csv, label.csv, one "
                "c_<category>.csv per category, and images/."
            )
        all_categories = _read_categories(self.root)
        if categories is None:
            selected = list(all_categories)
        else:
            if isinstance(categories, str):
                categories = [categories]
            selected = []
            for c in categories:
                if c not in all_categories:
                    raise InputError(
                        f"category {c!r} is not in {os.fspath(root)}/category.csv; "
                        + did_you_mean(c, all_categories)
                    )
                if c not in selected:
                    selected.append(c)
        absent = [f"c_{c}.csv" for c in selected if not (self.root / f"c_{c}.csv").is_file()]
        if absent:
            raise DataError(
                f"{', '.join(absent)} missing from Broden directory {os.fspath(root)!r}; "
                "every category in category.csv needs its c_<category>.csv."
            )
        self._label_rows = _read_labels(self.root, all_categories)
        self._codes = {c: _read_codes(self.root, c, self._label_rows) for c in selected}
        numbers = sorted(self._label_rows)
        self._valid = np.zeros(numbers[-1] + 1, bool)
        self._valid[0] = True
        self._valid[numbers] = True
        self._label_range = _ranges(numbers)
        rows, self.splits = _read_index(
            self.root, all_categories, self._is_label, self._label_range
        )
        if split is not None and split not in self.splits:
            raise InputError(
                f"split {split!r} does not occur in {os.fspath(root)}/index.csv; "
                + did_you_mean(split, list(self.splits))
            )
        kept = [r for r in rows if split is None or r.split == split]
        before = len(kept)
        kept = [r for r in kept if r.has_data(selected)]
        self.dropped_rows = before - len(kept)
        """Rows of the split left out because they have no data in the kept categories."""
        self._rows = kept
        self.split = split
        order = [c for c in CATEGORIES if c in selected] + [
            c for c in all_categories if c in selected and c not in CATEGORIES
        ]
        self.categories: tuple[str, ...] = tuple(order)
        """Kept categories, in reporting order (Broden's first, then category.csv's)."""
        self._csv_order = tuple(all_categories)
        self.vocabulary = self._build_vocabulary(primary)
        self.image_size = _uniform({(r.ih, r.iw) for r in kept})
        """(ih, iw) shared by every row, or None when sizes differ (or no rows)."""
        self.segmentation_size = _uniform({(r.sh, r.sw) for r in kept})
        """(sh, sw) shared by every row, or None when sizes differ (or no rows)."""
        self.category_levels = self._levels(kept)
        """{category: "pixel" | "image" | "pixel+image" | "none"} from the index cells."""
        self.zero_scalar_rows = {
            c: tuple(i for i, r in enumerate(kept) if 0 in r.scalar.get(c, ()))
            for c in self.categories
        }
        """{category: positions whose image-level labels include 0 ("none")}.

        NetDissect-Lite counts such a 0 as a label; filter them out to exclude."""
        if not (self.root / "images").is_dir():
            raise DataError(
                f"images/ folder missing from Broden directory {os.fspath(root)!r}; "
                "index.csv paths are relative to it."
            )
        self._resolver = Resolver(real_dir(self.root / "images"), _IMAGES)
        if check_files:
            self.check_files()

    # --- metadata ---------------------------------------------------------------
    def _is_label(self, number: int) -> bool:
        return 0 <= number < len(self._valid) and bool(self._valid[number])

    def _levels(self, rows: Sequence[BrodenRow]) -> dict[str, str]:
        out = {}
        for c in self.categories:
            pixel = any(c in r.masks for r in rows)
            image = any(c in r.scalar for r in rows)
            out[c] = {(True, True): "pixel+image", (True, False): "pixel"}.get(
                (pixel, image), "image" if image else "none"
            )
        return out

    def _build_vocabulary(self, primary: str) -> Vocabulary:
        coverage = {c: dict(zip(codes.numbers, codes.coverage)) for c, codes in self._codes.items()}
        labels = []
        for number in sorted(self._label_rows):
            row = self._label_rows[number]
            cats = [c for c in row.counts if c in self.categories]
            if not cats:
                continue

            def key(c: str, row: _LabelRow = row) -> tuple[float, int]:
                score = row.counts[c] if primary == "count" else coverage[c].get(row.number, 0.0)
                return (-score, -self._csv_order.index(c))

            labels.append(
                Label(
                    number=number,
                    name=row.name,
                    categories=tuple(sorted(cats, key=key)),
                    frequency=row.frequency,
                    coverage=row.coverage,
                )
            )
        return Vocabulary(categories=self.categories, labels=tuple(labels))

    def category_codes(self, category: str) -> CategoryCodes:
        """The c_<category>.csv mapping between dense codes and global labels."""
        if category not in self._codes:
            raise InputError(
                f"category {category!r} is not loaded; " + did_you_mean(category, self.categories)
            )
        return self._codes[category]

    def row(self, index: int) -> BrodenRow:
        """The parsed index.csv row behind ``source[index]``."""
        return self._rows[self._position(index)]

    def image_path(self, index: int) -> Path:
        """Path of the image file of ``source[index]`` (not resolved or opened)."""
        return self.root / "images" / self.row(index).image

    @property
    def category_order(self) -> tuple[str, ...]:
        """The kept categories in category.csv's order (NetDissect-Lite's order)."""
        return tuple(c for c in self._csv_order if c in self.categories)

    @property
    def rows(self) -> tuple[BrodenRow, ...]:
        return tuple(self._rows)

    @property
    def skipped(self) -> tuple[str, ...]:
        """Messages of the distinct bad masks skipped so far (``on_error="skip"``)."""
        return tuple(self._skipped)

    # --- access -----------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._rows)

    def _position(self, index: int) -> int:
        n = len(self._rows)
        i = int(index)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"index {index} out of range for a Broden source of {n} images.")
        return i

    def __iter__(self) -> Iterator[Sample]:
        for i in range(len(self)):
            yield self[i]

    def _where(self, row: BrodenRow, column: str) -> str:
        return f"index.csv line {row.line}, column {column!r}"

    def _resolve(self, row: BrodenRow, column: str, rel: str) -> Path:
        return self._resolver(rel, where=self._where(row, column))

    def _load_image(self, row: BrodenRow) -> np.ndarray:
        where = self._where(row, "image")
        path = self._resolve(row, "image", row.image)
        image = read_image(path, where=where, display=_IMAGES + row.image)
        if image.shape[:2] != (row.ih, row.iw):
            raise DataError(
                f"{where}: image {_IMAGES + row.image!r} is {image.shape[0]}x{image.shape[1]} "
                f"(height x width) but ih x iw is {row.ih}x{row.iw}; fix ih/iw or the image."
            )
        return image

    def _load_mask(self, row: BrodenRow, category: str, rel: str) -> np.ndarray:
        where = self._where(row, category)
        path = self._resolve(row, category, rel)
        mask = read_label_png(path, expect_hw=(row.sh, row.sw), where=where, display=_IMAGES + rel)
        top = int(mask.max())
        if top >= len(self._valid) or not self._valid[mask].all():
            bad = np.unique(mask)
            bad = [int(b) for b in bad if not self._is_label(int(b))]
            shown = ", ".join(str(b) for b in bad[:10]) + (" ..." if len(bad) > 10 else "")
            raise DataError(
                f"{where}: mask {_IMAGES + rel!r} holds label(s) {shown} not defined in "
                f"label.csv (valid: 0 for none, {self._label_range}); fix the mask or "
                "add the labels to label.csv."
            )
        return mask

    def __getitem__(self, index: int) -> Sample:
        i = self._position(index)
        labels = self.labels(i)
        row = self._rows[i]
        return Sample(
            image=self._load_image(row),
            pixel=labels["pixel"],
            scalar=labels["scalar"],
            target=-1,
            index=i,
        )

    def labels(self, index: int) -> dict[str, Any]:
        """``{"pixel": ..., "scalar": ...}`` of ``source[index]`` without decoding the image."""
        i = self._position(index)
        row = self._rows[i]
        pixel: dict[str, np.ndarray] = {}
        for cat in self.categories:
            layers = []
            for rel in row.masks.get(cat, ()):
                try:
                    layers.append(self._load_mask(row, cat, rel))
                except DataError as e:
                    if self.on_error == "raise":
                        raise
                    self._skipped.setdefault(str(e))
            if layers:
                pixel[cat] = np.stack(layers).astype(np.int32, copy=False)
        scalar = {c: row.scalar[c] for c in self.categories if c in row.scalar}
        return {"pixel": pixel, "scalar": scalar}

    # --- checks -----------------------------------------------------------------
    def _references(self, row: BrodenRow) -> Iterator[tuple[str, str]]:
        yield "image", row.image
        for cat in self.categories:
            for rel in row.masks.get(cat, ()):
                yield cat, rel

    def check_files(self) -> None:
        """Check that every referenced file exists and stays inside ``images/``.

        Nothing is opened. Raises :class:`DataError` naming the first missing file
        (with the count of the others).
        """
        missing: list[str] = []
        for row in self._rows:
            for column, rel in self._references(row):
                path = self._resolve(row, column, rel)
                if not path.is_file():
                    missing.append(
                        f"{self._where(row, column)}: file {_IMAGES + rel!r} does not exist"
                    )
        if missing:
            more = f" (and {len(missing) - 1} other missing files)" if len(missing) > 1 else ""
            raise DataError(f"{missing[0]}{more}; add the files or fix the paths.")

    def _check_row(self, i: int, skip: bool) -> dict[str, Any]:
        row = self._rows[i]
        errors: list[str] = []
        seen: dict[str, set[int]] = {}
        try:
            self._load_image(row)
        except DataError as e:
            if not skip:
                raise
            errors.append(str(e))
        for cat in self.categories:
            for rel in row.masks.get(cat, ()):
                try:
                    mask = self._load_mask(row, cat, rel)
                except DataError as e:
                    if not skip:
                        raise
                    errors.append(str(e))
                    continue
                seen.setdefault(cat, set()).update(int(v) for v in np.unique(mask) if v)
            for v in row.scalar.get(cat, ()):
                if v:
                    seen.setdefault(cat, set()).add(v)
        return {"errors": errors, "seen": seen}

    def validate(
        self, *, on_error: str = "raise", progress: bool = True, workers: int | None = None
    ) -> dict[str, Any]:
        """Read every referenced file fully and return a summary.

        Decodes each image (size must be ih x iw) and each mask (size must be
        sh x sw, every label defined in label.csv).

        Args:
          on_error: ``"raise"``: stop at the first bad file; ``"skip"``: record it,
            count it, and go on.
          progress: show a progress bar (tqdm) on stderr.
          workers: threads decoding files (1: no threads; default: the number
            of CPUs, at most 8).

        Returns:
          A dict (JSON-friendly; :func:`format_summary` prints it) with keys
          ``kind`` ("broden"), ``root``, ``split``, ``images``, ``splits``
          {split: images}, ``image_size``, ``segmentation_size``, ``categories``,
          ``levels`` {category: "pixel" | "image" | ...}, ``rows_with_data``
          {category: rows}, ``labels_per_category`` {category: labels listing
          it in label.csv}, ``labels_seen`` {category: distinct labels found},
          ``labels_outside_category`` {category: labels found in the category's
          cells that label.csv does not list under it}, ``zero_scalar``
          {category: rows with image-level label 0}, ``dropped_rows``,
          ``files_checked``, ``skipped`` (bad files skipped) and ``errors``
          (their messages, the first 100).
        """
        if on_error not in ("raise", "skip"):
            raise InputError(f"on_error must be 'raise' or 'skip', got {on_error!r}.")
        from tqdm.auto import tqdm

        skip = on_error == "skip"
        if workers is None:
            workers = min(8, os.cpu_count() or 1)
        seen: dict[str, set[int]] = {c: set() for c in self.categories}
        errors: list[str] = []
        skipped = 0
        bar = tqdm(total=len(self), desc="checking Broden files", unit="img", disable=not progress)
        try:
            if workers <= 1:
                results = (self._check_row(i, skip) for i in range(len(self)))
                pool = None
            else:
                pool = ThreadPoolExecutor(max_workers=int(workers))
                results = pool.map(lambda i: self._check_row(i, skip), range(len(self)))
            try:
                for res in results:
                    for c, s in res["seen"].items():
                        seen[c] |= s
                    skipped += len(res["errors"])
                    errors.extend(res["errors"][: max(0, 100 - len(errors))])
                    bar.update(1)
            finally:
                if pool is not None:
                    pool.shutdown(wait=True, cancel_futures=True)
        finally:
            bar.close()
        files = sum(1 + sum(len(r.masks.get(c, ())) for c in self.categories) for r in self._rows)
        splits: dict[str, int] = {}
        for r in self._rows:
            splits[r.split] = splits.get(r.split, 0) + 1
        listed = {
            c: {lab.number for lab in self.vocabulary.in_category(c)} for c in self.categories
        }
        return {
            "kind": "broden",
            "root": os.fspath(self.root),
            "split": self.split,
            "images": len(self),
            "splits": splits,
            "image_size": self.image_size,
            "segmentation_size": self.segmentation_size,
            "categories": list(self.categories),
            "levels": dict(self.category_levels),
            "rows_with_data": {
                c: sum(1 for r in self._rows if c in r.masks or c in r.scalar)
                for c in self.categories
            },
            "labels_per_category": {c: len(listed[c]) for c in self.categories},
            "labels_seen": {c: len(seen[c]) for c in self.categories},
            "labels_outside_category": {
                c: sorted(seen[c] - listed[c]) for c in self.categories if seen[c] - listed[c]
            },
            "zero_scalar": {c: len(v) for c, v in self.zero_scalar_rows.items() if v},
            "dropped_rows": self.dropped_rows,
            "files_checked": files,
            "skipped": skipped,
            "errors": errors,
        }


def validate(
    root: str | os.PathLike,
    *,
    split: str | None = None,
    categories: Sequence[str] | None = None,
    on_error: str = "raise",
    progress: bool = True,
    workers: int | None = None,
) -> dict[str, Any]:
    """Validate a Broden directory fully: every CSV row and every referenced file.

    Builds a :class:`BrodenSource` (which checks the CSV files and paths) and runs
    :meth:`BrodenSource.validate`; see there for the summary's keys and for
    ``on_error``, ``progress`` and ``workers``.
    """
    source = BrodenSource(root, split=split, categories=categories)
    return source.validate(on_error=on_error, progress=progress, workers=workers)


def _size_text(size: Any) -> str:
    return f"{size[0]}x{size[1]}" if size else "varies"


def format_summary(summary: dict[str, Any]) -> str:
    """Human-readable text of a summary from :func:`validate`,
    :meth:`BrodenSource.validate` or :meth:`~cnnvis_jax.data.folder.FolderSource.validate`."""
    lines: list[str] = []
    if summary.get("kind") == "folder":
        lines.append(f"image folder {summary['root']}: {summary['images']} images")
        size = summary.get("size")
        lines.append(
            f"  images resized to {_size_text(size)} (cover + center crop)"
            if size
            else "  images kept at their own size"
        )
        classes = summary.get("classes") or {}
        if classes:
            lines.append(f"  {len(classes)} classes:")
            width = max(len(n) for n in classes)
            for name, count in classes.items():
                lines.append(f"    {name:<{width}}  {count}")
        else:
            lines.append("  no class sub-folders (targets are -1)")
        ignored = {k: v for k, v in (summary.get("ignored") or {}).items() if v}
        if ignored:
            lines.append(
                "  ignored files: "
                + ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in ignored.items())
            )
    else:
        split = f" (split {summary['split']})" if summary.get("split") else ""
        lines.append(f"Broden directory {summary['root']}{split}: {summary['images']} images")
        splits = summary.get("splits") or {}
        lines.append("  splits: " + (", ".join(f"{k} {v}" for k, v in splits.items()) or "none"))
        lines.append(
            f"  image size {_size_text(summary.get('image_size'))}, segmentation size "
            f"{_size_text(summary.get('segmentation_size'))}"
        )
        cats = summary.get("categories") or []
        header = ("category", "level", "labels", "seen", "rows", "label-0 rows")
        table = [header] + [
            (
                c,
                summary["levels"].get(c, ""),
                str(summary["labels_per_category"].get(c, 0)),
                str(summary["labels_seen"].get(c, 0)),
                str(summary["rows_with_data"].get(c, 0)),
                str(summary.get("zero_scalar", {}).get(c, 0)),
            )
            for c in cats
        ]
        widths = [max(len(r[k]) for r in table) for k in range(len(header))]
        for r in table:
            lines.append("  " + "  ".join(f"{v:<{w}}" for v, w in zip(r, widths)).rstrip())
        if summary.get("zero_scalar"):
            lines.append(
                "  note: image-level label 0 means 'none'; NetDissect-Lite counts it as a label."
            )
        for c, labs in (summary.get("labels_outside_category") or {}).items():
            shown = ", ".join(map(str, labs[:10])) + (" ..." if len(labs) > 10 else "")
            lines.append(
                f"  warning: {c} cells hold labels label.csv does not list under {c}: {shown}"
            )
        if summary.get("dropped_rows"):
            lines.append(f"  rows without data in the chosen categories: {summary['dropped_rows']}")
        lines.append(f"  files checked: {summary.get('files_checked', 0)}")
    skipped = summary.get("skipped", 0)
    lines.append(f"  skipped (bad files): {skipped}")
    for err in summary.get("errors") or []:
        lines.append(f"    {err}")
    if skipped > len(summary.get("errors") or []):
        lines.append(f"    ... and {skipped - len(summary['errors'])} more")
    return "\n".join(lines)
