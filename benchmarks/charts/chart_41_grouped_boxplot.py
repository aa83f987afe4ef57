import matplotlib.pyplot as plt
import numpy as np

rng = np.random.default_rng(41)
datasets = ["CIFAR-10", "CIFAR-100", "SVHN", "STL-10"]
baseline = [rng.normal(m, 0.6, 10) for m in (93.1, 72.4, 95.8, 81.2)]
ours = [rng.normal(m, 0.5, 10) for m in (94.6, 75.9, 96.5, 84.0)]

fig, ax = plt.subplots(figsize=(9, 5))
pos = np.arange(len(datasets)) * 3.0
b1 = ax.boxplot(baseline, positions=pos - 0.55, widths=0.9, patch_artist=True)
b2 = ax.boxplot(ours, positions=pos + 0.55, widths=0.9, patch_artist=True)
for box in b1["boxes"]:
    box.set_facecolor("#ced4da")
for box in b2["boxes"]:
    box.set_facecolor("#f4a261")
for bp in (b1, b2):
    for median in bp["medians"]:
        median.set_color("black")

ax.set_xticks(pos)
ax.set_xticklabels(datasets)
ax.set_ylabel("Test accuracy (%)")
ax.set_title("Accuracy over 10 Seeds: Baseline vs Ours")
ax.legend([b1["boxes"][0], b2["boxes"][0]], ["Baseline", "Ours"], loc="lower left")
ax.grid(axis="y", alpha=0.3)
plt.tight_layout()
plt.savefig("output.png", dpi=150)
