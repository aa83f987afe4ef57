import matplotlib.pyplot as plt
import numpy as np

rng = np.random.default_rng(5)
services = ["auth", "search", "checkout", "catalog", "payments"]
latencies = [rng.lognormal(mean=m, sigma=s, size=300) for m, s in
             [(3.0, 0.3), (3.8, 0.45), (4.2, 0.35), (3.3, 0.25), (4.5, 0.5)]]

fig, ax = plt.subplots(figsize=(9, 5))
bp = ax.boxplot(latencies, patch_artist=True, showfliers=True, widths=0.55,
                medianprops={"color": "black", "linewidth": 1.5},
                flierprops={"marker": ".", "markersize": 4, "alpha": 0.4})
palette = ["#8ecae6", "#219ebc", "#023047", "#ffb703", "#fb8500"]
for patch, color in zip(bp["boxes"], palette):
    patch.set_facecolor(color)
    patch.set_alpha(0.8)

ax.set_xticks(range(1, len(services) + 1))
ax.set_xticklabels(services)
ax.set_yscale("log")
ax.set_ylabel("Request latency (ms)")
ax.set_title("API Latency by Service (last 24 h)")
ax.grid(axis="y", which="both", alpha=0.3)
plt.tight_layout()
plt.savefig("output.png", dpi=150)
