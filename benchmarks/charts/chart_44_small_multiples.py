import matplotlib.pyplot as plt
import numpy as np

years = np.arange(2010, 2024)
rng = np.random.default_rng(44)
regions = {
    "Europe": 4.2 - 0.12 * (years - 2010) + rng.normal(0, 0.1, years.size),
    "North America": 5.9 - 0.09 * (years - 2010) + rng.normal(0, 0.1, years.size),
    "Asia": 3.1 + 0.05 * (years - 2010) + rng.normal(0, 0.1, years.size),
    "Africa": 1.0 + 0.02 * (years - 2010) + rng.normal(0, 0.05, years.size),
}

fig, axes = plt.subplots(1, 4, figsize=(15, 3.8), sharey=True)
for ax, (name, values) in zip(axes, regions.items()):
    for other in regions.values():
        ax.plot(years, other, color="#dee2e6", linewidth=1)
    ax.plot(years, values, color="#d00000", linewidth=2.5)
    ax.set_title(name)
    ax.set_xticks([2010, 2016, 2022])
    ax.grid(alpha=0.3)
axes[0].set_ylabel("CO$_2$ per capita (t, index)")
fig.suptitle("Emissions Trends by Region", fontweight="bold")
fig.tight_layout()
plt.savefig("output.png", dpi=100)
