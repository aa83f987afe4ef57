import matplotlib.pyplot as plt
import numpy as np

models = ["ResNet-50", "ViT-B/16", "ConvNeXt-T", "Swin-T", "EfficientNet-B3"]
top1 = np.array([76.1, 81.8, 82.1, 81.3, 81.6])
std = np.array([0.4, 0.3, 0.2, 0.35, 0.5])

fig, ax = plt.subplots(figsize=(8, 5))
x = np.arange(len(models))
ax.bar(x, top1, yerr=std, capsize=6, color="#8ecae6", edgecolor="#023047", error_kw={"elinewidth": 1.5})

for xi, acc, s in zip(x, top1, std):
    ax.text(xi, acc + s + 0.15, f"{acc:.1f}", ha="center", fontsize=9)

ax.set_xticks(x)
ax.set_xticklabels(models, rotation=15)
ax.set_ylim(74, 84)
ax.set_ylabel("ImageNet top-1 accuracy (%)")
ax.set_title("Classification Accuracy (mean ± std over 5 seeds)")
plt.tight_layout()
plt.show()
