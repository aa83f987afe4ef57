import matplotlib.pyplot as plt
import numpy as np

methods = ["Full FT", "LoRA", "QLoRA", "Prefix", "Adapter"]
memory = [78.2, 22.4, 11.9, 19.7, 24.3]
time_h = [14.1, 9.6, 12.8, 8.9, 10.4]
x = np.arange(len(methods))

fig, ax = plt.subplots(figsize=(9, 5))
b1 = ax.bar(x - 0.2, memory, 0.4, color="white", edgecolor="#3c096c", hatch="//", label="GPU memory (GB)")
b2 = ax.bar(x + 0.2, time_h, 0.4, color="white", edgecolor="#ff6d00", hatch="xx", label="Training time (h)")
ax.bar_label(b1, fmt="%.1f", padding=2, fontsize=8)
ax.bar_label(b2, fmt="%.1f", padding=2, fontsize=8)
ax.set_xticks(x)
ax.set_xticklabels(methods)
ax.set_ylim(0, 90)
ax.set_title("Fine-tuning Cost of a 7B Model")
ax.legend()
ax.spines[["top", "right"]].set_visible(False)
plt.tight_layout()
