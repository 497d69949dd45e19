"""A user's own data and who was in training: tables (CSV, Parquet), image folders, membership.

Tables: one label column; numeric columns min-max scaled to [0, 1] (each column's range is kept with the
dataset, so changes can be shown in the file's own units); text columns one-hot encoded. Image folders follow
torchvision's `ImageFolder` layout (one sub-folder per class). Membership comes from a column of the table
(1 / true / yes / member) or from a file of member ids (a table's id column or row numbers, an image's path
relative to the folder). Everything else is a non-member candidate; the reference pool is the rest of what the
user names, or a seeded share of the non-members (`membership_split`).
Every problem raises DatasetError with a message that says what is wrong and where.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .data import Dataset, DatasetError, Split

MAX_CATEGORIES = 50
"""A text column with more distinct values than this is refused (an id or free text, not a category)."""

TRUE_WORDS = {"1", "true", "yes", "y", "member", "in", "train"}
FALSE_WORDS = {"0", "false", "no", "n", "nonmember", "non-member", "out", "test", ""}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


@dataclass(frozen=True, eq=False)
class UserData:
    """A user's dataset, each row's id (as text) and, when the data says so, who was in training."""

    dataset: Dataset
    ids: np.ndarray  # [N] str
    members: np.ndarray | None  # [N] bool, or None when membership comes from elsewhere
    source: str  # what was read, for the run's record
    folder: str | None = None  # an image folder's name: its images' ids may also start with it (a path in the .zip)

    def with_bounds(self, bounds: tuple[float, float]) -> "UserData":
        """The same data mapped linearly from [0, 1] into the box the user's model expects (e.g. 0..255)."""
        import dataclasses

        lo, hi = float(bounds[0]), float(bounds[1])
        if not lo < hi:
            raise DatasetError(f"bounds must satisfy low < high, got ({lo:g}, {hi:g}).")
        x = (lo + (hi - lo) * self.dataset.x.astype(np.float64)).clip(lo, hi).astype(np.float32)
        ds = dataclasses.replace(self.dataset, x=x, bounds=(lo, hi))
        return dataclasses.replace(self, dataset=ds)


def read_table(path: str | Path, *, label_column: str, membership_column: str | None = None,
               id_column: str | None = None, drop_columns: tuple[str, ...] = ()) -> UserData:
    """A CSV or Parquet table as a dataset: `label_column` the class, `membership_column` (optional) who was in
    training, `id_column` (optional) each row's id, every other column a feature."""
    path = Path(path)
    frame = _read_frame(path)
    columns = [str(c) for c in frame.columns]
    frame.columns = columns
    for what, col in (("label", label_column), ("membership", membership_column), ("id", id_column),
                      *(("drop", c) for c in drop_columns)):
        if col is not None and col not in columns:
            raise DatasetError(f"{path.name} has no {what} column '{col}'; its columns are {', '.join(columns)}.")
    if len(frame) < 4:
        raise DatasetError(f"{path.name} has {len(frame)} rows; an audit needs at least 4.")
    labels, class_names = _labels(frame[label_column], path.name, label_column)
    members = _membership(frame[membership_column], path.name, membership_column) if membership_column else None
    ids = (frame[id_column].astype(str).to_numpy() if id_column
           else np.array([str(i) for i in range(len(frame))]))
    if id_column and len(set(ids)) != len(ids):
        raise DatasetError(f"{path.name}: the id column '{id_column}' has repeated values; ids must be unique.")
    features = [c for c in columns if c not in {label_column, membership_column, id_column, *drop_columns}]
    if not features:
        raise DatasetError(f"{path.name} has no feature columns besides the label.")
    x, names, low, high = _encode_features(frame[features], path.name)
    ds = Dataset(name=path.stem, x=x, y=labels, num_classes=len(class_names), feature_names=names,
                 feature_low=low, feature_high=high, class_names=class_names)
    return UserData(ds, ids, members, f"table {path.name} ({len(frame)} rows, {len(features)} columns -> "
                                      f"{x.shape[1]} features)")


def _read_frame(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise DatasetError(f"No such file: {path}")
    suffix = path.suffix.lower()
    try:
        if suffix in (".parquet", ".pq"):
            return pd.read_parquet(path)
        if suffix in (".csv", ".txt", ".tsv"):
            return pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",")
    except Exception as err:  # parser errors, truncated or binary files
        raise DatasetError(f"{path.name} is not a readable {suffix[1:]} table ({type(err).__name__}: "
                           f"{str(err)[:200]}).") from None
    raise DatasetError(f"{path.name}: tables must be .csv, .tsv or .parquet files.")


def _labels(col: pd.Series, file: str, name: str) -> tuple[np.ndarray, tuple[str, ...]]:
    """Integer labels 0..C-1: integer columns as they are (class names '0'..'C-1'), text columns by sorted value."""
    if col.isna().any():
        raise DatasetError(f"{file}: the label column '{name}' is empty in {int(col.isna().sum())} rows.")
    if pd.api.types.is_numeric_dtype(col):
        v = col.to_numpy()
        if not np.all(np.mod(v, 1) == 0) or v.min() < 0:
            raise DatasetError(f"{file}: numeric labels in '{name}' must be whole numbers 0..C-1; got values such "
                               f"as {v[(np.mod(v, 1) != 0) | (v < 0)][0]!r}.")
        y = v.astype(np.int64)
        if y.max() >= 10_000:
            raise DatasetError(f"{file}: labels in '{name}' must be 0..C-1 with at most 10,000 classes; the largest "
                               f"is {int(y.max()):,}.")
        names = tuple(str(i) for i in range(int(y.max()) + 1))
    else:
        values = col.astype(str)
        names = tuple(sorted(values.unique()))
        y = values.map({c: i for i, c in enumerate(names)}).to_numpy().astype(np.int64)
    if len(np.unique(y)) < 2:
        raise DatasetError(f"{file}: every label in '{name}' is {names[int(y[0])]!r}; a classifier needs 2 classes.")
    return y, names


def _membership(col: pd.Series, file: str, name: str) -> np.ndarray:
    words = col.astype(str).str.strip().str.lower()
    bad = ~words.isin(TRUE_WORDS | FALSE_WORDS) | col.isna()
    if bad.any():
        raise DatasetError(f"{file}: the membership column '{name}' must hold 1/0, true/false or yes/no; row "
                           f"{int(np.flatnonzero(bad.to_numpy())[0])} has {col[bad].iloc[0]!r}.")
    return words.isin(TRUE_WORDS).to_numpy()


def _encode_features(frame: pd.DataFrame, file: str):
    """Numeric columns min-max scaled, text columns one-hot: (x [N, D] float32, names, low, high)."""
    blocks, names, low, high = [], [], [], []
    for c in frame.columns:
        col = frame[c]
        if pd.api.types.is_bool_dtype(col):
            col = col.astype(np.float64)
        if pd.api.types.is_numeric_dtype(col):
            v = col.to_numpy(dtype=np.float64)
            if not np.isfinite(v).all():
                rows = np.flatnonzero(~np.isfinite(v))
                raise DatasetError(f"{file}: column '{c}' has {len(rows)} missing, NaN or infinite values (first "
                                   f"in row {int(rows[0])}); fill or drop them first.")
            lo, hi = float(v.min()), float(v.max())
            blocks.append(((v - lo) / (hi - lo if hi > lo else 1.0))[:, None])
            names.append(c), low.append(lo), high.append(hi if hi > lo else lo + 1.0)
            continue
        text = col.astype(str)
        numeric = pd.to_numeric(col, errors="coerce")
        if numeric.notna().mean() >= 0.9:  # a numeric column with a few stray values
            row = int(np.flatnonzero(numeric.isna().to_numpy())[0])
            raise DatasetError(f"{file}: column '{c}' is numeric but row {row} holds {col.iloc[row]!r}; fix or "
                               "drop those values first.")
        if col.isna().any():
            raise DatasetError(f"{file}: text column '{c}' is empty in {int(col.isna().sum())} rows.")
        cats = sorted(text.unique())
        if len(cats) > MAX_CATEGORIES:
            raise DatasetError(f"{file}: text column '{c}' has {len(cats)} distinct values (more than "
                               f"{MAX_CATEGORIES}); it looks like an id or free text: name it as the id column or "
                               "drop it.")
        blocks.append((text.to_numpy()[:, None] == np.array(cats)[None, :]).astype(np.float64))
        names.extend(f"{c}={v}" for v in cats)
        low.extend([0.0] * len(cats)), high.extend([1.0] * len(cats))
    x = np.ascontiguousarray(np.concatenate(blocks, axis=1), dtype=np.float32)
    return x, tuple(names), np.array(low), np.array(high)


def read_image_folder(path: str | Path) -> UserData:
    """Images in torchvision's ImageFolder layout (root/<class>/<image>), all of one size, as [N, C, H, W] in
    [0, 1] (grey when every image is grey, else RGB). Ids are the paths relative to the root."""
    from PIL import Image, UnidentifiedImageError
    from torchvision.datasets import ImageFolder

    root = Path(path)
    if not root.is_dir():
        raise DatasetError(f"No such folder: {root}")
    try:
        folder = ImageFolder(str(root), loader=lambda p: p, is_valid_file=lambda p: p.lower().endswith(IMAGE_SUFFIXES))
    except (FileNotFoundError, RuntimeError) as err:
        raise DatasetError(f"{root} holds no images in the ImageFolder layout (one sub-folder per class with "
                           f".png / .jpg files inside): {err}") from None
    if len(folder.classes) < 2:
        raise DatasetError(f"{root} has one class folder ({folder.classes[0]}); a classifier needs at least 2.")
    pictures, sizes = [], {}
    for file, _ in folder.samples:
        try:
            with Image.open(file) as im:
                im.load()
                pictures.append(im.copy())
        except (UnidentifiedImageError, OSError) as err:
            raise DatasetError(f"{Path(file).relative_to(root)} is not a readable image ({err}).") from None
        sizes.setdefault(pictures[-1].size, Path(file).relative_to(root))
    if len(sizes) > 1:
        (s1, f1), (s2, f2) = list(sizes.items())[:2]
        raise DatasetError(f"{root}: images have different sizes ({f1} is {s1[0]}x{s1[1]}, {f2} is {s2[0]}x{s2[1]}); "
                           "resize them to one size first.")
    grey = all(p.mode in ("L", "1", "I;16", "I") for p in pictures)
    arrays = [np.asarray(p.convert("L" if grey else "RGB"), dtype=np.float32) / 255.0 for p in pictures]
    x = np.stack(arrays)[:, None] if grey else np.stack(arrays).transpose(0, 3, 1, 2)
    y = np.array([t for _, t in folder.samples], dtype=np.int64)
    ids = np.array([str(Path(f).relative_to(root)) for f, _ in folder.samples])
    ds = Dataset(name=root.name, x=np.ascontiguousarray(x), y=y, num_classes=len(folder.classes),
                 class_names=tuple(folder.classes))
    return UserData(ds, ids, None, f"image folder {root.name} ({len(y)} images of {x.shape[1]}x{x.shape[2]}x"
                                   f"{x.shape[3]}, {len(folder.classes)} classes)", folder=root.name)


def read_member_ids(path: str | Path) -> list[str]:
    """Member ids, one per line (a CSV's first column; a header line that matches no id is skipped)."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"No such file: {path}")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (UnicodeDecodeError, OSError) as err:
        raise DatasetError(f"{path.name} is not a text file of member ids ({err}).") from None
    return [ln.split(",")[0].strip() for ln in lines if ln.strip()]


def members_from_ids(data: UserData, member_ids: list[str], what: str = "member ids") -> np.ndarray:
    """[N] bool: the rows whose id is in member_ids. Unknown ids are an error (a header line is forgiven). An
    image's id is its path below the class folders' parent ('cat/001.png'); the same path with the image folder's
    name in front (its path inside a .zip of the folder), with backslashes or a leading './' names it too."""
    known = set(data.ids.tolist())
    given = [_image_id(i, data.folder, known) for i in member_ids] if data.folder else list(member_ids)
    unknown = [i for i, g in zip(member_ids, given) if g not in known]
    if unknown and unknown[0] == member_ids[0]:
        unknown = unknown[1:]  # a header line
    if unknown:
        kind = ("row numbers 0.." + str(len(data.ids) - 1) if data.ids[0] == "0"
                else "the images' paths inside the folder" if data.folder else "the id column's values")
        count = f"{len(unknown)} of the {what} are" if len(unknown) > 1 else f"1 of the {what} is"
        raise DatasetError(f"{count} not in the data (e.g. {unknown[0]!r}); ids are {kind}, like {str(data.ids[0])!r}.")
    return np.isin(data.ids, np.array(given))


def _image_id(given: str, folder: str, known: set[str]) -> str:
    """An image's id as `read_image_folder` makes it, from a path a user may write: 'cat/001.png',
    'pets/cat/001.png' (the folder's name in front), 'pets\\cat\\001.png', './cat/001.png'."""
    path = given.strip().replace("\\", "/")
    while path.startswith("./"):
        path = path[2:]
    if path not in known and path.startswith(folder + "/"):
        path = path[len(folder) + 1 :]
    return path


MIN_GROUP = 10


def membership_split(members: np.ndarray, *, reference: np.ndarray | None = None, reference_share: float = 0.5,
                     seed: int = 0) -> tuple[Split, str]:
    """Members as given; non-members are the rest, except the reference pool: the rows `reference` names, else a
    seeded `reference_share` of the non-members. Returns the split and a sentence that says how it was made."""
    members = np.asarray(members, dtype=bool)
    rest = np.flatnonzero(~members)
    if reference is not None:
        reference = np.asarray(reference, dtype=bool)
        if (reference & members).any():
            raise DatasetError(f"{int((reference & members).sum())} rows are both members and reference samples.")
        ref, non = np.flatnonzero(reference), np.flatnonzero(~members & ~reference)
        how = f"the {len(ref)} reference rows the user named"
    else:
        if not 0 <= reference_share < 1:
            raise DatasetError(f"reference_share must be in [0, 1), got {reference_share}.")
        n_ref = int(math.floor(len(rest) * reference_share))
        pick = np.random.default_rng(seed + 7).permutation(rest)
        ref, non = np.sort(pick[:n_ref]), np.sort(pick[n_ref:])
        how = f"a seeded {reference_share:.0%} of the non-members (seed {seed}): {len(ref)} rows"
    split = Split(members=np.flatnonzero(members), nonmembers=non, reference=ref)
    for name, idx in (("members", split.members), ("non-members", split.nonmembers)):
        if len(idx) < MIN_GROUP:
            raise DatasetError(f"Only {len(idx)} {name}; an audit needs at least {MIN_GROUP} in each group.")
    return split, how


@dataclass(frozen=True, eq=False)
class PreparedData:
    """A user's data with its split, ready for an audit."""

    dataset: Dataset
    split: Split
    source: str  # what was read
    reference: str  # how the reference pool was chosen


def read_user_data(path: str | Path, *, label_column: str | None = None, id_column: str | None = None,
                   membership_column: str | None = None) -> UserData:
    """A table (.csv, .tsv, .parquet), an image folder or a .zip of one (as the app takes it: extracted, with
    every path checked, into a temporary folder removed once read), or an .npz of arrays x and y (ids: row
    numbers)."""
    import tempfile

    from .data import load_npz_dataset

    path = Path(path)
    if path.is_dir():
        return read_image_folder(path)
    if path.suffix.lower() == ".zip":
        with tempfile.TemporaryDirectory(prefix="mia-images-") as work:
            return read_image_zip(path.read_bytes(), work)
    if path.suffix.lower() == ".npz":
        ds = load_npz_dataset(path)
        return UserData(ds, np.array([str(i) for i in range(len(ds))]), None, f"arrays {path.name} ({len(ds)} rows)")
    if label_column is None:
        raise DatasetError(f"{path.name} is a table: name its label column (--label-column).")
    return read_table(path, label_column=label_column, membership_column=membership_column, id_column=id_column)


def prepare_user_data(data: UserData, *, member_ids: list[str] | None = None, reference_ids: list[str] | None = None,
                      reference_share: float = 0.5, seed: int = 0) -> PreparedData:
    """Who was in training (the data's membership column, or a list of member ids) and the split it gives."""
    if member_ids is not None:
        members = members_from_ids(data, member_ids)
    elif data.members is not None:
        members = data.members
    else:
        raise DatasetError("Say who was in training: a membership column in the table, or a file of member ids "
                           "(one id per line: the id column's values, row numbers, or image paths).")
    reference = members_from_ids(data, reference_ids, "reference ids") if reference_ids is not None else None
    split, how = membership_split(members, reference=reference, reference_share=reference_share, seed=seed)
    return PreparedData(data.dataset, split, data.source, how)


MAX_ZIP_FILES = 200_000


def read_image_zip(blob: bytes, workdir: str | Path) -> UserData:
    """An image folder uploaded as a .zip (the ImageFolder layout inside, at its top or under one folder):
    extracted into `workdir` with every entry's path checked (no absolute paths, no '..', no links), then read
    with `read_image_folder`. Ids are the images' paths relative to the class folders' parent."""
    import zipfile

    root = Path(workdir) / "images"
    try:
        archive = zipfile.ZipFile(io.BytesIO(blob))
    except zipfile.BadZipFile:
        raise DatasetError("The upload is not a readable .zip file.") from None
    names = [i for i in archive.infolist() if not i.is_dir()]
    if len(names) > MAX_ZIP_FILES:
        raise DatasetError(f"The .zip holds {len(names):,} files; the limit is {MAX_ZIP_FILES:,}.")
    total = sum(i.file_size for i in names)
    if total > 20 * len(blob) + 2**30:
        raise DatasetError("The .zip expands to more than this server accepts.")
    for info in names:
        parts = Path(info.filename).parts
        if info.filename.startswith(("/", "\\")) or ".." in parts or (info.external_attr >> 28) == 0o12:
            raise DatasetError(f"The .zip holds an unsafe path ({info.filename!r}); it was not extracted.")
        if parts[0] == "__MACOSX" or Path(info.filename).name.startswith("."):
            continue
        target = root.joinpath(*parts)
        target.parent.mkdir(parents=True, exist_ok=True)
        with archive.open(info) as src, open(target, "wb") as dst:
            dst.write(src.read())
    tops = [p for p in root.iterdir()] if root.is_dir() else []
    if len(tops) == 1 and tops[0].is_dir() and all(q.is_dir() for q in tops[0].iterdir()):
        root = tops[0]  # zip of the folder itself: images/<folder>/<class>/<file>
    return read_image_folder(root)


def table_columns(path: str | Path) -> list[str]:
    """A table's column names (for the app's column pickers)."""
    return [str(c) for c in _read_frame(Path(path)).columns]


def read_upload(blob: bytes, file_name: str, workdir: str | Path, *, label_column: str | None = None,
                id_column: str | None = None, membership_column: str | None = None) -> UserData:
    """An uploaded file (a table, a .zip of an image folder, or an .npz) read through a private working folder
    (the caller's, deleted afterwards); its size is checked against the operator's upload limit first."""
    from .user_models import max_upload_bytes

    limit = max_upload_bytes()
    if len(blob) > limit:
        raise DatasetError(f"{file_name} is {len(blob) / 2**20:.1f} MB; the limit is {limit / 2**20:.0f} MB "
                           "(MIA_MAX_UPLOAD_MB).")
    suffix = Path(file_name).suffix.lower()
    if suffix == ".zip":
        return read_image_zip(blob, workdir)
    if suffix not in (".csv", ".tsv", ".txt", ".parquet", ".pq", ".npz"):
        raise DatasetError(f"{file_name}: upload a table (.csv, .tsv, .parquet), a .zip of an image folder or an "
                           ".npz of arrays x and y.")
    path = Path(workdir) / safe_file_name(file_name)
    path.write_bytes(blob)
    return read_user_data(path, label_column=label_column, id_column=id_column, membership_column=membership_column)


def upload_columns(blob: bytes, file_name: str, workdir: str | Path) -> list[str]:
    """The columns of an uploaded table (for the app's column pickers)."""
    path = Path(workdir) / safe_file_name(file_name)
    path.write_bytes(blob)
    return table_columns(path)


def safe_file_name(file_name: str) -> str:
    """A browser's file name reduced to a plain name (letters, digits, . _ -), its suffix kept in lower case."""
    import re

    p = Path(str(file_name).replace("\\", "/")).name
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", Path(p).stem).strip("._") or "upload"
    return stem[:80] + Path(p).suffix.lower()


LABEL_NAMES = ("label", "labels", "target", "class", "y", "diagnosis", "outcome")


def likely_id_column(columns: list[str]) -> str | None:
    """A column named like an id ('id', 'patient_id', 'ID'), if the table has one."""
    return next((c for c in columns if c.lower() == "id" or c.lower().endswith(("_id", " id"))), None)


def likely_label_column(columns: list[str]) -> str:
    """The column a table most likely keeps its class in (a conventional name, else the last column)."""
    by_name = {c.lower(): c for c in columns}
    return next((by_name[n] for n in LABEL_NAMES if n in by_name), columns[-1])
