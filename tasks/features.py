"""Model inputs: what each raw column is, and the Keras preprocessing layers that take it raw.

A dataset is either images (one array input) or columns: the numeric columns enter as one
matrix input and are imputed and normalized, each categorical column has a named input looked
up in a vocabulary, a text column one that is vectorized. The statistics and vocabularies are
fitted on the training rows only, in preprocess's streaming pass (`InputFitter`), then built into the
model with the constants given (no `adapt` over the data), so the saved model takes a raw DataFrame
row, image or string and nothing has to be pickled beside it.
Raw rows become model inputs through `kerasflow.model_interface.to_model_inputs`, everywhere.
"""

from __future__ import annotations

import keyword
import re
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import numpy as np
import pandas as pd

from kerasflow.config import PreprocessParams, TextParams
from kerasflow.model_interface import (
    CATEGORICAL,
    MISSING,
    NUMERIC,
    NUMERIC_INPUT,
    TEXT,
    InputColumn,
    ModelInputs,
    numbers,
    strings,
)
from kerasflow.records import FittedInputs, ImageScaling, NumericFit, RawDatasetInfo, TargetScaling, TextFit
from tasks.sampling import SmallestRows, hash_positions
from tasks.summaries import CategorySummary, NumericSummary, TableSummary, kind_of

# Salt of the seeded sample the numeric quantiles are computed on (independent of the split and of drift's).
QUANTILE_SALT = 4
# An interquartile range over this is one standard deviation of a normal distribution (robust scaling).
IQR_PER_STD = 1.349

# Names of layers the model adds itself: a column named like one gets a different input name.
RESERVED_NAMES = frozenset(
    {"image", "numeric", "output", "scaling", "features", "categories", "numeric_columns", "target_scaling", "backbone"}
)


def input_name(column: str, taken: set[str]) -> str:
    """A Keras / TensorFlow-safe input name for a column (SavedModel signatures allow few characters)."""
    name = re.sub(r"[^A-Za-z0-9_.\-]", "_", str(column))
    # A SavedModel's signature makes each input a Python parameter: no keyword (`class`), no leading digit.
    if not name or not name[0].isalpha() or keyword.iskeyword(name):
        name = f"c_{name}"
    candidate, suffix = name, 1
    while candidate in taken:
        suffix += 1
        candidate = f"{name}_{suffix}"
    taken.add(candidate)
    return candidate


def column_kinds(frame: pd.DataFrame) -> dict[str, str]:
    """numeric, bool or string per column of a frame (of the raw data's types)."""
    return {str(name): kind_of(frame[name].dtype) for name in frame.columns}


def describe_inputs(
    kinds: Mapping[str, str] | pd.DataFrame, info: RawDatasetInfo, params: PreprocessParams
) -> ModelInputs:
    """The model's inputs, from the raw columns' kinds (or a frame of them): images, or one entry per column."""
    if isinstance(kinds, pd.DataFrame):
        kinds = column_kinds(kinds)
    features = info.feature_columns
    if info.image_shape and not info.text_column:
        return ModelInputs.images(info.image_shape)
    unknown = [name for name in params.categorical_columns if name not in features]
    if unknown:
        raise ValueError(
            f"preprocess.categorical_columns names {unknown}, which are not feature columns {features[:20]}"
        )
    taken: set[str] = set(RESERVED_NAMES)
    columns = []
    for name in features:
        if name == info.text_column:
            kind = TEXT
        elif name in params.categorical_columns or kinds[name] == "string":
            kind = CATEGORICAL
        else:
            kind = NUMERIC  # booleans too, as 0 / 1
        columns.append(InputColumn(name, NUMERIC_INPUT if kind == NUMERIC else input_name(name, taken), kind))
    if sum(entry.kind == TEXT for entry in columns) > 1:
        raise ValueError("only one text column is supported")
    return ModelInputs("columns", tuple(columns))


def feature_matrix(frame: pd.DataFrame, info: RawDatasetInfo, inputs: ModelInputs) -> np.ndarray | pd.DataFrame:
    """The raw features of a frame: an image array, or the feature columns as they are."""
    if inputs.kind == "image":
        x = frame[info.feature_columns].to_numpy(dtype="float32")
        return x.reshape(len(x), *inputs.shape)
    return frame[inputs.column_names].reset_index(drop=True)


def raw_example(x: np.ndarray | pd.DataFrame, inputs: ModelInputs, rows: int = 5) -> np.ndarray | pd.DataFrame:
    """A few raw rows as a caller would send them (the MLflow input example and signature).

    Numeric columns are float64 (the signature's `double`), so a missing value still fits.
    """
    if inputs.kind == "image":
        return np.asarray(x[:rows], dtype="float32")
    return as_signature(x.head(rows), inputs)


def as_signature(x: pd.DataFrame, inputs: ModelInputs) -> pd.DataFrame:
    """Raw columns typed as the logged model's signature has them (numbers float64, categories and text strings):
    MLflow's schema check refuses an int64 column for a `double` input ("can not safely convert")."""
    frame = x.copy()
    for entry in inputs.columns:
        if entry.kind == NUMERIC:
            frame[entry.column] = numbers(frame[entry.column])
        else:
            frame[entry.column] = strings(frame[entry.column]).astype(object)
    return frame


def target_scaling(y_train: np.ndarray, task: str, params: PreprocessParams) -> TargetScaling | None:
    """Mean and standard deviation of a regression target (training split), or None."""
    summary = NumericSummary()
    summary.add(y_train)
    return scaling_of_target(summary, task, params)


def scaling_of_target(summary: NumericSummary, task: str, params: PreprocessParams) -> TargetScaling | None:
    if task != "regression" or not params.scale_target:
        return None
    return TargetScaling(mean=summary.mean, std=summary.std if summary.std > 0 else 1.0)


class PixelSummary:
    """Images so far, per pixel position: the moments for `standard` scaling, and the largest value."""

    def __init__(self) -> None:
        self.count = 0
        self.mean: np.ndarray | float = 0.0
        self.m2: np.ndarray | float = 0.0
        self.peak = 0.0

    def add(self, images: np.ndarray) -> None:
        images = np.asarray(images, dtype="float64")
        if not len(images):
            return
        count, mean = len(images), images.mean(axis=0)
        m2 = np.square(images - mean).sum(axis=0)
        total = self.count + count
        delta = mean - self.mean
        self.mean = self.mean + delta * count / total
        self.m2 = self.m2 + m2 + delta * delta * self.count * count / total
        self.count = total
        self.peak = max(self.peak, float(np.abs(images).max()))

    def scaling(self, kind: str) -> ImageScaling:
        """Images divided by the training maximum (auto / max), standardized per pixel, or left alone."""
        kind = "max" if kind == "auto" else kind
        if kind == "max":
            return ImageScaling("max", scale=1.0 / (self.peak or 1.0))
        if kind == "standard":
            variance = np.asarray(self.m2) / max(self.count, 1)
            variance = np.where(variance > 0, variance, 1.0)
            return ImageScaling("standard", mean=np.ravel(self.mean).tolist(), variance=np.ravel(variance).tolist())
        return ImageScaling("none")


class InputFitter:
    """The constants of the input layers, fitted batch by batch on the training rows (`add`), then read once
    (`fitted`): each numeric column's fill (its mean) and normalization (mean and variance, once filled, or
    its largest absolute value), each categorical column's vocabulary (its most frequent values, as Keras'
    StringLookup orders them), the text column's vocabulary (Keras' own TextVectorization counting tokens
    batch by batch), image scaling, the regression target's scaling and the class counts.
    """

    def __init__(
        self, inputs: ModelInputs, params: PreprocessParams, task: str = "classification", seed: int = 0
    ) -> None:
        self.inputs = inputs
        self.params = params
        self.task = task
        self.seed = seed
        texts = tuple(entry.column for entry in inputs.columns if entry.kind == TEXT)
        self.columns = TableSummary(uncounted=texts)
        self.pixels = PixelSummary()
        self.target = NumericSummary()
        self.class_counts: np.ndarray = np.zeros(0, dtype=np.int64)
        self.text_layers: dict[str, Any] = {}
        # Quantiles (robust and quantile scaling, the piecewise-linear encoding) come from a seeded sample of the
        # training rows' numbers, of at most preprocess.sample_rows rows, the same however the rows are batched.
        wanted = params.scaling in ("robust", "quantile") or params.numeric_encoding == "piecewise_linear"
        self.sample = SmallestRows(params.sample_rows) if wanted and inputs.kind != "image" and inputs.numeric else None
        self.seen = 0

    def add(
        self, x: np.ndarray | pd.DataFrame, y: np.ndarray | None = None, positions: np.ndarray | None = None
    ) -> None:
        """Training rows, their labels and their positions in the raw file (for the seeded quantile sample)."""
        if self.inputs.kind == "image":
            self.pixels.add(x)
        else:
            numeric = [entry.column for entry in self.inputs.numeric]
            categorical = [entry.column for entry in self.inputs.columns if entry.kind == CATEGORICAL]
            table = pd.DataFrame({name: numbers(x[name]) for name in numeric}, index=x.index)
            for name in categorical:
                table[name] = x[name].astype("string")
            self.columns.kinds.update({name: "numeric" for name in numeric} | {name: "string" for name in categorical})
            self.columns.add(table)
            if self.sample is not None:
                if positions is None:
                    positions = np.arange(self.seen, self.seen + len(table))
                self.seen += len(table)
                hashes = hash_positions(np.asarray(positions), self.seed, QUANTILE_SALT)
                self.sample.add(hashes, table[numeric].to_numpy(dtype="float64"))
            for entry in self.inputs.columns:
                if entry.kind == TEXT:
                    self.text_layer(entry.input).update_state(strings(x[entry.column]))
        if y is not None and len(y):
            if self.task == "regression":
                self.target.add(y)
            else:
                counts = np.bincount(np.asarray(y, dtype=np.int64))
                size = max(len(counts), len(self.class_counts))
                self.class_counts = np.pad(self.class_counts, (0, size - len(self.class_counts))) + np.pad(
                    counts, (0, size - len(counts))
                )

    def text_layer(self, name: str) -> Any:
        if name not in self.text_layers:
            import keras

            settings = self.params.text
            # Words first or a min_df: every token is counted (as Keras does anyway before it cuts the vocabulary
            # to max_tokens), and text_fit cuts it: rare tokens out, then words before n-grams.
            self.text_layers[name] = keras.layers.TextVectorization(
                max_tokens=None if cut_here(settings) else settings.max_tokens,
                output_sequence_length=settings.sequence_length if settings.output_mode == "int" else None,
                standardize=None if settings.standardize == "none" else settings.standardize,
                output_mode=settings.output_mode,
                ngrams=settings.ngrams if settings.ngrams > 1 else None,
            )
        return self.text_layers[name]

    def text_fit(self, name: str) -> TextFit:
        """The vocabulary (and for tf_idf each entry's inverse document frequency) the text layer counted."""
        settings = self.params.text
        layer = self.text_layer(name)
        texts = float(layer._lookup_layer.num_documents.numpy()) if settings.output_mode == "tf_idf" else 0.0
        layer.finalize_state()
        # Token ids start after padding and OOV ("" and "[UNK]"); bag-of-words modes have no padding.
        special = 2 if settings.output_mode == "int" else 1
        vocabulary = [str(value) for value in layer.get_vocabulary()[special:]]
        idf = None
        if settings.output_mode == "tf_idf":
            weights = np.asarray(layer._lookup_layer.idf_weights.numpy(), dtype="float64")
            idf = weights[special : special + len(vocabulary)].tolist()
        if cut_here(settings):
            # Keras' order is by count; rare tokens out (Keras' idf is log(1 + texts / (1 + the token's texts)),
            # which gives each token's texts back), and words before n-grams, each kept in that order.
            order = list(range(len(vocabulary)))
            if settings.min_df > 1:
                token_texts = texts / np.expm1(np.asarray(idf)) - 1
                order = [i for i in order if token_texts[i] > settings.min_df - 0.5]
            if words_first(settings):
                order = [i for i in order if " " not in vocabulary[i]] + [i for i in order if " " in vocabulary[i]]
            order = order[: settings.max_tokens - special]
            vocabulary = [vocabulary[i] for i in order]
            idf = None if idf is None else [idf[i] for i in order]
        return TextFit(
            vocabulary, settings.sequence_length, settings.standardize, settings.output_mode, settings.ngrams, idf
        )

    def fitted(self) -> FittedInputs:
        target = scaling_of_target(self.target, self.task, self.params)
        if self.inputs.kind == "image":
            return FittedInputs(image_scaling=self.pixels.scaling(self.params.scaling), target=target)
        text = {entry.input: self.text_fit(entry.input) for entry in self.inputs.columns if entry.kind == TEXT}
        quantiles = self.quantile_sample()
        categorical = {
            entry.input: self.vocabulary(entry.column) for entry in self.inputs.columns if entry.kind == CATEGORICAL
        }
        scaling = "standard" if self.params.scaling == "auto" else self.params.scaling
        return FittedInputs(
            numeric={
                entry.column: self.numeric_fit(entry.column, quantiles.get(entry.column))
                for entry in self.inputs.numeric
            },
            categorical=categorical,
            text=text,
            categorical_encoding=self.params.categorical_encoding,
            target=target,
            numeric_scaling=scaling,
            clip=self.params.clip,
            numeric_encoding=self.params.numeric_encoding,
            missing_indicators=self.params.missing_indicators,
            embedded=embedding_widths(categorical, self.params),
        )

    def quantile_sample(self) -> dict[str, np.ndarray]:
        """Each numeric column's present values in the seeded sample (empty without a sample)."""
        if self.sample is None or not len(self.sample):
            return {}
        rows = np.asarray(self.sample.rows())
        columns = [entry.column for entry in self.inputs.numeric]
        return {name: rows[:, index][np.isfinite(rows[:, index])] for index, name in enumerate(columns)}

    def numeric_fit(self, column: str, sample: np.ndarray | None = None) -> NumericFit:
        summary = self.columns.numeric.get(column) or NumericSummary()
        fill = summary.mean if summary.count else 0.0
        scaling = self.params.scaling
        missing = summary.missing > 0
        knots = None
        if sample is not None and len(sample):
            median = float(np.median(sample))
            fill = median if scaling in ("robust", "quantile") else fill
            if scaling == "quantile" or self.params.numeric_encoding == "piecewise_linear":
                bins = min(self.params.quantile_bins, max(1, len(np.unique(sample)) - 1))
                knots = np.unique(np.quantile(sample, np.linspace(0, 1, bins + 1))).tolist()
        if scaling in ("auto", "standard"):
            variance = summary.filled_variance
            # Constant columns keep variance 1 so the normalization divides by one, not zero.
            return NumericFit(fill, mean=fill, variance=variance if variance > 0 else 1.0, knots=knots, missing=missing)
        if scaling == "robust":
            spread = 0.0
            if sample is not None and len(sample):
                low, high = np.quantile(sample, [0.25, 0.75])
                spread = float(high - low) / IQR_PER_STD
            spread = spread if spread > 0 else summary.std if summary.std > 0 else 1.0
            return NumericFit(fill, mean=fill, variance=spread**2, knots=knots, missing=missing)
        if scaling == "max":
            # Divide by the largest absolute value: a Normalization with mean 0 and variance max².
            peak = max(summary.peak, abs(fill))
            return NumericFit(fill, mean=0.0, variance=(peak if peak > 0 else 1.0) ** 2, knots=knots, missing=missing)
        return NumericFit(fill, knots=knots or ([fill] if scaling == "quantile" else None), missing=missing)

    def vocabulary(self, column: str) -> list[str]:
        """The column's most frequent values, missing ones counted as MISSING (as the lookup sees them)."""
        summary = self.columns.text.get(column) or CategorySummary()
        counts = dict(summary.counts)
        if summary.missing:
            counts[MISSING] = counts.get(MISSING, 0) + summary.missing
        return CategorySummary(counts=counts).most_frequent(self.params.max_categories)


def embedding_widths(categorical: dict[str, list[str]], params: PreprocessParams) -> dict[str, int]:
    """The categorical inputs that get an embedding, and its width: 1.6 * levels^0.56 (AutoGluon's tabular network's
    rule), at least 2 and at most preprocess.embedding_max_dim. auto embeds the columns of more than
    preprocess.one_hot_max_levels levels."""
    encoding = params.categorical_encoding
    if encoding not in ("auto", "embedding"):
        return {}
    widths = {}
    for name, vocabulary in categorical.items():
        levels = len(vocabulary) + 1  # with the out-of-vocabulary index
        if encoding == "embedding" or levels > params.one_hot_max_levels:
            widths[name] = int(min(params.embedding_max_dim, max(2, round(1.6 * levels**0.56))))
    return widths


def adapt_inputs(
    inputs: ModelInputs,
    x_train: np.ndarray | pd.DataFrame,
    params: PreprocessParams,
    target: TargetScaling | None = None,
) -> FittedInputs:
    """The input layers' constants from training rows held in memory (one batch of `InputFitter`)."""
    fitter = InputFitter(inputs, params)
    fitter.add(x_train)
    fitted = fitter.fitted()
    return replace(fitted, target=target) if target is not None else fitted


def input_graph(inputs: ModelInputs, fitted: FittedInputs) -> tuple[Any, dict[str, Any]]:
    """The model's raw inputs and the named tensors a spec can start from.

    Returns (Keras inputs, tensors): tensors always has `input` (what a sequential spec
    starts from) and, where the data has them, `image`, `numeric`, `categorical`, `text`
    and `features` (numeric and one-hot categories side by side).
    """
    import keras

    if inputs.kind == "image":
        image = keras.Input(shape=inputs.shape, name="image")
        scaled = image_scaling_layer(fitted.image_scaling, inputs.shape)
        tensor = scaled(image) if scaled else image
        return image, {"input": tensor, "image": tensor}

    model_inputs: dict[str, Any] = {}
    tensors: dict[str, Any] = {}
    if inputs.numeric:
        model_inputs[NUMERIC_INPUT] = keras.Input(shape=(len(inputs.numeric),), dtype="float32", name=NUMERIC_INPUT)
        tensors["numeric"] = numeric_branch(
            model_inputs[NUMERIC_INPUT], [fitted.numeric[e.column] for e in inputs.numeric], fitted
        )
    categories = []
    for entry in inputs.strings:
        model_inputs[entry.input] = keras.Input(shape=(1,), dtype="string", name=entry.input)
        if entry.kind == CATEGORICAL:
            categories.append(category_branch(model_inputs[entry.input], entry.input, fitted))
        else:
            tensors["text"] = text_branch(model_inputs[entry.input], entry.input, fitted.text[entry.input])
    if categories:
        tensors["categorical"] = concatenate(categories, "categories")
    float_parts = [tensors["numeric"]] if "numeric" in tensors else []
    if categories and fitted.categorical_encoding != "integer":
        float_parts.append(tensors["categorical"])
    if float_parts:
        tensors["features"] = concatenate(float_parts, "features")
    tensors["input"] = tensors.get("text", tensors.get("features", tensors.get("categorical")))
    return model_inputs, tensors


def numeric_branch(matrix: Any, fits: list[NumericFit], fitted: FittedInputs | None = None) -> Any:
    """Missing numbers become the fill value (the training mean, or median), then scaled: normalized (standard,
    robust, max) or by training quantile (quantile), and clipped; beside them, where asked, the piecewise-linear
    encoding and a 0/1 indicator of each column that training saw missing. All ops in the graph, saved with it."""
    from keras import layers, ops

    fitted = fitted or FittedInputs()
    fill = np.array([fit.fill for fit in fits], dtype="float32")
    missing = ops.isnan(matrix)
    filled = ops.where(missing, fill, matrix)
    if fitted.numeric_scaling == "quantile":
        pieces, counts = piecewise_linear(filled, [fit.knots or [fit.fill] for fit in fits])
        # The share of a column's knots a value lies above: its training quantile, from -1 to 1.
        tensor = 2.0 * ops.sum(pieces, axis=-1) / counts - 1.0
    elif all(fit.mean is not None for fit in fits):
        mean = np.array([fit.mean for fit in fits], dtype="float32")
        variance = np.array([fit.variance for fit in fits], dtype="float32")
        tensor = layers.Normalization(mean=mean, variance=variance, name="scaling")(filled)
    else:
        tensor = filled
    if fitted.clip:
        tensor = ops.clip(tensor, -fitted.clip, fitted.clip)
    parts = [tensor]
    if fitted.numeric_encoding == "piecewise_linear":
        pieces, _ = piecewise_linear(filled, [fit.knots or [fit.fill] for fit in fits])
        parts.append(ops.reshape(pieces, (-1, pieces.shape[1] * pieces.shape[2])))
    flagged = [index for index, fit in enumerate(fits) if fit.missing]
    if fitted.missing_indicators and flagged:
        parts.append(ops.cast(ops.take(missing, np.array(flagged, dtype="int32"), axis=1), "float32"))
    return parts[0] if len(parts) == 1 else layers.Concatenate(name="numeric_encoded")(parts)


def piecewise_linear(values: Any, knots: list[list[float]]) -> tuple[Any, np.ndarray]:
    """Each column's value as pieces between its knots (each piece 0 below its interval, 1 above, linear within;
    Gorishniy et al. 2022), shape (rows, columns, most pieces); and each column's number of pieces (at least 1).
    Columns with fewer pieces are padded with pieces that are always 0."""
    from keras import ops

    widest = max(1, max(len(column) - 1 for column in knots))
    left = np.full((len(knots), widest), np.finfo("float32").max / 4, dtype="float32")
    width = np.ones((len(knots), widest), dtype="float32")
    for index, column in enumerate(knots):
        edges = np.asarray(column, dtype="float64")
        if len(edges) > 1:
            left[index, : len(edges) - 1] = edges[:-1]
            width[index, : len(edges) - 1] = np.maximum(np.diff(edges), 1e-12)
    counts = np.array([max(1, len(column) - 1) for column in knots], dtype="float32")
    pieces = ops.clip((ops.expand_dims(values, -1) - left) / width, 0.0, 1.0)
    return pieces, counts


def category_branch(column: Any, name: str, fitted: FittedInputs) -> Any:
    """A string column looked up in its vocabulary: one-hot floats, a learned embedding (for the columns in
    `fitted.embedded`), or integer ids for an embedding in the spec (categorical_encoding: integer)."""
    from keras import layers, ops

    embedded = fitted.embedded.get(name)
    one_hot = fitted.categorical_encoding != "integer" and not embedded
    lookup = layers.StringLookup(
        vocabulary=fitted.categorical[name],
        num_oov_indices=1,
        output_mode="one_hot" if one_hot else "int",
        name=f"lookup_{name}",
    )
    encoded = lookup(column)
    if embedded:
        vectors = layers.Embedding(len(fitted.categorical[name]) + 1, embedded, name=f"embed_{name}")(encoded)
        return layers.Flatten(name=f"embedded_{name}")(vectors)
    return ops.cast(encoded, "float32") if one_hot else encoded


def words_first(settings: TextParams) -> bool:
    """Whether the text vocabulary puts words before n-grams (only with n-grams to put after them)."""
    return settings.words_first and settings.ngrams > 1


def cut_here(settings: TextParams) -> bool:
    """Whether the text vocabulary is cut to max_tokens here (words first, rare tokens out), not by Keras."""
    return words_first(settings) or settings.min_df > 1


def text_branch(column: Any, name: str, fit: TextFit) -> Any:
    """Free text to token ids (output_mode int), or to one vector of its words and n-grams (multi_hot, count,
    tf_idf), with the fitted vocabulary."""
    from keras import layers, ops

    sequence = fit.output_mode == "int"
    vectorize = layers.TextVectorization(
        vocabulary=fit.vocabulary or None,
        output_sequence_length=fit.sequence_length if sequence else None,
        standardize=None if fit.standardize == "none" else fit.standardize,
        output_mode=fit.output_mode,
        ngrams=fit.ngrams if fit.ngrams > 1 else None,
        idf_weights=fit.idf if fit.output_mode == "tf_idf" and fit.vocabulary else None,
        name=f"vectorize_{name}",
    )
    vectors = vectorize(column)
    if sequence:
        return vectors
    # One vector per text (Keras infers an extra axis for the (rows, 1) strings input that the values do not have),
    # of length one: long and short texts alike, as scikit-learn's TfidfVectorizer normalizes them.
    flat = ops.reshape(ops.cast(vectors, "float32"), (-1, vectorize.vocabulary_size()))
    # Slot 0 counts the tokens outside the vocabulary. It says nothing about which words a text holds, and a long
    # text's many rare word pairs made it most of the vector's length, the real words' weights squeezed near zero
    # (scikit-learn's TfidfVectorizer leaves such tokens out too): it is left out.
    if vectorize.vocabulary_size() > 1:
        flat = flat[:, 1:]
    return layers.UnitNormalization(name=f"normalize_{name}")(flat)


def concatenate(tensors: list[Any], name: str) -> Any:
    from keras import layers

    return tensors[0] if len(tensors) == 1 else layers.Concatenate(name=name)(tensors)


def image_scaling_layer(scaling: ImageScaling | None, shape: tuple[int, ...]) -> Any:
    from keras import layers

    if scaling is None or scaling.kind == "none":
        return None
    if scaling.kind == "max":
        return layers.Rescaling(scaling.scale, name="scaling")
    mean = np.asarray(scaling.mean, dtype="float32").reshape(shape)
    variance = np.asarray(scaling.variance, dtype="float32").reshape(shape)
    return layers.Normalization(axis=tuple(range(1, len(shape) + 1)), mean=mean, variance=variance, name="scaling")
