import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import FuncFormatter, MultipleLocator

months = np.arange(1, 25)
rng = np.random.default_rng(49)
mrr = 42000 * 1.045 ** months + rng.normal(0, 1500, months.size)
target = 42000 * 1.05 ** months


def dollars(x, _pos):
    return f"${x / 1000:.0f}K"


fig, ax = plt.subplots(figsize=(10, 5))
ax.plot(months, mrr, marker="o", color="#2d6a4f", linewidth=2, label="Actual MRR")
ax.plot(months, target, linestyle="--", color="#95d5b2", linewidth=2, label="Plan")
ax.yaxis.set_major_formatter(FuncFormatter(dollars))
ax.xaxis.set_major_locator(MultipleLocator(3))
ax.xaxis.set_minor_locator(MultipleLocator(1))
ax.set_xlabel("Month since launch")
ax.set_ylabel("Monthly recurring revenue")
ax.set_title("MRR vs Plan, First Two Years")
ax.legend()
ax.grid(which="major", alpha=0.4)
ax.grid(which="minor", alpha=0.1)
plt.tight_layout()
plt.savefig("output.png", dpi=100)
