"""Small synthetic datasets with a learnable signal: the data of the examples and of the tests.

Each function is seeded and returns a DataFrame (or writes a folder of images), so a test
can make its data without the network. `python -m kerasflow.samples DIR` writes them all,
as the examples under `examples/` ship them.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

NEIGHBORHOODS = {"riverside": 60_000, "old town": 35_000, "hillcrest": 90_000, "docklands": 10_000, "meadows": 0}
# Condition scales the price per square metre: an interaction a linear model on one-hot columns cannot fit.
CONDITIONS = {"poor": 0.6, "fair": 0.9, "good": 1.15, "excellent": 1.5}
POSITIVE = "great excellent wonderful loved superb delightful enjoyable brilliant charming fantastic".split()
NEGATIVE = "awful terrible boring hated dreadful dull disappointing poor tedious mediocre".split()
FILLER = "the a movie film plot actors story was it and this of with scenes ending music really very quite".split()


def house_prices(rows: int = 1200, seed: int = 0, missing: float = 0.05) -> pd.DataFrame:
    """House prices from numeric and categorical columns, with missing values in both."""
    rng = np.random.default_rng(seed)
    area = rng.normal(120, 35, rows).clip(30, None)
    rooms = np.clip(np.round(area / 30 + rng.normal(0, 0.7, rows)), 1, 9)
    age = rng.uniform(0, 80, rows)
    neighborhood = rng.choice(list(NEIGHBORHOODS), rows)
    condition = rng.choice(list(CONDITIONS), rows, p=[0.15, 0.35, 0.35, 0.15])
    garage = rng.choice(["yes", "no"], rows, p=[0.4, 0.6])
    price = (
        40_000
        + 1_800 * area * np.vectorize(CONDITIONS.get)(condition)
        + 6_000 * rooms
        # Old houses lose value, then the oldest gain it back as "period" homes.
        + 40 * (age - 45) ** 2
        + np.vectorize(NEIGHBORHOODS.get)(neighborhood)
        + np.where(garage == "yes", 15_000, 0)
        + rng.normal(0, 10_000, rows)
    )
    frame = pd.DataFrame(
        {
            "area": area.round(1),
            "rooms": rooms,
            "age": age.round(0),
            "neighborhood": neighborhood,
            "condition": condition,
            "garage": garage,
            "price": price.round(-2),
        }
    )
    for column in ("area", "age", "neighborhood", "condition"):
        frame.loc[rng.random(rows) < missing, column] = np.nan
    return frame


def churn(rows: int = 1500, seed: int = 0) -> pd.DataFrame:
    """Customers who churned ("yes", about one in five) or not, from usage and contract."""
    rng = np.random.default_rng(seed)
    tenure = rng.integers(1, 72, rows)
    charges = rng.normal(70, 25, rows).clip(15, None).round(2)
    contract = rng.choice(["monthly", "one year", "two years"], rows, p=[0.5, 0.3, 0.2])
    calls = rng.poisson(1.5, rows)
    monthly = contract == "monthly"
    # Interactions a linear model cannot draw: high charges drive away monthly customers only, and
    # support calls matter most in the first year.
    logit = (
        -2.2
        + np.where(monthly, 0.06 * (charges - 60), -0.01 * (charges - 60))
        + np.where(tenure < 12, 0.9 * calls, 0.1 * calls)
        - 0.02 * tenure
        + np.where(monthly, 0.8, -1.0)
    )
    churned = rng.random(rows) < 1 / (1 + np.exp(-logit))
    return pd.DataFrame(
        {
            "tenure_months": tenure,
            "monthly_charges": charges,
            "contract": contract,
            "support_calls": calls,
            "churned": np.where(churned, "yes", "no"),
        }
    )


def reviews(rows: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Short movie reviews, "positive" or "negative", where word order matters.

    Every review has one sentiment word. In some, "not" comes right before it and flips the
    sentiment; in others "not" sits elsewhere and does not. A bag of words sees the same words
    either way, so it tops out near 0.8 accuracy; a sequence model can learn the rule.
    """
    rng = np.random.default_rng(seed)
    texts, labels = [], []
    for _ in range(rows):
        word_positive = bool(rng.random() < 0.5)
        words = [str(word) for word in rng.choice(FILLER, rng.integers(5, 10))]
        sentiment = str(rng.choice(POSITIVE if word_positive else NEGATIVE))
        place = int(rng.integers(0, len(words) + 1))
        negation = rng.random()
        flipped = negation < 0.25
        if flipped:
            words[place:place] = ["not", sentiment]
        else:
            words.insert(place, sentiment)
            if negation < 0.5:  # "not" somewhere that is not right before the sentiment word
                spot = int(rng.integers(0, len(words) + 1))
                if spot == words.index(sentiment):
                    spot += 1
                words.insert(spot, "not")
        texts.append(" ".join(words).capitalize() + str(rng.choice([".", "!", "..."])))
        labels.append("positive" if word_positive != flipped else "negative")
    return pd.DataFrame({"review": texts, "sentiment": labels})


def linear(rows: int = 500, seed: int = 0) -> pd.DataFrame:
    """y = 3 x1 - 2 x2 + 0.5 x3 + 4, plus a little noise."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, 3))
    y = 3 * x[:, 0] - 2 * x[:, 1] + 0.5 * x[:, 2] + 4 + rng.normal(0, 0.1, rows)
    return pd.DataFrame({"x1": x[:, 0], "x2": x[:, 1], "x3": x[:, 2], "y": y})


def shapes(folder: Path, per_class: int = 80, size: int = 32, seed: int = 0) -> Path:
    """PNG images of circles, squares and crosses in random colours, one sub-folder per class."""
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    rows, columns = np.mgrid[0:size, 0:size]
    for shape in ("circle", "square", "cross"):
        (Path(folder) / shape).mkdir(parents=True, exist_ok=True)
        for index in range(per_class):
            radius = rng.integers(size // 4, size // 3 + 1)
            centre_row, centre_col = rng.integers(radius, size - radius, 2)
            if shape == "circle":
                mask = (rows - centre_row) ** 2 + (columns - centre_col) ** 2 <= radius**2
            elif shape == "square":
                mask = (abs(rows - centre_row) <= radius) & (abs(columns - centre_col) <= radius)
            else:
                width = max(1, radius // 3)
                mask = ((abs(rows - centre_row) <= width) & (abs(columns - centre_col) <= radius)) | (
                    (abs(columns - centre_col) <= width) & (abs(rows - centre_row) <= radius)
                )
            background = rng.integers(0, 80, 3)
            colour = rng.integers(140, 256, 3)
            image = np.where(mask[..., None], colour, background) + rng.integers(0, 30, (size, size, 3))
            png = tf.io.encode_png(np.clip(image, 0, 255).astype("uint8"))
            tf.io.write_file(str(Path(folder) / shape / f"{shape}_{index:03d}.png"), png)
    return Path(folder)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write the examples' synthetic datasets.")
    parser.add_argument("folder", type=Path, help="the examples folder")
    folder = parser.parse_args(argv).folder
    for name in ("house_prices", "churn_binary", "text_lstm", "linear_regression"):
        (folder / name).mkdir(parents=True, exist_ok=True)
    house_prices().to_csv(folder / "house_prices" / "house_prices.csv", index=False)
    churn().to_csv(folder / "churn_binary" / "churn.csv", index=False)
    reviews().to_csv(folder / "text_lstm" / "reviews.csv", index=False)
    linear().to_csv(folder / "linear_regression" / "linear.csv", index=False)
    shapes(folder / "image_folder_cnn" / "images")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
