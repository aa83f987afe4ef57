import matplotlib.pyplot as plt
import numpy as np
from matplotlib.gridspec import GridSpec

rng = np.random.default_rng(50)
hours = np.arange(24)
load = 60 + 25 * np.sin((hours - 6) / 24 * 2 * np.pi) + rng.normal(0, 3, 24)
plants = ["Solar", "Wind", "Gas", "Hydro", "Nuclear"]
output = [18, 26, 31, 9, 16]
grid = rng.random((8, 12)) ** 2

fig = plt.figure(figsize=(12, 7))
gs = GridSpec(2, 3, figure=fig, width_ratios=[2, 1, 1], height_ratios=[1, 1.2])
ax_line = fig.add_subplot(gs[0, :])
ax_bar = fig.add_subplot(gs[1, 0])
ax_map = fig.add_subplot(gs[1, 1:])

ax_line.plot(hours, load, color="#d62828", linewidth=2)
ax_line.fill_between(hours, load, 0, color="#d62828", alpha=0.1)
ax_line.set_xlim(0, 23)
ax_line.set_ylim(0, 100)
ax_line.set_title("Grid Load over the Day (GW)")

ax_bar.bar(plants, output, color=["#fcbf49", "#669bbc", "#6c757d", "#003049", "#f77f00"])
ax_bar.set_title("Generation Mix (%)")

im = ax_map.imshow(grid, cmap="magma", aspect="auto")
ax_map.set_title("Substation Utilisation")
fig.colorbar(im, ax=ax_map, shrink=0.8)

fig.suptitle("National Grid Operations, 14 Feb 2024", fontsize=15)
fig.tight_layout()
