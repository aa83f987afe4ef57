import matplotlib.pyplot as plt
import numpy as np

rng = np.random.default_rng(17)
ad_spend = rng.uniform(5, 100, 80)
sales = 23 + 1.7 * ad_spend + rng.normal(0, 18, 80)

slope, intercept = np.polyfit(ad_spend, sales, 1)
xs = np.linspace(0, 105, 100)
r = np.corrcoef(ad_spend, sales)[0, 1]

fig, ax = plt.subplots(figsize=(8, 6))
ax.scatter(ad_spend, sales, color="#118ab2", alpha=0.7, edgecolor="k", linewidth=0.4, label="Campaigns")
ax.plot(xs, slope * xs + intercept, color="#ef476f", linewidth=2.5,
        label=f"Fit: y = {slope:.2f}x + {intercept:.1f}")
ax.text(0.05, 0.92, f"$R^2$ = {r ** 2:.2f}", transform=ax.transAxes, fontsize=12,
        bbox={"boxstyle": "round", "facecolor": "#ffd166", "alpha": 0.6})
ax.set_xlabel("Advertising spend (thousand EUR)")
ax.set_ylabel("Incremental sales (thousand EUR)")
ax.set_title("Ad Spend vs Sales per Campaign")
ax.legend(loc="lower right")
plt.tight_layout()
