"""The tabular and text recipe: numeric scalings and encodings, embedded categories, the ensemble inside one model,
the decision threshold chosen on validation rows, and bag-of-words text. Each with a case where it must not apply."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from kerasflow.config import ConfigError, ModelParams, PreprocessParams, TextParams
from kerasflow.model_interface import InputColumn, ModelInputs, to_model_inputs
from tasks.evaluate import choose_threshold, fixed_threshold
from tasks.features import InputFitter, embedding_widths, input_graph, piecewise_linear
from tasks.model import build_model
from tests.unit.helpers import model_state

NUMBERS = ModelInputs("columns", (InputColumn("a", "numeric", "numeric"), InputColumn("b", "numeric", "numeric")))


def fitted_for(frame: pd.DataFrame, inputs: ModelInputs, **settings):
    fitter = InputFitter(inputs, PreprocessParams(**settings))
    fitter.add(frame)
    return fitter.fitted()


def features_of(frame: pd.DataFrame, inputs: ModelInputs, fitted) -> np.ndarray:
    import keras

    model_inputs, tensors = input_graph(inputs, fitted)
    model = keras.Model(model_inputs, tensors["input"])
    values = to_model_inputs(frame, inputs)
    return np.asarray(model({name: tf.constant(array) for name, array in values.items()}))


def skewed(rows: int = 400, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    b = rng.normal(size=rows)
    b[rng.random(rows) < 0.25] = np.nan
    return pd.DataFrame({"a": rng.lognormal(sigma=2.0, size=rows), "b": b})


def test_quantile_scaling_maps_training_values_to_their_rank_between_minus_one_and_one():
    frame = skewed()
    fitted = fitted_for(frame, NUMBERS, scaling="quantile", quantile_bins=16)
    assert fitted.numeric["a"].knots is not None and len(fitted.numeric["a"].knots) == 17
    scaled = features_of(frame, NUMBERS, fitted)[:, 0]
    assert scaled.min() >= -1 and scaled.max() <= 1
    # Ranks: the order of the values is kept and they spread evenly, whatever the skew (lognormal, sigma 2).
    order = np.argsort(frame["a"].to_numpy())
    assert np.all(np.diff(scaled[order]) >= -1e-6)
    assert abs(np.median(scaled)) < 0.1 and np.mean(np.abs(scaled) > 0.5) == pytest.approx(0.5, abs=0.1)
    # A value far beyond the training range stays at the top (standard scaling would make it huge).
    extreme = features_of(pd.DataFrame({"a": [1e9], "b": [0.0]}), NUMBERS, fitted)
    assert extreme[0, 0] == pytest.approx(1.0)


def test_robust_scaling_centres_on_the_median_and_clips():
    frame = skewed()
    fitted = fitted_for(frame, NUMBERS, scaling="robust", clip=3.0)
    fit = fitted.numeric["a"]
    assert fit.fill == pytest.approx(np.median(frame["a"]), rel=1e-6) and fit.mean == fit.fill
    scaled = features_of(frame, NUMBERS, fitted)
    assert scaled.max() <= 3.0 and scaled.min() >= -3.0
    # Standard scaling has no median, and nothing is clipped without `clip`.
    plain = fitted_for(frame, NUMBERS, scaling="standard")
    assert plain.numeric["a"].fill == pytest.approx(frame["a"].mean()) and plain.clip is None
    assert features_of(frame, NUMBERS, plain).max() > 3.0


def test_piecewise_linear_pieces_add_up_to_the_share_of_knots_below_a_value():
    knots = [[0.0, 1.0, 3.0], [5.0]]  # a column of three knots (two pieces), and a constant column
    values = tf.constant([[-1.0, 5.0], [0.5, 5.0], [2.0, 5.0], [9.0, 5.0]])
    pieces, counts = piecewise_linear(values, knots)
    pieces = np.asarray(pieces)
    assert pieces.shape == (4, 2, 2) and counts.tolist() == [2.0, 1.0]
    np.testing.assert_allclose(pieces[:, 0, :], [[0, 0], [0.5, 0], [1, 0.5], [1, 1]])
    assert not pieces[:, 1, :].any()  # the constant column's pieces are always 0


def test_piecewise_linear_encoding_and_missing_indicators_are_extra_inputs_only_when_asked():
    frame = skewed()
    encoded = fitted_for(frame, NUMBERS, numeric_encoding="piecewise_linear", quantile_bins=8, missing_indicators=True)
    # Two scaled numbers, 8 pieces for each, and one indicator: only b had missing values in training.
    width = features_of(frame, NUMBERS, encoded).shape[1]
    assert width == 2 + 2 * 8 + 1
    indicator = features_of(frame, NUMBERS, encoded)[:, -1]
    np.testing.assert_array_equal(indicator, frame["b"].isna().to_numpy(dtype="float32"))
    assert features_of(frame, NUMBERS, fitted_for(frame, NUMBERS)).shape[1] == 2


def test_many_level_categories_get_an_embedding_sized_by_their_levels_few_levels_stay_one_hot():
    vocabularies = {"city": [f"c{i}" for i in range(300)], "colour": ["red", "green", "blue"]}
    widths = embedding_widths(vocabularies, PreprocessParams(categorical_encoding="auto"))
    assert list(widths) == ["city"] and widths["city"] == min(32, round(1.6 * 301**0.56))
    assert embedding_widths(vocabularies, PreprocessParams(categorical_encoding="one_hot")) == {}
    everything = embedding_widths(vocabularies, PreprocessParams(categorical_encoding="embedding"))
    assert set(everything) == {"city", "colour"} and everything["colour"] >= 2


def test_an_embedded_category_enters_the_features_as_its_vector():
    inputs = ModelInputs("columns", (InputColumn("city", "city", "categorical"),))
    frame = pd.DataFrame({"city": [f"c{i % 40}" for i in range(400)]})
    fitted = fitted_for(frame, inputs, categorical_encoding="auto", one_hot_max_levels=16)
    assert fitted.embedded == {"city": round(1.6 * 41**0.56)}
    assert features_of(frame.head(3), inputs, fitted).shape == (3, fitted.embedded["city"])
    one_hot = fitted_for(frame, inputs, categorical_encoding="auto", one_hot_max_levels=64)
    assert one_hot.embedded == {} and features_of(frame.head(3), inputs, one_hot).shape == (3, 41)


def test_an_ensemble_averages_k_members_in_one_model():
    state = model_state(NUMBERS, "classification", 3, fitted_for(skewed(), NUMBERS))
    layers = [{"type": "dense", "units": 8, "activation": "relu", "name": "hidden"}]
    single = build_model(ModelParams(layers=layers), state)
    ensemble = build_model(ModelParams(layers=layers, ensemble=3), state)
    heads = [layer.name for layer in ensemble.layers if layer.name.startswith("output_")]
    assert heads == ["output_0", "output_1", "output_2"] and "output" in [layer.name for layer in ensemble.layers]
    assert ensemble.count_params() == pytest.approx(3 * single.count_params(), rel=0.05)
    x = {"numeric": tf.constant(np.random.default_rng(0).normal(size=(5, 2)), dtype=tf.float32)}
    members = [ensemble.get_layer(name) for name in heads]
    assert all(member is not None for member in members)
    probabilities = np.asarray(ensemble(x))
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)  # an average of softmaxes
    with pytest.raises(ValueError):
        ModelParams(layers=layers, ensemble=0)


def test_input_dropout_is_drawn_once_for_every_member_and_only_in_training():
    state = model_state(NUMBERS, "regression", 1, fitted_for(skewed(), NUMBERS))
    spec = ModelParams(ensemble=3, input_dropout=0.5, linear_skip=True)  # three linear members and the wide layer
    model = build_model(spec, state)
    dropped = model.get_layer("input_dropout")
    members = [model.get_layer(f"logits_{index}") for index in range(3)]
    assert all(member.input is dropped.output for member in members)  # one draw, shared
    assert model.get_layer("wide").input is not dropped.output  # the wide layer reads the whole input
    x = {"numeric": tf.constant(np.random.default_rng(2).normal(size=(64, 2)), dtype=tf.float32)}
    np.testing.assert_allclose(np.asarray(model(x)), np.asarray(model(x)), rtol=1e-6)  # no dropout at inference
    assert not np.allclose(np.asarray(model(x, training=True)), np.asarray(model(x)), atol=1e-4)
    plain = build_model(ModelParams(ensemble=3), state)
    assert "input_dropout" not in [layer.name for layer in plain.layers]  # off unless asked for
    with pytest.raises(ValueError):
        ModelParams(input_dropout=1.0)


def test_input_dropout_refuses_token_ids():
    text = ModelInputs("columns", (InputColumn("review", "review", "text"),))
    frame = pd.DataFrame({"review": ["good film", "bad plot", "very good", "dull film"] * 10})
    fitted = fitted_for(frame, text, text=TextParams(output_mode="int", sequence_length=4, max_tokens=20))
    state = model_state(text, "classification", 2, fitted)
    layers = [{"type": "embedding", "output_dim": 4}, {"type": "global_average_pooling1d"}]
    with pytest.raises(ConfigError, match="model.input_dropout"):
        build_model(ModelParams(layers=layers, input_dropout=0.2), state)
    tf_idf = fitted_for(frame, text, text=TextParams(output_mode="tf_idf", max_tokens=20))
    assert build_model(ModelParams(input_dropout=0.2), model_state(text, "classification", 2, tf_idf))


def test_linear_skip_adds_a_linear_layer_on_the_features_to_the_networks_logits():
    state = model_state(NUMBERS, "regression", 1, fitted_for(skewed(), NUMBERS))
    layers = [{"type": "dense", "units": 8, "activation": "relu"}]
    model = build_model(ModelParams(layers=layers, ensemble=2, linear_skip=True), state)
    names = [layer.name for layer in model.layers]
    assert "wide" in names and "wide_and_deep" in names and "output_0" not in names
    x = {"numeric": tf.constant(np.random.default_rng(1).normal(size=(6, 2)), dtype=tf.float32)}
    # With the deep heads silenced, the model is the linear layer alone (mapped back to the target's units).
    for name in ("logits_0", "logits_1"):
        layer = model.get_layer(name)
        layer.set_weights([np.zeros_like(weight) for weight in layer.get_weights()])
    wide = model.get_layer("wide")
    kernel, bias = (np.asarray(weight) for weight in wide.get_weights())
    features = keras_features(model, x)
    expected = features @ kernel + bias
    np.testing.assert_allclose(np.asarray(model(x)), expected, rtol=1e-4, atol=1e-4)
    plain = build_model(ModelParams(layers=layers, ensemble=2), state)
    assert "wide" not in [layer.name for layer in plain.layers]  # off unless asked for


def keras_features(model, x) -> np.ndarray:
    import keras

    return np.asarray(keras.Model(model.inputs, model.get_layer("wide").input)(x))


@pytest.mark.parametrize("classes", [2, 3])
def test_a_fitted_wide_start_makes_the_untrained_model_the_logistic_regression_on_its_features(classes):
    from sklearn.linear_model import LogisticRegression

    from tasks.preprocess import Split
    from tasks.wide_start import start_wide_from_linear_fit

    frame = skewed(300, seed=classes)
    y = (np.nan_to_num(frame["b"].to_numpy()) + np.log(frame["a"].to_numpy()) > 0).astype("int64")
    if classes == 3:
        y += (frame["b"].fillna(0).to_numpy() > 1).astype("int64")
    state = model_state(NUMBERS, "classification", classes, fitted_for(frame, NUMBERS))
    layers = [{"type": "dense", "units": 8, "activation": "relu"}]
    spec = ModelParams(layers=layers, ensemble=2, linear_skip=True, wide_start="fitted")
    model = build_model(spec, state)
    start_wide_from_linear_fit(model, Split(frame, y), state, seed=0)
    x = {name: tf.constant(array) for name, array in to_model_inputs(frame, NUMBERS).items()}
    features = keras_features(model, x)
    expected = LogisticRegression(max_iter=2000, random_state=0).fit(features, y).predict_proba(features)
    outputs = np.asarray(model(x))
    np.testing.assert_allclose(outputs, expected[:, 1:] if classes == 2 else expected, atol=1e-4)
    # A random start is not the linear model.
    random_start = np.asarray(build_model(ModelParams(layers=layers, ensemble=2, linear_skip=True), state)(x))
    assert np.abs(random_start - (expected[:, 1:] if classes == 2 else expected)).max() > 0.05


def test_a_fitted_wide_start_of_a_regression_is_ridge_in_the_targets_units():
    from sklearn.linear_model import Ridge

    from kerasflow.records import TargetScaling
    from tasks.preprocess import Split
    from tasks.wide_start import start_wide_from_linear_fit

    frame = skewed(300, seed=4)
    y = 50.0 + 10.0 * np.nan_to_num(frame["b"].to_numpy()) + np.random.default_rng(4).normal(size=300)
    fitted = fitted_for(frame, NUMBERS)
    state = model_state(
        NUMBERS, "regression", 0, replace(fitted, target=TargetScaling(float(y.mean()), float(y.std())))
    )
    model = build_model(ModelParams(layers=[{"type": "dense", "units": 8}], linear_skip=True), state)
    start_wide_from_linear_fit(model, Split(frame, y), state, seed=0)
    x = {name: tf.constant(array) for name, array in to_model_inputs(frame, NUMBERS).items()}
    features = keras_features(model, x)
    z = (y - y.mean()) / y.std()
    expected = Ridge(alpha=1.0).fit(features, z).predict(features) * y.std() + y.mean()
    np.testing.assert_allclose(np.asarray(model(x))[:, 0], expected, rtol=1e-4, atol=1e-3)


def test_a_fitted_wide_start_needs_the_wide_layer():
    with pytest.raises(ValueError, match="wide_start 'fitted'.*linear_skip: true"):
        ModelParams(layers=[], wide_start="fitted")


def test_linear_skip_is_refused_on_a_token_sequence():
    inputs = ModelInputs("columns", (InputColumn("review", "review", "text"),))
    frame = pd.DataFrame({"review": ["good film", "bad plot", "very good", "dull film"] * 10})
    fitted = fitted_for(frame, inputs, text=TextParams(output_mode="int", sequence_length=4))
    state = model_state(inputs, "classification", 2, fitted)
    layers = [{"type": "embedding", "output_dim": 4}, {"type": "global_average_pooling1d"}]
    with pytest.raises(ConfigError, match="linear_skip"):
        build_model(ModelParams(layers=layers, linear_skip=True), state)
    words = fitted_for(frame, inputs, text=TextParams(output_mode="tf_idf"))  # a bag of words: TF-IDF + linear
    bag = build_model(ModelParams(layers=[], linear_skip=True), model_state(inputs, "classification", 2, words))
    assert "wide" in [layer.name for layer in bag.layers]


def test_the_decision_threshold_is_chosen_on_validation_rows_for_the_primary_metric():
    rng = np.random.default_rng(0)
    y = (rng.random(400) < 0.1).astype(int)  # a rare positive class
    scores = np.clip(0.25 * y + rng.normal(0.15, 0.08, size=400), 0.001, 0.999)  # probabilities well below 0.5
    at_half = np.mean((scores >= 0.5) == y)
    chosen = choose_threshold(y, scores, "accuracy")
    assert chosen < 0.5 and np.mean((scores >= chosen) == y) > at_half
    f1 = choose_threshold(y, scores, "roc_auc")  # threshold-free metrics choose for macro F1
    assert 0.1 < f1 < 0.5
    # Nothing to gain: it stays at 0.5; one class only: 0.5.
    assert choose_threshold(np.array([0, 1, 0, 1]), np.array([0.1, 0.9, 0.2, 0.8]), "accuracy") == 0.5
    assert choose_threshold(np.zeros(10), np.linspace(0, 1, 10), "accuracy") == 0.5
    assert fixed_threshold("auto") == 0.5 and fixed_threshold(0.3) == 0.3
    with pytest.raises(ValueError):
        ModelParams(decision_threshold=1.5)


@pytest.mark.parametrize("mode", ["tf_idf", "count", "multi_hot"])
def test_tokens_outside_the_vocabulary_do_not_take_a_texts_vector_length(mode):
    inputs = ModelInputs("columns", (InputColumn("review", "review", "text"),))
    frame = pd.DataFrame({"review": ["great film", "dull film"] * 20})
    fitted = fitted_for(frame, inputs, text=TextParams(output_mode=mode))
    assert fitted.text["review"].vocabulary == ["film", "great", "dull"]
    # A long text of unknown words around one known word: that word is the whole vector, as in scikit-learn's
    # TfidfVectorizer. Counted, the unknown tokens held most of the length and "great" weighed almost nothing.
    long = " ".join(f"word{i}" for i in range(60))
    vectors = features_of(pd.DataFrame({"review": [f"{long} great", long]}), inputs, fitted)
    np.testing.assert_allclose(vectors[0], [0.0, 1.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(vectors[1], [0.0, 0.0, 0.0], atol=1e-6)  # nothing known: a zero vector, no NaN


def test_words_first_gives_the_slots_to_every_word_before_any_word_pair():
    inputs = ModelInputs("columns", (InputColumn("review", "review", "text"),))
    frame = pd.DataFrame({"review": ["a great film", "not a great film", "dull and long", "a great a great"] * 25})
    words = {"a", "great", "film", "not", "dull", "and", "long"}

    def vocabulary(**settings):
        fit = fitted_for(frame, inputs, text=TextParams(output_mode="tf_idf", ngrams=2, **settings)).text["review"]
        return fit.vocabulary, dict(zip(fit.vocabulary, fit.idf, strict=True))

    # Ranked together by count (Keras' order), frequent pairs take slots from rarer words.
    together, _ = vocabulary(max_tokens=8)
    assert len(together) == 7 and "a great" in together and not words <= set(together)
    first, idf = vocabulary(max_tokens=8, words_first=True)
    assert set(first) == words and first[:2] == ["great", "a"]  # within words, still by count
    more, more_idf = vocabulary(max_tokens=10, words_first=True)
    assert more[:7] == first and more[7:] == ["a great", "great film"]  # then pairs, by count
    # Each entry keeps its own inverse document frequency.
    full, full_idf = vocabulary(max_tokens=100)
    assert all(idf[token] == full_idf[token] for token in first) and more_idf["a great"] == full_idf["a great"]
    # Words alone (ngrams 1): nothing to put first, the vocabulary is Keras' own.
    alone = fitted_for(frame, inputs, text=TextParams(output_mode="tf_idf", max_tokens=4, words_first=True))
    assert alone.text["review"].vocabulary == ["great", "a", "film"]


def test_min_df_leaves_out_the_tokens_of_fewer_texts_before_the_vocabulary_is_cut():
    inputs = ModelInputs("columns", (InputColumn("review", "review", "text"),))
    # "great" and "film" in many texts; "wow" three times in one text, "rare" in two texts, each once.
    frame = pd.DataFrame({"review": ["a great film", "great film"] * 20 + ["wow wow wow", "rare one", "rare two"]})

    def vocabulary(**settings):
        fit = fitted_for(frame, inputs, text=TextParams(output_mode="tf_idf", **settings)).text["review"]
        return fit.vocabulary, dict(zip(fit.vocabulary, fit.idf, strict=True))

    everything, idf = vocabulary()
    assert {"wow", "rare", "one", "two"} <= set(everything)
    kept, kept_idf = vocabulary(min_df=2)
    # "wow" is counted three times but is in one text; "rare" is in two.
    assert kept == ["great", "film", "a", "rare"] and all(kept_idf[token] == idf[token] for token in kept)
    assert vocabulary(min_df=3)[0] == ["great", "film", "a"]
    # The slots go to the tokens that pass: with max_tokens 3 (two slots after the unknown-token slot), the two
    # most frequent, not a one-text token Keras ranked above them.
    assert vocabulary(min_df=2, max_tokens=3)[0] == ["great", "film"]
    with pytest.raises(ValueError, match="min_df counts the texts a token is in, which only output_mode tf_idf"):
        TextParams(output_mode="multi_hot", min_df=2)


@pytest.mark.parametrize("mode", ["tf_idf", "multi_hot", "count"])
def test_bag_of_words_text_is_one_unit_length_vector_per_text(mode):
    inputs = ModelInputs("columns", (InputColumn("review", "review", "text"),))
    frame = pd.DataFrame({"review": ["a great film", "not a great film", "dull and long", "great"] * 25})
    fitted = fitted_for(frame, inputs, text=TextParams(output_mode=mode, ngrams=2))
    fit = fitted.text["review"]
    assert "not a" in fit.vocabulary and "[UNK]" not in fit.vocabulary  # word pairs are tokens
    assert (fit.idf is not None) == (mode == "tf_idf")
    vectors = features_of(frame.head(4), inputs, fitted)
    assert vectors.shape == (4, len(fit.vocabulary))  # one slot per vocabulary entry, none for unknown tokens
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    # Token ids for a sequence model: a padded sequence, not a vector of the vocabulary.
    sequence = fitted_for(frame, inputs, text=TextParams(output_mode="int", sequence_length=6))
    assert features_of(frame.head(4), inputs, sequence).shape == (4, 6)
