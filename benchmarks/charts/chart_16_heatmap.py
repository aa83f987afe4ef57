import matplotlib.pyplot as plt
import numpy as np

metrics = ["Revenue", "Users", "Sessions", "Churn", "NPS", "Support tickets"]
corr = np.array([
    [1.00, 0.82, 0.75, -0.61, 0.44, -0.12],
    [0.82, 1.00, 0.91, -0.48, 0.37, 0.21],
    [0.75, 0.91, 1.00, -0.40, 0.30, 0.28],
    [-0.61, -0.48, -0.40, 1.00, -0.72, 0.55],
    [0.44, 0.37, 0.30, -0.72, 1.00, -0.49],
    [-0.12, 0.21, 0.28, 0.55, -0.49, 1.00],
])

fig, ax = plt.subplots(figsize=(8, 6.5))
im = ax.imshow(corr, cmap="RdBu_r", vmin=-1, vmax=1)
ax.set_xticks(np.arange(len(metrics)))
ax.set_yticks(np.arange(len(metrics)))
ax.set_xticklabels(metrics, rotation=35, ha="right")
ax.set_yticklabels(metrics)

for i in range(len(metrics)):
    for j in range(len(metrics)):
        value = corr[i, j]
        ax.text(j, i, f"{value:.2f}", ha="center", va="center",
                color="white" if abs(value) > 0.6 else "black", fontsize=9)

cbar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
cbar.set_label("Pearson r")
ax.set_title("Correlation of Product KPIs")
fig.tight_layout()
plt.savefig("output.png", dpi=100)
