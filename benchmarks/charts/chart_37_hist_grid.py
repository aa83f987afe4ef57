import matplotlib.pyplot as plt
import numpy as np

rng = np.random.default_rng(31)
features = {
    "Sepal length (cm)": rng.normal(5.8, 0.8, 300),
    "Sepal width (cm)": rng.normal(3.0, 0.45, 300),
    "Petal length (cm)": np.concatenate([rng.normal(1.5, 0.2, 100), rng.normal(4.8, 0.7, 200)]),
    "Petal width (cm)": np.concatenate([rng.normal(0.25, 0.1, 100), rng.normal(1.7, 0.4, 200)]),
}
colors = ["#f72585", "#7209b7", "#3f37c9", "#4cc9f0"]

fig, axes = plt.subplots(2, 2, figsize=(10, 7), sharey=False)
for ax, (name, data), color in zip(axes.flat, features.items(), colors):
    ax.hist(data, bins=25, color=color, alpha=0.8, edgecolor="white")
    ax.axvline(np.median(data), color="black", linestyle="--", linewidth=1)
    ax.set_title(name)
    ax.set_ylabel("Count")

fig.suptitle("Feature Distributions of the Flower Dataset", fontsize=14)
plt.tight_layout()
plt.show()
