import matplotlib.pyplot as plt
import numpy as np

criteria = ["Battery", "Camera", "Display", "Performance", "Price", "Build quality"]
phones = {
    "Phone A": [8, 9, 8, 9, 4, 9],
    "Phone B": [9, 7, 7, 7, 8, 7],
    "Phone C": [6, 8, 9, 8, 6, 8],
}
colors = ["#d62828", "#003049", "#f77f00"]

angles = np.linspace(0, 2 * np.pi, len(criteria), endpoint=False).tolist()
angles += angles[:1]

fig, ax = plt.subplots(figsize=(7, 7), subplot_kw={"polar": True})
for (name, scores), color in zip(phones.items(), colors):
    values = scores + scores[:1]
    ax.plot(angles, values, color=color, linewidth=2, label=name)
    ax.fill(angles, values, color=color, alpha=0.15)

ax.set_theta_offset(np.pi / 2)
ax.set_theta_direction(-1)
ax.set_xticks(angles[:-1])
ax.set_xticklabels(criteria)
ax.set_ylim(0, 10)
ax.set_yticks([2, 4, 6, 8, 10])
ax.set_title("Smartphone Review Scores", y=1.08)
ax.legend(loc="upper right", bbox_to_anchor=(1.12, 1.12))
plt.savefig("output.png", dpi=150, bbox_inches="tight")
