import matplotlib.pyplot as plt
import numpy as np

countries = ["France", "Germany", "Spain", "Italy", "Poland", "Sweden"]
sources = {
    "Nuclear": [63, 6, 20, 0, 0, 29],
    "Fossil": [9, 46, 28, 57, 71, 2],
    "Hydro": [11, 4, 8, 17, 2, 40],
    "Wind & Solar": [13, 38, 39, 18, 21, 25],
    "Other": [4, 6, 5, 8, 6, 4],
}
colors = ["#ffbe0b", "#6c757d", "#3a86ff", "#06d6a0", "#b5838d"]

fig, ax = plt.subplots(figsize=(9, 5))
bottom = np.zeros(len(countries))
for (name, values), color in zip(sources.items(), colors):
    ax.bar(countries, values, bottom=bottom, label=name, color=color, width=0.6)
    bottom += np.array(values)

ax.set_ylabel("Share of electricity generation (%)")
ax.set_title("Electricity Mix in Selected EU Countries (2022)")
ax.set_ylim(0, 100)
ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.08), ncol=5, frameon=False)
plt.tight_layout()
