import matplotlib.pyplot as plt
import numpy as np

questions = ["The product is easy to use", "Support answers quickly", "Pricing is fair",
             "I would recommend it", "Documentation is clear"]
# strongly disagree, disagree, neutral, agree, strongly agree (percent)
responses = np.array([
    [3, 7, 15, 45, 30],
    [8, 14, 22, 38, 18],
    [15, 25, 28, 24, 8],
    [4, 6, 12, 40, 38],
    [10, 18, 30, 30, 12],
])
colors = ["#b2182b", "#ef8a62", "#d9d9d9", "#67a9cf", "#2166ac"]
names = ["Strongly disagree", "Disagree", "Neutral", "Agree", "Strongly agree"]

starts = -(responses[:, 0] + responses[:, 1] + responses[:, 2] / 2)
fig, ax = plt.subplots(figsize=(10, 4.5))
left = starts.copy()
for k in range(5):
    ax.barh(questions, responses[:, k], left=left, color=colors[k], label=names[k], height=0.6)
    left = left + responses[:, k]

ax.axvline(0, color="black", linewidth=0.8)
ax.set_xlim(-60, 90)
ax.set_xlabel("Share of respondents (%)")
ax.set_title("Customer Survey 2024 (n = 1,240)")
ax.legend(ncol=5, loc="upper center", bbox_to_anchor=(0.5, -0.18), frameon=False, fontsize=8)
ax.invert_yaxis()
plt.tight_layout()
plt.show()
