"""Reading data matrices from files and writing factors with their names.

Readers return a :class:`LabeledMatrix`: the values as a float array plus the
row and column names when the file carries them (a CSV header row, a row-name
column).  Every problem with a file (missing, unreadable, non-numeric, several
arrays to choose from, negative or non-finite entries) raises
:class:`MatrixFileError` with a message meant for the person who gave the file.

:func:`read_rows` and :func:`matrix_shape` read one row range (and the shape) of an
``.npy``, ``.mtx(.gz)`` or ``.h5ad`` file without loading the rest: each process of a fit
on several processes reads only its own rows (:func:`jnmf.data.process_rows`).
"""

from __future__ import annotations

import csv
import itertools
import math
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

TEXT_SUFFIXES = (".csv", ".tsv", ".txt")
# gzip-compressed text and Matrix Market files are read through gzip
GZIP_SUFFIXES = tuple(f"{s}.gz" for s in (".mtx", *TEXT_SUFFIXES))
SUFFIXES = (".npy", ".npz", ".mtx", ".h5ad", *TEXT_SUFFIXES, *GZIP_SUFFIXES)

# Cells that spreadsheet and R exports use for a missing value: read as NaN so the
# finiteness check names the real problem instead of calling the file non-numeric.
MISSING_TOKENS = frozenset({"", "na", "nan", "n/a", "null"})

# Enough lines to see the delimiter and the first row/column, without reading a big file twice.
SNIFF_LINES = 50


class MatrixFileError(ValueError):
    """A data file that cannot be used as a non-negative matrix."""


class LabeledMatrix(NamedTuple):
    """A data matrix and the names a file gave its rows and columns.

    Attributes:
        values: the 2-d float array, or a scipy.sparse CSR matrix for sparse files
            (Matrix Market, a scipy-sparse ``.npz``, a 10x Genomics directory, a sparse
            ``.h5ad``), never densified.
        row_names: one name per row, or None when the file has none.
        column_names: one name per column, or None when the file has none.
        corner: the label above the row-name column in a text file's header ("" if none).
    """

    values: np.ndarray
    row_names: list[str] | None = None
    column_names: list[str] | None = None
    corner: str = ""


def read_matrix(
    path: str | Path,
    *,
    key: str | None = None,
    header: bool | None = None,
    row_names: bool | None = None,
    dtype: type = np.float32,
) -> LabeledMatrix:
    """Read a matrix from .npy, .npz, .mtx, .h5ad, delimited text (.csv, .tsv, .txt), gzipped
    text or Matrix Market (``.csv.gz`` ...) or a 10x Genomics directory.

    Args:
        path: the file; its suffix picks the format (:data:`SUFFIXES`).
        key: for .npz, the name of the array to read (needed when there are several).
        header: text files: whether the first row holds column names; None detects it
            (a header is a first row with a non-numeric cell after the first).
        row_names: text files: whether the first column holds row names; None detects
            it (any non-numeric cell in the first column of the data rows).
        dtype: the floating dtype of the returned values (integers are converted).

    Returns:
        The values as a 2-d ``dtype`` array with the file's row and column names.

    Raises:
        MatrixFileError: the file is missing, unreadable, not a 2-d numeric matrix,
            or (.npz) holds several arrays and ``key`` does not pick one.
    """
    path = Path(path)
    check_matrix_path(path, key=key)
    if path.is_dir():
        try:
            matrix = _load_10x(path)
        except MatrixFileError:
            raise
        except (OSError, ValueError, EOFError, UnicodeDecodeError) as err:
            raise MatrixFileError(f"{path}: cannot read it as a 10x directory ({_one_line(err)})") from err
        return matrix._replace(values=_as_float_matrix(path, matrix.values, dtype))
    suffix = _suffix(path)
    try:
        if suffix == ".npy":
            matrix = LabeledMatrix(_load_npy(path))
        elif suffix == ".npz":
            matrix = LabeledMatrix(_load_npz(path, key))
        elif suffix in (".mtx", ".mtx.gz"):
            matrix = LabeledMatrix(_load_mtx(path))
        elif suffix == ".h5ad":
            matrix = _load_h5ad(path)
        else:
            matrix = _load_text(path, header=header, row_names=row_names)
    except MatrixFileError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, UnicodeDecodeError) as err:
        # numpy and scipy report corrupt files with a variety of exceptions
        raise MatrixFileError(f"{path}: cannot read it as {suffix[1:]} ({_one_line(err)})") from err
    values = _as_float_matrix(path, matrix.values, dtype)
    return matrix._replace(values=values)


def check_matrix_path(path: str | Path, *, key: str | None = None) -> None:
    """The checks of :func:`read_matrix` that need no reading: the file exists, is a regular
    file (or a 10x Genomics directory) and has a supported type.

    Args:
        path: the data file or directory.
        key: the ``--key`` given (only .npz files take one).

    Raises:
        MatrixFileError: naming the file and what is wrong with it.
    """
    path = Path(path)
    if path.is_dir():
        if not any((path / name).exists() for name in ("matrix.mtx", "matrix.mtx.gz")):
            raise MatrixFileError(
                f"{path}: a directory must be a 10x Genomics matrix (no matrix.mtx(.gz) in it)"
            )
        return
    suffix = _suffix(path)
    if suffix not in SUFFIXES:
        raise MatrixFileError(
            f"{path}: unsupported file type {suffix or '(none)'!r}; use one of {SUFFIXES} "
            "or a 10x Genomics directory"
        )
    if not path.exists():
        raise MatrixFileError(f"{path}: no such file")
    if not path.is_file():
        raise MatrixFileError(f"{path}: not a regular file")
    if key is not None and suffix != ".npz":
        raise MatrixFileError(f"{path}: --key only applies to .npz files")


def _suffix(path: Path) -> str:
    """The file type: the last suffix, or the last two for a gzipped file (``.csv.gz``)."""
    suffixes = [s.lower() for s in path.suffixes]
    if len(suffixes) >= 2 and suffixes[-1] == ".gz":
        return "".join(suffixes[-2:])
    return path.suffix.lower()


def _open_text(path: Path):
    """``path`` opened for reading text (UTF-8; a leading BOM, which spreadsheet exports
    often write, dropped), through gzip when its name ends in ``.gz``."""
    import gzip

    opener = gzip.open if path.name.lower().endswith(".gz") else open
    return opener(path, "rt", encoding="utf-8-sig")


def _read_names(path: Path, column: int = 0) -> list[str]:
    """One name per line of a (possibly gzipped) TSV: the given column (or the last there is)."""
    with _open_text(path) as fh:
        rows = [line.rstrip("\n").split("\t") for line in fh if line.strip()]
    return [row[min(column, len(row) - 1)] for row in rows]


def _load_10x(path: Path) -> LabeledMatrix:
    """A 10x Genomics matrix directory (Cell Ranger v2 or v3): ``matrix.mtx(.gz)`` (features x
    barcodes, kept sparse), ``features.tsv(.gz)`` / ``genes.tsv`` (the feature names: the
    second column, the gene symbol, when there is one) and ``barcodes.tsv(.gz)``.  The matrix
    keeps the file's orientation: rows are features (genes), columns are barcodes (cells)."""

    def find(*names):
        for name in names:
            for candidate in (path / name, path / f"{name}.gz"):
                if candidate.exists():
                    return candidate
        return None

    mtx = find("matrix.mtx")
    if mtx is None:
        raise MatrixFileError(f"{path}: a directory must be a 10x Genomics matrix (no matrix.mtx(.gz) in it)")
    values = _load_mtx(mtx)
    features = find("features.tsv", "genes.tsv")
    barcodes = find("barcodes.tsv")
    rows = _read_names(features, 1) if features is not None else None
    cols = _read_names(barcodes, 0) if barcodes is not None else None
    m, n = values.shape
    if rows is not None and len(rows) != m:
        raise MatrixFileError(f"{features}: {len(rows)} names for the matrix's {m} rows")
    if cols is not None and len(cols) != n:
        raise MatrixFileError(f"{barcodes}: {len(cols)} names for the matrix's {n} columns")
    return LabeledMatrix(values, rows, cols)


def _load_h5ad(path: Path) -> LabeledMatrix:
    """An AnnData ``.h5ad`` file's X (cells x genes, as AnnData stores it; sparse stays
    sparse) with ``obs_names`` and ``var_names``.  Needs the optional ``anndata`` package."""
    try:
        import anndata
    except ImportError as err:
        raise MatrixFileError(
            f"{path}: reading .h5ad files needs the optional package anndata (pip install 'jnmf[h5ad]')"
        ) from err
    adata = anndata.read_h5ad(path)
    X = adata.X
    if X is None:
        raise MatrixFileError(f"{path}: the AnnData object has no X matrix")
    return LabeledMatrix(_csr_or_array(X), list(map(str, adata.obs_names)), list(map(str, adata.var_names)))


def _csr_or_array(x):
    import scipy.sparse

    if scipy.sparse.issparse(x):
        return scipy.sparse.csr_matrix(x)
    return np.asarray(x)


def check_nonnegative(path: str | Path, matrix: LabeledMatrix, *, allow_nan: bool = False) -> None:
    """Raise MatrixFileError unless every entry is finite and >= 0, naming the first bad one.

    Args:
        path: the file the values came from (for the message).
        matrix: the matrix read from it; its names, if any, help locate the entry.
        allow_nan: NaN entries are missing values (``--missing nan``); infinities are not.
    """
    values = matrix.values
    if _is_sparse(values):
        _check_sparse_nonnegative(path, matrix)
        return
    bad = np.isinf(values) if allow_nan else ~np.isfinite(values)
    if bad.any():
        i, j = np.argwhere(bad)[0]
        what = "infinite" if allow_nan else "NaN or infinite"
        hint = "" if allow_nan else " (or --missing nan to treat NaN as missing values)"
        raise MatrixFileError(
            f"{path}: {_entries(bad.sum())} {what} (first at {_where(matrix, i, j)}); "
            f"NMF needs finite values{hint}"
        )
    if allow_nan and np.isnan(values).all():
        raise MatrixFileError(f"{path}: every entry is missing (NaN)")
    negative = values < 0
    if negative.any():
        i, j = np.argwhere(negative)[0]
        raise MatrixFileError(
            f"{path}: {_entries(negative.sum())} negative (first {values[i, j]:g} at "
            f"{_where(matrix, i, j)}); NMF needs non-negative data"
        )


def _is_sparse(values) -> bool:
    return hasattr(values, "tocoo") and not isinstance(values, np.ndarray)


def _check_sparse_nonnegative(path, matrix: LabeledMatrix) -> None:
    """The checks of :func:`check_nonnegative` on the stored entries of a sparse matrix."""
    coo = matrix.values.tocoo()
    for bad, what in ((~np.isfinite(coo.data), "NaN or infinite"), (coo.data < 0, "negative")):
        if bad.any():
            first = int(np.argmax(bad))
            raise MatrixFileError(
                f"{path}: {_entries(bad.sum())} {what} (first at "
                f"{_where(matrix, int(coo.row[first]), int(coo.col[first]))}); NMF needs finite, "
                "non-negative data"
            )


def _entries(count) -> str:
    return "1 entry is" if count == 1 else f"{int(count)} entries are"


def _where(matrix: LabeledMatrix, i: int, j: int) -> str:
    """An entry's place: 1-based data row and column, and their names when the file has them."""
    place = f"row {i + 1}, column {j + 1}"
    names = [
        repr(names[k]) for names, k in ((matrix.row_names, i), (matrix.column_names, j)) if names is not None
    ]
    return f"{place} ({', '.join(names)})" if names else place


def write_labeled_csv(
    path: str | Path,
    values: np.ndarray,
    row_names: Sequence[str],
    column_names: Sequence[str],
    corner: str = "",
) -> None:
    """Write a matrix as CSV with a header row of column names and a first column of row names.

    Args:
        path: the file to write.
        values: the 2-d array.
        row_names: one name per row.
        column_names: one name per column.
        corner: the header cell above the row names.
    """
    values = np.asarray(values)
    # shortest text that reads back to the same float32/float64 value
    digits = 9 if values.dtype.itemsize <= 4 else 17
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow([corner, *column_names])
        for name, row in zip(row_names, values, strict=True):
            writer.writerow([name, *(f"{v:.{digits}g}" for v in row)])


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return text or type(err).__name__


def _load_npy(path: Path) -> np.ndarray:
    return np.load(path, allow_pickle=False)


def _load_npz(path: Path, key: str | None):
    with np.load(path, allow_pickle=False) as archive:
        names = list(archive.files)
        if key is None and {"format", "shape", "data"} <= set(names):
            # written by scipy.sparse.save_npz: kept sparse
            import scipy.sparse

            return scipy.sparse.csr_matrix(scipy.sparse.load_npz(path))
        if not names:
            raise MatrixFileError(f"{path}: the archive holds no arrays")
        if key is None:
            if len(names) > 1:
                raise MatrixFileError(
                    f"{path}: holds {len(names)} arrays ({', '.join(names)}); pick one with --key"
                )
            key = names[0]
        if key not in names:
            raise MatrixFileError(f"{path}: no array {key!r}; it holds {', '.join(names)}")
        return archive[key]


def _load_mtx(path: Path) -> np.ndarray:
    try:
        import scipy.io
        import scipy.sparse
    except ImportError as err:
        raise MatrixFileError(f"{path}: reading Matrix Market files needs scipy (pip install scipy)") from err
    matrix = scipy.io.mmread(path)
    if scipy.sparse.issparse(matrix):
        return scipy.sparse.csr_matrix(matrix)  # kept sparse
    return np.asarray(matrix)


def _as_float_matrix(path: Path, values, dtype):
    if _is_sparse(values):
        if values.shape[0] == 0 or values.shape[1] == 0:
            raise MatrixFileError(f"{path}: the matrix is empty (shape {values.shape})")
        if values.dtype.kind not in "biuf":
            raise MatrixFileError(f"{path}: expected numbers, got entries of dtype {values.dtype}")
        return values.astype(dtype)
    values = np.asarray(values)
    if values.ndim != 2:
        raise MatrixFileError(f"{path}: expected a 2-d matrix, got shape {values.shape}")
    if values.size == 0:
        raise MatrixFileError(f"{path}: the matrix is empty (shape {values.shape})")
    if values.dtype.kind not in "biuf":
        raise MatrixFileError(f"{path}: expected numbers, got array of dtype {values.dtype}")
    return values.astype(dtype)


def _detect_delimiter(lines: list[str], suffix: str) -> str | None:
    """The field delimiter of text lines; None means runs of whitespace."""
    preferred = {".tsv": "\t", ".csv": ","}.get(suffix)
    # the extension's delimiter wins when every line has it (quoted names may hold more of it)
    if preferred and all(preferred in line for line in lines):
        return preferred
    for delimiter in ("\t", ",", ";", "|"):
        counts = {line.count(delimiter) for line in lines}
        # a delimiter splits every line; the header may differ by one (no corner cell)
        if min(counts) > 0 and max(counts) - min(counts) <= 1:
            return delimiter
    return None


def _split(lines: list[str], delimiter: str | None) -> list[list[str]]:
    if delimiter is None:
        return [line.split() for line in lines]
    return [[cell.strip() for cell in row] for row in csv.reader(lines, delimiter=delimiter)]


def _is_number(cell: str) -> bool:
    if cell.strip().lower() in MISSING_TOKENS:
        return True
    try:
        float(cell)
    except ValueError:
        return False
    return True


def _to_float(cell: str) -> float:
    return math.nan if cell.strip().lower() in MISSING_TOKENS else float(cell)


def _load_text(path: Path, *, header: bool | None, row_names: bool | None) -> LabeledMatrix:
    suffix = _suffix(path).removesuffix(".gz")
    with _open_text(path) as fh:
        text = fh.read()
    # keep each line's number in the file, for messages; skip blank and comment lines
    numbered = [(n, line) for n, line in enumerate(text.splitlines(), 1) if line.strip() and line[0] != "#"]
    if not numbered:
        raise MatrixFileError(f"{path}: the file holds no data")
    line_numbers = [n for n, _ in numbered]
    lines = [line for _, line in numbered]
    delimiter = _detect_delimiter(lines[:SNIFF_LINES], suffix)
    rows = _split(lines, delimiter)

    if header is None:
        # the first cell may be a corner label or a row name: judge the header by the others
        first = rows[0][1:] if len(rows[0]) > 1 else rows[0]
        header = len(rows) > 1 and not all(_is_number(cell) for cell in first)
    column_names = rows[0] if header else None
    body = rows[1:] if header else rows
    body_line_numbers = line_numbers[1:] if header else line_numbers
    if not body:
        raise MatrixFileError(f"{path}: the file has a header row but no data rows")
    width = len(body[0])
    for line_number, row in zip(body_line_numbers, body):
        if len(row) != width:
            raise MatrixFileError(
                f"{path}: line {line_number} has {len(row)} fields, line {body_line_numbers[0]} has {width}"
            )

    if row_names is None:
        row_names = width > 1 and not all(_is_number(row[0]) for row in body)
    if row_names and width < 2:
        raise MatrixFileError(f"{path}: a row-name column leaves no data columns")
    names = [row[0] for row in body] if row_names else None
    cells = [row[1:] for row in body] if row_names else body

    corner = ""
    if column_names is not None:
        n_columns = len(cells[0])
        if row_names and len(column_names) == n_columns + 1:
            corner, column_names = column_names[0], column_names[1:]
        if len(column_names) != n_columns:
            raise MatrixFileError(
                f"{path}: the header has {len(column_names)} names for {n_columns} data columns"
            )
    return LabeledMatrix(_parse_cells(path, cells, body_line_numbers, row_names), names, column_names, corner)


def _parse_cells(path: Path, cells: list[list[str]], line_numbers: list[int], row_names: bool) -> np.ndarray:
    try:
        return np.array(cells, dtype=np.float64)  # fast path: every cell a plain number
    except ValueError:
        pass
    values = np.empty((len(cells), len(cells[0])))
    for i, row in enumerate(cells):
        for j, cell in enumerate(row):
            try:
                values[i, j] = _to_float(cell)
            except ValueError:
                column = j + (2 if row_names else 1)
                raise MatrixFileError(
                    f"{path}: line {line_numbers[i]}, column {column}: {cell!r} is not a number"
                ) from None
    return values


# ---------------------------------------------------------------- row ranges (several processes)
ROW_SUFFIXES = (".npy", ".mtx", ".mtx.gz", ".h5ad")
# Matrix Market lines parsed at a time when reading a row range (bounds the parser's memory).
MTX_LINES = 1 << 20


def _row_file(path: str | Path) -> tuple[Path, str]:
    path = Path(path)
    suffix = _suffix(path)
    if suffix not in ROW_SUFFIXES:
        raise MatrixFileError(
            f"{path}: row ranges are read from {', '.join(ROW_SUFFIXES)} files, not {suffix!r}"
        )
    if not path.is_file():
        raise MatrixFileError(f"{path}: no such file")
    return path, suffix


def _mtx_header(fh, path: Path) -> tuple[tuple[int, int], str, str]:
    """``(shape, field, symmetry)`` of a coordinate Matrix Market file, read up to its size line."""
    banner = fh.readline().split()
    if len(banner) != 5 or banner[0].lower() != "%%matrixmarket" or banner[1].lower() != "matrix":
        raise MatrixFileError(f"{path}: not a Matrix Market file (no '%%MatrixMarket matrix' banner)")
    layout, field, symmetry = (word.lower() for word in banner[2:])
    if layout != "coordinate":
        raise MatrixFileError(
            f"{path}: a dense ('{layout}') Matrix Market file; save it as .npy to read row ranges"
        )
    if field not in ("real", "integer", "pattern") or symmetry not in ("general", "symmetric"):
        raise MatrixFileError(
            f"{path}: Matrix Market '{field} {symmetry}' is not supported "
            "(real, integer or pattern; general or symmetric)"
        )
    line = fh.readline()
    while line.startswith("%") or not line.strip():
        line = fh.readline()
    m, n, _ = (int(word) for word in line.split())
    return (m, n), field, symmetry


def _h5ad_backed(path: Path):
    try:
        import anndata
    except ImportError as err:
        raise MatrixFileError(
            f"{path}: reading .h5ad row ranges needs the optional package anndata (pip install 'jnmf[h5ad]')"
        ) from err
    adata = anndata.read_h5ad(path, backed="r")
    if adata.X is None:
        raise MatrixFileError(f"{path}: the AnnData object has no X matrix")
    return adata


def matrix_shape(path: str | Path) -> tuple[int, int]:
    """The shape of the matrix in a ``.npy``, ``.mtx(.gz)`` or ``.h5ad`` file, from its header only.

    Args:
        path: the file.

    Returns:
        ``(m, n)``.

    Raises:
        MatrixFileError: another kind of file, or one that is not a matrix.
    """
    path, suffix = _row_file(path)
    if suffix == ".npy":
        shape = np.load(path, mmap_mode="r", allow_pickle=False).shape
        if len(shape) != 2:
            raise MatrixFileError(f"{path}: expected a 2-d matrix, got shape {shape}")
        return int(shape[0]), int(shape[1])
    if suffix == ".h5ad":
        adata = _h5ad_backed(path)
        shape = tuple(int(d) for d in adata.shape)
        adata.file.close()
        return shape
    with _open_text(path) as fh:
        return _mtx_header(fh, path)[0]


def read_rows(path: str | Path, start: int, stop: int):
    """Rows ``start:stop`` of the matrix in a file, reading no more of it than needed.

    * ``.npy``: the rows of a memory map (``np.load(mmap_mode="r")``), copied: only their
      pages are read.
    * ``.mtx`` / ``.mtx.gz`` (coordinate Matrix Market, general or symmetric): the file is
      streamed :data:`MTX_LINES` lines at a time and only these rows' entries are kept.
    * ``.h5ad``: AnnData's X in backed mode (the optional package ``anndata``).

    Args:
        path: the file.
        start, stop: the row range (``0 <= start <= stop <= m``).

    Returns:
        A dense NumPy array (``.npy``, dense ``.h5ad``) or a scipy.sparse CSR matrix
        (``.mtx``, sparse ``.h5ad``) of shape ``(stop - start, n)``; values as stored.

    Raises:
        MatrixFileError: another kind of file, one that is not a matrix, or a bad range.
    """
    import scipy.sparse

    path, suffix = _row_file(path)
    m, n = matrix_shape(path)
    if not 0 <= start <= stop <= m:
        raise MatrixFileError(f"{path}: rows {start}:{stop} are not a range of its {m} rows")
    if suffix == ".npy":
        return np.array(np.load(path, mmap_mode="r", allow_pickle=False)[start:stop])
    if suffix == ".h5ad":
        adata = _h5ad_backed(path)
        block = _csr_or_array(adata.X[start:stop])
        adata.file.close()
        return block
    rows, cols, values = [], [], []
    with _open_text(path) as fh:
        _, field, symmetry = _mtx_header(fh, path)
        width = 2 if field == "pattern" else 3
        while True:
            lines = list(itertools.islice(fh, MTX_LINES))
            if not lines:
                break
            try:
                entries = np.loadtxt(lines, ndmin=2, comments="%", usecols=range(width))
            except ValueError as err:
                raise MatrixFileError(f"{path}: unreadable Matrix Market entries ({_one_line(err)})") from err
            i, j = entries[:, 0].astype(np.int64) - 1, entries[:, 1].astype(np.int64) - 1
            v = entries[:, 2] if width == 3 else np.ones(len(entries))
            pairs = [(i, j, v)]
            if symmetry == "symmetric":  # the file holds one triangle: mirror it
                off = i != j
                pairs.append((j[off], i[off], v[off]))
            for a, b, x in pairs:
                keep = (a >= start) & (a < stop)
                rows.append(a[keep] - start)
                cols.append(b[keep])
                values.append(x[keep])
    dtype = np.int64 if field == "integer" else np.float64

    def joined(parts, kind):
        return np.concatenate(parts).astype(kind) if parts else np.zeros(0, kind)

    coo = (joined(values, dtype), (joined(rows, np.int64), joined(cols, np.int64)))
    return scipy.sparse.csr_matrix(coo, shape=(stop - start, n))
