import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import PercentFormatter

defects = ["Scratches", "Misalignment", "Loose screws", "Dead pixels", "Paint chips", "Wrong label", "Other"]
counts = np.array([142, 98, 61, 37, 22, 14, 9])
cumulative = counts.cumsum() / counts.sum()

fig, ax = plt.subplots(figsize=(10, 5))
ax.bar(defects, counts, color="#457b9d")
ax.set_ylabel("Defect count")
ax.tick_params(axis="x", rotation=20)

ax2 = ax.twinx()
ax2.plot(defects, cumulative, color="#e63946", marker="o", linewidth=2)
ax2.yaxis.set_major_formatter(PercentFormatter(1.0))
ax2.set_ylim(0, 1.05)
ax2.axhline(0.8, color="#e63946", linestyle="--", linewidth=1, alpha=0.6)
ax2.text(6.3, 0.82, "80%", color="#e63946", ha="right")

ax.set_title("Pareto Analysis of Assembly Line Defects, March 2024")
fig.tight_layout()
plt.savefig("output.png", dpi=150)
