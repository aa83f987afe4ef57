import matplotlib.pyplot as plt

startups = ["Nimbus", "Quanta", "Helix", "Orbit", "Vertex", "Lumen", "Pulse", "Atlas"]
growth = [120, 85, 210, 45, 160, 70, 30, 140]
burn = [2.1, 1.4, 4.8, 0.9, 3.6, 1.1, 0.6, 2.9]
valuation = [450, 300, 1200, 120, 800, 220, 90, 610]
colors = ["#ef476f", "#ffd166", "#06d6a0", "#118ab2", "#073b4c", "#8338ec", "#fb5607", "#3a86ff"]

fig, ax = plt.subplots(figsize=(9, 6))
ax.scatter(burn, growth, s=[v * 1.5 for v in valuation], c=colors, alpha=0.7, edgecolors="black")
for name, x, y in zip(startups, burn, growth):
    ax.annotate(name, (x, y), xytext=(6, 6), textcoords="offset points", fontsize=9)

for v in (100, 500, 1000):
    ax.scatter([], [], s=v * 1.5, color="gray", alpha=0.4, label=f"${v}M")
ax.legend(title="Valuation", labelspacing=2.2, borderpad=1.2, loc="upper left", frameon=True)

ax.set_xlabel("Monthly burn (million USD)")
ax.set_ylabel("Year-over-year growth (%)")
ax.set_title("Portfolio Startups: Growth vs Burn")
ax.set_xlim(0, 6)
ax.set_ylim(0, 260)
plt.savefig("output.png", dpi=150)
