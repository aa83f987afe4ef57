import matplotlib.pyplot as plt

regions = ["North", "South", "East", "West", "Central"]
sales = [482, 365, 529, 301, 414]
colors = ["#4C72B0", "#55A868", "#C44E52", "#8172B2", "#CCB974"]

fig, ax = plt.subplots(figsize=(8, 5))
bars = ax.bar(regions, sales, color=colors, edgecolor="black", linewidth=0.6)

for bar, value in zip(bars, sales):
    ax.text(bar.get_x() + bar.get_width() / 2, bar.get_height() + 8, f"${value}K",
            ha="center", va="bottom", fontsize=10, fontweight="bold")

ax.set_title("Q3 2023 Sales by Region", fontsize=14, fontweight="bold")
ax.set_xlabel("Region")
ax.set_ylabel("Sales (thousand USD)")
ax.set_ylim(0, 600)
ax.spines["top"].set_visible(False)
ax.spines["right"].set_visible(False)
ax.yaxis.grid(True, linestyle="--", alpha=0.5)
ax.set_axisbelow(True)

plt.tight_layout()
plt.savefig("output.png", dpi=150)
