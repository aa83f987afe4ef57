import matplotlib.pyplot as plt

categories = ["Salaries", "Cloud & Infra", "Marketing", "Office", "R&D Tools", "Travel"]
budget = [5.4, 1.8, 1.2, 0.7, 0.5, 0.3]
colors = ["#264653", "#2a9d8f", "#e9c46a", "#f4a261", "#e76f51", "#8d99ae"]

fig, ax = plt.subplots(figsize=(9.5, 6))
wedges, _ = ax.pie(budget, colors=colors, startangle=140, counterclock=False,
                   wedgeprops={"width": 0.38, "edgecolor": "white"})
ax.text(0, 0.08, f"${sum(budget):.1f}M", ha="center", va="center", fontsize=20, fontweight="bold")
ax.text(0, -0.14, "Total budget", ha="center", va="center", fontsize=10, color="gray")

labels = [f"{c} ({b / sum(budget):.0%})" for c, b in zip(categories, budget)]
ax.legend(wedges, labels, loc="center left", bbox_to_anchor=(0.92, 0.5), frameon=False)
ax.set_title("FY2024 Operating Budget Allocation")
ax.set_aspect("equal")
plt.tight_layout()
plt.show()
